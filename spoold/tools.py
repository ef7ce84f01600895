"""gstat, ghist, glog: read-only views of the spool (they never ask the daemon).

Owns: turning spool records into tables and JSON (schema in docs/json.md).
Invariants: these tools only read; every row starts with the job id (GPU and
header rows aside) so ``awk '$1==7'`` works; colour only on a terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import sys
import time
from pathlib import Path

from . import job as jobmod
from . import spool as spoolmod
from .scheduler import Gpu, Resources, request_of, running_of, schedule
from .spool import BadFile, Spool
from .util import fmt_duration, fmt_time, parse_duration

EXIT_USAGE, EXIT_NOSPOOL = 2, 1


def _spool_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--spool", type=Path, default=None,
                    help="spool directory (default: $SPOOLD_SPOOL, else ~/.local/share/spoold)")


def open_spool(path: Path | None, prog: str) -> Spool:
    sp = Spool(path or spoolmod.default_spool())
    if not sp.exists():
        sys.exit(f"{prog}: no spool at {sp.root} (start spoold once, or pass --spool / "
                 "set SPOOLD_SPOOL)")
    return sp


def read_record(path: Path) -> dict | None:
    try:
        data = jobmod.load_record(spoolmod.read_untrusted(path))
    except (OSError, BadFile, jobmod.JobError, ValueError):
        return None
    return data


def command_text(rec: dict) -> str:
    if isinstance(rec.get("argv"), list):
        return " ".join(_shell_quote(str(a)) for a in rec["argv"])
    return str(rec.get("cmd", ""))


def _shell_quote(s: str) -> str:
    if s and all(c.isalnum() or c in "@%+=:,./-_" for c in s):
        return s
    return "'" + s.replace("'", "'\\''") + "'"


def hosts_view(sp: Spool, now: float) -> list[dict]:
    """Each host's heartbeat, and whether its daemon holds its lock right now."""
    out = []
    for h in sp.hosts():
        beat = read_record(sp.host_file(h)) or {}
        pid = lock_holder(sp.host_lock(h))
        age = now - float(beat.get("time") or 0)
        out.append({"host": h, "alive": pid is not None, "pid": pid, "heartbeat_age": age,
                    "lost": pid is None and age > float(beat.get("host_timeout") or 60),
                    "draining": bool(beat.get("draining")), "beat": beat})
    return out


