"""Throughput with one submit command for many jobs: `gsub --array 1-N`.

How: as the throughput scenario (4 fake GPUs, trivial one-GPU jobs `true`,
time from the submit until every job is recorded, the daemon's CPU per job
from /proc), but all N jobs come from a single `gsub --array` run, so gsub's
per-process cost is paid once and what is left is mostly the daemon's. The
peers have no array submission; their columns stay empty.
"""

from __future__ import annotations

from harness import Ctx, log
from instance import Spoold
from report import dig, row

from scenarios.throughput import SLOTS, cpu_rows, spoold_batch

NAME = "array"


def run(ctx: Ctx) -> dict:
    n = ctx.cfg["array_n"]
    log(f"array throughput: {n} trivial jobs from one gsub --array, {SLOTS} slots")

    def submit_all(sp: Spoold) -> None:
        ids = sp.submit(["true"], 1, ("--array", f"1-{n}")).split()
        if len(ids) != n:
            raise RuntimeError(f"gsub --array 1-{n} printed {len(ids)} ids")

    return {"spoold": spoold_batch(ctx, "array", n, submit_all)}


def rows(r: dict, ctx: Ctx) -> list[dict]:
    sp = r.get("spoold")
    return [
        row(f"throughput, {dig(sp, 'n') or 'N'} jobs of one gsub --array", "jobs/s",
            dig(sp, "jobs_per_s"), ratio=False, note="no peer has arrays"),
        row("  of which submitting (one gsub)", "s", dig(sp, "submit_s"), ratio=False),
        *cpu_rows(sp),
        row("peak RSS of the daemon (array run)", "MB", dig(sp, "daemon_hwm_mb"), ratio=False),
    ]
