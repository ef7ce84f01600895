"""``--fake-gpus FILE``: the fake GPU file, answering the pynvml calls
``gpus._Devices`` makes, so that a fake GPU is read by the same code as a real one.

Owns: the file's format (``FAKE_FIELDS``, documented in docs/spool-format.md,
FAKE GPUS) and what each field answers: MiB become bytes, ``error`` an
NVMLError for the memory and utilization calls, ``lost`` "GPU is lost" for
every call after the handle, a missing or malformed counter "Not Supported",
and ``xid`` a log whose new entries the event set reports once each.

Invariants:
- The file is re-read at every poll, so editing it simulates load; an
  unreadable file keeps the last GPUs, all busy.
- Nothing here decides anything about a GPU: ``gpus`` does, for fake and real alike.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from types import SimpleNamespace

import yaml

from .gpus import _XID_EVENT, GpuReading, _Devices

# The fake file's fields (docs/spool-format.md, FAKE GPUS, lists exactly these).
FAKE_FIELDS = ("index", "uuid", "name", "memory_total", "memory_used", "utilization", "error",
               "processes", "ecc_uncorrected", "retired_pages_pending", "lost", "xid",
               "energy_mj")
FAKE_PROCESS_FIELDS = ("pid", "used_memory")


class FakeGpus:
    """``--fake-gpus FILE``: a YAML list of mappings, re-read at every poll."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.description = f"fake GPUs from {self.path}"
        self._last: list[GpuReading] = []
        self._parse_key: tuple | None = None
        self._raw: list = []
        # One binding and one reader for good: the Xid events reported so far
        # live there. The names may change with the file: they are not cached.
        self._binding = _FileBinding()
        self._devices = _Devices(self._binding, cache_static=False)

    def read(self) -> list[GpuReading]:
        try:
            raw = self._parsed()
        except (OSError, ValueError, yaml.YAMLError) as e:
            # Keep the GPUs we knew, all busy, rather than pretending they vanished.
            err = f"fake GPU file unreadable: {' '.join(str(e).split())[:120]}"
            return [GpuReading(index=r.index, uuid=r.uuid, name=r.name, error=err)
                    for r in self._last]
        self._binding.load(raw)
        self._last = self._devices.read(self._binding.indices())
        return self._last

    def _parsed(self) -> list:
        """The file's list, parsed again only when the file changed: an idle
        daemon polls every second. A file changed within the last second is
        always read (two writes in one clock tick can leave the same mtime)."""
        st = os.stat(self.path)
        key = (st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)
        if self._parse_key == key and time.time() - st.st_mtime > 1.0:
            return self._raw
        raw = yaml.load(self.path.read_bytes(), Loader=getattr(yaml, "CSafeLoader",
                                                               yaml.SafeLoader))
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            raise ValueError("not a YAML list")
        self._parse_key, self._raw = key, raw
        return raw


class _FakeNvmlError(Exception):
    """The fake binding's NVMLError; like pynvml's, its str() is the message."""


class _FakeLost(_FakeNvmlError):
    pass


class _FakeNotSupported(_FakeNvmlError):
    pass


class _FileBinding:
    """The fake file answering the pynvml calls ``_Devices`` makes. A handle
    is (index, entry); an entry that is not a usable mapping is a GPU whose
    every call fails, at its position in the file; one with ``lost: true`` a
    GPU whose every call after the handle says "GPU is lost". The event set
    reports each ``xid`` entry of a registered GPU once: the list is a log,
    and the entries past the ones already reported are new events."""

    NVMLError = _FakeNvmlError
    NVMLError_GpuIsLost = _FakeLost

    def __init__(self):
        self._by_index: dict[int, tuple[int, object]] = {}
        self._registered: set[int] = set()
        self._reported: dict[int, int] = {}  # GPU -> xid entries reported so far
        self._queue: list[tuple[int, int]] = []  # (GPU, Xid) not yet waited for

    def load(self, raw: list) -> None:
        """The file's entries, at each poll."""
        self._by_index = {}
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

    def nvmlDeviceGetIndex(self, h) -> int:
        return h[0]

    def nvmlDeviceGetUUID(self, h) -> str:
        return str(self._alive(h).get("uuid", f"GPU-fake-{h[0]}"))

    def nvmlDeviceGetName(self, h) -> str:
        return str(self._alive(h).get("name", "Fake GPU"))

    def nvmlDeviceGetMemoryInfo(self, h):
        item = self._working(h)
        return SimpleNamespace(total=_bytes(item.get("memory_total")),
                               used=_bytes(item.get("memory_used")))

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=_number(self._working(h).get("utilization")))

    def nvmlDeviceGetComputeRunningProcesses(self, h) -> list:
        listed = self._alive(h).get("processes", [])
        if not isinstance(listed, list):
            raise _FakeNvmlError("fake processes is not a list")
        out = []
        for p in listed:
            pid = p.get("pid") if isinstance(p, dict) else None
            if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
                raise _FakeNvmlError("fake process without a positive integer pid")
            out.append(SimpleNamespace(pid=pid, usedGpuMemory=_bytes(p.get("used_memory"))))
        return out

    def nvmlDeviceGetTotalEccErrors(self, h, error_type: int, counter: int) -> int:
        return self._counter(h, "ecc_uncorrected")

    def nvmlDeviceGetTotalEnergyConsumption(self, h) -> int:
        return self._counter(h, "energy_mj")

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h) -> int:
        pending = self._alive(h).get("retired_pages_pending")
        if not isinstance(pending, bool):
            raise _FakeNotSupported("Not Supported")
        return int(pending)

    # Xid events: the fake has one event set, whatever the handle says.
    def nvmlEventSetCreate(self) -> str:
        return "fake event set"

    def nvmlDeviceRegisterEvents(self, h, types: int, event_set) -> None:
        self._alive(h)
        self._registered.add(h[0])

    def nvmlEventSetWait_v2(self, event_set, timeout_ms: int):
        if not self._queue:
            for i in sorted(self._registered):
                listed = self._xids(i)
                self._queue += [(i, x) for x in listed[self._reported.get(i, 0):]]
                self._reported[i] = len(listed)  # a shorter list starts the count over
        if not self._queue:
            raise _FakeNvmlError("Timeout")
        i, xid = self._queue.pop(0)
        return SimpleNamespace(device=(i, None), eventType=_XID_EVENT, eventData=xid)

    def _xids(self, i: int) -> list[int]:
        item = self._by_index.get(i, (i, None))[1]
        listed = item.get("xid", []) if isinstance(item, dict) else []
        return [x for x in listed if isinstance(x, int) and not isinstance(x, bool)] \
            if isinstance(listed, list) else []

    def _counter(self, h, key: str) -> int:
        n = _number(self._alive(h).get(key))
        if n is None or n < 0:
            raise _FakeNotSupported("Not Supported")
        return n

    @staticmethod
    def _alive(h) -> dict:
        if h[1].get("lost") is True:
            raise _FakeLost("GPU is lost")
        return h[1]

    @classmethod
    def _working(cls, h) -> dict:
        item = cls._alive(h)
        if item.get("error"):
            raise _FakeNvmlError(str(item["error"]))
        return item


def _number(v: object) -> int | None:
    """A YAML number as an int; anything else (text, bool, NaN) as N/A."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return int(v) if math.isfinite(v) else None


def _bytes(mib: object) -> int | None:
    n = _number(mib)
    return None if n is None else n << 20
