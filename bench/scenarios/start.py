"""Submit -> start: from the submit command's start until the job's first instruction.

How: the job is `sh -c 'date +%s.%N > FILE'`; latency = that timestamp minus
the wall clock just before the submit command started. One job at a time
(the first is a warm-up), each submitted 0.05-0.75 s (random) after the
previous one ended, so that samples fall at every phase of the daemon's
timers. spoold: 4 fake GPUs, `gsub -n 1`; tsp: its server up; nq.
"""

from __future__ import annotations

import random
import subprocess
import time

from harness import Ctx, log, read_stamp, stamp_job, summary_ms, wait_for
from instance import Spoold
from peers import Nq, Tsp
from report import per_peer, ratio_at_most, row

NAME = "start"


def measure(ctx: Ctx, name: str, env: dict, submit, after, wait_stamp=None) -> dict:
    """submit(argv) -> command; after(stdout of the submit) waits for that job's end;
    wait_stamp(stdout, mark) waits for the job's stamp (default: poll the file)."""
    rnd = random.Random(7)
    lat = []
    for i in range(ctx.cfg["start_n"] + 1):  # the first is a warm-up
        mark = ctx.path(f"start-{name}-{i}")
        t0 = time.time()
        r = subprocess.run(submit(stamp_job(mark)), env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=30, cwd=ctx.tmp)
        if r.returncode != 0:
            raise RuntimeError(f"{name} submit failed: {r.stderr.decode()[-300:]}")
        if wait_stamp:
            stamp = wait_stamp(r.stdout.decode().strip(), mark)
        else:
            stamp, _ = wait_for(lambda m=mark: read_stamp(m), 30, what=f"{name} job start")
        after(r.stdout.decode().strip())
        if i:
            lat.append(stamp - t0)
        time.sleep(rnd.uniform(0.05, 0.75))  # gaps of all sizes, no phase lock with timers
    return summary_ms(lat)


def run(ctx: Ctx) -> dict:
    log(f"submit->start latency: {ctx.cfg['start_n']} jobs per tool, one at a time")
    out = {}
    sp = Spoold(ctx, "start", 4)
    sp.start()
    try:
        out["spoold"] = measure(
            ctx, "spoold", sp.env, lambda argv: sp.submit_cmd(argv, gpus=1),
            lambda jid: wait_for(lambda: sp.finished(jid), 30, 0.002, "spoold job end"),
            sp.wait_stamp)
    finally:
        sp.stop()
    if ctx.tools["tsp"]:
        ts = Tsp(ctx.tools["tsp"], ctx.path("start-tsp"))
        ts.start()
        try:
            out["tsp"] = measure(ctx, "tsp", ts.env, ts.submit_cmd, ts.wait_id)
        finally:
            ts.stop()
    if ctx.tools["nq"]:
        nq = Nq(ctx.tools["nq"], ctx.path("start-nq"))
        out["nq"] = measure(ctx, "nq", nq.env, nq.submit_cmd, lambda _jid: nq.wait_all(30))
    return out


def rows(r: dict, ctx: Ctx) -> list[dict]:
    return [
        row("submit->start, median", "ms", **per_peer(r, "median_ms"), target="<= 1.7x tsp",
            check=ratio_at_most(1.7)),
        row("submit->start, p90", "ms", **per_peer(r, "p90_ms")),
    ]
