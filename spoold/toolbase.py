"""What every read-side tool (gstat, ghist, glog, grequeue) shares.

Owns: the one escaping function for anything a user controls that reaches a
terminal (``esc``), the one JSON writer (``json_text``), reading records with
the owner the kernel reports, user names, the spool argument, and the
entry-point wrapper (``entry``) that turns a closed pipe, Ctrl-C and OS errors
into quiet exits.

Invariants:
- Text shown to a person goes through ``esc``: no C0/DEL/C1 control character,
  bidi override or lone surrogate from a job, record or heartbeat ever reaches
  the terminal. Colour codes are added by ``Color`` after escaping.
- JSON never contains NaN or Infinity: non-finite numbers become null, and
  ``json.dumps(allow_nan=False)`` makes a regression fail loudly.
- A job's owner is the kernel's word: the file's owner, or, in a file root
  owns (the daemon wrote it), the ``uid`` the daemon copied from the original
  owner. A ``user:`` field is only a fallback name for a uid with no passwd entry.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import json
import math
import os
import pwd
import sys
from pathlib import Path

import yaml

from . import job as jobmod
from . import spool as spoolmod
from .records import owner_of
from .spool import BadFile, Spool

# A record is a job file plus the daemon's fields: read with the daemon's cap for records.
RECORD_CAP = getattr(spoolmod, "MAX_RECORD_BYTES", 4 * spoolmod.MAX_JOB_BYTES)
EXIT_INTERRUPTED, EXIT_PIPE = 130, 141  # 128 + SIGINT, 128 + SIGPIPE (what a shell shows)

# Characters never printed as they are: bidi overrides/isolates reorder what a
# terminal shows, so a name could disguise the columns after it.
_BIDI = set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A)) | {0x200E, 0x200F, 0x061C}


def _escaped(ch: str) -> str:
    n = ord(ch)
    if n < 0x20 or 0x7F <= n <= 0x9F:
        return f"\\x{n:02x}"
    if n in _BIDI or 0xD800 <= n <= 0xDFFF:
        return f"\\u{n:04x}"
    return "\\\\" if ch == "\\" else ch


def esc(value: object) -> str:
    """``value`` as text safe for a terminal, unambiguous: control characters
    become ``\\xNN`` (ESC is ``\\x1b``), bidi controls ``\\uNNNN``, and a
    backslash ``\\\\``, so escaped text never looks like a real escape."""
    text = "" if value is None else str(value)
    if text.isprintable() and "\\" not in text:
        return text  # the usual case: nothing to do
    return "".join(map(_escaped, text))


def finite(value):
    """``value`` with every non-finite float (NaN, ±Infinity) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def num(value) -> float | int | None:
    """A finite number from an untrusted field, else None (no bools, no text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def ints(value) -> list[int]:
    """The whole numbers of an untrusted list (no bools), [] if it is not a list."""
    return [x for x in value if isinstance(x, int) and not isinstance(x, bool)] if isinstance(
        value, list) else []


def text_or_none(value) -> str | None:
    """A non-empty string from an untrusted field (a whole number as text), else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) and value else None


SLURM_STATE_QUEUED = "PENDING"  # SLURM holds the job in its queue: it has not started


def slurm_view(rec: dict) -> dict:
    """SLURM's view of a job as a record or heartbeat entry keeps it (the
    bridge's ``slurm_*`` fields, docs/slurm.md), each checked: all None for a
    job the local executor ran."""
    return {"slurm_id": text_or_none(rec.get("slurm_id")),
            "slurm_state": text_or_none(rec.get("slurm_state")),
            "slurm_reason": text_or_none(rec.get("slurm_reason")),
            "slurm_queued_at": num(rec.get("slurm_queued_at"))}


def slurm_why(row: dict) -> str:
    """SLURM's reason for a table: ``Resources`` from the recorded
    ``PENDING (Resources)`` (the state is the section it is listed in)."""
    state, reason = row.get("slurm_state") or "", row.get("slurm_reason") or ""
    if state and reason.startswith(f"{state} (") and reason.endswith(")"):
        return reason[len(state) + 2:-1]
    return reason or "-"


