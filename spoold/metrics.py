"""Metrics in Prometheus' text exposition format 0.0.4, for node_exporter's
textfile collector (``--metrics FILE``).

Owns: the metric names, their HELP/TYPE lines and units, the queue-wait
histogram and finished-jobs counter kept since the daemon started, and the
atomic writing of the metrics file. The daemon owns one ``Metrics`` and
calls ``observe_start`` when a job starts, ``observe_finish`` when a job
ends (or is rejected), and ``write(path, metrics.render(...))`` at each poll.

Invariants:
- ``render`` is pure: the same counters and arguments give the same text.
  It reads nothing and writes nothing.
- A figure that is not known is absent, never a guess: a GPU whose reading
  has no utilization gets no ``spoold_gpu_utilization_ratio`` sample, a
  folder the daemon did not count gets no ``spoold_jobs`` sample, and so on.
  Only a whole number or a finite float counts as a reading (never a bool).
- Every family has one HELP and one TYPE line, and its samples follow them
  with no other family in between (the format requires it). Label values and
  HELP texts are escaped as the format says.
- ``spoold_jobs_finished_total`` has a sample for every outcome from the
  start (0 until one happens), so ``rate()`` and ``increase()`` see the
  first one. It counts since this daemon started; a restart sets it back
  to 0, which Prometheus' counter functions treat as a reset.
- The histogram is cumulative: each ``_bucket`` counts the waits <= ``le``,
  ``le="+Inf"`` equals ``_count``, and ``_sum`` is the sum of the waits.
- ``spoold_gpu_assigned`` and ``spoold_gpu_busy`` never both read 1: a GPU a
  job holds looks busy because of that job (its utilization, its memory),
  so busy is 1 only for a GPU no job holds and that has a busy reason.
- ``write`` replaces the file in one rename (a reader sees the old text or
  the new, never a part), writes only when the file does not already hold
  the text (so a file with an unchanged text keeps its mtime), never follows
  a link at the file's path or its temp name, and raises OSError on any
  failure (the daemon logs it; the next poll tries again).

Where the file goes (``--metrics FILE``, ``--metrics -`` for none): by
default ``SPOOL/state/hosts/HOST.prom`` (one per host: hosts sharing a spool never
overwrite each other's), which node_exporter's textfile collector
reads through a link in its directory (``ln -s SPOOL/state/hosts/HOST.prom
/var/lib/node_exporter/textfile_collector/spoold.prom``), or straight there
with ``--metrics /var/lib/node_exporter/textfile_collector/spoold.prom``.
The temp file is ``.NAME.XXXXXXXX.tmp`` in the same folder: the collector
reads only ``*.prom``, so it never sees a half-written file.
"""

from __future__ import annotations

import math
import os
import secrets
import stat
from pathlib import Path

OUTCOMES = ("completed", "failed", "timeout", "out_of_memory", "cancelled", "node_fail",
            "rejected")
STATES = ("pending", "running", "done", "failed", "cancelled")
# Waits on a shared GPU box run from seconds (an idle GPU) to a day (a busy
# queue, a held job); roughly x2-x3 steps keep the quantiles usable.
WAIT_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
                14400.0, 28800.0, 43200.0, 86400.0)
MIB = 1024 * 1024


