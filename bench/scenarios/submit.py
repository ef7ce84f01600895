"""Submit latency: gsub against the durable floor, tsp and nq, and what gsub's time is made of.

How: each tool submits `true`, timed from Python with fork+exec included
(`harness.timed`), interleaved: blocks of BLOCK submissions per tool, the
order of the tools turned by one every round, so that load drifting during
the run hits every tool alike and every ratio is taken inside one run.
- gsub: `gsub -n 0 -- true` on a spool whose daemon wrote its heartbeat and
  was then frozen (SIGSTOP, started with a long --host-timeout): gsub takes
  its usual path (a live host to check the job against), and the daemon's
  reaction to each new file takes no CPU from the timing.
- the durable floor: bench/floor.sh (issue 13's 10-line dash script: id hint
  with `read`, id marker with `set -C` and the builtin `true`, the job and
  `export -p` in one redirection, one `sync -- FILE pending/`), run by the
  same shell as gsub on a folder of its own.
- tsp with its server up (it fsyncs nothing); nq.
- lower bounds timed the same way: fork+exec of /bin/true, a shell doing
  nothing.

gsub's parts: programs a sh submitter may run (flock, mv, sync, a fork),
each timed alone inside a shell, paired with a bare shell start timed right
before it; the median difference over PAIRS pairs is that part's cost.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from harness import Ctx, base_env, call, log, summary_ms, timed
from instance import Spoold
from peers import Nq, Tsp
from report import dig, per_peer, row

NAME = "submit"
BLOCK = 10  # submissions per tool in a row
WARM_UP = 3  # page cache, tsp's connection, nq's folder
PAIRS = 40
FLOOR = Path(__file__).resolve().parent.parent / "floor.sh"
FLOOR_TARGET = 1.15  # issue 13: gsub <= 1.15x the durable floor


def floor_folder(ctx: Ctx) -> Path:
    """What floor.sh needs: pending/, state/ids/ and the id hint."""
    d = ctx.path("submit-floor")
    (d / "state" / "ids").mkdir(parents=True)
    (d / "pending").mkdir()
    (d / "state" / "next-id").write_text("1\n")
    return d


def interleaved(ctx: Ctx, runners: list, n: int) -> dict[str, list[float]]:
    """runners: (name, env, command, after); after() (or None) runs after each block,
    untimed. About n samples per runner, in rounds of BLOCK per runner."""
    for _name, env, cmd, _after in runners:
        for _ in range(WARM_UP):
            timed(cmd, env, ctx.tmp)
    samples: dict[str, list[float]] = {name: [] for name, *_ in runners}
    for rnd in range(max(1, -(-n // BLOCK))):
        k = rnd % len(runners)
        for name, env, cmd, after in runners[k:] + runners[:k]:
            samples[name] += [timed(cmd, env, ctx.tmp) for _ in range(BLOCK)]
            if after:
                after()
    return samples


def run(ctx: Ctx) -> dict:
    n = ctx.cfg["submit_n"]
    log(f"submit latency: {n} submissions per tool, interleaved in blocks of {BLOCK}")
    sp = Spoold(ctx, "submit", 1)
    ts = nq = None
    try:
        sp.start(["--host-timeout", "3600"])
        gsub = sp.submit_cmd(["true"], gpus=0)
        first = call(gsub, sp.env, sp.root)
        runners = [("spoold", sp.env, gsub, None),
                   ("durable_floor", base_env(), [ctx.gsub_sh, str(FLOOR), str(floor_folder(ctx)),
                                                  "true"], None)]
        if ctx.tools["tsp"]:
            ts = Tsp(ctx.tools["tsp"], ctx.path("submit-tsp"))
            ts.start()
            runners.append(("tsp", ts.env, ts.submit_cmd(["true"]), None))
        if ctx.tools["nq"]:
            nq = Nq(ctx.tools["nq"], ctx.path("submit-nq"))
            runners.append(("nq", nq.env, nq.submit_cmd(["true"]), lambda: nq.wait_all(60)))
        runners.append(("floor", base_env(), ["/bin/true"], None))
        runners.append(("sh_floor", base_env(), [ctx.gsub_sh, "-c", ":"], None))
        with sp.frozen():
            samples = interleaved(ctx, runners, n)
    finally:
        sp.stop()
        if ts:
            ts.stop()
        if nq:
            with contextlib.suppress(Exception):
                nq.wait_all(60)
    out = {name: summary_ms(s) for name, s in samples.items()}
    out["spoold"]["pending_after"] = sp.count("pending")
    out["spoold"]["live_host"] = b"no spoold is running" not in first.stderr
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
        "sync FILE DIR": ([sh, "-c", f"sync -- {f} {d}"], 1),
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
    gsub, fl = dig(r, "spoold", "median_ms"), dig(r, "durable_floor", "median_ms")
    tsp = dig(r, "tsp", "median_ms")
    floor = dig(r, "floor", "median_ms")
    live = dig(r, "spoold", "live_host")
    return [
        row("submit latency (gsub), median", "ms", **per_peer(r, "median_ms"),
            note="live heartbeat, daemon frozen" if live else
            "gsub saw no live host (warned): not its usual path"),
        row("submit latency (gsub), p90", "ms", **per_peer(r, "p90_ms")),
        row("durable floor (bench/floor.sh), median", "ms", fl, tsp,
            note="issue 13's 10-line dash submit"),
        row("durable floor, p90", "ms", dig(r, "durable_floor", "p90_ms"),
            dig(r, "tsp", "p90_ms")),
        row("gsub / durable floor (medians)", "x", gsub / fl if gsub and fl else None,
            ratio=False, target=f"<= {FLOOR_TARGET:g}x floor",
            check=lambda v, _q: v <= FLOOR_TARGET),
        row("fork+exec /bin/true", "ms", floor, floor, floor, ratio=False,
            note="same for every tool"),
        row("dash -c : (a shell starts)", "ms", dig(r, "sh_floor", "median_ms"), tsp,
            note="gsub and the floor are sh scripts"),
    ]


def extra(r: dict) -> list[str]:
    parts = r.get("gsub_parts_ms") or {}
    return ["gsub's parts, each timed alone (median ms): "
            + "; ".join(f"{k} {v:.2f}" for k, v in parts.items())] if parts else []
