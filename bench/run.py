#!/usr/bin/env python3
"""Benchmark spoold against task-spooler (tsp) and nq on identical work.

    python3 bench/run.py                  # full run, issue 13's sizes, ~5 minutes
    python3 bench/run.py --quick          # every scenario, smaller, ~1.5 minutes (CI)
    python3 bench/run.py --only start,scale
    python3 bench/run.py --profile cprofile   # every daemon profiled (timings inflated)

Runs the scenarios in bench/scenarios/ (each says what it measures and how)
against the real daemon and the real gsub of the tree under test, then
prints one table (ratios to tsp, PASS/MISS against issue 13's targets, as
listed in docs/performance.md) and writes bench/results/latest.json. Exit status: 0
when every scenario ran, 1 when one failed (the others still run), 2 when the
tree cannot be measured. Targets are never part of the exit status.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
import peers
import report
from harness import FULL, QUICK, Ctx, base_env, log
from scenarios import ALL

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples, 10k pending")
    ap.add_argument("--only", default=",".join(ALL),
                    help=f"comma-separated scenarios (default all: {','.join(ALL)})")
    ap.add_argument("--scale-n", type=int, default=None, help="pending jobs for the scale test")
    ap.add_argument("--dropped-n", type=int, default=None,
                    help="files dropped without ids for the dropped test")
    ap.add_argument("--profile", choices=("cprofile", "py-spy"), default=None,
                    help="profile every spoold; files go to bench/results/profiles/")
    ap.add_argument("--no-install", action="store_true", help="never apt-get the peers")
    ap.add_argument("--repo", type=Path, default=BENCH.parent,
                    help="the spoold tree to measure (default: this checkout), e.g. a clean "
                         "`git clone` of one commit; its spoold/ and bin/gsub are used")
    ap.add_argument("--tmpdir", type=Path, default=None,
                    help="where the private state of every tool goes (default: $TMPDIR or /tmp)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (debugging)")
    ap.add_argument("--json", type=Path, default=RESULTS / "latest.json", help="JSON output")
    a = ap.parse_args(argv)
    a.repo = a.repo.resolve()
    if not (a.repo / "spoold" / "daemon.py").exists() or not (a.repo / "bin" / "gsub").exists():
        ap.error(f"--repo {a.repo}: no spoold/daemon.py and bin/gsub there")
    a.only = [s.strip() for s in a.only.split(",") if s.strip()]
    unknown = sorted(set(a.only) - set(ALL))
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; there are {', '.join(ALL)}")
    if a.profile == "py-spy" and not shutil.which("py-spy"):
        ap.error("--profile py-spy: py-spy is not installed (pip install py-spy)")
    return a


def measure(ctx: Ctx, names: list[str]) -> tuple[dict, dict]:
    """Run the scenarios; one that fails is recorded and does not stop the others."""
    results, errors = {}, {}
    for name in names:
        t = time.perf_counter()
        try:
            results[name] = ctx.results[name] = ALL[name].run(ctx)
        except KeyboardInterrupt:
            raise
        except Exception as e:
            log(f"scenario {name} failed: {type(e).__name__}: {e}")
            errors[name] = f"{type(e).__name__}: {e}"
        finally:
            harness.cleanup(ctx)
        log(f"scenario {name}: {time.perf_counter() - t:.1f}s")
    return results, errors


def main(argv=None) -> int:
    a = parse_args(argv)
    harness.trap_signals()
    notes: list[str] = []
    if not a.no_install:
        peers.install(notes)
    tools = peers.find(notes)
    pre = subprocess.run([sys.executable, "-c", "import spoold.daemon"], capture_output=True,
                         env=base_env(PYTHONPATH=str(a.repo)), timeout=60)
    if pre.returncode != 0:
        print("bench: cannot import spoold.daemon (pip install -e . first?):\n"
              + pre.stderr.decode(errors="replace")[-800:], file=sys.stderr)
        return 2
    cfg = dict(QUICK if a.quick else FULL)
    if a.scale_n:
        cfg["scale_n"] = a.scale_n
    if a.dropped_n:
        cfg["dropped_n"] = a.dropped_n
    ctx = Ctx(repo=a.repo, tmp=Path(tempfile.mkdtemp(prefix="spoold-bench-", dir=a.tmpdir)),
              cfg=cfg, quick=a.quick, tools=tools, gsub_sh=shutil.which("dash") or "/bin/sh")
    if a.profile:
        ctx.profile, ctx.profile_dir = a.profile, RESULTS / "profiles"
        ctx.profile_dir.mkdir(parents=True, exist_ok=True)
        notes.append(f"profiled run ({a.profile}): timings are inflated; profiles in "
                     f"{ctx.profile_dir}")
    t_begin = time.perf_counter()
    try:
        meta = report.machine(ctx)
        meta["mode"] = ("quick" if a.quick else "full") + (
            f", profiled ({a.profile})" if a.profile else "")
        meta["scenarios"] = ",".join(a.only)
        meta["config"] = cfg
        log(f"temp dir {ctx.tmp}; mode {meta['mode']}")
        results, errors = measure(ctx, a.only)
    finally:
        harness.cleanup(ctx)
        if not a.keep_tmp:
            shutil.rmtree(ctx.tmp, ignore_errors=True)
    meta["elapsed_s"] = time.perf_counter() - t_begin
    meta["loadavg_after"] = os.getloadavg()
    rows, extra = [], []
    for name, r in results.items():
        rows += ALL[name].rows(r, ctx)
        extra += getattr(ALL[name], "extra", lambda _r: [])(r)
    report.emit(meta, notes, results, errors, rows, extra, a.json)
    return 1 if errors else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print(f"\nbench: interrupted ({sys.exc_info()[1] or 'Ctrl-C'}); every process it "
              "started was killed", file=sys.stderr)
        sys.exit(130)
