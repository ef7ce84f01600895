"""Small parsers and formatters shared by the daemon and the tools (no I/O)."""

from __future__ import annotations

import re
import time

_SIZE = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_size_mib(text: str) -> int:
    """'512M' -> 512, '30G' -> 30720, bare number = MiB (SLURM's --mem)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.I)
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 512M or 30G)")
    value = float(m.group(1)) * _SIZE[m.group(2).upper()]
    return int(value) if value == int(value) else int(value) + 1


def parse_duration(text: str) -> float:
    """'90s' '10m' '2h' '1d' 'H:M:S' 'M:S'; a bare number is minutes (SLURM)."""
    t = str(text).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", t)
    if m:
        unit = {"": 60, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        value = float(m.group(1)) * unit
    elif re.fullmatch(r"\d+(:\d{1,2}){1,2}", t):
        parts = [int(p) for p in t.split(":")]
        if len(parts) == 2:
            parts.insert(0, 0)
        value = parts[0] * 3600 + parts[1] * 60 + parts[2]
    else:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 10m, 2h or 1:30:00)")
    if value <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return value


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
