"""Small parsers and formatters shared by the daemon and the tools (no I/O).

Owns the Python side of the rules bin/gsub applies in sh too, each in one
place: durations (``parse_duration``: gsub's _gdur), the id counter's text
(``parse_counter``: _ghint) and the id in a spool name (``id_in_name``:
_grecover). tests/test_conformance.py runs both sides on the same inputs.
"""

from __future__ import annotations

import re
import time

from .job import MAX_ID

_SIZE = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_size_mib(text: str) -> int:
    """'512M' -> 512, '30G' -> 30720, bare number = MiB (SLURM's --mem)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.I)
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 512M or 30G)")
    value = float(m.group(1)) * _SIZE[m.group(2).upper()]
    return int(value) if value == int(value) else int(value) + 1


# SLURM's --time forms plus unit suffixes, and nothing else: the one duration
# rule. bin/gsub's _gdur is its copy in sh (it must not run programs);
# tests/test_conformance.py runs both on the same inputs.
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_FORMS = (  # (pattern, seconds per group)
    (re.compile(r"([0-9]+)-([0-9]+)"), (86400, 3600)),
    (re.compile(r"([0-9]+)-([0-9]+):([0-9]+)"), (86400, 3600, 60)),
    (re.compile(r"([0-9]+)-([0-9]+):([0-9]+):([0-9]+)"), (86400, 3600, 60, 1)),
    (re.compile(r"([0-9]+):([0-9]+):([0-9]+)"), (3600, 60, 1)),
    (re.compile(r"([0-9]+):([0-9]+)"), (60, 1)),
    (re.compile(r"([0-9]+)"), (60,)),  # a bare number is minutes
)
NO_LIMIT = ("infinite", "INFINITE", "unlimited", "UNLIMITED")


def parse_duration(text: str) -> int | None:
    """Whole seconds, or None for no limit (``infinite``, ``unlimited``).
    '90s' '10m' '2h' '1d' (any case), 'M', 'M:S', 'H:M:S', 'D-H', 'D-H:M',
    'D-H:M:S'; each number plain ASCII digits, at most 12 once leading zeros
    are dropped; no blanks, signs or fractions; the result is positive."""
    t = str(text)
    if t in NO_LIMIT:
        return None
    m = re.fullmatch(r"([0-9]+)([smhdSMHD])", t)
    if m:
        groups, weights = (m.group(1),), (_UNIT[m.group(2).lower()],)
    else:
        form = next(((m, w) for pat, w in _DURATION_FORMS if (m := pat.fullmatch(t))), None)
        if form is None:
            raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 10m, 2h, 1d, 1:30:00, "
                             "1-12 or infinite)")
        groups, weights = form[0].groups(), form[1]
    if any(len(g.lstrip("0")) > 12 for g in groups):
        raise ValueError(f"number too large in duration {text!r}")
    seconds = sum(int(g) * w for g, w in zip(groups, weights, strict=True))
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return seconds


def parse_counter(line: bytes) -> int | None:
    """The value of ``state/next-id``'s first line: ASCII digits, blanks (space,
    tab) around them dropped, 1..MAX_ID+1 (MAX_ID+1: every id is used); None
    for anything else (a crash mid-write), which makes the counter be rebuilt."""
    head = line.split(b"\n", 1)[0].strip(b" \t")
    value = int(head) if head.isdigit() and len(head.lstrip(b"0")) <= 9 else 0
    return value if 0 < value <= MAX_ID + 1 else None  # (bytes.isdigit: ASCII only)


def id_in_name(name: str) -> int | None:
    """The id in a spool name, for rebuilding the counter: its part before the
    first '.', after the last '-', if ASCII digits naming 1..MAX_ID (``7.yaml``,
    ``0010-00000007.yaml``, gsub's ``tmp/5-7.AbCd1234``); dot names have none."""
    if name.startswith("."):
        return None
    digits = name.split(".", 1)[0].rsplit("-", 1)[-1]
    if not (digits.isascii() and digits.isdigit()) or len(digits.lstrip("0")) > 8:
        return None
    return int(digits) or None


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def fmt_time(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def natural(value) -> int | None:
    """A whole number >= 0 from an untrusted field (a uid, a count), else None (no bools)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def positive(value) -> bool:
    """An untrusted field is a whole number > 0 (an id, a rank)."""
    return (natural(value) or 0) > 0
