"""ghist: finished jobs (read-only, except ``--clean``), and ``--timeline``.

Owns: ``history`` (the --json list, schema in docs/json.md), its table
(``-l``: with what each job used), the per-user summary (``--users``), the
GPU timeline and cleaning old records.

Invariants: rows are sorted by end time then id; user names come from uids;
every user-controlled text is escaped before it is printed; a failure to
remove a record is one line and exit 1, with what was removed so far. A
usage figure the record does not carry is absent (shown as ``-``), never
guessed; the STATE column is the record's ``outcome:`` in capitals (as
sacct), else the folder (records of older daemons). A job handed to SLURM
(``spoold --executor slurm``) shows its SLURM id, and its WAIT is the time
SLURM queued it (``started_at - slurm_queued_at``); other jobs wait from
submission. The SLURMID and WAIT columns appear only when a row was handed to
SLURM, so a local spool's table is as it always was.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import textwrap
import time

from . import job as jobmod
from . import spool as spoolmod
from .gstat import snapshot
from .spool import Spool
from .toolbase import (
    command_text,
    esc,
    fail,
    ints,
    json_text,
    num,
    open_spool,
    read_owned,
    slurm_view,
    spool_arg,
    table,
    tty_width,
    user_arg,
    user_name,
    when,
)
from .util import fmt_duration, parse_duration


def history(sp: Spool, states: tuple[str, ...], user: str | None = None,
            since: float | None = None) -> list[dict]:
    rows = []
    for d in states:
        for job_id in sp.list_ids(d):
            rec, uid = read_owned(sp.record(d, job_id))
            if rec is None:
                rec = {"id": job_id, "reason": "unreadable"}
            name = user_name(uid, rec.get("user")) if uid is not None else ""
            if user and name != user:
                continue
            ended, started = num(rec.get("ended_at")), num(rec.get("started_at"))
            if since and (ended or 0) < since:
                continue
            code, outcome, held = rec.get("exit_code"), rec.get("outcome"), rec.get(
                "assigned_gpus")
            slurm = slurm_view(rec)
            rows.append({"id": job_id, "state": d,
                         "outcome": outcome if isinstance(outcome, str) else None,
                         "exit_code": code if isinstance(code, int) else None,
                         "name": str(rec.get("name") or ""), "user": name,
                         "gpus": rec.get("gpus", jobmod.DEFAULT_GPUS),
                         "assigned_gpus": ints(held) if isinstance(held, list) else None,
                         "mem": num(rec.get("mem")), "gpu_mem": num(rec.get("gpu_mem")),
                         "usage": usage_of(rec),
                         "host": rec.get("host"), "submitted_at": num(rec.get("submitted_at")),
                         "started_at": started, "ended_at": ended,
                         "elapsed": ended - started if started and ended else None,
                         "wait": wait_of(started, slurm["slurm_queued_at"],
                                         num(rec.get("submitted_at"))),
                         "slurm_id": slurm["slurm_id"],
                         "slurm_queued_at": slurm["slurm_queued_at"],
                         "reason": rec.get("reason"), "command": command_text(rec)})
    rows.sort(key=lambda r: (r["ended_at"] or 0, r["id"]))
    return rows


def wait_of(started, slurm_queued, submitted) -> float | None:
    """How long it waited to start: in SLURM's queue (from the handoff) when it
    was handed to SLURM, else from submission; None if it never started."""
    since = slurm_queued or submitted
    return max(0.0, started - since) if started and since else None


USAGE_KEYS = ("cpu_s", "max_rss_mib", "gpu_mem_peak_mib", "gpu_util_mean", "energy_j")


def usage_of(rec: dict) -> dict:
    """The record's ``usage:`` figures that are numbers >= 0 (unknown: absent)."""
    usage = rec.get("usage")
    if not isinstance(usage, dict):
        return {}
    return {k: v for k in USAGE_KEYS if (v := num(usage.get(k))) is not None and v >= 0}


