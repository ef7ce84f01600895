"""GPU readings: NVML (``pynvml`` from nvidia-ml-py) or a fake file, one code path.

Owns: turning the hardware (or ``--fake-gpus FILE``) into ``GpuReading``
values, with the processes on each GPU; which of those processes are not our
jobs (``foreign``); and the rule that says whether a GPU is idle enough
(``busy_reason``); each GPU's health counters (ECC errors, pages pending a
reset, critical Xid events, lost), its energy counter, and the rule that says
when a GPU turned unhealthy (``health_problem``).

Invariants:
- One code path. ``_Devices`` reads every GPU through a pynvml-shaped binding:
  ``pynvml`` itself for real GPUs, ``fakegpus._FileBinding`` (the fake file
  answering the same calls) for ``--fake-gpus``. Whatever NVML reports is read
  in one place, and the fake file drives that place; nothing downstream can
  tell a fake GPU from a real one.
- A GPU whose reading fails, or answers "N/A", is a reading with ``error`` set:
  busy, with the error as its reason. One bad GPU never hides the others.
- A process list is known or not: ``processes_error`` is None only when it was
  read. A figure NVML does not give (``usedGpuMemory`` N/A) is None, never a guess.
  A GPU whose process list cannot be read is judged by its reading alone.
- A GPU in MIG mode is one reading with an error (busy, never used): spoold
  places jobs on whole GPUs, and does not enumerate MIG instances. Its process
  list (NVML's aggregate over the instances) is still read where NVML allows.
- The owner of a process comes from the kernel (/proc/PID/status), never from NVML.
- Health and energy are read for every GPU that has a handle, even one whose
  memory or utilization reading fails. "Not supported" (or any refusal) means
  unknown: None, or no Xid events; never unhealthy. "GPU is lost" (or "requires
  reset") from any call makes the reading ``lost``, with that error.
- ``xid`` holds the Xid events since the previous reading, each reported once.
"""

from __future__ import annotations

import errno
import logging
import os
import pwd
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

log = logging.getLogger("spoold")

