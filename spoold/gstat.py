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
- Waits are explained the way the daemon decides (``explain``): its per-user
  caps and, in a shared spool, its effective priorities and fair-share order,
  all from what the heartbeat's ``shares:`` publishes and root's overrides
  in ``state/priority/`` (read with ``policy.Shares.overrides``, the
  daemon's own reader). Pending rows are listed in that order.
- SLURM's view (``spoold --executor slurm``, docs/slurm.md): running/ holds
  every job handed to SLURM. One SLURM still queues (``slurm_state`` PENDING)
  is not running: it stays in the JSON's ``running`` list (it is in running/)
  with no GPUs, CPUs, start or elapsed time, and the table lists it under
  ``# queued in SLURM`` with SLURM's reason. Elapsed time counts from
  ``started_at``, which the bridge sets to SLURM's real start.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time

from . import job as jobmod
from . import spool as spoolmod
from .fairshare import Limit, effective_priority, queue_keys
from .hosts import resources_of
from .options import Options
from .policy import Shares
from .scheduler import request_of, running_of, schedule
from .spool import BadFile, Spool
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
    owner_of,
    read_owned,
    slurm_view,
    slurm_why,
    spool_arg,
    table,
    tty_width,
    user_arg,
    user_name,
)
from .util import fmt_duration

PRIVATE_PENDING = "another user's job (details private)"
NO_DAEMON = "no daemon"  # the reason of every pending job while no host's daemon is alive


