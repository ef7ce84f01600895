"""A fake ``pynvml`` at the binding level, shaped like nvidia-ml-py's: devices,
errors, process lists, health counters and Xid events, so that ``NvmlGpus``
runs exactly the code real GPUs run (tests/test_gpus.py)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from types import ModuleType, SimpleNamespace

import pytest

from spoold.gpus import NvmlGpus

MiB = 1 << 20


# ---- a fake pynvml, shaped like nvidia-ml-py's ----------------------------
class NVMLError(Exception):
    text = "Unknown Error"

    def __str__(self):
        return self.text


class NVMLError_NotSupported(NVMLError):  # noqa: N801  (pynvml's names)
    text = "Not Supported"


class NVMLError_GpuIsLost(NVMLError):  # noqa: N801
    text = "GPU is lost"


class NVMLError_FunctionNotFound(NVMLError):  # noqa: N801
    text = "Function Not Found"


class NVMLError_ResetRequired(NVMLError):  # noqa: N801
    text = "GPU requires restart"


class NVMLError_Timeout(NVMLError):  # noqa: N801
    text = "Timeout"


class NVMLLibraryMismatchError(Exception):
    """pynvml's unversioned calls raise this, not an NVMLError, for an old driver."""


@dataclass
class Dev:
    """One fake GPU. ``fail`` maps a pynvml call name to the error it raises;
    ``compute``/``graphics`` are lists of process objects, as pynvml returns."""

    name: str | bytes = "NVIDIA A100-SXM4-40GB"
    uuid: str | bytes = "GPU-00000000-aaaa"
    total: int = 40960 * MiB
    used: int = 0
    util: int = 0
    mig: int | None = None  # None: NotSupported, as on a GPU without MIG
    compute: list = field(default_factory=list)
    graphics: list = field(default_factory=list)
    fail: dict = field(default_factory=dict)
    # Health and energy; None: NotSupported. ``rows``: nvmlDeviceGetRemappedRows's
    # (corrected, uncorrected, pending, failure occurred).
    ecc: int | None = None
    pages: int | None = None
    rows: tuple | None = None
    energy: int | None = None
    lost: bool = False  # every call says "GPU is lost"


def proc(pid: int, mib: int | None = None, **extra) -> SimpleNamespace:
    return SimpleNamespace(pid=pid, usedGpuMemory=None if mib is None else mib * MiB,
                           gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF, **extra)


HEALTH_CALLS = ("nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetRetiredPagesPendingStatus",
                "nvmlDeviceGetRemappedRows", "nvmlDeviceGetTotalEnergyConsumption",
                "nvmlEventSetCreate", "nvmlDeviceRegisterEvents", "nvmlEventSetWait_v2",
                "nvmlDeviceGetIndex")