MIG_ERROR = "MIG mode is on: spoold places jobs on whole GPUs only"
# NVML_VALUE_NOT_AVAILABLE as an unsigned long long, for a binding that does
# not turn it into None itself.
_NOT_AVAILABLE = (1 << 64) - 1
# NVML's values, for a binding that lacks the names.
_XID_EVENT = 8  # nvmlEventTypeXidCriticalError
_LOST_CODES = (15, 16)  # NVML_ERROR_GPU_IS_LOST, NVML_ERROR_RESET_REQUIRED
_MAX_EVENTS = 1000  # per reading: a GPU flooding Xids must not stall the poll


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
    ecc_uncorrected: int | None = None  # volatile uncorrected ECC errors
    retired_pages_pending: bool | None = None  # retired pages or remapped rows await a reset
    lost: bool = False  # "GPU is lost" (or "requires reset"): ``error`` says which
    xid: tuple[int, ...] = ()  # Xid events since the previous reading, in order
    energy_mj: int | None = None  # total energy since the driver loaded

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
        # Health and energy only when known, and lost/xid only when set.
        for k in ("ecc_uncorrected", "retired_pages_pending", "energy_mj"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.lost:
            d["lost"] = True
        if self.xid:
            d["xid"] = list(self.xid)
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


# NVIDIA's Xid table: the well-known hardware ones, named in a drain's reason.
XID_NAMES = {48: "double-bit ECC error", 63: "page retirement or row remapping recorded",
             64: "page retirement or row remapping failed", 74: "NVLink error",
             79: "fell off the bus", 92: "high single-bit ECC error rate",
             94: "contained ECC error", 95: "uncontained ECC error"}
# Xids that NVIDIA's table puts down to the application (a bad kernel, an
# illegal address, a process killed mid-kernel): one user's broken program, or
# spoold ending a job, must not drain a GPU. 13: graphics engine exception,
# 31: GPU memory page fault, 43: GPU stopped processing, 45: preemptive
# cleanup (a killed process), 68: video decoder exception.
APP_XIDS = frozenset({13, 31, 43, 45, 68})


def health_problem(prev: GpuReading | None, now: GpuReading) -> str | None:
    """Why GPU ``now`` should be drained, or None: the problems that appeared
    since ``prev`` (the same GPU's previous reading; None at the first). A
    state that lasts is reported once, when it first shows: the GPU is lost;
    the uncorrected ECC count rose (a first known count above 0 counts);
    retired pages or remapped rows are pending; a hardware Xid arrived (not
    one of ``APP_XIDS``). Unknown figures are never a problem."""
    out = []
    if now.lost and not (prev and prev.lost):
        out.append(now.error or "GPU is lost")
    out += [f"Xid {x} ({XID_NAMES[x]})" if x in XID_NAMES else f"Xid {x}"
            for x in dict.fromkeys(now.xid) if x not in APP_XIDS]
    n, p = now.ecc_uncorrected, prev.ecc_uncorrected if prev else None
    if n and (p is None or n > p):
        out.append(f"{n} uncorrected ECC errors" if p is None
                   else f"uncorrected ECC errors rose from {p} to {n}")
    if now.retired_pages_pending and not (prev and prev.retired_pages_pending):
        out.append("retired pages or remapped rows pending a GPU reset")
    return "; ".join(out) or None


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


class _GpuLost(Exception):
    """A call said "GPU is lost" (or "requires reset"): the reading is over.
    Not an NVMLError, so no handler for a refused call can swallow it."""


class _Guarded:
    """The binding, with every ``nvml*`` call turning a lost-GPU error into
    ``_GpuLost``; everything else (error classes, constants) passes through."""

    def __init__(self, nv):
        self._nv = nv
        self._lost = tuple(t for n in ("NVMLError_GpuIsLost", "NVMLError_ResetRequired")
                           if isinstance(t := getattr(nv, n, None), type))

    def __getattr__(self, name: str):
        got = getattr(self._nv, name)
        if not (name.startswith("nvml") and callable(got)):
            return got

        def call(*args):
            try:
                return got(*args)
            except self._nv.NVMLError as e:
                if isinstance(e, self._lost) or getattr(e, "value", None) in _LOST_CODES:
                    raise _GpuLost(str(e)) from None
                raise
        setattr(self, name, call)  # found by plain lookup from now on
        return call


class _Devices:
    """The one code path from a pynvml-shaped binding ``nv`` to readings."""

    def __init__(self, nv, cache_static: bool = True):
        self.nv = _Guarded(nv)
        # uuid and name never change while the driver is loaded; the last
        # ones seen also name a GPU whose reading fails before asking again.
        self._cache_static = cache_static
        self._ids_seen: dict[int, tuple[str, str]] = {}
        # The process-list calls to try, newest first; a version this driver
        # lacks is dropped at its first refusal.
        self._calls = {kind: [n for n in (f"nvmlDeviceGet{what}RunningProcesses{v}"
                                          for v in ("_v3", "_v2", "")) if hasattr(nv, n)]
                       for kind, what in (("C", "Compute"), ("G", "Graphics"))}
        self._missing = tuple(e for e in (getattr(nv, "NVMLError_FunctionNotFound", None),
                                          getattr(nv, "NVMLLibraryMismatchError", None))
                              if isinstance(e, type))
        self._events = None  # the Xid event set; False: this driver has none
        self._watched: set[int] = set()  # GPUs registered (or refused) for Xid events

    def read(self, indices: Iterable[int]) -> list[GpuReading]:
        readings = [self._one(i) for i in indices]
        xids = self._drain_events()  # after registering, so a new GPU's first events count
        return [replace(r, xid=tuple(xids[r.index])) if r.index in xids else r
                for r in readings]

    def _one(self, i: int) -> GpuReading:
        try:
            return self._read_one(i)
        except _GpuLost as e:
            uuid, name = self._ids_seen.get(i, ("", ""))
            return GpuReading(index=i, uuid=uuid, name=name, error=str(e), lost=True)

    def _read_one(self, i: int) -> GpuReading:
        nv = self.nv
        try:
            h = nv.nvmlDeviceGetHandleByIndex(i)
            self._watch(i, h)
            uuid, name = self._ids(i, h)
        except nv.NVMLError as e:
            uuid, name = self._ids_seen.get(i, ("", ""))
            return GpuReading(index=i, uuid=uuid, name=name, error=str(e))
        procs, procs_error = self._processes(h)
        known = {"index": i, "uuid": uuid, "name": name, "processes": procs,
                 "processes_error": procs_error, **self._health(h)}
        if self._mig(h):
            return GpuReading(**known, error=MIG_ERROR)
        try:
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            util = nv.nvmlDeviceGetUtilizationRates(h)
        except nv.NVMLError as e:  # includes NotSupported, i.e. "N/A"
            return GpuReading(**known, error=str(e))
        return GpuReading(**known, memory_total=_mib(mem.total), memory_used=_mib(mem.used),
                          utilization=_count(util.gpu))

    def _health(self, h) -> dict:
        """The health and energy counters; each None when not known."""
        nv = self.nv
        ecc = self._ask("nvmlDeviceGetTotalEccErrors", h,
                        getattr(nv, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1),
                        getattr(nv, "NVML_VOLATILE_ECC", 0))
        # Retired pages before Ampere, remapped rows since: whichever answers.
        pending = [bool(p) for p in (self._ask("nvmlDeviceGetRetiredPagesPendingStatus", h),)
                   if p is not None]
        rows = self._ask("nvmlDeviceGetRemappedRows", h)  # (corr, unc, pending, failed)
        if rows is not None:
            pending.append(bool(rows[2] or rows[3]))
        return {"ecc_uncorrected": _count(ecc), "energy_mj": _count(
                    self._ask("nvmlDeviceGetTotalEnergyConsumption", h)),
                "retired_pages_pending": any(pending) if pending else None}

    def _ask(self, call: str, *args):
        """An optional call's answer; None if the binding lacks it or refuses."""
        get = getattr(self.nv, call, None)
        if get is None:
            return None
        try:
            return get(*args)
        except (self.nv.NVMLError, *self._missing):
            return None

    # ---- Xid events: one event set, each GPU registered at its first reading ----
    def _watch(self, i: int, h) -> None:
        if i in self._watched or self._events is False:
            return
        if self._events is None:
            self._events = self._ask("nvmlEventSetCreate")
            if self._events is None:
                self._events = False
                return
        self._ask("nvmlDeviceRegisterEvents", h, getattr(self.nv, "nvmlEventTypeXidCriticalError",
                                                         _XID_EVENT), self._events)
        self._watched.add(i)  # registered, or refused for good (NotSupported)

    def _drain_events(self) -> dict[int, list[int]]:
        """{GPU index: [Xid, ...]} of the events waiting, without waiting."""
        out: dict[int, list[int]] = {}
        if not self._events:
            return out
        wait = getattr(self.nv, "nvmlEventSetWait_v2", None) or getattr(
            self.nv, "nvmlEventSetWait", None)
        for _ in range(_MAX_EVENTS if wait else 0):
            try:
                data = wait(self._events, 0)
            except (self.nv.NVMLError, _GpuLost):  # Timeout: none left
                break
            if not int(data.eventType) & _XID_EVENT:
                continue
            try:
                index = self.nv.nvmlDeviceGetIndex(data.device)
            except (self.nv.NVMLError, _GpuLost):
                continue  # a GPU that cannot say which it is: its own calls will tell
            out.setdefault(int(index), []).append(int(data.eventData))
        return out

    def _ids(self, i: int, h) -> tuple[str, str]:
        if self._cache_static and i in self._ids_seen:
            return self._ids_seen[i]
        ids = (_text(self.nv.nvmlDeviceGetUUID(h)), _text(self.nv.nvmlDeviceGetName(h)))
        self._ids_seen[i] = ids
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


def open_source(fake: Path | None,
                why_none: str = "running CPU-only: jobs asking for GPUs will fail"
                ) -> GpuSource | None:
    """The GPU source to poll, or None for a CPU-only machine (logged, with
    ``why_none``: what that means for this daemon's jobs)."""
    if fake is not None:
        from .fakegpus import FakeGpus  # it builds on this module

        return FakeGpus(fake)
    try:
        src = NvmlGpus()
    except (ImportError, RuntimeError, OSError) as e:
        log.info("no GPUs found (%s); %s", e, why_none)
        return None
    if not src.read():
        log.info("NVML found no GPUs here; %s", why_none)
        return None
    return src