LONG_LIST = 1000  # a longer list is written one compact item a line (``json_text``)


def json_text(data) -> str:
    """The --json output: valid JSON always (null for non-finite numbers),
    indented; but a list of more than LONG_LIST items (100,000 pending jobs,
    ghist's records), at the top or one level under it, is written one compact
    item a line: Python's indenting writer takes 4x as long as C's compact one."""
    if isinstance(data, list) and len(data) > LONG_LIST:
        return _lines(data) + "\n"
    long = {k for k, v in data.items() if isinstance(v, list) and len(v) > LONG_LIST} if (
        isinstance(data, dict)) else set()
    if not long:
        return _dumps(data, 1) + "\n"
    short = _dumps({k: v for k, v in data.items() if k not in long}, 1)
    parts = [f" {_dumps(k)}: {_lines(data[k])}" for k in long]
    return (short[:-2] + ",\n" if short != "{}" else "{\n") + ",\n".join(parts) + "\n}\n"


def _lines(items: list) -> str:
    return "[\n" + ",\n".join(map(_dumps, items)) + "\n]"


_COMPACT = json.JSONEncoder(allow_nan=False, default=str)  # (made once: 100,000 items)


def _dumps(value, indent: int | None = None) -> str:
    encode = _COMPACT.encode if indent is None else json.JSONEncoder(
        indent=indent, allow_nan=False, default=str).encode
    try:  # NaN and infinities are rare: found by failing, not by a walk of everything
        return encode(value)
    except ValueError:
        return encode(finite(value))


def when(epoch) -> str:
    """A date for a table; '?' for a time no calendar has (1e300, negative)."""
    from .util import fmt_time

    try:
        return fmt_time(num(epoch))
    except (OverflowError, ValueError, OSError):
        return "?"


# ---- the entry points ----------------------------------------------------------------