def snapshot(sp: Spool, user: str | None = None, now: float | None = None) -> dict:
    """Everything gstat shows, as plain data (the --json output)."""
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
    queue = Queue(sp, shares)
    pending, requests = pending_view(sp, now, queue)
    explain(sp, live, pending, requests, running, bookings, now, queue)
    if user:
        running = [r for r in running if r["user"] == user]
        pending = [p for p in pending if p["user"] == user]
        shares = [s for s in shares if s["user"] == user]
    pid = next((h["pid"] for h in hosts if h["alive"]), None)
    return {"spool": str(sp.root), "time": now, "host": gsnap.get("host"),
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
            uid = _uid(entry.get("uid"))
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
    return [e for e in jobs if isinstance(e, dict) and _id(e.get("id"))] if isinstance(
        jobs, list) else []


def _id(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _uid(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


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
    uid = _uid(e.get("uid"))
    return _with_slurm({
        "id": job_id, "name": str(e.get("name") or ""),
        "user": user_name(uid, e.get("user")) if e else "", "gpus": len(gpus) if e else None,
        "assigned_gpus": gpus, "gpu_mem": num(e.get("gpu_mem")), "cpus": len(cpus) if e else None,
        "assigned_cpus": cpus, "mem": num(e.get("mem")), "priority": None, "host": host,
        "pid": None, "started_at": started, "elapsed": _elapsed(started, now),
        "time_limit": num(e.get("time_limit")), "command": "", "killing": None, "private": True,
    }, e)


# ---- pending --------------------------------------------------------------------------

def pending_view(sp: Spool, now: float, queue: Queue) -> tuple[list[dict], list]:
    """Rows for pending/ in the daemon's queue order (``Queue``), and the
    Requests of the readable ones."""
    rows, requests, owners = [], [], {}
    for p in sp.list_pending():
        if not p.has_id:
            continue
        path = sp.pending / p.name
        try:
            st = os.lstat(path)
            job = jobmod.parse(spoolmod.read_untrusted(path))
        except FileNotFoundError:
            continue  # started or cancelled meanwhile
        except PermissionError:  # another user's job in a shared spool: id and owner only
            row, owners[p.job_id] = _unreadable(sp, p, now, PRIVATE_PENDING)
            rows.append(row)
            continue
        except (OSError, BadFile, jobmod.JobError) as e:
            row, owners[p.job_id] = _unreadable(sp, p, now, f"bad file: {e}")
            rows.append(row)
            continue
        uid = owners[p.job_id] = owner_of(st.st_uid, job.data)
        submitted = num(job.get("submitted_at")) or st.st_mtime
        rows.append({
            "id": p.job_id, "name": job.name, "user": user_name(uid, job.get("user")),
            "gpus": job.gpus, "gpu_mem": job.gpu_mem or None, "cpus": job.cpus, "mem": job.mem,
            "priority": p.priority, "submitted_at": submitted, "wait": now - submitted,
            "time_limit": job.time_limit, "after": job.after, "held": job.hold,
            "command": command_text(job.data), "reason": None, "private": False,
        })
        requests.append(request_of(job, p.job_id, owner=uid))
    for r in rows:
        r["effective_priority"] = queue.priority(r["priority"], owners[r["id"]], r["id"])
    keys = queue.keys([(r["effective_priority"], owners[r["id"]], r["id"]) for r in rows])
    rows.sort(key=lambda r: keys[r["id"]])
    return rows, requests


def _unreadable(sp: Spool, p, now: float, reason: str) -> tuple[dict, int]:
    """The row of a job file that cannot be read, and its owner (-1: gone)."""
    try:
        st = os.lstat(sp.pending / p.name)
        uid, mtime = st.st_uid, st.st_mtime
    except OSError:
        uid, mtime = -1, now
    return {"id": p.job_id, "name": "", "user": user_name(uid) if uid >= 0 else "",
            "gpus": None, "gpu_mem": None, "cpus": None, "mem": None, "priority": p.priority,
            "submitted_at": mtime, "wait": now - mtime, "time_limit": None, "after": [],
            "held": False, "command": "", "reason": reason,
            "private": reason == PRIVATE_PENDING}, uid


def explain(sp: Spool, live: list[dict], pending: list[dict], requests: list, running: list,
            bookings: list, now: float, queue: Queue) -> None:
    """Fill in each pending row's reason: the queue as each live host's daemon
    sees it, in its order and with its per-user caps (a job starts if any host
    would start it; otherwise the first host's reason is shown)."""
    states = {**{r["id"]: "running" for r in running}, **{p["id"]: "pending" for p in pending}}
    prio = {p["id"]: p["effective_priority"] for p in pending}

    class Deps:
        def get(self, job_id, default=None):
            return states.get(job_id) or sp.where(job_id) or default

    if not any(h["alive"] for h in live):  # nothing starts: what a dead host said is moot
        for p in pending:
            p["reason"] = p["reason"] or NO_DAEMON
        return
    reasons: dict[int, str] = {}
    paused = sp.paused_flag.exists()
    for h in live or [{"host": None, "beat": {}}]:
        shares = published_shares(h["beat"])
        keys = queue.keys([(prio[r.id], r.owner, r.id) for r in requests], shares)
        res = dataclasses.replace(resources_of(h["beat"], h["host"], paused),
                                  limits=limits_of(shares))
        d = schedule(sorted(requests, key=lambda r: keys[r.id]),
                     [b for host, b in bookings if host == h["host"]], res, now, Deps())
        prefix = f"{h['host']}: " if len(live) > 1 else ""
        for s_ in d.start:
            reasons[s_.id] = "starting"
        for i, why in {**d.wait, **d.reject, **d.cancel}.items():
            if reasons.get(i) != "starting":
                reasons.setdefault(i, prefix + why)
    for p in pending:
        if p["reason"] is None:
            p["reason"] = reasons.get(p["id"], "starting")


# ---- fair share: the daemon's order and caps, from its heartbeat ---------------------------

def published_shares(beat: dict) -> list[dict]:
    """The heartbeat's ``shares:`` entries, each field checked ([] if none:
    not a shared spool, or an older daemon)."""
    shares = beat.get("shares")
    out = []
    for e in shares if isinstance(shares, list) else []:
        uid = _uid(e.get("uid")) if isinstance(e, dict) else None
        if uid is None:
            continue
        usage, rank = num(e.get("usage_gpu_h")), e.get("rank")
        out.append({"uid": uid, "user": user_name(uid, e.get("user")),
                    "gpus": _uid(e.get("gpus")) or 0,
                    "usage_gpu_h": usage if usage is not None and usage >= 0 else None,
                    "rank": rank if _id(rank) else None, "max_gpus": _uid(e.get("max_gpus")),
                    "max_cpus": _uid(e.get("max_cpus")), "admin": e.get("admin") is True})
    return out


def merged_shares(live: list[dict]) -> list[dict]:
    """One row per user over the live hosts, next in line first: GPUs held
    summed; usage, caps and admin from the first host that lists the user
    (every host computes them from the same records and policy); ranks
    follow usage, as each daemon ranks (None when fair share is off)."""
    merged: dict[int, dict] = {}
    for h in live:
        for e in published_shares(h["beat"]):
            if e["uid"] in merged:
                merged[e["uid"]]["gpus"] += e["gpus"]
            else:
                merged[e["uid"]] = e
    rows = sorted(merged.values(), key=lambda e: (
        e["usage_gpu_h"] or 0.0, e["rank"] or math.inf, e["uid"]))
    ranked = any(e["rank"] is not None for e in rows)
    for n, e in enumerate(rows, 1):
        e["rank"] = n if ranked else None
    return rows


def limits_of(shares: list[dict]) -> dict[int, Limit]:
    """The scheduler's per-user caps (``Resources.limits``) from published shares."""
    return {e["uid"]: Limit(e["user"], e["max_gpus"], e["max_cpus"]) for e in shares
            if e["max_gpus"] is not None or e["max_cpus"] is not None}


class Queue:
    """The daemon's queue order as a reader can know it: effective priorities
    (``fairshare.effective_priority``, in a shared spool) and, when its
    heartbeat ranks users, fair-share keys (``fairshare.queue_keys``) from the
    published usage, exactly as ``pending.PendingQueue.fair_order`` keys them."""

    def __init__(self, sp: Spool, shares: list[dict]):
        try:
            self.shared = sp.shared()
        except OSError:
            self.shared = False
        self.shares = shares
        self.admins = {e["uid"] for e in shares if e["admin"]}
        self.overrides: dict[int, int] = {}
        if self.shared:
            try:  # root's overrides, read by the daemon's own reader
                self.overrides = Shares(sp, Options(spool=sp.root), True).overrides()
            except OSError:  # state/priority/ not readable by this user
                pass

    def priority(self, asked: int, owner: int, job_id: int) -> int:
        return effective_priority(asked, owner, self.shared,
                                  self.shared and owner in self.admins,
                                  self.overrides.get(job_id), jobmod.DEFAULT_PRIORITY)

    def keys(self, jobs: list[tuple[int, int, int]], shares: list[dict] | None = None) -> dict:
        """Sort keys for (effective priority, owner, id); ``shares``: one
        host's (default: every live host's)."""
        shares = self.shares if shares is None else shares
        if not (self.shared and any(e["rank"] is not None for e in shares)):
            return {job_id: (prio, job_id) for prio, _, job_id in jobs}
        usage = {e["uid"]: (e["usage_gpu_h"] or 0.0) * 3600 for e in shares}
        return queue_keys(sorted(jobs), usage)


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
    for p in snap["pending"]:
        gp = f"{p['gpu_mem']}M" if p.get("gpu_mem") else str(p["gpus"])
        rows.append([p["id"], _prio(p), (p["name"] or "")[:20], (p["user"] or "")[:12], gp,
                     fmt_duration(p.get("wait")), p["reason"]])
    lines.append(c("1", f"# pending: {len(snap['pending'])}"))
    lines += table(rows, width) if len(rows) > 1 else []
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
    ap.add_argument("--watch", nargs="?", const=2.0, type=float, metavar="SECONDS",
                    help="redraw every SECONDS (2) until Ctrl-C")
    a = ap.parse_args(argv)
    sp = open_spool(a.spool, "gstat")
    tty = sys.stdout.isatty()
    while True:
        snap = snapshot(sp, a.user)
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
