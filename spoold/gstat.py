"""gstat: what runs where, what waits and why (read-only; never asks the daemon).

Owns: ``snapshot`` (the --json object, schema in docs/json.md) and its table.

Invariants:
- Every running job is listed and its GPUs shown as held, also to users who
  may not read its record (a shared spool keeps records 0640 to the owner's
  group): then the row comes from the host's heartbeat ``jobs:`` list, which
  the daemon publishes world-readable with no private field, and is marked
  ``private``. A heartbeat without ``jobs:`` (older daemon) still works: the
  row then shows only the id.
- User names come from uids (``toolbase.read_owned``), never from ``user:``.
- Every row starts with the job id (GPU, share and header rows aside), so
  ``awk '$1==7'`` works; colour only on a terminal; user text is escaped.
- Waits are explained the way the daemon decides (``gqueue.explain``): its
  per-user caps and, in a shared spool, its effective priorities and
  fair-share order, all from what the heartbeat's ``shares:`` publishes and
  root's overrides in ``state/priority/`` (read with
  ``policy.Shares.overrides``, the daemon's own reader). Pending rows are
  listed in that order.
- A long queue costs its names, not its files (``gqueue``): the table lists
  the first ``PENDING_SHOWN`` (500) pending jobs exactly as ``gstat --all``
  lists them and one line counts the rest (``... and 99,500 more pending
  (alice 60,000, bob 39,500): gstat --all lists them``; owners where the
  spool is shared); a queue of at most 500 is listed as it always was.
  ``--json`` lists every pending job in queue order: the first 500 with
  every field, the others *unread* (``name`` null; only ``id``,
  ``priority``, ``effective_priority``, ``user`` where known, and
  ``reason`` ``gqueue.UNREAD``), so ``jq '.pending | length'`` and
  ``.pending[].id`` stay complete; ``--all`` reads every file for both.
- SLURM's view (``spoold --executor slurm``, docs/slurm.md): running/ holds
  every job handed to SLURM. One SLURM still queues (``slurm_state`` PENDING)
  is not running: it stays in the JSON's ``running`` list (it is in running/)
  with no GPUs, CPUs, start or elapsed time, and the table lists it under
  ``# queued in SLURM`` with SLURM's reason. Elapsed time counts from
  ``started_at``, which the bridge sets to SLURM's real start.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import sys
import time

from . import job as jobmod
from .gqueue import (
    PENDING_SHOWN,
    Queue,
    Waiting,
    explain,
    merged_shares,
    pending_view,
    read_rows,
)
from .scheduler import running_of
from .spool import Spool
from .toolbase import (
    SLURM_STATE_QUEUED,
    Color,
    command_text,
    esc,
    hosts_view,
    ints,
    json_text,
    num,
    open_spool,
    read_owned,
    slurm_view,
    slurm_why,
    spool_arg,
    table,
    tty_width,
    user_arg,
    user_name,
)
from .util import fmt_duration, natural, positive


def snapshot(sp: Spool, user: str | None = None, now: float | None = None,
             shown: int | None = PENDING_SHOWN, unread_rows: bool = True) -> dict:
    """Everything gstat shows, as plain data (the --json output); pending
    files are read for the first ``shown`` pending jobs only (None: all).
    ``unread_rows`` False (the table's): the other pending jobs are not
    listed but counted by owner, in ``unread`` (None: owner not looked up)."""
    now = time.time() if now is None else now
    hosts = hosts_view(sp, now)
    live = [h for h in hosts if h["alive"]] or hosts
    gsnap = live[0]["beat"] if live else {}
    running, bookings = running_view(sp, hosts, now)
    holders: dict[tuple, list[int]] = {}
    for host, b in bookings:
        for g in b.gpus:
            holders.setdefault((host, g), []).append(b.id)
    gpus = [{**g, "host": h["host"], "jobs": holders.get((h["host"], g.get("index")), [])}
            for h in hosts for g in h["beat"].get("gpus") or [] if isinstance(g, dict)]
    shares = merged_shares(live)
    waiting = Waiting(sp, Queue(sp, shares), now, shown, owners=bool(user))
    pending, unread = pending_view(waiting, user, shown, unread_rows)
    explain(waiting, live, pending, running, bookings, shown)
    if user:
        running = [r for r in running if r["user"] == user]  # (pending_view kept user's only)
        shares = [s for s in shares if s["user"] == user]
    pid = next((h["pid"] for h in hosts if h["alive"]), None)
    more = {} if unread_rows else {"unread": unread}
    return {**more, "spool": str(sp.root), "time": now, "host": gsnap.get("host"),
            "daemon": {"running": pid is not None, "pid": pid},
            "hosts": [{k: v for k, v in h.items() if k != "beat"} for h in hosts],
            "paused": sp.paused_flag.exists(), "gpus": gpus, "running": running,
            "pending": pending, "shares": shares,
            "enforced": gsnap.get("enforced") or {},
            "limits": {"max_load": gsnap.get("max_load"), "max_memory": gsnap.get("max_memory"),
                       "cpus": gsnap.get("cpus"), "mem": gsnap.get("mem"),
                       "limit": gsnap.get("limit")}}


# ---- running --------------------------------------------------------------------------

def running_view(sp: Spool, hosts: list[dict], now: float) -> tuple[list[dict], list]:
    """Rows for running/, and each job's (host, Running booking)."""
    published = {e["id"]: (h["host"], e) for h in hosts for e in published_jobs(h["beat"])}
    rows, bookings = [], []
    for job_id in sp.list_ids("running"):
        path = sp.record("running", job_id)
        rec, uid = read_owned(path)
        if rec is None:
            if not os.path.lexists(path):
                continue  # it finished meanwhile
            host, entry = published.get(job_id, (None, {}))
            row = _private_row(job_id, host, entry, now)
            uid = natural(entry.get("uid"))
            rec = {"assigned_gpus": row["assigned_gpus"], "assigned_cpus": row["assigned_cpus"],
                   "gpu_mem": row["gpu_mem"], "mem": row["mem"],
                   "started_at": row["started_at"], "time_limit": row["time_limit"]}
        else:
            row = _running_row(job_id, rec, uid, now)
        if queued_in_slurm(row):  # SLURM has not started it: it holds nothing yet
            rec = {**rec, "assigned_gpus": [], "assigned_cpus": []}
        # What its processes hold on its GPUs now, if its daemon measures it
        # (the heartbeat's gpu_mem_mib; absent: not known, never a guess).
        row["gpu_mem_used"] = _mib(published.get(job_id, (None, {}))[1].get("gpu_mem_mib"))
        rows.append(row)
        owner = uid if isinstance(uid, int) else 0
        bookings.append((row["host"], dataclasses.replace(running_of(job_id, rec), owner=owner)))
    return rows, bookings


def published_jobs(beat: dict) -> list[dict]:
    """The heartbeat's ``jobs:`` entries that are well formed ([] if none)."""
    jobs = beat.get("jobs")
    return [e for e in jobs if isinstance(e, dict) and positive(e.get("id"))] if isinstance(
        jobs, list) else []


def _mib(v) -> int | float | None:
    """A MiB figure from a heartbeat: a finite number >= 0, else None."""
    v = num(v)
    return v if v is not None and v >= 0 else None


def _elapsed(started, now: float) -> float | None:
    return now - started if started else None


def queued_in_slurm(row: dict) -> bool:
    return row.get("slurm_state") == SLURM_STATE_QUEUED


def _with_slurm(row: dict, src: dict) -> dict:
    """``row`` with SLURM's view from its record or heartbeat entry; a job
    SLURM still queues has no GPUs, CPUs, start or elapsed time (the record's
    ``started_at`` is then the handoff, not a start)."""
    row.update(slurm_view(src))
    if queued_in_slurm(row):
        row.update(assigned_gpus=[], assigned_cpus=[], started_at=None, elapsed=None)
    return row


def _running_row(job_id: int, rec: dict, uid: int | None, now: float) -> dict:
    started = num(rec.get("started_at"))
    return _with_slurm({
        "id": job_id, "name": str(rec.get("name") or ""), "user": user_name(uid, rec.get("user")),
        "gpus": rec.get("gpus", jobmod.DEFAULT_GPUS),
        "assigned_gpus": ints(rec.get("assigned_gpus")),
        "gpu_mem": rec.get("gpu_mem"), "cpus": rec.get("cpus") or 0,
        "assigned_cpus": ints(rec.get("assigned_cpus")), "mem": rec.get("mem") or 0,
        "priority": rec.get("priority", jobmod.DEFAULT_PRIORITY), "host": rec.get("host"),
        "pid": rec.get("pid"), "started_at": started, "elapsed": _elapsed(started, now),
        "time_limit": num(rec.get("time_limit")), "command": command_text(rec),
        "killing": rec.get("kill_reason"), "private": False,
    }, rec)


def _private_row(job_id: int, host: str | None, e: dict, now: float) -> dict:
    """Another user's running job, from its host's heartbeat (empty: an older daemon)."""
    gpus, cpus, started = ints(e.get("gpus")), ints(e.get("cpus")), num(e.get("started_at"))
    uid = natural(e.get("uid"))
    return _with_slurm({
        "id": job_id, "name": str(e.get("name") or ""),
        "user": user_name(uid, e.get("user")) if e else "", "gpus": len(gpus) if e else None,
        "assigned_gpus": gpus, "gpu_mem": num(e.get("gpu_mem")), "cpus": len(cpus) if e else None,
        "assigned_cpus": cpus, "mem": num(e.get("mem")), "priority": None, "host": host,
        "pid": None, "started_at": started, "elapsed": _elapsed(started, now),
        "time_limit": num(e.get("time_limit")), "command": "", "killing": None, "private": True,
    }, e)


# ---- the table ----------------------------------------------------------------------------

def _bar(frac: float | None, width: int = 10) -> str:
    if frac is None:
        return "[" + "?" * width + "]"
    n = round(max(0.0, min(1.0, frac)) * width)
    return "[" + "#" * n + "." * (width - n) + "]"


def _gpu_line(g: dict, multi: bool, c: Color) -> str:
    mt, mu, ut = num(g.get("memory_total")), num(g.get("memory_used")), num(g.get("utilization"))
    mem = f"{mu / 1024:.1f}/{mt / 1024:.1f}G" if mt and mu is not None else "?/?G"
    util = f"{int(ut):3d}%" if ut is not None else "  ?%"
    who = ("job " + ",".join(map(str, g["jobs"]))) if g["jobs"] else esc(g.get("busy") or "free")
    state = c("32", "free") if not g["jobs"] and not g.get("busy") else (
        c("36", who) if g["jobs"] else c("31", who))
    index = esc(g.get("index"))
    name = f"{esc(g['host'])}:GPU{index}" if multi else f"GPU{index:<2}"
    return (f"{name} {_bar(ut / 100 if ut is not None else None)} {util} "
            f"{_bar(mu / mt if mt and mu is not None else None)} {mem:>11}  {state}")


def _gibs(mib) -> str:
    return f"{mib / 1024:.1f}G"


def _gpu_mem(r: dict) -> str:
    """GPU memory its processes use now, over its slice if it booked one: '3.1/4.0G'."""
    used, booked = r.get("gpu_mem_used"), r.get("gpu_mem")
    if not booked:
        return "-" if used is None else _gibs(used)
    return ("-" if used is None else f"{used / 1024:.1f}") + "/" + _gibs(booked)


def _prio(p: dict) -> str:
    """The priority it is scheduled at, and the file name's when that differs."""
    eff, asked = p.get("effective_priority", p["priority"]), p["priority"]
    return str(asked) if eff == asked else f"{eff} ({asked:04d} asked)"


def _hours(h) -> str:
    return "-" if h is None else f"{h:.1f}"


def _share_name(name: str) -> str:
    """A share row starts with a user name; a bare uid (no passwd entry) gets a
    prefix, so that ``awk '$1==7'`` still finds only job 7."""
    return f"uid:{name}" if name.isdigit() else name


def _cap(e: dict) -> str:
    caps = [f"{e[k]} {unit}" for k, unit in (("max_gpus", "GPUs"), ("max_cpus", "CPUs"))
            if e.get(k) is not None]
    return (", ".join(caps) or "none") + ("; admin" if e.get("admin") else "")


def _slurm_id(rows: list[dict]) -> tuple[list[str], object]:
    """The SLURMID header and cell maker: none unless a row has a SLURM id."""
    if not any(r.get("slurm_id") for r in rows):
        return [], lambda r: []
    return ["SLURMID"], lambda r: [r.get("slurm_id") or "-"]


def _running_table(rows: list[dict], width: int) -> list[str]:
    head, sid = _slurm_id(rows)
    cells = [["ID", *head, "NAME", "USER", "GPUS", "GPUMEM", "ELAPSED", "LIMIT", "COMMAND"]]
    for r in rows:
        gp = ",".join(map(str, r["assigned_gpus"])) or "-"
        command = "(private)" if r.get("private") else r["command"]
        state = r.get("slurm_state")  # SUSPENDED, COMPLETING, ...: said, as "[killing]" is
        flags = ("[killing] " if r["killing"] else "") + (
            f"[{state}] " if state and state != "RUNNING" else "")
        cells.append([r["id"], *sid(r), r["name"][:20], r["user"][:12], gp, _gpu_mem(r),
                      fmt_duration(r["elapsed"]), fmt_duration(r["time_limit"]),
                      flags + command])
    return table(cells, width) if rows else []


def _queued_table(rows: list[dict], now: float, width: int) -> list[str]:
    """Jobs handed to SLURM that it has not started: how long SLURM has held
    them (WAIT, from the handoff) and SLURM's reason; GPUS is what they ask."""
    cells = [["ID", "SLURMID", "NAME", "USER", "GPUS", "WAIT", "LIMIT", "REASON"]]
    for r in rows:
        queued_at = r.get("slurm_queued_at")
        gp = f"{r['gpu_mem']}M" if r.get("gpu_mem") else "-" if r["gpus"] is None else r["gpus"]
        cells.append([r["id"], r.get("slurm_id") or "-", r["name"][:20], r["user"][:12], gp,
                      fmt_duration(now - queued_at if queued_at else None),
                      fmt_duration(r["time_limit"]), slurm_why(r)])
    return table(cells, width)


def _more_pending(unread: collections.Counter) -> str:
    """The line that counts the pending jobs not listed, by owner where known."""
    owners = [(u, n) for u, n in unread.most_common() if u is not None]
    whose = ", ".join(f"{esc(u)} {n:,}" for u, n in owners[:5]) + (
        ", ..." if len(owners) > 5 else "")
    return (f"... and {unread.total():,} more pending" + (f" ({whose})" if whose else "")
            + ": gstat --all lists them")


def render_gstat(snap: dict, width: int = 100, color: Color | None = None) -> str:
    c = color or Color(False)
    lines = []
    if not snap["daemon"]["running"]:
        lines.append(c("33", "# spoold is not running on this spool: nothing will start"))
    if snap["paused"]:
        lines.append(c("33", "# queue paused (gresume): running jobs continue"))
    multi = len(snap.get("hosts") or []) > 1
    if multi:
        lines.append("# hosts: " + ", ".join(
            f"{esc(h['host'])} ({'up' if h['alive'] else 'LOST' if h['lost'] else 'down'}, "
            f"{fmt_duration(h['heartbeat_age'])} ago)" for h in snap["hosts"]))
    lines += [_gpu_line(g, multi, c) for g in snap["gpus"]]
    if snap["gpus"]:
        lines.append("")
    running = [r for r in snap["running"] if not queued_in_slurm(r)]
    queued = [r for r in snap["running"] if queued_in_slurm(r)]
    lines.append(c("1", f"# running: {len(running)}"))
    lines += _running_table(running, width)
    if queued:
        lines.append(c("1", f"# queued in SLURM: {len(queued)}"))
        lines += _queued_table(queued, snap["time"], width)
    rows = [["ID", "PRIO", "NAME", "USER", "GPUS", "WAIT", "REASON"]]
    listed = snap["pending"][:read_rows(snap["pending"])]
    unread = snap.get("unread", collections.Counter(p["user"] for p in snap["pending"][
        len(listed):]))
    for p in listed:
        gp = f"{p['gpu_mem']}M" if p.get("gpu_mem") else str(p["gpus"])
        rows.append([p["id"], _prio(p), (p["name"] or "")[:20], (p["user"] or "")[:12], gp,
                     fmt_duration(p.get("wait")), p["reason"]])
    lines.append(c("1", f"# pending: {len(listed) + unread.total()}"))
    lines += table(rows, width) if len(rows) > 1 else []
    if unread.total():
        lines.append(_more_pending(unread))
    if snap.get("shares"):
        lines.append(c("1", "# shares (USAGE: GPU-hours, decayed; RANK 1 goes next within a "
                            "priority)"))
        lines += table([["USER", "GPUS", "USAGE", "RANK", "CAP"]] + [
            [_share_name(e["user"]), e["gpus"], _hours(e["usage_gpu_h"]),
             "-" if e["rank"] is None else e["rank"], _cap(e)] for e in snap["shares"]], width)
    if snap.get("enforced"):
        lines.append("# enforced: " + "; ".join(f"{esc(k)}: {esc(v)}"
                                                 for k, v in snap["enforced"].items()))
    if not c.on:  # (colour codes would be cut in the middle)
        lines = [line[:width].rstrip() for line in lines]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="gstat", description="What runs where, what waits and why.",
        epilog="Examples: gstat | gstat --json | jq '.pending[].id' | gstat -u alice | "
               "gstat -u | gstat --watch 2 | gstat | awk '$1==7'")
    spool_arg(ap)
    ap.add_argument("--json", action="store_true", help="machine-readable (docs/json.md)")
    user_arg(ap)
    ap.add_argument("-a", "--all", action="store_true",
                    help=f"read and list every pending job (default: the first "
                         f"{PENDING_SHOWN:,} in queue order; the rest are counted)")
    ap.add_argument("--watch", nargs="?", const=2.0, type=float, metavar="SECONDS",
                    help="redraw every SECONDS (2) until Ctrl-C")
    a = ap.parse_args(argv)
    sp = open_spool(a.spool, "gstat")
    tty = sys.stdout.isatty()
    while True:
        snap = snapshot(sp, a.user, shown=None if a.all else PENDING_SHOWN,
                        unread_rows=a.json)
        if a.json:
            out = json_text(snap)
        else:
            width = tty_width() if tty else 10_000
            out = render_gstat(snap, width, Color(tty and not os.environ.get("NO_COLOR")))
        if not a.watch:
            sys.stdout.write(out)
            return 0
        if tty:
            sys.stdout.write("\033[H\033[2J")
        sys.stdout.write(out)
        sys.stdout.flush()
        time.sleep(a.watch)