def escape_label(value: str) -> str:
    """A label value as the text format writes it: \\ " and newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _reading(value) -> float | int | None:
    """A number from a reading (int or finite float, never bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if isinstance(value, int) or math.isfinite(value) else None


def _num(value: float | int) -> str:
    """A sample value or ``le`` bound: ints as they are, floats as repr, Inf as +Inf."""
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _family(name: str, kind: str, help_text: str,
            samples: list[tuple[str, dict[str, str], float | int]]) -> list[str]:
    """HELP, TYPE, then the samples (suffix, labels, value) of one family."""
    lines = [f"# HELP {name} {_escape_help(help_text)}", f"# TYPE {name} {kind}"]
    for suffix, labels, value in samples:
        body = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
        lines.append(f"{name}{suffix}{{{body}}} {_num(value)}" if body
                     else f"{name}{suffix} {_num(value)}")
    return lines


class Metrics:
    """The daemon's counters since it started, and their text."""

    def __init__(self, buckets: tuple[float, ...] = WAIT_BUCKETS):
        self.buckets = tuple(sorted(buckets))
        self.finished = dict.fromkeys(OUTCOMES, 0)
        self.wait_counts = [0] * len(self.buckets)  # per bucket, not cumulative
        self.wait_over = 0  # waits above the last bound (only in +Inf)
        self.wait_sum = 0.0

    # ---- counting ------------------------------------------------------------
    def observe_start(self, wait_s: float) -> None:
        """A job started ``wait_s`` seconds after it was queued. A negative
        wait (the clock was set back) counts as 0; a wait that is not a finite
        number is not counted (it is not known)."""
        wait = _reading(wait_s)
        if wait is None:
            return
        wait = max(0.0, float(wait))
        self.wait_sum += wait
        for i, bound in enumerate(self.buckets):
            if wait <= bound:
                self.wait_counts[i] += 1
                return
        self.wait_over += 1

    def observe_finish(self, outcome: str) -> None:
        """A job ended with ``outcome`` (one of OUTCOMES; ValueError otherwise)."""
        if outcome not in self.finished:
            raise ValueError(f"not an outcome: {outcome!r} (one of {', '.join(OUTCOMES)})")
        self.finished[outcome] += 1

    # ---- the text --------------------------------------------------------------
    def render(self, folders: dict[str, int], gpus: list[dict], heartbeat_time: float) -> str:
        """The metrics file's text. ``folders``: the number of jobs in each of
        STATES (states left out get no sample). ``gpus``: the heartbeat's GPU
        entries (``index``, ``utilization`` %, ``memory_used`` MiB, ``busy``
        reason or None, optional ``energy_mj``) plus ``assigned`` (bool: a job
        holds it). ``heartbeat_time``: the heartbeat's ``time`` (Unix seconds)."""
        out: list[str] = []
        out += _family("spoold_jobs", "gauge", "Jobs in each spool folder.",
                       [("", {"state": s}, n) for s in STATES
                        if (n := _reading(folders.get(s))) is not None])
        out += _family("spoold_jobs_finished_total", "counter",
                       "Jobs that ended, by outcome, since this daemon started.",
                       [("", {"outcome": o}, n) for o, n in self.finished.items()])
        out += self._gpu_families(gpus)
        out += self._wait_family()
        beat = _reading(heartbeat_time)
        out += _family("spoold_heartbeat_timestamp_seconds", "gauge",
                       "Unix time of the daemon's last heartbeat.",
                       [] if beat is None else [("", {}, float(beat))])
        return "\n".join(out) + "\n"

    def _gpu_families(self, gpus: list[dict]) -> list[str]:
        entries = [(str(g["index"]), g) for g in gpus
                   if isinstance(g, dict) and isinstance(g.get("index"), int)
                   and not isinstance(g.get("index"), bool) and g["index"] >= 0]

        def samples(value_of):
            return [("", {"gpu": label}, v) for label, g in entries
                    if (v := value_of(g)) is not None]

        def scaled(key, convert):  # a reading in the unit Prometheus wants
            return lambda g: None if (v := _reading(g.get(key))) is None else convert(v)

        def assigned(g):
            return int(bool(g["assigned"])) if "assigned" in g else None

        def busy(g):  # a held GPU's load is its job's: busy only when none holds it
            if "busy" not in g or "assigned" not in g:
                return None
            return int(bool(g["busy"]) and not g["assigned"])

        out: list[str] = []
        out += _family("spoold_gpu_utilization_ratio", "gauge",
                       "GPU utilization, 0 to 1, as last read.",
                       samples(scaled("utilization", lambda pct: pct / 100)))
        out += _family("spoold_gpu_memory_used_bytes", "gauge",
                       "GPU memory in use, as last read.",
                       samples(scaled("memory_used", lambda mib: mib * MIB)))
        out += _family("spoold_gpu_assigned", "gauge", "1 while a spoold job holds the GPU.",
                       samples(assigned))
        out += _family("spoold_gpu_busy", "gauge",
                       "1 while no job holds the GPU and it is busy for another reason "
                       "(load, memory, a failed reading).",
                       samples(busy))
        energy = samples(scaled("energy_mj", lambda mj: mj / 1000))
        if energy:  # only where the GPU source reports energy at all
            out += _family("spoold_gpu_energy_joules_total", "counter",
                           "GPU energy used since the driver loaded.", energy)
        return out

    def _wait_family(self) -> list[str]:
        samples, total = [], 0
        for bound, n in zip(self.buckets, self.wait_counts, strict=True):
            total += n
            samples.append(("_bucket", {"le": _num(bound)}, total))
        total += self.wait_over
        samples += [("_bucket", {"le": "+Inf"}, total), ("_sum", {}, self.wait_sum),
                    ("_count", {}, total)]
        return _family("spoold_queue_wait_seconds", "histogram",
                       "Seconds from queueing to start, of jobs started since this daemon "
                       "started.", samples)


# ---- the file --------------------------------------------------------------------
def _current(path: Path, size: int) -> bytes | None:
    """What the regular file at ``path`` holds (at most ``size`` bytes), or
    None: nothing there, a link (not followed), a FIFO or device (not opened
    for long: O_NONBLOCK), or unreadable. Any None means "write it"."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, size) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except OSError:
        return None
    finally:
        os.close(fd)


def write(path: Path, text: str) -> bool:
    """Replace ``path`` with ``text`` (mode 0644) in one rename, unless the
    regular file there already holds exactly ``text``; True if it wrote. The
    file itself is the memory of the last write, so a file someone removed or
    changed is written again at the next call, and a restarted daemon does
    not rewrite an identical file. The temp file is made with
    O_EXCL|O_NOFOLLOW beside ``path``; a link at ``path`` is replaced, never
    followed (nor read). OSError on any failure, with the temp file removed."""
    path = Path(path)
    data = text.encode()
    if _current(path, len(data) + 1) == data:
        return False
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)
    try:
        try:
            os.fchmod(fd, 0o644)  # node_exporter runs as another user; ignore the umask
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return True
