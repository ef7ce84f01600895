"""GPU readings: NVML (``pynvml`` from nvidia-ml-py) or a fake file, one code path.

Owns: turning the hardware (or ``--fake-gpus FILE``) into ``GpuReading``
values, with the processes on each GPU; which of those processes are not our
jobs (``foreign``); and the rule that says whether a GPU is idle enough
(``busy_reason``).

Invariants:
- One code path. ``_Devices`` reads every GPU through a pynvml-shaped binding:
  ``pynvml`` itself for real GPUs, ``_FileBinding`` (the fake file answering
  the same calls: MiB become bytes, an entry's ``error`` an NVMLError) for
  ``--fake-gpus``. Whatever NVML reports is read in one place, and the fake
  file drives that place; nothing downstream can tell a fake GPU from a real one.
- A GPU whose reading fails, or answers "N/A", is a reading with ``error`` set:
  busy, with the error as its reason. One bad GPU never hides the others.
- A process list is known or not: ``processes_error`` is None only when it was
  read. A figure NVML does not give (``usedGpuMemory`` N/A) is None, never a guess.
  A GPU whose process list cannot be read is judged by its reading alone.
- A GPU in MIG mode is one reading with an error (busy, never used): spoold
  places jobs on whole GPUs, and does not enumerate MIG instances. Its process
  list (NVML's aggregate over the instances) is still read where NVML allows.
- The owner of a process comes from the kernel (/proc/PID/status), never from NVML.
- The fake file is re-read at every poll, so editing it simulates load.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import pwd
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Protocol

import yaml

log = logging.getLogger("spoold")

MIG_ERROR = "MIG mode is on: spoold places jobs on whole GPUs only"
# NVML_VALUE_NOT_AVAILABLE as an unsigned long long, for a binding that does
# not turn it into None itself.
_NOT_AVAILABLE = (1 << 64) - 1


@dataclass(frozen=True)
class GpuProcess:
    """A process NVML lists on a GPU. ``kind`` is nvidia-smi's Type: "C"
    (compute), "G" (graphics only: a display server) or "C+G"."""

    pid: int
    used_mib: int | None = None  # None: NVML says N/A
    kind: str = "C"


@dataclass(frozen=True)
class GpuReading:
    index: int
    uuid: str = ""
    name: str = ""
    memory_total: int | None = None  # MiB
    memory_used: int | None = None  # MiB
    utilization: int | None = None  # percent
    error: str | None = None
    processes: tuple[GpuProcess, ...] = ()  # by pid
    # Why ``processes`` is not known; None only when the list was read. A
    # reading made up without asking NVML (a GPU not found) knows no processes.
    processes_error: str | None = "not read"

    @property
    def memory_free(self) -> int | None:
        if self.memory_total is None or self.memory_used is None:
            return None
        return max(0, self.memory_total - self.memory_used)

    def as_dict(self) -> dict:
        """For the heartbeat: the reading, and ``processes`` as [pid, MiB, kind]
        triples (MiB null when N/A), or null when the list is not known."""
        d = {k: getattr(self, k) for k in
             ("index", "uuid", "name", "memory_total", "memory_used", "utilization", "error")}
        d["processes"] = None if self.processes_error else [
            [p.pid, p.used_mib, p.kind] for p in self.processes]
        return d


def busy_reason(r: GpuReading, max_load: float, max_memory: float,
                foreign: Sequence[tuple[int, str]] = ()) -> str | None:
    """None if the GPU is idle enough for a job; else why it is busy (shown in
    gstat). ``foreign`` is ``foreign(r, ...)``: any such process makes the GPU
    busy, whatever its utilization."""
    if r.error:
        return f"reading failed: {r.error}"
    if foreign:
        pid, owner = foreign[0]
        if len(foreign) == 1:
            return f"pid {pid} ({owner}) is not a spoold job"
        return f"pid {pid} ({owner}) and {len(foreign) - 1} more are not spoold jobs"
    if r.utilization is None or r.memory_total is None or r.memory_used is None:
        return "reading incomplete (N/A)"
    if r.utilization / 100.0 >= max_load:
        return f"utilization {r.utilization}% >= {max_load:.0%}"
    frac = r.memory_used / r.memory_total if r.memory_total else 1.0
    if frac >= max_memory:
        return f"memory {frac:.0%} used >= {max_memory:.0%}"
    return None


def foreign(r: GpuReading, is_job: Callable[[int], bool]) -> list[tuple[int, str]]:
    """(pid, owner) of each process on the GPU that ``is_job`` does not claim,
    by pid; the owner is a user name, or the uid as a string when it has none.
    A process that no longer exists is skipped. Graphics-only processes (a
    display server on a workstation's GPU) are not counted: they sit there
    for good and share the GPU with any job."""
    out = []
    for p in r.processes:
        if p.kind == "G" or is_job(p.pid):
            continue
        owner = _owner(p.pid)
        if owner is not None:
            out.append((p.pid, owner))
    return out


def _owner(pid: int) -> str | None:
    """The real uid of ``pid`` as a name, "?" if the kernel hides it (hidepid),
    None if there is no such process."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    uid = int(line.split()[1])
                    break
            else:
                return None  # a kernel without Uid: cannot happen on Linux
    except (FileNotFoundError, ProcessLookupError):
        try:  # gone, or hidden from us by hidepid?
            os.kill(pid, 0)
        except OSError as e:
            return "?" if e.errno == errno.EPERM else None
        return "?"
    except (OSError, ValueError, IndexError):
        return "?"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class GpuSource(Protocol):
    description: str

    def read(self) -> list[GpuReading]: ...


class _Devices:
    """The one code path from a pynvml-shaped binding ``nv`` to readings."""

    def __init__(self, nv, cache_static: bool = True):
        self.nv = nv
        # uuid and name never change while the driver is loaded.
        self._static: dict[int, tuple[str, str]] | None = {} if cache_static else None
        # The process-list calls to try, newest first; a version this driver
        # lacks is dropped at its first refusal.
        self._calls = {kind: [n for n in (f"nvmlDeviceGet{what}RunningProcesses{v}"
                                          for v in ("_v3", "_v2", "")) if hasattr(nv, n)]
                       for kind, what in (("C", "Compute"), ("G", "Graphics"))}
        self._missing = tuple(e for e in (getattr(nv, "NVMLError_FunctionNotFound", None),
                                          getattr(nv, "NVMLLibraryMismatchError", None))
                              if isinstance(e, type))

    def read(self, indices: Iterable[int]) -> list[GpuReading]:
        return [self._one(i) for i in indices]

    def _one(self, i: int) -> GpuReading:
        nv = self.nv
        try:
            h = nv.nvmlDeviceGetHandleByIndex(i)
            uuid, name = self._ids(i, h)
        except nv.NVMLError as e:
            return GpuReading(index=i, error=str(e))
        procs, procs_error = self._processes(h)
        known = {"index": i, "uuid": uuid, "name": name, "processes": procs,
                 "processes_error": procs_error}
        if self._mig(h):
            return GpuReading(**known, error=MIG_ERROR)
        try:
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            util = nv.nvmlDeviceGetUtilizationRates(h)
        except nv.NVMLError as e:  # includes NotSupported, i.e. "N/A"
            return GpuReading(**known, error=str(e))
        return GpuReading(**known, memory_total=_mib(mem.total), memory_used=_mib(mem.used),
                          utilization=_count(util.gpu))

    def _ids(self, i: int, h) -> tuple[str, str]:
        if self._static is not None and i in self._static:
            return self._static[i]
        ids = (_text(self.nv.nvmlDeviceGetUUID(h)), _text(self.nv.nvmlDeviceGetName(h)))
        if self._static is not None:
            self._static[i] = ids
        return ids

    def _mig(self, h) -> bool:
        get = getattr(self.nv, "nvmlDeviceGetMigMode", None)
        if get is None:
            return False
        try:
            return get(h)[0] == 1  # (current, pending); 1 is NVML_DEVICE_MIG_ENABLE
        except self.nv.NVMLError:  # NotSupported: a GPU without MIG
            return False

    def _processes(self, h) -> tuple[tuple[GpuProcess, ...], str | None]:
        """The compute list decides whether processes are known; the graphics
        list only adds to it (some GPUs and drivers refuse it)."""
        lists: dict[str, list] = {}
        for kind in ("C", "G"):
            try:
                got = self._list(kind, h)
            except self.nv.NVMLError as e:
                if kind == "C":
                    return (), str(e)
                continue
            if got is None and kind == "C":
                return (), "no process list in this NVML"
            lists[kind] = got or []
        return _merge(lists), None

    def _list(self, kind: str, h) -> list | None:
        calls = self._calls[kind]
        while calls:
            try:
                return getattr(self.nv, calls[0])(h)
            except self._missing:  # the driver is older than this call
                calls.pop(0)
        return None


def _merge(lists: dict[str, list]) -> tuple[GpuProcess, ...]:
    """One GpuProcess per pid. Within a list a pid's entries add up (one per
    MIG instance it uses); a pid in both lists is "C+G", with the larger figure
    (NVML gives a process's whole memory in each)."""
    seen: dict[int, dict[str, int | None]] = {}
    for kind, listed in lists.items():
        for p in listed:
            pid, mib = int(p.pid), _proc_mib(getattr(p, "usedGpuMemory", None))
            per = seen.setdefault(pid, {})
            if kind in per:
                mib = None if per[kind] is None or mib is None else per[kind] + mib
            per[kind] = mib
    out = []
    for pid, per in sorted(seen.items()):
        known = [m for m in per.values() if m is not None]
        out.append(GpuProcess(pid, max(known) if known else None, "+".join(sorted(per))))
    return tuple(out)


def _mib(v: object) -> int | None:
    return None if not isinstance(v, int) else v >> 20


def _proc_mib(v: object) -> int | None:
    return None if not isinstance(v, int) or v < 0 or v >= _NOT_AVAILABLE else v >> 20


def _count(v: object) -> int | None:
    return int(v) if isinstance(v, int) else None


def _text(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v


class NvmlGpus:
    """Real GPUs through NVML. Construction fails (ImportError/RuntimeError) if none.
    ``nvmlDeviceGetCount`` counts physical GPUs, MIG or not; it is read once."""

    def __init__(self):
        import pynvml  # nvidia-ml-py

        try:
            pynvml.nvmlInit()
            self._count = pynvml.nvmlDeviceGetCount()
            driver = pynvml.nvmlSystemGetDriverVersion()
        except pynvml.NVMLError as e:
            raise RuntimeError(f"NVML unavailable: {e}") from None
        self.description = f"NVML, driver {_text(driver)}, {self._count} GPU(s)"
        self._devices = _Devices(pynvml)

    def read(self) -> list[GpuReading]:
        return self._devices.read(range(self._count))


# The fake file's fields (docs/spool-format.md, FAKE GPUS, lists exactly these).
FAKE_FIELDS = ("index", "uuid", "name", "memory_total", "memory_used", "utilization", "error",
               "processes")
FAKE_PROCESS_FIELDS = ("pid", "used_memory")


class FakeGpus:
    """``--fake-gpus FILE``: a YAML list of mappings, re-read at every poll."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.description = f"fake GPUs from {self.path}"
        self._last: list[GpuReading] = []

    def read(self) -> list[GpuReading]:
        try:
            raw = yaml.load(self.path.read_bytes(), Loader=getattr(yaml, "CSafeLoader",
                                                                 yaml.SafeLoader))
            if raw is None:
                raw = []
            if not isinstance(raw, list):
                raise ValueError("not a YAML list")
        except (OSError, ValueError, yaml.YAMLError) as e:
            # Keep the GPUs we knew, all busy, rather than pretending they vanished.
            err = f"fake GPU file unreadable: {' '.join(str(e).split())[:120]}"
            return [GpuReading(index=r.index, uuid=r.uuid, name=r.name, error=err)
                    for r in self._last]
        binding = _FileBinding(raw)
        # The names may change with the file: nothing is cached across polls.
        self._last = _Devices(binding, cache_static=False).read(binding.indices())
        return self._last


class _FakeNvmlError(Exception):
    """The fake binding's NVMLError; like pynvml's, its str() is the message."""


class _FileBinding:
    """The fake file answering the pynvml calls ``_Devices`` makes. A handle
    is (index, entry); an entry that is not a usable mapping is a GPU whose
    every call fails, at its position in the file."""

    NVMLError = _FakeNvmlError

    def __init__(self, raw: list):
        self._by_index: dict[int, tuple[int, object]] = {}
        for pos, item in enumerate(raw):
            index = item.get("index", pos) if isinstance(item, dict) else pos
            if not isinstance(item, dict):
                item = "fake entry is not a mapping"
            elif not isinstance(index, int) or isinstance(index, bool):
                index, item = pos, "fake entry has a bad index"
            self._by_index[index] = (index, item)  # a repeated index: the last wins

    def indices(self) -> list[int]:
        return list(self._by_index)

    def nvmlDeviceGetHandleByIndex(self, i: int):
        if i not in self._by_index:
            raise _FakeNvmlError("Not Found")
        index, item = self._by_index[i]
        if isinstance(item, str):
            raise _FakeNvmlError(item)
        return index, item

    def nvmlDeviceGetUUID(self, h) -> str:
        return str(h[1].get("uuid", f"GPU-fake-{h[0]}"))

    def nvmlDeviceGetName(self, h) -> str:
        return str(h[1].get("name", "Fake GPU"))

    def nvmlDeviceGetMemoryInfo(self, h):
        item = self._working(h)
        return SimpleNamespace(total=_bytes(item.get("memory_total")),
                               used=_bytes(item.get("memory_used")))

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=_number(self._working(h).get("utilization")))

    def nvmlDeviceGetComputeRunningProcesses(self, h) -> list:
        listed = h[1].get("processes", [])
        if not isinstance(listed, list):
            raise _FakeNvmlError("fake processes is not a list")
        out = []
        for p in listed:
            pid = p.get("pid") if isinstance(p, dict) else None
            if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
                raise _FakeNvmlError("fake process without a positive integer pid")
            out.append(SimpleNamespace(pid=pid, usedGpuMemory=_bytes(p.get("used_memory"))))
        return out

    @staticmethod
    def _working(h) -> dict:
        if h[1].get("error"):
            raise _FakeNvmlError(str(h[1]["error"]))
        return h[1]


def _number(v: object) -> int | None:
    """A YAML number as an int; anything else (text, bool, NaN) as N/A."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return int(v) if math.isfinite(v) else None


def _bytes(mib: object) -> int | None:
    n = _number(mib)
    return None if n is None else n << 20


def open_source(fake: Path | None) -> GpuSource | None:
    """The GPU source to poll, or None for a CPU-only machine."""
    if fake is not None:
        return FakeGpus(fake)
    try:
        src = NvmlGpus()
    except (ImportError, RuntimeError, OSError) as e:
        log.info("no GPUs found (%s): running CPU-only; jobs asking for GPUs will fail", e)
        return None
    if not src.read():
        log.info("NVML found no GPUs: running CPU-only; jobs asking for GPUs will fail")
        return None
    return src
