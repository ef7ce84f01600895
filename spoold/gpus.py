"""GPU readings: NVML (``pynvml`` from nvidia-ml-py) or a fake file, one interface.

Owns: turning the hardware (or ``--fake-gpus FILE``) into ``GpuReading``
values, and the rule that says whether a reading is idle enough.

Invariants:
- Both sources produce the same ``GpuReading`` type and go through the same
  ``busy_reason``; nothing downstream can tell a fake GPU from a real one.
- A GPU whose reading fails, or answers "N/A", is a reading with ``error`` set:
  busy, with the error as its reason. One bad GPU never hides the others.
- The fake file is re-read at every poll, so editing it simulates load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml

log = logging.getLogger("spoold")


@dataclass(frozen=True)
class GpuReading:
    index: int
    uuid: str = ""
    name: str = ""
    memory_total: int | None = None  # MiB
    memory_used: int | None = None  # MiB
    utilization: int | None = None  # percent
    error: str | None = None

    @property
    def memory_free(self) -> int | None:
        if self.memory_total is None or self.memory_used is None:
            return None
        return max(0, self.memory_total - self.memory_used)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in
                ("index", "uuid", "name", "memory_total", "memory_used", "utilization", "error")}


def busy_reason(r: GpuReading, max_load: float, max_memory: float) -> str | None:
    """None if the reading says idle; else why it is busy (shown in gstat)."""
    if r.error:
        return f"reading failed: {r.error}"
    if r.utilization is None or r.memory_total is None or r.memory_used is None:
        return "reading incomplete (N/A)"
    if r.utilization / 100.0 >= max_load:
        return f"utilization {r.utilization}% >= {max_load:.0%}"
    frac = r.memory_used / r.memory_total if r.memory_total else 1.0
    if frac >= max_memory:
        return f"memory {frac:.0%} used >= {max_memory:.0%}"
    return None


class GpuSource(Protocol):
    description: str

    def read(self) -> list[GpuReading]: ...


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
        out = []
        for pos, item in enumerate(raw):
            out.append(_fake_entry(pos, item))
        self._last = out
        return out


def _fake_entry(pos: int, item: object) -> GpuReading:
    if not isinstance(item, dict):
        return GpuReading(index=pos, error="fake entry is not a mapping")
    index = item.get("index", pos)
    if not isinstance(index, int):
        return GpuReading(index=pos, error="fake entry has a bad index")

    def num(key: str) -> int | None:
        v = item.get(key)
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    reading = GpuReading(index=index, uuid=str(item.get("uuid", f"GPU-fake-{index}")),
                         name=str(item.get("name", "Fake GPU")),
                         memory_total=num("memory_total"), memory_used=num("memory_used"),
                         utilization=num("utilization"),
                         error=str(item["error"]) if item.get("error") else None)
    return reading


class NvmlGpus:
    """Real GPUs through NVML. Construction fails (ImportError/RuntimeError) if none."""

    def __init__(self):
        import pynvml  # nvidia-ml-py

        self._nv = pynvml
        try:
            pynvml.nvmlInit()
            self._count = pynvml.nvmlDeviceGetCount()
            driver = pynvml.nvmlSystemGetDriverVersion()
        except pynvml.NVMLError as e:
            raise RuntimeError(f"NVML unavailable: {e}") from None
        if isinstance(driver, bytes):
            driver = driver.decode()
        self.description = f"NVML, driver {driver}, {self._count} GPU(s)"
        self._static: dict[int, tuple[str, str]] = {}

    def read(self) -> list[GpuReading]:
        nv = self._nv
        out = []
        for i in range(self._count):
            try:
                h = nv.nvmlDeviceGetHandleByIndex(i)
                if i not in self._static:
                    uuid, name = nv.nvmlDeviceGetUUID(h), nv.nvmlDeviceGetName(h)
                    self._static[i] = (_text(uuid), _text(name))
                uuid, name = self._static[i]
            except nv.NVMLError as e:
                out.append(GpuReading(index=i, error=str(e)))
                continue
            try:
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                util = nv.nvmlDeviceGetUtilizationRates(h)
                out.append(GpuReading(index=i, uuid=uuid, name=name,
                                      memory_total=mem.total >> 20, memory_used=mem.used >> 20,
                                      utilization=int(util.gpu)))
            except nv.NVMLError as e:  # includes NotSupported, i.e. "N/A"
                out.append(GpuReading(index=i, uuid=uuid, name=name, error=str(e)))
        return out


def _text(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v


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