def render_ghist(rows: list[dict], width: int = 100, long: bool = False) -> str:
    """The table; ``long`` (-l) adds what each job used: CPU time, peak RAM and
    peak GPU memory (over what it booked), mean GPU utilization."""
    usage_cols = ["CPU", "MAXRSS", "GPUMEM", "GPUUTIL", "ENERGY"] if long else []
    # SLURM's columns only where a row was handed to SLURM (a local table stays as it was).
    sid = any(r.get("slurm_id") for r in rows)
    waits = any(r.get("slurm_queued_at") for r in rows)
    cells = [["ID", *(["SLURMID"] if sid else []), "STATE", "EXIT", "NAME", "USER", "GPUS",
              "ENDED", *(["WAIT"] if waits else []), "ELAPSED", *usage_cols, "COMMAND/REASON"]]
    for r in rows:
        gp = ",".join(map(str, r["assigned_gpus"] or [])) or "-"
        state = r["outcome"].upper() if r.get("outcome") else r["state"]
        cells.append([r["id"], *([r.get("slurm_id") or "-"] if sid else []), state,
                      "-" if r["exit_code"] is None else r["exit_code"],
                      r["name"][:20], r["user"][:12], gp, when(r["ended_at"]),
                      *([fmt_duration(r.get("wait"))] if waits else []),
                      fmt_duration(r["elapsed"]), *(_usage_cells(r) if long else []),
                      r["reason"] if r["state"] != "done" and r["reason"] else r["command"]])
    return "\n".join(table(cells, width)) + "\n"


def _size(mib) -> str:
    return "-" if mib is None else f"{mib:.0f}M" if mib < 1024 else f"{mib / 1024:.1f}G"


def _energy(joules) -> str:
    if joules is None:
        return "-"
    for unit, size in (("MJ", 1e6), ("kJ", 1e3)):
        if joules >= size:
            return f"{joules / size:.1f}{unit}"
    return f"{joules:.0f}J"


def _usage_cells(r: dict) -> list[str]:
    u = r.get("usage") or {}
    cpu, util = u.get("cpu_s"), u.get("gpu_util_mean")
    rss, gmem = _size(u.get("max_rss_mib")), _size(u.get("gpu_mem_peak_mib"))
    return ["-" if cpu is None else f"{cpu:.1f}s" if cpu < 60 else fmt_duration(cpu),
            f"{rss}/{_size(r['mem'])}" if r.get("mem") else rss,
            f"{gmem}/{_size(r['gpu_mem'])}" if r.get("gpu_mem") else gmem,
            "-" if util is None else f"{util:.0f}%", _energy(u.get("energy_j"))]


# ---- ghist --users ------------------------------------------------------------------------

def users_summary(rows: list[dict]) -> list[dict]:
    """Per user, over finished-job rows (``history``), most GPU-hours first:
    jobs; GPU-hours (each job's elapsed time x the GPUs it held, a
    ``--gpu-mem`` slice counting as its GPU, as fair share counts it); failed
    (in failed/: every outcome but completed and cancelled); cancelled; and
    the mean wait from submission to start of the jobs that started (None if
    none did). Records this user may not read count under ``?``."""
    by: dict[str, dict] = {}
    waits: dict[str, list[float]] = {}
    for r in rows:
        name = r["user"] or "?"
        u = by.setdefault(name, {"user": name, "jobs": 0, "gpu_hours": 0.0, "energy_j": 0.0,
                                 "failed": 0, "cancelled": 0, "mean_wait": None})
        u["energy_j"] += (r.get("usage") or {}).get("energy_j") or 0.0
        u["jobs"] += 1
        u["gpu_hours"] += max(0.0, r["elapsed"] or 0.0) * len(r["assigned_gpus"] or ()) / 3600
        u["failed"] += r["state"] == "failed"
        u["cancelled"] += r["state"] == "cancelled"
        if r["started_at"] and r["submitted_at"]:
            waits.setdefault(name, []).append(max(0.0, r["started_at"] - r["submitted_at"]))
    for name, w in waits.items():
        by[name]["mean_wait"] = sum(w) / len(w)
    return sorted(by.values(), key=lambda u: (-u["gpu_hours"], u["user"]))


def render_users(summary: list[dict], since: float | None, width: int = 100) -> str:
    cells = [["USER", "JOBS", "GPU-HOURS", "ENERGY", "FAILED", "CANCELLED", "MEAN-WAIT"]]
    cells += [[u["user"], u["jobs"], f"{u['gpu_hours']:.2f}", _energy(u["energy_j"] or None),
               u["failed"], u["cancelled"], fmt_duration(u["mean_wait"])] for u in summary]
    total = (f"# {len(summary)} user(s), {sum(u['jobs'] for u in summary)} job(s), "
             f"{sum(u['gpu_hours'] for u in summary):.2f} GPU-hours, "
             + (f"ended since {when(since)}" if since else "all finished records"))
    return "\n".join([*table(cells, width), total[:width]]) + "\n"