class FakePynvml(ModuleType):
    """The calls spoold makes, answered from ``devs``; ``calls`` counts them.
    ``versions`` names the process-list calls this binding has; ``without``
    names health calls it lacks (an older binding). ``events`` is the driver's
    queue of (GPU, event type, data): a registered GPU's wait for them."""

    def __init__(self, devs: list[Dev], versions=("", "_v2", "_v3"), missing=(),
                 mig_call: bool = True, without=()):
        super().__init__("pynvml")
        self.devs, self.calls = devs, []
        self.events: list[tuple[int, int, int]] = []
        self.registered: list[tuple[int, int]] = []
        self.waits: list[int] = []  # each wait's timeout
        self.NVMLError_ResetRequired = NVMLError_ResetRequired
        self.NVMLError_Timeout = NVMLError_Timeout
        self.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, self.NVML_VOLATILE_ECC = 1, 0
        self.nvmlEventTypeXidCriticalError = 8
        for name in HEALTH_CALLS:
            if name not in without:
                setattr(self, name, getattr(self, "_" + name))
        if mig_call:  # older bindings lack it
            self.nvmlDeviceGetMigMode = self._mig_mode
        self.NVMLError = NVMLError
        self.NVMLError_NotSupported = NVMLError_NotSupported
        self.NVMLError_GpuIsLost = NVMLError_GpuIsLost
        self.NVMLError_FunctionNotFound = NVMLError_FunctionNotFound
        self.NVMLLibraryMismatchError = NVMLLibraryMismatchError
        for kind in ("Compute", "Graphics"):
            for v in versions:
                name = f"nvmlDeviceGet{kind}RunningProcesses{v}"
                setattr(self, name, self._lister(name, kind.lower(), name in missing))

    def _dev(self, call: str, h) -> Dev:
        self.calls.append(call)
        dev = self.devs[h]
        if dev.lost:
            raise NVMLError_GpuIsLost()
        if call in dev.fail:
            raise dev.fail[call]
        return dev

    def _known(self, call: str, h, value):
        self._dev(call, h)
        if value is None:
            raise NVMLError_NotSupported()
        return value

    def _nvmlDeviceGetTotalEccErrors(self, h, error_type, counter):
        assert (error_type, counter) == (1, 0)  # uncorrected, volatile
        return self._known("nvmlDeviceGetTotalEccErrors", h, self.devs[h].ecc)

    def _nvmlDeviceGetRetiredPagesPendingStatus(self, h):
        return self._known("nvmlDeviceGetRetiredPagesPendingStatus", h, self.devs[h].pages)

    def _nvmlDeviceGetRemappedRows(self, h):
        return self._known("nvmlDeviceGetRemappedRows", h, self.devs[h].rows)

    def _nvmlDeviceGetTotalEnergyConsumption(self, h):
        return self._known("nvmlDeviceGetTotalEnergyConsumption", h, self.devs[h].energy)

    def _nvmlEventSetCreate(self):
        self.calls.append("nvmlEventSetCreate")
        return "the set"

    def _nvmlDeviceRegisterEvents(self, h, types, event_set):
        assert event_set == "the set"
        self._dev("nvmlDeviceRegisterEvents", h)
        self.registered.append((h, types))

    def _nvmlEventSetWait_v2(self, event_set, timeout_ms):
        assert event_set == "the set"
        self.waits.append(timeout_ms)
        mine = {h for h, types in self.registered}
        for n, (h, kind, data) in enumerate(self.events):
            if h in mine:
                del self.events[n]
                return SimpleNamespace(device=h, eventType=kind, eventData=data,
                                       gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)
        raise NVMLError_Timeout()

    def _nvmlDeviceGetIndex(self, h):
        return self._dev("nvmlDeviceGetIndex", h) and h

    def _lister(self, name: str, attr: str, missing: bool):
        def listed(h):
            self._dev(name, h)
            if missing:  # the driver lacks it; an unversioned call says so its own way
                versioned = name[-3:-1] == "_v"
                raise NVMLError_FunctionNotFound() if versioned else NVMLLibraryMismatchError()
            return list(getattr(self.devs[h], attr))
        return listed

    def nvmlInit(self):
        self.calls.append("nvmlInit")

    def nvmlDeviceGetCount(self):
        return len(self.devs)

    def nvmlSystemGetDriverVersion(self):
        return b"550.54.15"

    def nvmlDeviceGetHandleByIndex(self, i):
        self._dev("nvmlDeviceGetHandleByIndex", i)
        return i

    def nvmlDeviceGetUUID(self, h):
        return self._dev("nvmlDeviceGetUUID", h).uuid

    def nvmlDeviceGetName(self, h):
        return self._dev("nvmlDeviceGetName", h).name

    def nvmlDeviceGetMemoryInfo(self, h):
        d = self._dev("nvmlDeviceGetMemoryInfo", h)
        return SimpleNamespace(total=d.total, used=d.used, free=d.total - d.used)

    def nvmlDeviceGetUtilizationRates(self, h):
        d = self._dev("nvmlDeviceGetUtilizationRates", h)
        if d.mig == 1:
            raise NVMLError_NotSupported()  # what NVML answers for a MIG parent
        return SimpleNamespace(gpu=d.util, memory=0)

    def _mig_mode(self, h):
        d = self._dev("nvmlDeviceGetMigMode", h)
        if d.mig is None:
            raise NVMLError_NotSupported()
        return [d.mig, d.mig]


@pytest.fixture
def nvml(monkeypatch):
    """Installs a FakePynvml as ``pynvml`` and returns NvmlGpus over it."""
    def make(devs: list[Dev], **kw) -> tuple[NvmlGpus, FakePynvml]:
        fake = FakePynvml(devs, **kw)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        return NvmlGpus(), fake
    return make
