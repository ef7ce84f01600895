"""The job record: parse untrusted bytes, validate, serialise.

Owns: the set of known fields, their types, ranges and defaults (``MAX_ID``,
``DEFAULT_GPUS``, ``DEFAULT_PRIORITY`` and ``MAX_PRIORITY`` are defined here
and nowhere else in Python), and the YAML dialect (libyaml's safe loader and
dumper). Knows nothing about folders.

Invariants:
- Only ``yaml.CSafeLoader`` (or the pure-Python SafeLoader) ever parses a job,
  but for the dialect gsub and the daemon write, which ``quickyaml.load``
  reads exactly as it would, faster.
- ``parse`` either returns a ``Job`` whose typed attributes are valid, or
  raises ``JobError`` with a reason a user can act on; it never raises
  anything else for any input bytes.
- ``Job.data`` keeps every field of the file in order (``x-`` fields too), so a
  record rewritten by the daemon loses nothing the submitter wrote.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from .quickyaml import emit
from .quickyaml import load as quick_load

try:
    _SafeLoader = yaml.CSafeLoader
    _SafeDumper = yaml.CSafeDumper
except AttributeError:  # PyYAML built without libyaml
    _SafeLoader = yaml.SafeLoader
    _SafeDumper = yaml.SafeDumper

MAX_GPUS = 1024
MAX_HEAD_SCAN = 1 << 20
# Ids are at most 8 digits, the width of the id in pending/ names
# (PPPP-IIIIIIII.yaml); gsub refuses to hand out a larger one.
MAX_ID = 99_999_999
# What a job gets when its file does not say (gsub writes the same default:
# tests/test_conformance.py checks), and the priority range: 4 digits, the
# width of the priority in pending/ names.
DEFAULT_GPUS = 1
DEFAULT_PRIORITY = 10
MAX_PRIORITY = 9999
# A umask as the shell prints it ('0022') or as SLURM_UMASK has it ('022').
_UMASK_RE = re.compile(r"0?[0-7]{3}")

_STR, _INT, _NUM, _BOOL = "string", "integer", "number", "true/false"
# Fields a submitter writes, with their type; see docs/spool-format.md.
SUBMIT_FIELDS: dict[str, str] = {
    "id": _INT, "argv": "list", "cmd": _STR, "shell": _STR, "name": _STR,
    "gpus": _INT, "gpu_mem": _INT, "priority": _INT, "cwd": _STR, "user": _STR, "umask": _STR,
    "submitted_at": _NUM, "time_limit": _NUM, "cpus": _INT, "mem": _INT,
    "after": "list", "hold": _BOOL, "log": _STR, "on_finish": _STR,
    "pin_host": _STR, "requeue": _BOOL, "array_id": _INT, "array_index": _INT,
    "array_limit": _INT, "env": "mapping", "requeued_from": _INT, "slurm": "mapping",
}
# Fields the daemon adds as the job moves; known, so a record put back in
# pending/ after a crash still parses.
DAEMON_FIELDS: dict[str, str] = {
    "uid": _INT, "assigned_gpus": "list", "assigned_cpus": "list", "pid": _INT,
    "host": _STR, "claimed_at": _NUM, "started_at": _NUM, "ended_at": _NUM,
    "exit_code": _INT, "reason": _STR, "kill_reason": _STR, "original_name": _STR,
    "enforced": "mapping", "slurm_id": _STR, "executor": _STR, "hook_started_at": _NUM,
    "slurm_state": _STR, "slurm_reason": _STR, "slurm_queued_at": _NUM,
    "outcome": _STR, "usage": "mapping", "energy_start_mj": "mapping",
}
KNOWN_FIELDS = {**SUBMIT_FIELDS, **DAEMON_FIELDS}


class JobError(Exception):
    """The file is not a valid job; str(e) is the reason shown to the user."""


@dataclass
class Job:
    data: dict[str, Any]
    id: int = 0
    argv: list[str] | None = None
    cmd: str | None = None
    gpus: int = DEFAULT_GPUS
    gpu_mem: int = 0
    priority: int = DEFAULT_PRIORITY
    cpus: int = 0
    mem: int = 0
    time_limit: float | None = None
    after: list[int] = field(default_factory=list)
    hold: bool = False
    env: dict[str, str] | None = None
    name: str = ""
    umask: int | None = None  # the submitter's umask (``umask: '0022'``), for the job

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


def parse(raw: bytes) -> Job:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JobError(f"not UTF-8 text (byte {e.start}): job files are UTF-8 YAML") from None
    if not text.strip():
        raise JobError("empty file: a job needs at least `argv:` or `cmd:`")
    try:
        data = quick_load(text)
        if data is None:  # outside the dialect gsub and the daemon write
            data = yaml.load(text, Loader=_SafeLoader)
    except yaml.YAMLError as e:
        raise JobError("invalid YAML: " + " ".join(str(e).split())[:300]) from None
    except (RecursionError, MemoryError):
        raise JobError("invalid YAML: nested too deeply") from None
    if not isinstance(data, dict):
        raise JobError(f"a job file must be a YAML mapping, not {_tname(data)}")
    return validate(data)


def parse_head(raw: bytes) -> Job:
    """What the queue needs, fast: gsub writes ``env:`` (often most of the
    file) last, so parse only the fields before it. Exact whenever nothing but
    env follows (every later line is indented); otherwise a full ``parse``.
    The full file is still parsed and validated when the job is claimed."""
    i = raw.find(b"\nenv:")
    if i < 0 or len(raw) > MAX_HEAD_SCAN:
        return parse(raw)
    tail = raw[i + 5:].split(b"\n")[1:]
    if any(line and not line.startswith((b" ", b"\t")) for line in tail):
        return parse(raw)
    return parse(raw[: i + 1])


def validate(data: dict[str, Any]) -> Job:
    unknown = [k for k in data if not (isinstance(k, str) and (k in KNOWN_FIELDS
                                                              or k.startswith("x-")))]
    if unknown:
        parts = []
        for k in unknown:
            hint = difflib.get_close_matches(str(k), KNOWN_FIELDS, n=1)
            parts.append(f"{k!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        raise JobError("unknown field(s): " + ", ".join(parts)
                       + "; custom fields must start with 'x-'")
    umask = data.get("umask")
    if umask is not None and not (isinstance(umask, str) and _UMASK_RE.fullmatch(umask)):
        raise JobError(f"`umask` must be 3 or 4 octal digits in quotes, like umask: '0022'; "
                       f"not {umask!r}")
    for k, kind in KNOWN_FIELDS.items():
        if k in data and data[k] is not None and not _is(kind, data[k]):
            raise JobError(f"field {k!r} must be a {kind}, not {_tname(data[k])}")

    job = Job(data=data)
    argv, cmd = data.get("argv"), data.get("cmd")
    if (argv is None) == (cmd is None):
        raise JobError("a job needs exactly one of `argv:` (list of strings) or `cmd:` (string)")
    if argv is not None:
        if not argv or not all(isinstance(a, str) for a in argv):
            raise JobError("`argv` must be a non-empty list of strings")
        job.argv = list(argv)
    else:
        if not cmd.strip():
            raise JobError("`cmd` is empty")
        job.cmd = cmd
    job.id = _int_in(data, "id", 0, 1, MAX_ID)
    # array_limit below 1 would keep every element pending for ever
    for key, lo in (("array_id", 1), ("array_index", 0), ("array_limit", 1),
                    ("requeued_from", 1)):
        _int_in(data, key, 0, lo, MAX_ID)
    job.gpus = _int_in(data, "gpus", DEFAULT_GPUS, 0, MAX_GPUS)
    job.gpu_mem = _int_in(data, "gpu_mem", 0, 0, 1 << 40)
    if job.gpu_mem and job.gpus != 1:
        raise JobError("`gpu_mem` asks for a slice of one GPU: `gpus` must be 1 with it")
    job.priority = _int_in(data, "priority", DEFAULT_PRIORITY, 0, MAX_PRIORITY)
    job.cpus = _int_in(data, "cpus", 0, 0, 1 << 20)
    job.mem = _int_in(data, "mem", 0, 0, 1 << 40)
    tl = data.get("time_limit")
    if tl is not None:
        if not (math.isfinite(tl) and tl > 0):
            raise JobError("`time_limit` must be a positive number of seconds")
        job.time_limit = float(tl)
    after = data.get("after")
    if after is not None:
        if not all(isinstance(a, int) and not isinstance(a, bool) and 0 < a <= MAX_ID
                   for a in after):
            raise JobError(f"`after` must be a list of job ids (integers 1 to {MAX_ID})")
        job.after = list(after)
    job.hold = bool(data.get("hold"))
    if umask is not None:
        job.umask = int(umask, 8)
    env = data.get("env")
    if env is not None:
        if not all(isinstance(k, str) and isinstance(v, str) and k and "=" not in k
                   and "\0" not in k + v for k, v in env.items()):
            raise JobError("`env` must map variable names to strings")
        job.env = dict(env)
    strings = [*(job.argv or [job.cmd])]
    if any("\0" in s for s in strings):
        raise JobError("the command contains a NUL character, which no program can receive")
    cwd = data.get("cwd")
    if cwd is not None and not cwd.startswith("/"):
        raise JobError("`cwd` must be an absolute path")
    _check_slurm(data.get("slurm"))
    job.name = str(data.get("name") or _default_name(job))
    return job


# `slurm:` pass-through options (sbatch --KEY=VALUE; only the SLURM executor
# runs such a job). One word of what SLURM's names and constraint expressions
# use: never a leading dash, a space, '=' or a quote.
SLURM_OPTIONS = ("partition", "account", "qos", "constraint")
_SLURM_VALUE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.,:|&*!()\[\]+-]{0,199}")


def _check_slurm(slurm) -> None:
    if slurm is None:
        return
    for k, v in slurm.items():
        if k not in SLURM_OPTIONS:
            raise JobError(f"`slurm` takes {', '.join(SLURM_OPTIONS)}, not {str(k)[:40]!r}")
        if not (isinstance(v, str) and _SLURM_VALUE.fullmatch(v)):
            raise JobError(f"`slurm.{k}` must be one word of letters, digits and _.,:|&*!()[]+- "
                           "(not starting with - or +)")


def _default_name(job: Job) -> str:
    if job.argv:
        return job.argv[0].rsplit("/", 1)[-1][:40]
    words = (job.cmd or "").split()
    return words[0][:40] if words else "job"


def _int_in(data: dict, key: str, default: int, lo: int, hi: int) -> int:
    v = data.get(key)
    if v is None:
        return default
    if not lo <= v <= hi:
        raise JobError(f"`{key}` must be between {lo} and {hi}, not {v}")
    return v


def _is(kind: str, v: Any) -> bool:
    if kind == _STR:
        return isinstance(v, str)
    if kind == _BOOL:
        return isinstance(v, bool)
    if kind == _INT:
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == _NUM:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind == "list":
        return isinstance(v, list)
    return isinstance(v, dict)


def _tname(v: Any) -> str:
    if v is None:
        return "nothing"
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false",
            list: "a list", dict: "a mapping"}.get(type(v), type(v).__name__)


class _RecordDumper(_SafeDumper):
    """Block style, except short lists of scalars (``assigned_gpus: [0, 3]``)."""


def _represent_list(dumper, data):
    flow = len(data) <= 64 and all(isinstance(x, (int, float, str)) and not isinstance(x, bool)
                                   and (not isinstance(x, str) or len(x) < 200) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_RecordDumper.add_representer(list, _represent_list)


def dump(data: dict[str, Any]) -> bytes:
    """Serialise a record: field order kept, text left readable. The fast
    emitter (``spoold.emit``) when the record is in its dialect, else PyYAML."""
    text = emit(data)
    if text is not None:
        return text.encode("utf-8")
    return yaml.dump(data, Dumper=_RecordDumper, sort_keys=False, allow_unicode=True,
                     width=10**9, default_flow_style=False).encode("utf-8")


def load_record(raw: bytes) -> dict[str, Any]:
    """Load a record the daemon itself wrote (still with the safe loader);
    JobError for anything that is not a YAML mapping in UTF-8."""
    try:
        text = raw.decode("utf-8")
        data = quick_load(text)
        if data is None:
            data = yaml.load(text, Loader=_SafeLoader)
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError) as e:
        raise JobError(f"record is not valid YAML: {' '.join(str(e).split())[:200]}") from None
    if not isinstance(data, dict):
        raise JobError("record is not a mapping")
    return data
