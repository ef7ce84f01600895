"""Throughput with one submit command for many jobs: `gsub --array 1-N`, against tsp.

How: as the throughput scenario (4 fake GPUs, N trivial one-GPU jobs `true`,
time from the submit until every job is recorded, the daemon's CPU per job
from /proc), but all N jobs come from a single `gsub --array 1-N`, so gsub's
per-process cost is paid once and what is left is mostly the daemon's.

The peers have no arrays; the ratio is taken against tsp running the same N
jobs one `tsp` each (issue 13 compares the two so): tsp's number from the
throughput scenario of the same run when it ran (same N), else tsp is run
here the same way.
"""

from __future__ import annotations

from harness import Ctx, log
from instance import Spoold
from report import dig, ratio_at_least, row

from scenarios.throughput import SLOTS, cpu_rows, run_tsp, spoold_batch

NAME = "array"
TARGET = 0.7  # issue 13: >= 0.7x tsp


def run(ctx: Ctx) -> dict:
    n = ctx.cfg["tput_n"]
    log(f"array throughput: {n} trivial jobs from one gsub --array, {SLOTS} slots")
    out = {}
    tsp = dig(ctx.results, "throughput", "tsp")
    if tsp and tsp.get("n") == n:
        out["tsp"] = tsp | {"from": "the throughput scenario of this run"}
    elif ctx.tools["tsp"]:
        out["tsp"] = run_tsp(ctx, n, "array") | {"from": "run here"}

    def submit_all(sp: Spoold) -> None:
        ids = sp.submit(["true"], 1, ("--array", f"1-{n}")).split()
        if len(ids) != n:
            raise RuntimeError(f"gsub --array 1-{n} printed {len(ids)} ids")

    out["spoold"] = spoold_batch(ctx, "array", n, submit_all)
    return out


def rows(r: dict, ctx: Ctx) -> list[dict]:
    sp = r.get("spoold")
    n = dig(sp, "n") or "N"
    return [
        row(f"throughput, {n} jobs from one gsub --array", "jobs/s", dig(sp, "jobs_per_s"),
            dig(r, "tsp", "jobs_per_s"), target=f">= {TARGET:g}x tsp",
            check=ratio_at_least(TARGET), note="tsp: the same jobs, one tsp each"),
        row("  of which submitting (one gsub)", "s", dig(sp, "submit_s"), ratio=False),
        *cpu_rows(sp),
        row("peak RSS of the daemon (array run)", "MB", dig(sp, "daemon_hwm_mb"), ratio=False),
    ]