def clean(sp: Spool, rows: list[dict], older_than: float | None) -> int:
    """Remove the finished jobs of ``rows`` that ended before the cutoff
    (``Spool.delete_finished``: kept original and log, then the record)."""
    cutoff = time.time() - (older_than or 0)
    gone = 0
    for r in rows:
        if (r["ended_at"] or 0) > cutoff:
            continue
        try:
            sp.delete_finished(r["state"], r["id"])
        except PermissionError as e:
            return fail("ghist", f"cannot remove {esc(e.filename)}: permission denied (records "
                        f"of a shared spool are root's; ask root); removed {gone} record(s)")
        gone += 1
    print(f"removed {gone} finished record(s)", file=sys.stderr)
    return 0


def time_span(text: str) -> int:
    """A --since or --older-than length of time: gsub's -t forms, but not
    'infinite' (no time ago is infinitely long)."""
    seconds = parse_duration(text)
    if seconds is None:
        raise ValueError(f"not a length of time: {text!r}")
    return seconds


def _since(text: str) -> float:
    """'2h' (ago) or an ISO date/time."""
    with contextlib.suppress(ValueError):
        return time.time() - time_span(text)
    from datetime import datetime

    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration or date: {text!r} (e.g. 2h, 7d, 2026-11-20)") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="ghist", description="Finished jobs, oldest first (done only unless -f).",
        epilog="Examples: ghist -n 5 | ghist -f --since 1d | ghist -l | ghist --json | "
               "ghist --users --since 7d | ghist --clean --older-than 7d")
    spool_arg(ap)
    ap.add_argument("-f", "--failed", action="store_true", help="include failed and cancelled")
    ap.add_argument("-n", type=int, default=None, metavar="N", help="only the last N")
    user_arg(ap)
    ap.add_argument("--since", type=_since, help="ended within this long (2h) or since a date")
    ap.add_argument("--json", action="store_true", help="machine-readable (docs/json.md)")
    ap.add_argument("-l", "--long", action="store_true",
                    help="also what each job used: CPU time, peak RAM and GPU memory (over "
                         "what it booked), mean GPU utilization")
    ap.add_argument("--users", action="store_true",
                    help="one line per user: jobs, GPU-hours, failed, cancelled, mean wait "
                         "(all finished jobs; with --since, those that ended since)")
    ap.add_argument("--clean", action="store_true",
                    help="delete finished records (and their logs) instead of listing them")
    ap.add_argument("--older-than", type=time_span, default=None, metavar="DURATION",
                    help="with --clean: only records that ended more than this long ago")
    ap.add_argument("--timeline", nargs="?", const=6.0, type=float, metavar="HOURS",
                    help="draw which job held which GPU over the last HOURS (6)")
    ap.add_argument("--width", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.n is not None and a.n < 0:
        ap.error(f"-n takes a count of jobs, 0 or more, not {a.n}")
    if a.older_than is not None and not a.clean:
        ap.error("--older-than applies only to --clean (ghist --clean --older-than 7d)")
    sp = open_spool(a.spool, "ghist")
    tty = sys.stdout.isatty()
    if a.timeline:
        now = time.time()
        rows, gpus = timeline_rows(sp, now)
        sys.stdout.write(render_timeline(rows, gpus, now, a.timeline,
                                         a.width or (tty_width() if tty else 100)))
        return 0
    if a.users:
        if a.clean:
            ap.error("--users only counts: it does not go with --clean")
        summary = users_summary(history(sp, spoolmod.FINAL_DIRS, a.user, a.since))
        sys.stdout.write(json_text(summary) if a.json else render_users(
            summary, a.since, a.width or (tty_width() if tty else 10_000)))
        return 0
    states = spoolmod.FINAL_DIRS if a.failed or a.clean else ("done",)
    rows = history(sp, states, a.user, a.since)
    if a.clean:
        return clean(sp, rows, a.older_than)
    if a.n is not None:
        rows = rows[-a.n:] if a.n > 0 else []
    if a.json:
        sys.stdout.write(json_text(rows))
    else:
        sys.stdout.write(render_ghist(rows, a.width or (tty_width() if tty else 10_000),
                                      a.long))
    return 0


# ---- ghist --timeline -------------------------------------------------------------------

_SYMBOLS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def render_timeline(rows: list[dict], gpus: list[int], now: float, hours: float,
                    width: int = 100) -> str:
    """Which job held which GPU over the last ``hours``: one line per GPU. Every
    job gets at least one cell (``_cell_owners``); a cell that jobs too short
    to tell apart share shows ``+``, and a last line counts the jobs hidden so."""
    label = 6
    cols = max(10, width - label - 2)
    start = now - hours * 3600
    step = (now - start) / cols
    spans = [r for r in rows if r.get("assigned_gpus") and r.get("started_at")
             and (r.get("ended_at") or now) >= start]
    spans.sort(key=lambda r: (r["started_at"], r["id"]))
    owners = _cell_owners(spans, gpus, start, step, cols)
    drawn = {i for line in owners.values() for i in line}
    shown = [r for r in spans if r["id"] in drawn]
    sym = {r["id"]: _SYMBOLS[i % len(_SYMBOLS)] for i, r in enumerate(shown)}
    sym[None], sym[_SEVERAL] = ".", "+"
    left = f"-{hours:g}h"
    out = [f"{'':{label}}|{left}{'now'.rjust(cols - len(left))}|"]
    out += [f"{'GPU' + esc(g):<{label}}|{''.join(sym[i] for i in owners[g])}|" for g in gpus]
    legend = [f"{sym[r['id']]}={r['id']} {esc(r.get('name') or '')} "
              f"({esc(r.get('state', 'running'))})" for r in shown]
    line = "jobs:"
    for item in legend:
        if len(line) + len(item) + 2 > width:
            out.append(line)
            line = "     "
        line += "  " + item
    hidden = [r["id"] for r in spans if r["id"] not in drawn]
    if legend or not hidden:
        out.append(line if legend else "jobs:  none in this window")
    if hidden:
        ids = ", ".join(map(str, hidden[:10])) + (", ..." if len(hidden) > 10 else "")
        out += textwrap.wrap(
            f"+ = {len(hidden)} job(s) not drawn, shorter than a cell ({fmt_duration(step)}) "
            f"and sharing it: {ids}; a shorter --timeline draws them", width,
            initial_indent="       " if legend else "jobs:  ", subsequent_indent="       ")
    return "\n".join(out) + "\n"


_SEVERAL = -1  # a cell that several jobs too short to tell apart share


def _cell_owners(spans: list[dict], gpus: list[int], start: float, step: float,
                 cols: int) -> dict[int, list[int | None]]:
    """Per GPU, what each cell shows: a job id, None (idle) or ``_SEVERAL``.
    A job covers at least one cell. Where jobs meet in a cell, the one with
    the fewest cells keeps it, so a short job is never painted over by a long
    one; one-cell jobs that meet make the cell ``_SEVERAL``; of longer jobs
    of one length, the later one keeps it."""
    best: dict[int, list[tuple[int, int] | None]] = {g: [None] * cols for g in gpus}
    end = start + step * cols  # now
    for r in spans:
        lo = min(cols - 1, max(0, int((max(r["started_at"], start) - start) / step)))
        hi = int((min(r.get("ended_at") or end, end) - start) / step)
        cells = range(lo, min(cols, max(hi, lo + 1)))
        n = len(cells)
        for g in r["assigned_gpus"]:
            for c in cells if g in best else ():
                held = best[g][c]
                if held is None or n < held[0] or (n == held[0] > 1):
                    best[g][c] = (n, r["id"])
                elif n == held[0] == 1:
                    best[g][c] = (1, _SEVERAL)
    return {g: [None if b is None else b[1] for b in line] for g, line in best.items()}


def timeline_rows(sp: Spool, now: float) -> tuple[list[dict], list[int]]:
    rows = history(sp, spoolmod.FINAL_DIRS)
    snap = snapshot(sp, now=now, shown=0)  # (its GPUs and running jobs: no pending file read)
    for r in snap["running"]:
        rows.append({**r, "state": "running", "ended_at": None})
    gpus = sorted({g["index"] for g in snap["gpus"] if isinstance(g.get("index"), int)}
                  | {g for r in rows for g in r.get("assigned_gpus") or []
                     if isinstance(g, int)})
    return rows, gpus