def entry(prog: str, main):
    """``main`` as a console script: Ctrl-C exits 130, a reader that went away
    (``glog 7 | head -1``) exits 141, an OS error prints one line and exits 1;
    never a traceback for any of them."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            code = main(argv)
            sys.stdout.flush()  # here, not at exit, where a closed pipe would be noisy
            return code
        except BrokenPipeError:
            _silence_stdout()
            return EXIT_PIPE
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except OSError as e:
            where = f" {esc(e.filename)}" if e.filename else ""
            print(f"{prog}: cannot use{where}: {e.strerror or e}", file=sys.stderr)
            return 1

    return run


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush stays quiet."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError):
        pass


def fail(prog: str, message: str, code: int = 1) -> int:
    """One line on stderr (already escaped where it holds user text); ``code``."""
    print(f"{prog}: {message}", file=sys.stderr)
    return code


def spool_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--spool", type=spoolmod.spool_path, default=None, metavar="DIR",
                    help="spool directory (default: $SPOOLD_SPOOL, else ~/.local/share/spoold)")


def user_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("-u", "--user", nargs="?", const=caller_name(), metavar="NAME",
                    help="only this user's jobs (yours with no NAME)")


def open_spool(path: Path | None, prog: str) -> Spool:
    """The spool named by --spool, else ``spool.default_spool``; exits with
    one line when there is none there."""
    try:
        sp = Spool(path or spoolmod.default_spool())
    except spoolmod.NotASpool as e:
        sys.exit(f"{prog}: {e}")
    if not sp.exists():
        sys.exit(f"{prog}: no spool at {esc(sp.root)} (start spoold once, or pass --spool / "
                 "set SPOOLD_SPOOL)")
    return sp


# ---- records and owners ------------------------------------------------------------------

def read_record(path: Path) -> dict | None:
    """A record or heartbeat (non-finite numbers already None), or None if unreadable."""
    return read_owned(path)[0]


def read_owned(path: Path) -> tuple[dict | None, int | None]:
    """(record or None, the uid that owns the job or None): see the module's
    invariants for whose word the owner is."""
    try:
        st_uid = os.lstat(path).st_uid
        data = jobmod.load_record(spoolmod.read_untrusted(path, RECORD_CAP))
    except (OSError, BadFile, jobmod.JobError, ValueError, yaml.YAMLError):
        return None, None  # (a torn or hand-made file: the row says what is known)
    data = finite(data)
    return data, owner_of(st_uid, data)


_NAMES: dict[int, str] = {}  # uid -> passwd name, found once per process (100,000 records)


def user_name(uid: int | None, fallback: object = "") -> str:
    """The passwd name of ``uid``; ``fallback`` (a record's ``user``) only when
    the uid is unknown or has no entry (not remembered: the entry may come)."""
    if isinstance(uid, int) and uid >= 0:
        if uid in _NAMES:
            return _NAMES[uid]
        try:
            _NAMES[uid] = pwd.getpwuid(uid).pw_name
            return _NAMES[uid]
        except KeyError:
            pass
    if fallback:
        return str(fallback)
    return str(uid) if isinstance(uid, int) else ""


def caller_name() -> str:
    """Who runs this tool, from the kernel's uid (never $USER)."""
    return user_name(os.getuid())


def command_text(rec: dict) -> str:
    if isinstance(rec.get("argv"), list):
        return " ".join(_shell_quote(str(a)) for a in rec["argv"])
    return str(rec.get("cmd") or "")


def _shell_quote(s: str) -> str:
    if s and all(c.isalnum() or c in "@%+=:,./-_" for c in s):
        return s
    return "'" + s.replace("'", "'\\''") + "'"


def find_job(sp: Spool, job_id: int) -> tuple[str, Path] | None:
    """(folder, record path) of job ``job_id``: ``Spool.find``, else pending/
    (a refused file's kept original is never read as its record)."""
    found = sp.find(job_id)
    if found is not None:
        return found[0], found[1] or sp.record(found[0], job_id)
    for p in sp.list_pending():
        if p.job_id == job_id:
            return "pending", sp.pending / p.name
    return None


# ---- hosts ---------------------------------------------------------------------------------

def hosts_view(sp: Spool, now: float) -> list[dict]:
    """Each host's heartbeat, and whether its daemon holds its lock right now
    (where the lock is root's alone, whether its heartbeat is fresh)."""
    out = []
    for h in sp.hosts():
        beat = read_record(sp.host_file(h)) or {}
        age = now - (num(beat.get("time")) or 0)
        timeout = num(beat.get("host_timeout")) or 60
        try:
            pid = lock_holder(sp.host_lock(h))
        except PermissionError:  # a shared spool's lock: only root may open it
            fresh, beat_pid = age <= timeout, beat.get("pid")
            pid = (beat_pid if isinstance(beat_pid, int) else -1) if fresh else None
        out.append({"host": h, "alive": pid is not None, "pid": pid, "heartbeat_age": age,
                    "lost": pid is None and age > timeout,
                    "draining": bool(beat.get("draining")), "beat": beat})
    return out


def lock_holder(path: Path) -> int | None:
    """The pid written in a daemon's lock file while it holds it, else None;
    PermissionError when this user may not open it."""
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


# ---- tables ----------------------------------------------------------------------------------

class Color:
    def __init__(self, on: bool):
        self.on = on

    def __call__(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.on else text


def table(rows: list[list[object]], width: int) -> list[str]:
    """Aligned columns, each cell escaped; the last column takes the rest."""
    if not rows:
        return []
    rows = [[esc(c) for c in r] for r in rows]
    cols = len(rows[0])
    widths = [max(len(r[i]) for r in rows) for i in range(cols - 1)]
    out = []
    for r in rows:
        line = "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        out.append(line[:width].rstrip())
    return out


def tty_width(default: int = 100) -> int:
    import shutil

    return shutil.get_terminal_size((default, 24)).columns
