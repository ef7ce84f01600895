"""Submit latency: the wall time of one submit command, and what gsub's time is made of.

How: each tool submits `true` (spoold: `gsub -n 0 -- true` with no daemon
running, so only the submission is timed; tsp with its server up; nq), timed
from Python with fork+exec included, in two rounds of alternating order so
that background load drifting during the run hits every tool alike. Floors
timed the same way: fork+exec of /bin/true and of a shell doing nothing.

gsub's parts: each program gsub runs (flock, mv, sync, a fork) timed alone
inside a shell, paired with a bare shell start timed right before it; the
median difference over 40 pairs is that part's cost.
"""

from __future__ import annotations

import contextlib
import time

from harness import Ctx, base_env, log, summary_ms, timed
from instance import Spoold
from peers import Nq, Tsp
from report import dig, per_peer, ratio_at_most, row

NAME = "submit"
ROUNDS = 2
WARM_UP = 3  # page cache, tsp's connection, nq's folder
PAIRS = 40


def run(ctx: Ctx) -> dict:
    n = ctx.cfg["submit_n"]
    log(f"submit latency: {n} submissions per tool, {ROUNDS} rounds")
    sp = Spoold(ctx, "submit", 1)
    runners = [("spoold", sp.env, sp.submit_cmd(["true"], gpus=0))]
    ts = nq = None
    if ctx.tools["tsp"]:
        ts = Tsp(ctx.tools["tsp"], ctx.path("submit-tsp"))
        ts.start()
        runners.append(("tsp", ts.env, ts.submit_cmd(["true"])))
    if ctx.tools["nq"]:
        nq = Nq(ctx.tools["nq"], ctx.path("submit-nq"))
        runners.append(("nq", nq.env, nq.submit_cmd(["true"])))
    runners.append(("floor", base_env(), ["/bin/true"]))
    runners.append(("sh_floor", base_env(), [ctx.gsub_sh, "-c", ":"]))
    samples: dict[str, list[float]] = {name: [] for name, _, _ in runners}
    try:
        for rnd in range(ROUNDS):
            for name, env, cmd in runners if rnd % 2 == 0 else reversed(runners):
                for _ in range(WARM_UP):
                    timed(cmd, env, ctx.tmp)
                samples[name] += [timed(cmd, env, ctx.tmp) for _ in range((n + 1) // ROUNDS)]
                time.sleep(0.3)  # let the jobs tsp and nq started finish
    finally:
        if ts:
            ts.stop()
        if nq:
            with contextlib.suppress(Exception):
                nq.wait_all(60)
    out = {name: summary_ms(s) for name, s in samples.items()}
    out["spoold"]["pending_after"] = sp.count("pending")
    out["gsub_parts_ms"] = gsub_parts(ctx)
    return out


def gsub_parts(ctx: Ctx) -> dict:
    d = ctx.path("gsub-parts")
    d.mkdir()
    f, lock = d / "f", d / "lock"
    f.write_text("x")
    env = base_env(LC_ALL="C")
    sh = ctx.gsub_sh
    shell = [sh, "-c", ":"]
    parts = {  # name -> (command, how many times the part runs in it)
        "dash -c 'x=$(:)' (one fork)": ([sh, "-c", "x=$(:)"], 1),
        "flock": ([sh, "-c", f"exec 9>>{lock}; flock 9"], 1),
        "mv": ([sh, "-c", f"mv {f} {f}2 && mv {f}2 {f}"], 2),
        "sync FILE DIR FILE": ([sh, "-c", f"sync -- {f} {d} {lock}"], 1),
        "gsub --help (reading the script)": ([sh, str(ctx.repo / "bin" / "gsub"), "--help"], 1),
    }
    for _ in range(WARM_UP):
        for cmd in (shell, *(c for c, _ in parts.values())):
            timed(cmd, env, ctx.tmp)
    base: list[float] = []
    diffs: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(PAIRS):
        for name, (cmd, _) in parts.items():
            base.append(timed(shell, env, ctx.tmp))
            diffs[name].append(timed(cmd, env, ctx.tmp) - base[-1])
    out = {"fork+exec of a dash running nothing": summary_ms(base)["median_ms"]}
    for name, (_, times) in parts.items():
        out[name] = summary_ms(diffs[name])["median_ms"] / times
    return out


def rows(r: dict, ctx: Ctx) -> list[dict]:
    floor = dig(r, "floor", "median_ms")
    return [
        row("submit latency, median", "ms", **per_peer(r, "median_ms"), target="<= 1.3x tsp",
            check=ratio_at_most(1.3)),
        row("submit latency, p90", "ms", **per_peer(r, "p90_ms")),
        row("floor: fork+exec /bin/true", "ms", floor, floor, floor, ratio=False,
            note="same for every tool"),
        row("floor: dash -c : (a shell starts)", "ms", dig(r, "sh_floor", "median_ms"),
            ratio=False, note="gsub is a sh script"),
    ]


def extra(r: dict) -> list[str]:
    parts = r.get("gsub_parts_ms") or {}
    return ["gsub's parts, each timed alone (median ms): "
            + "; ".join(f"{k} {v:.2f}" for k, v in parts.items())] if parts else []