def lock_holder(path: Path) -> int | None:
    """The pid written in a daemon's lock file while it holds it, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            text = os.read(fd, 32).strip()
            return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)


class Color:
    def __init__(self, on: bool):
        self.on = on

    def __call__(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.on else text


# ---- gstat -------------------------------------------------------------------------

def snapshot(sp: Spool, user: str | None = None, now: float | None = None) -> dict:
    """Everything gstat shows, as plain data (the --json output)."""
    now = time.time() if now is None else now
    hosts = hosts_view(sp, now)
    live = [h for h in hosts if h["alive"]] or hosts
    gsnap = live[0]["beat"] if live else {}
    running, bookings = [], []
    for job_id in sp.list_ids("running"):
        rec = read_record(sp.record("running", job_id))
        if rec is None:
            continue
        started, limit = rec.get("started_at"), rec.get("time_limit")
        bookings.append((rec.get("host"), running_of(job_id, rec)))
        running.append({
            "id": job_id, "name": rec.get("name") or "", "user": rec.get("user") or "",
            "gpus": rec.get("gpus", 1), "assigned_gpus": rec.get("assigned_gpus") or [],
            "gpu_mem": rec.get("gpu_mem"), "cpus": rec.get("cpus") or 0,
            "assigned_cpus": rec.get("assigned_cpus") or [], "mem": rec.get("mem") or 0,
            "priority": rec.get("priority", 10), "host": rec.get("host"), "pid": rec.get("pid"),
            "started_at": started, "elapsed": now - started if started else None,
            "time_limit": limit, "command": command_text(rec),
            "killing": rec.get("kill_reason"),
        })
    holders: dict[tuple, list[int]] = {}
    for host, b in bookings:
        for g in b.gpus:
            holders.setdefault((host, g), []).append(b.id)
    gpus = []
    for h in hosts:
        for g in h["beat"].get("gpus") or []:
            gpus.append({**g, "host": h["host"], "jobs": holders.get((h["host"], g.get("index")),
                                                                     [])})
    pending, requests, jobs = [], [], {}
    for p in sp.list_pending():
        if not p.has_id:
            continue
        try:
            job = jobmod.parse(spoolmod.read_untrusted(sp.pending / p.name))
        except PermissionError:  # another user's job in a shared spool: name and owner only
            pending.append(_unreadable(sp, p, now))
            continue
        except (OSError, BadFile, jobmod.JobError) as e:
            pending.append({**_unreadable(sp, p, now), "reason": f"bad file: {e}"})
            continue
        jobs[p.job_id] = job
        st = os.lstat(sp.pending / p.name)
        pending.append({
            "id": p.job_id, "name": job.name, "user": job.get("user") or "",
            "gpus": job.gpus, "gpu_mem": job.gpu_mem or None, "cpus": job.cpus, "mem": job.mem,
            "priority": p.priority, "submitted_at": job.get("submitted_at") or st.st_mtime,
            "wait": now - (job.get("submitted_at") or st.st_mtime), "time_limit": job.time_limit,
            "after": job.after, "held": job.hold, "command": command_text(job.data),
            "reason": None,
        })
        requests.append(request_of(job, p.job_id))
    states = {**{r["id"]: "running" for r in running}, **{p["id"]: "pending" for p in pending}}

    class Deps:
        def get(self, job_id, default=None):
            if job_id in states:
                return states[job_id]
            for d in spoolmod.FINAL_DIRS:
                if sp.record(d, job_id).exists():
                    return d
            return default

    # The queue as each live host's daemon sees it: a job starts if any host
    # would start it; otherwise the first host's reason is shown.
    reasons: dict[int, str] = {}
    for h in live or [{"host": None, "beat": {}}]:
        beat = h["beat"]
        res = Resources(
            gpus=tuple(Gpu(g["index"], g.get("busy"), g.get("memory_total"),
                           g.get("memory_used"), failed=bool(g.get("error")))
                       for g in beat.get("gpus") or []),
            cpus=tuple(range(beat.get("cpus") or os.cpu_count() or 1)),
            mem=beat.get("mem") or 0, limit=beat.get("limit") or 8, host=h["host"],
            paused=sp.paused_flag.exists())
        d = schedule(requests, [b for host, b in bookings if host == h["host"]], res, now,
                     Deps())
        prefix = f"{h['host']}: " if len(live) > 1 else ""
        for s_ in d.start:
            reasons[s_.id] = "starting"
        for i, why in {**d.wait, **d.reject, **d.cancel}.items():
            if reasons.get(i) != "starting":
                reasons.setdefault(i, prefix + why)
    for p in pending:
        if p["reason"] is None:
            p["reason"] = reasons.get(p["id"], "starting")
    if user:
        running = [r for r in running if r["user"] == user]
        pending = [p for p in pending if p["user"] == user]
    pid = next((h["pid"] for h in hosts if h["alive"]), None)
    return {"spool": str(sp.root), "time": now, "host": gsnap.get("host"),
            "daemon": {"running": pid is not None, "pid": pid},
            "hosts": [{k: v for k, v in h.items() if k != "beat"} for h in hosts],
            "paused": sp.paused_flag.exists(), "gpus": gpus, "running": running,
            "pending": pending,
            "enforced": gsnap.get("enforced") or {},
            "limits": {"max_load": gsnap.get("max_load"), "max_memory": gsnap.get("max_memory"),
                       "cpus": gsnap.get("cpus"), "mem": gsnap.get("mem"),
                       "limit": gsnap.get("limit")}}


def _unreadable(sp: Spool, p, now: float) -> dict:
    try:
        st = os.lstat(sp.pending / p.name)
        owner, mtime = _user_name(st.st_uid), st.st_mtime
    except OSError:
        owner, mtime = "", now
    return {"id": p.job_id, "name": "", "user": owner, "gpus": None, "gpu_mem": None,
            "cpus": None, "mem": None, "priority": p.priority, "submitted_at": mtime,
            "wait": now - mtime, "time_limit": None, "after": [], "held": False,
            "command": "", "reason": "another user's job (details private)"}


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _bar(frac: float | None, width: int = 10) -> str:
    if frac is None:
        return "[" + "?" * width + "]"
    n = round(max(0.0, min(1.0, frac)) * width)
    return "[" + "#" * n + "." * (width - n) + "]"


def _table(rows: list[list[str]], width: int) -> list[str]:
    if not rows:
        return []
    cols = len(rows[0])
    widths = [max(len(r[i]) for r in rows) for i in range(cols - 1)]
    out = []
    for r in rows:
        line = "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        out.append(line[:width].rstrip())
    return out


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
            f"{h['host']} ({'up' if h['alive'] else 'LOST' if h['lost'] else 'down'}, "
            f"{fmt_duration(h['heartbeat_age'])} ago)" for h in snap["hosts"]))
    for g in snap["gpus"]:
        mt, mu, ut = g.get("memory_total"), g.get("memory_used"), g.get("utilization")
        mem = f"{mu / 1024:.1f}/{mt / 1024:.1f}G" if mt and mu is not None else "?/?G"
        util = f"{ut:3d}%" if ut is not None else "  ?%"
        who = ("job " + ",".join(map(str, g["jobs"]))) if g["jobs"] else (
            g.get("busy") or "free")
        state = c("32", "free") if not g["jobs"] and not g.get("busy") else (
            c("36", who) if g["jobs"] else c("31", who))
        name = f"{g['host']}:GPU{g['index']}" if multi else f"GPU{g['index']:<2}"
        lines.append(f"{name} {_bar(ut / 100 if ut is not None else None)} {util} "
                     f"{_bar(mu / mt if mt and mu is not None else None)} {mem:>11}  {state}")
    if snap["gpus"]:
        lines.append("")
    rows = [["ID", "NAME", "USER", "GPUS", "ELAPSED", "LIMIT", "COMMAND"]]
    for r in snap["running"]:
        gp = ",".join(map(str, r["assigned_gpus"])) or "-"
        rows.append([str(r["id"]), r["name"][:20], r["user"][:12], gp,
                     fmt_duration(r["elapsed"]), fmt_duration(r["time_limit"]),
                     ("[killing] " if r["killing"] else "") + r["command"]])
    lines.append(c("1", f"# running: {len(snap['running'])}"))
    lines += _table(rows, width) if len(rows) > 1 else []
    rows = [["ID", "PRIO", "NAME", "USER", "GPUS", "WAIT", "REASON"]]
    for p in snap["pending"]:
        gp = f"{p['gpu_mem']}M" if p.get("gpu_mem") else str(p["gpus"])
        rows.append([str(p["id"]), str(p["priority"]), (p["name"] or "")[:20],
                     (p["user"] or "")[:12], gp, fmt_duration(p.get("wait")), p["reason"]])
    lines.append(c("1", f"# pending: {len(snap['pending'])}"))
    lines += _table(rows, width) if len(rows) > 1 else []
    if snap.get("enforced"):
        lines.append("# enforced: " + "; ".join(f"{k}: {v}" for k, v in snap["enforced"].items()))
    if not c.on:  # (colour codes would be cut in the middle)
        lines = [line[:width].rstrip() for line in lines]
    return "\n".join(lines) + "\n"


def gstat_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="gstat", description="What runs where, what waits and why.",
        epilog="Examples: gstat | gstat --json | jq '.pending[].id' | gstat -u alice | "
               "gstat --watch 2 | gstat | awk '$1==7'")
    _spool_arg(ap)
    ap.add_argument("--json", action="store_true", help="machine-readable (docs/json.md)")
    ap.add_argument("-u", "--user", help="only this user's jobs")
    ap.add_argument("--watch", nargs="?", const=2.0, type=float, metavar="SECONDS",
                    help="redraw every SECONDS (2) until Ctrl-C")
    a = ap.parse_args(argv)
    sp = open_spool(a.spool, "gstat")
    tty = sys.stdout.isatty()
    while True:
        snap = snapshot(sp, a.user)
        if a.json:
            out = json.dumps(snap, indent=1) + "\n"
        else:
            width = shutil.get_terminal_size((100, 24)).columns if tty else 10_000
            out = render_gstat(snap, width, Color(tty and not os.environ.get("NO_COLOR")))
        if not a.watch:
            sys.stdout.write(out)
            return 0
        if tty:
            sys.stdout.write("\033[H\033[2J")
        sys.stdout.write(out)
        sys.stdout.flush()
        try:
            time.sleep(a.watch)
        except KeyboardInterrupt:
            return 0


# ---- ghist ---------------------------------------------------------------------------

def history(sp: Spool, states: tuple[str, ...], user: str | None = None,
            since: float | None = None) -> list[dict]:
    rows = []
    for d in states:
        for job_id in sp.list_ids(d):
            rec = read_record(sp.record(d, job_id)) or {"id": job_id, "reason": "unreadable"}
            if user and rec.get("user") != user:
                continue
            ended = rec.get("ended_at") or 0
            if since and ended < since:
                continue
            started = rec.get("started_at")
            rows.append({"id": job_id, "state": d, "exit_code": rec.get("exit_code"),
                         "name": rec.get("name") or "", "user": rec.get("user") or "",
                         "gpus": rec.get("gpus", 1), "assigned_gpus": rec.get("assigned_gpus"),
                         "host": rec.get("host"), "submitted_at": rec.get("submitted_at"),
                         "started_at": started, "ended_at": rec.get("ended_at"),
                         "elapsed": ended - started if started and ended else None,
                         "reason": rec.get("reason"), "command": command_text(rec)})
    rows.sort(key=lambda r: (r["ended_at"] or 0, r["id"]))
    return rows


def render_ghist(rows: list[dict], width: int = 100) -> str:
    table = [["ID", "STATE", "EXIT", "NAME", "USER", "GPUS", "ENDED", "ELAPSED", "COMMAND/REASON"]]
    for r in rows:
        gp = ",".join(map(str, r["assigned_gpus"] or [])) or "-"
        table.append([str(r["id"]), r["state"], "-" if r["exit_code"] is None
                      else str(r["exit_code"]), r["name"][:20], r["user"][:12], gp,
                      fmt_time(r["ended_at"]), fmt_duration(r["elapsed"]),
                      r["reason"] if r["state"] != "done" and r["reason"] else r["command"]])
    return "\n".join(_table(table, width)) + "\n"


def _since(text: str) -> float:
    """'2h' (ago) or an ISO date/time."""
    with contextlib.suppress(ValueError):
        return time.time() - parse_duration(text)
    from datetime import datetime

    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration or date: {text!r} (e.g. 2h, 7d, 2026-11-20)") from None


def ghist_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="ghist", description="Finished jobs, oldest first (done only unless -f).",
        epilog="Examples: ghist -n 5 | ghist -f --since 1d | ghist --json | "
               "ghist --clean --older-than 7d")
    _spool_arg(ap)
    ap.add_argument("-f", "--failed", action="store_true", help="include failed and cancelled")
    ap.add_argument("-n", type=int, default=None, metavar="N", help="only the last N")
    ap.add_argument("-u", "--user", help="only this user's jobs")
    ap.add_argument("--since", type=_since, help="ended within this long (2h) or since a date")
    ap.add_argument("--json", action="store_true", help="machine-readable (docs/json.md)")
    ap.add_argument("--clean", action="store_true",
                    help="delete finished records (and their logs) instead of listing them")
    ap.add_argument("--older-than", type=parse_duration, default=None, metavar="DURATION",
                    help="with --clean: only records that ended more than this long ago")
    ap.add_argument("--timeline", nargs="?", const=6.0, type=float, metavar="HOURS",
                    help="draw which job held which GPU over the last HOURS (6)")
    ap.add_argument("--width", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    sp = open_spool(a.spool, "ghist")
    width = a.width or (shutil.get_terminal_size((100, 24)).columns if sys.stdout.isatty()
                        else 100)
    if a.timeline:
        now = time.time()
        rows, gpus = timeline_rows(sp, now)
        sys.stdout.write(render_timeline(rows, gpus, now, a.timeline, width))
        return 0
    states = spoolmod.FINAL_DIRS if a.failed or a.clean else ("done",)
    rows = history(sp, states, a.user, a.since)
    if a.clean:
        cutoff = time.time() - (a.older_than or 0)
        gone = 0
        for r in rows:
            if (r["ended_at"] or 0) <= cutoff:
                for p in (sp.record(r["state"], r["id"]), sp.log_path(r["id"]),
                          sp.rejected_copy(r["id"])):
                    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                        os.unlink(p)
                gone += 1
        print(f"removed {gone} finished record(s)", file=sys.stderr)
        return 0
    if a.n is not None:
        rows = rows[-a.n:] if a.n > 0 else []
    if a.json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
    else:
        sys.stdout.write(render_ghist(rows, a.width or (width if sys.stdout.isatty()
                                                        else 10_000)))
    return 0


# ---- glog ------------------------------------------------------------------------------

def find_job(sp: Spool, job_id: int) -> tuple[str, Path] | None:
    for d in ("running", *spoolmod.FINAL_DIRS):
        p = sp.record(d, job_id)
        if p.exists():
            return d, p
    for p in sp.list_pending():
        if p.job_id == job_id:
            return "pending", sp.pending / p.name
    return None


def glog_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="glog", description="Print a job's output; -f follows it until the job ends "
        "and exits with the job's exit code.",
        epilog="Examples: glog 12 | glog -f 12 | glog -f $(gsub python train.py)")
    _spool_arg(ap)
    ap.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")
    ap.add_argument("id", help="job id")
    a = ap.parse_args(argv)
    if not a.id.isdigit() or int(a.id) == 0:
        ap.error(f"not a job id: {a.id!r}")
    job_id = int(a.id)
    sp = open_spool(a.spool, "glog")
    found = find_job(sp, job_id)
    if found is None:
        print(f"glog: no job {job_id} in {sp.root}", file=sys.stderr)
        return 1
    rec = read_record(found[1]) or {}
    log_path = Path(rec["log"]) if rec.get("log") else sp.log_path(job_id)
    out = sys.stdout.buffer
    pos = 0
    while True:
        with contextlib.suppress(FileNotFoundError), open(log_path, "rb") as f:
            f.seek(pos)
            while chunk := f.read(65536):
                out.write(chunk)
                pos += len(chunk)
            out.flush()
        state = find_job(sp, job_id)
        final = state is not None and state[0] in spoolmod.FINAL_DIRS
        if not a.follow or final or state is None:
            if a.follow and final:  # drain what was written after our last read
                with contextlib.suppress(FileNotFoundError), open(log_path, "rb") as f:
                    f.seek(pos)
                    out.write(f.read())
                    out.flush()
                code = (read_record(state[1]) or {}).get("exit_code")
                return code if isinstance(code, int) else 1
            if not log_path.exists() and found[0] == "pending":
                print(f"glog: job {job_id} has not started yet", file=sys.stderr)
            return 0
        time.sleep(0.1)



# ---- ghist --timeline ---------------------------------------------------------------------

_SYMBOLS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def render_timeline(rows: list[dict], gpus: list[int], now: float, hours: float,
                    width: int = 100) -> str:
    """Which job held which GPU over the last ``hours``: one line per GPU."""
    label = 6
    cols = max(10, width - label - 2)
    start = now - hours * 3600
    step = (now - start) / cols
    spans = [r for r in rows if r.get("assigned_gpus") and r.get("started_at")
             and (r.get("ended_at") or now) >= start]
    spans.sort(key=lambda r: (r["started_at"], r["id"]))
    sym = {r["id"]: _SYMBOLS[i % len(_SYMBOLS)] for i, r in enumerate(spans)}
    grid = {g: ["."] * cols for g in gpus}
    for r in spans:
        lo = int((max(r["started_at"], start) - start) / step)
        hi = int(((r.get("ended_at") or now) - start) / step)
        for g in r["assigned_gpus"]:
            if g in grid:
                for c in range(max(0, lo), min(cols, max(hi, lo + 1))):
                    grid[g][c] = sym[r["id"]]
    left = f"-{hours:g}h"
    out = [f"{'':{label}}|{left}{'now'.rjust(cols - len(left))}|"]
    out += [f"{'GPU' + str(g):<{label}}|{''.join(grid[g])}|" for g in gpus]
    legend = [f"{sym[r['id']]}={r['id']} {r.get('name') or ''} ({r.get('state', 'running')})"
              for r in spans]
    line = "jobs:"
    for item in legend:
        if len(line) + len(item) + 2 > width:
            out.append(line)
            line = "     "
        line += "  " + item
    out.append(line if legend else "jobs:  none in this window")
    return "\n".join(out) + "\n"


def timeline_rows(sp: Spool, now: float) -> tuple[list[dict], list[int]]:
    rows = history(sp, spoolmod.FINAL_DIRS)
    snap = snapshot(sp, now=now)
    for r in snap["running"]:
        rows.append({**r, "state": "running", "ended_at": None})
    gpus = sorted({g["index"] for g in snap["gpus"]}
                  | {g for r in rows for g in r.get("assigned_gpus") or []})
    return rows, gpus


# ---- grequeue ------------------------------------------------------------------------------

def grequeue_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="grequeue", description="Submit finished, failed or cancelled jobs again: same "
        "command, environment, working directory and resources; prints the new ids.",
        epilog="Examples: grequeue 12 | grequeue $(ghist -f --json | jq '.[] | "
               "select(.state==\"failed\") | .id')")
    _spool_arg(ap)
    ap.add_argument("ids", nargs="+", metavar="ID")
    a = ap.parse_args(argv)
    bad = [i for i in a.ids if not i.isdigit() or int(i) == 0]
    if bad:
        ap.error(f"not a job id: {bad[0]!r}")
    sp = open_spool(a.spool, "grequeue")
    recs = []
    for i in map(int, a.ids):
        found = find_job(sp, i)
        if found is None or found[0] not in spoolmod.FINAL_DIRS:
            print(f"grequeue: job {i} is {found[0] if found else 'not in the spool'}: only "
                  "finished jobs can be requeued", file=sys.stderr)
            return 1
        rec = read_record(found[1])
        if rec is None or not (rec.get("argv") or rec.get("cmd")):
            print(f"grequeue: job {i} has no command to run again (a refused file?)",
                  file=sys.stderr)
            return 1
        recs.append((i, rec))
    for old, rec in recs:
        data = {k: v for k, v in rec.items() if k in jobmod.SUBMIT_FIELDS and k not in (
            "id", "submitted_at", "array_id", "array_index", "array_limit", "after", "hold")}
        new = sp.allocate_ids(1)
        data = {"id": new, **data, "requeued_from": old}
        prio = data.get("priority", spoolmod.DEFAULT_PRIORITY)
        tmp = sp.write_tmp(jobmod.dump(data), f"requeue-{new}", mode=0o600)
        os.rename(tmp, sp.pending / spoolmod.pending_name(prio, new))
        spoolmod.fsync_dir(sp.pending)
        print(new)
    return 0
