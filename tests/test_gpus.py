"""GPU readings through NVML's code path: a fake ``pynvml`` at the binding
level, the fake GPU file (which answers the same calls), processes that are
not jobs, and, under the ``gpu`` marker, real NVML when this machine has it."""

from __future__ import annotations

import ctypes.util
import os
import pwd
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml
from conftest import REPO, fake_gpu_list, wait_for
from fake_nvml import (
    HEALTH_CALLS,
    Dev,
    NVMLError,
    NVMLError_GpuIsLost,
    NVMLError_NotSupported,
    NVMLError_ResetRequired,
    proc,
)
from test_multiuser import users  # noqa: F401  (a fixture)

from spoold import fakegpus, gpus
from spoold.fakegpus import FakeGpus
from spoold.gpus import GpuProcess, GpuReading, NvmlGpus, busy_reason, foreign, health_problem

MiB = 1 << 20
pytest_plugins = ("fake_nvml",)  # the nvml fixture


def idle(r: GpuReading) -> bool:
    return busy_reason(r, 0.1, 0.1) is None


# ---- NVML through the binding -----------------------------------------------
def test_names_as_bytes_or_str_become_text_and_are_read_once(nvml):
    src, nv = nvml([Dev(name=b"NVIDIA H100 80GB HBM3", uuid=b"GPU-1111"),
                    Dev(name="Tesla V100", uuid="GPU-2222", used=8 * 1024 * MiB, util=3)])
    assert src.description == "NVML, driver 550.54.15, 2 GPU(s)"
    first = src.read()
    assert [(r.index, r.uuid, r.name) for r in first] == [
        (0, "GPU-1111", "NVIDIA H100 80GB HBM3"), (1, "GPU-2222", "Tesla V100")]
    assert (first[1].memory_total, first[1].memory_used, first[1].utilization) == (
        40960, 8192, 3)
    assert src.read() == first
    assert nv.calls.count("nvmlDeviceGetName") == 2  # static: once per GPU


def test_not_supported_on_one_gpu_makes_only_that_one_busy(nvml):
    src, _ = nvml([Dev(), Dev(fail={"nvmlDeviceGetUtilizationRates": NVMLError_NotSupported()}),
                   Dev()])
    r = src.read()
    assert [x.error for x in r] == [None, "Not Supported", None]
    assert r[1].name == "NVIDIA A100-SXM4-40GB" and r[1].memory_total is None
    assert busy_reason(r[1], 0.1, 0.1) == "reading failed: Not Supported"
    assert idle(r[0]) and idle(r[2])


def test_a_gpu_that_fails_mid_run_reports_the_error_and_the_others_stay(nvml):
    src, nv = nvml([Dev(uuid="GPU-a"), Dev(uuid="GPU-b"), Dev(uuid="GPU-c")])
    before = src.read()
    assert all(idle(r) for r in before)
    nv.devs[1].fail = {"nvmlDeviceGetMemoryInfo": NVMLError_GpuIsLost()}
    nv.devs[2].fail = {"nvmlDeviceGetHandleByIndex": NVMLError_GpuIsLost()}
    after = src.read()
    assert after[0] == before[0]
    assert (after[1].uuid, after[1].error) == ("GPU-b", "GPU is lost")
    assert (after[2].index, after[2].error, after[2].processes_error) == (
        2, "GPU is lost", "not read")
    assert [busy_reason(r, 0.1, 0.1) for r in after] == [
        None, "reading failed: GPU is lost", "reading failed: GPU is lost"]
    nv.devs[1].fail = nv.devs[2].fail = {}
    assert src.read() == before  # back when the driver answers again


def test_mig_mode_gpu_is_one_busy_reading_with_its_processes(nvml):
    """nvmlDeviceGetCount counts physical GPUs; spoold reports each, and a GPU
    in MIG mode as busy (whole GPUs only) with NVML's aggregate process list."""
    src, nv = nvml([Dev(mig=1, compute=[proc(77, 1000)]), Dev(mig=0), Dev()])
    r = src.read()
    assert [x.index for x in r] == [0, 1, 2]
    assert r[0].error == gpus.MIG_ERROR and r[0].processes == (GpuProcess(77, 1000),)
    assert busy_reason(r[0], 0.1, 0.1) == f"reading failed: {gpus.MIG_ERROR}"
    assert idle(r[1]) and idle(r[2])
    src, nv = nvml([Dev(mig=None)], mig_call=False)
    assert idle(src.read()[0])


def test_process_lists_with_and_without_used_memory(nvml):
    na = SimpleNamespace(pid=12, usedGpuMemory=(1 << 64) - 1)  # raw NVML_VALUE_NOT_AVAILABLE
    bare = SimpleNamespace(pid=13)  # no usedGpuMemory at all
    src, _ = nvml([Dev(compute=[proc(30, 5000), proc(11, None), na, bare, proc(30, 24)],
                       graphics=[proc(11, 300), proc(5, 120)])])
    r = src.read()[0]
    assert r.processes_error is None
    assert r.processes == (GpuProcess(5, 120, "G"), GpuProcess(11, 300, "C+G"),
                           GpuProcess(12, None), GpuProcess(13, None),
                           GpuProcess(30, 5024))  # two entries of one pid add up
    assert r.as_dict()["processes"] == [[5, 120, "G"], [11, 300, "C+G"], [12, None, "C"],
                                        [13, None, "C"], [30, 5024, "C"]]


def test_newest_process_call_the_driver_has_is_used_and_the_others_dropped(nvml):
    gone = ("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses",
            "nvmlDeviceGetGraphicsRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses_v2")
    src, nv = nvml([Dev(compute=[proc(9, 10)])], missing=gone)
    for _ in range(3):
        assert src.read()[0].processes == (GpuProcess(9, 10),)
    assert nv.calls.count("nvmlDeviceGetComputeRunningProcesses_v3") == 1
    assert nv.calls.count("nvmlDeviceGetComputeRunningProcesses_v2") == 3
    assert nv.calls.count("nvmlDeviceGetGraphicsRunningProcesses_v2") == 1
    src, nv = nvml([Dev(compute=[proc(9, 10)])], versions=("",))  # an old binding
    assert src.read()[0].processes == (GpuProcess(9, 10),)
    src, nv = nvml([Dev(compute=[proc(9, 10)])], versions=("",),
                   missing=("nvmlDeviceGetComputeRunningProcesses",))
    r = src.read()[0]
    assert (r.processes, r.processes_error, idle(r)) == ((), "no process list in this NVML", True)


def test_an_unreadable_process_list_is_unknown_and_does_not_make_the_gpu_busy(nvml):
    src, _ = nvml([Dev(compute=[proc(9, 10)], fail={
        "nvmlDeviceGetComputeRunningProcesses_v3": NVMLError_NotSupported()}),
        Dev(compute=[proc(9, 10)], fail={
            "nvmlDeviceGetGraphicsRunningProcesses_v3": NVMLError_NotSupported()})])
    r = src.read()
    assert (r[0].processes, r[0].processes_error, idle(r[0])) == ((), "Not Supported", True)
    assert r[0].as_dict()["processes"] is None
    assert (r[1].processes, r[1].processes_error) == ((GpuProcess(9, 10),), None)


def test_no_nvml_means_cpu_only(nvml, monkeypatch):
    _, nv = nvml([])
    assert gpus.open_source(None) is None  # NVML found no GPUs

    def broken():
        raise NVMLError_NotSupported()
    monkeypatch.setattr(nv, "nvmlInit", broken)
    with pytest.raises(RuntimeError, match="NVML unavailable: Not Supported"):
        NvmlGpus()
    assert gpus.open_source(None) is None


# ---- health and energy through the binding ----------------------------------
def health(r: GpuReading) -> tuple:
    return r.ecc_uncorrected, r.retired_pages_pending, r.energy_mj, r.lost, r.xid


def test_health_counters_are_read_and_not_supported_is_unknown_per_gpu(nvml):
    src, _ = nvml([Dev(ecc=0, pages=0, energy=123_456_789),
                   Dev(),  # a GPU without ECC or an energy counter: all NotSupported
                   Dev(ecc=3, rows=(0, 0, 1, 0), energy=1),  # Ampere: remapped rows
                   Dev(ecc=0, pages=0, rows=(2, 1, 0, 1)),  # a remapping failed
                   Dev(ecc=5, fail={"nvmlDeviceGetMemoryInfo": NVMLError()})])
    r = src.read()
    assert [health(x) for x in r] == [(0, False, 123_456_789, False, ()),
                                      (None, None, None, False, ()),
                                      (3, True, 1, False, ()), (0, True, None, False, ()),
                                      (5, None, None, False, ())]  # read despite the error
    assert idle(r[1]) and health_problem(None, r[1]) is None  # unknown is never unhealthy
    assert r[4].error == "Unknown Error" and not r[4].lost
    assert r[0].as_dict() == {
        "index": 0, "uuid": "GPU-00000000-aaaa", "name": "NVIDIA A100-SXM4-40GB",
        "memory_total": 40960, "memory_used": 0, "utilization": 0, "error": None,
        "processes": [], "ecc_uncorrected": 0, "retired_pages_pending": False,
        "energy_mj": 123_456_789}
    assert not {"ecc_uncorrected", "retired_pages_pending", "energy_mj", "lost", "xid"} & set(
        r[1].as_dict())


def test_a_binding_without_the_health_calls_reads_as_before(nvml):
    src, nv = nvml([Dev(ecc=1, pages=1, rows=(0, 0, 1, 0), energy=5)], without=HEALTH_CALLS)
    nv.events.append((0, 8, 79))
    for _ in range(2):
        r = src.read()[0]
        assert health(r) == (None, None, None, False, ()) and idle(r)


def test_a_gpu_lost_mid_run_from_any_call_is_lost_and_keeps_its_name(nvml):
    src, nv = nvml([Dev(uuid="GPU-a", ecc=0), Dev(uuid="GPU-b", ecc=0, energy=7),
                    Dev(uuid="GPU-c")])
    before = src.read()
    assert not any(r.lost for r in before)
    nv.devs[1].lost = True  # fell off the bus: even the handle is refused
    nv.devs[2].fail = {"nvmlDeviceGetTotalEnergyConsumption": NVMLError_GpuIsLost()}
    after = src.read()
    assert after[0] == before[0]
    assert [(r.uuid, r.error, r.lost, r.ecc_uncorrected, r.processes_error)
            for r in after[1:]] == [("GPU-b", "GPU is lost", True, None, "not read"),
                                    ("GPU-c", "GPU is lost", True, None, "not read")]
    assert busy_reason(after[1], 0.1, 0.1) == "reading failed: GPU is lost"
    assert [health_problem(b, a) for b, a in zip(before, after, strict=True)] == [
        None, "GPU is lost", "GPU is lost"]
    assert after[1].as_dict()["lost"] is True
    again = src.read()
    assert [health_problem(a, b) for a, b in zip(after, again, strict=True)] == [None] * 3
    nv.devs[2].fail = {"nvmlDeviceGetMigMode": NVMLError_ResetRequired()}
    r = src.read()[2]
    assert (r.lost, r.error) == (True, "GPU requires restart")
    nv.devs[1].lost, nv.devs[2].fail = False, {}
    assert src.read() == before  # back when the driver answers again


def test_xid_events_are_drained_each_reading_without_waiting(nvml):
    src, nv = nvml([Dev(), Dev(), Dev(fail={"nvmlDeviceRegisterEvents": NVMLError_NotSupported()})])
    first = src.read()
    assert [x.xid for x in first] == [(), (), ()]
    assert nv.registered == [(0, 8), (1, 8)]  # GPU 2 refused; no retry either
    nv.events += [(1, 8, 79), (1, 1, 0), (0, 8, 13), (1, 8, 48), (1, 8, 79), (2, 8, 79)]
    r = src.read()
    assert [x.xid for x in r] == [(13,), (79, 48, 79), ()]  # the single-bit ECC event is not one
    assert health_problem(first[1], r[1]) == (
        "Xid 79 (fell off the bus); Xid 48 (double-bit ECC error)")
    assert health_problem(first[0], r[0]) is None  # Xid 13: the application's fault
    assert r[1].as_dict()["xid"] == [79, 48, 79]
    assert [x.xid for x in src.read()] == [(), (), ()]  # each event is reported once
    assert set(nv.waits) == {0} and nv.calls.count("nvmlEventSetCreate") == 1
    assert nv.calls.count("nvmlDeviceRegisterEvents") == 3  # once per GPU, for good
    nv.events += [(0, 8, 94)] * 5000  # a flood is drained over several readings
    assert len(src.read()[0].xid) == gpus._MAX_EVENTS


def test_no_event_set_means_no_xid_and_is_not_asked_again(nvml, monkeypatch):
    src, nv = nvml([Dev()])

    def refused():
        nv.calls.append("nvmlEventSetCreate")
        raise NVMLError_NotSupported()
    monkeypatch.setattr(nv, "nvmlEventSetCreate", refused)
    nv.events.append((0, 8, 79))
    assert [src.read()[0].xid for _ in range(3)] == [(), (), ()]
    assert nv.calls.count("nvmlEventSetCreate") == 1 and not nv.registered


# ---- the fake file: the same calls, from YAML -------------------------------
def fake(tmp_path, entries) -> FakeGpus:
    path = tmp_path / "gpus.yaml"
    path.write_text(yaml.safe_dump(entries))
    return FakeGpus(path)


def test_fake_file_and_fake_nvml_give_the_same_readings(tmp_path, nvml):
    entries = fake_gpu_list(4, {
        1: {"utilization": 40, "memory_used": 1000, "energy_mj": 5_000_000,
            "ecc_uncorrected": 2, "retired_pages_pending": True, "xid": [48, 79],
            "processes": [{"pid": 4242, "used_memory": 900}, {"pid": 17}]},
        2: {"error": "Unknown Error", "ecc_uncorrected": 0, "retired_pages_pending": False},
        3: {"lost": True}})
    from_file = fake(tmp_path, entries).read()
    devs = [Dev(name=e["name"], uuid=e["uuid"], used=e["memory_used"] * MiB,
                util=e["utilization"],
                compute=[proc(p["pid"], p.get("used_memory")) for p in e.get("processes", [])],
                fail={"nvmlDeviceGetMemoryInfo": NVMLError()} if "error" in e else {},
                ecc=e.get("ecc_uncorrected"), energy=e.get("energy_mj"),
                pages=None if "retired_pages_pending" not in e else
                int(e["retired_pages_pending"]), lost=e.get("lost", False))
            for e in entries]
    src, nv = nvml(devs)
    src.read()  # registers for events: what the driver reports comes later
    nv.events += [(1, 8, 48), (1, 8, 79)]
    assert src.read() == from_file
    assert from_file[1].processes == (GpuProcess(17, None), GpuProcess(4242, 900))
    assert [(r.ecc_uncorrected, r.retired_pages_pending, r.energy_mj, r.xid, r.lost)
            for r in from_file] == [(None, None, None, (), False),
                                    (2, True, 5_000_000, (48, 79), False),
                                    (0, False, None, (), False), (None, None, None, (), True)]
    assert (from_file[3].error, from_file[2].error) == ("GPU is lost", "Unknown Error")


def test_fake_file_keeps_its_meanings(tmp_path):
    path = tmp_path / "gpus.yaml"
    path.write_text("- {index: 3, memory_total: 100, memory_used: 50.7, utilization: 5}\n"
                    "- {index: x}\n- 7\n"
                    "- {index: 4, memory_total: .nan, utilization: 0, memory_used: 0}\n"
                    "- {index: 6, name: Big, memory_total: 100, memory_used: 0, utilization: 0,"
                    " error: Unknown Error, processes: [{pid: 5}]}\n")
    src = FakeGpus(path)
    r = {x.index: x for x in src.read()}
    assert (r[3].uuid, r[3].name, r[3].memory_used, r[3].processes_error) == (
        "GPU-fake-3", "Fake GPU", 50, None)
    assert (r[1].error, r[2].error) == ("fake entry has a bad index", "fake entry is not a mapping")
    assert busy_reason(r[3], 0.1, 0.9) is None
    assert busy_reason(r[3], 0.1, 0.1) == "memory 50% used >= 10%"
    assert busy_reason(r[4], 0.1, 0.1) == "reading incomplete (N/A)"  # NaN is N/A
    assert (r[6].name, r[6].error, r[6].processes) == ("Big", "Unknown Error",
                                                       (GpuProcess(5, None),))
    path.write_text("{not: a list}")
    again = {x.index: x for x in src.read()}
    assert set(again) == set(r) and all(
        x.error.startswith("fake GPU file unreadable") for x in again.values())


def test_fake_health_fields_and_their_unknowns(tmp_path):
    path = tmp_path / "gpus.yaml"
    path.write_text("- {ecc_uncorrected: 4, retired_pages_pending: false, energy_mj: 9.5}\n"
                    "- {ecc_uncorrected: -1, retired_pages_pending: 1, energy_mj: x, lost: yes,"
                    " xid: 79}\n"
                    "- {ecc_uncorrected: true, retired_pages_pending: null, lost: 1,"
                    " xid: [true, 48, x, 1.5, 79]}\n")
    r = FakeGpus(path).read()
    assert [health(x) for x in r] == [(4, False, 9, False, ()),
                                      (None, None, None, True, ()),  # YAML's yes is true
                                      (None, None, None, False, (48, 79))]


def test_fake_xid_is_a_log_each_entry_reported_once(tmp_path):
    entries = fake_gpu_list(2, {1: {"xid": [79]}})
    src = fake(tmp_path, entries)
    assert [r.xid for r in src.read()] == [(), (79,)]  # there at the first reading
    assert [r.xid for r in src.read()] == [(), ()]
    entries[1]["xid"] += [48, 79]
    entries[0]["xid"] = [13]
    src.path.write_text(yaml.safe_dump(entries))
    assert [r.xid for r in src.read()] == [(13,), (48, 79)]
    entries[1]["xid"] = [94]  # shorter: taken as reported, the count starts over
    src.path.write_text(yaml.safe_dump(entries))
    assert [r.xid for r in src.read()] == [(), ()]
    entries[1]["xid"] = [94, 95]
    src.path.write_text(yaml.safe_dump(entries))
    assert [r.xid for r in src.read()] == [(), (95,)]


def test_fake_lost_gpu_keeps_its_last_names_and_comes_back(tmp_path):
    entries = fake_gpu_list(2, {1: {"energy_mj": 10, "ecc_uncorrected": 0}})
    src = fake(tmp_path, entries)
    before = src.read()
    entries[1]["lost"] = True
    src.path.write_text(yaml.safe_dump(entries))
    now = src.read()
    assert now[0] == before[0]
    assert (now[1].uuid, now[1].name, now[1].error, now[1].lost, now[1].energy_mj) == (
        "GPU-fake-1", "Fake A100", "GPU is lost", True, None)
    assert health_problem(before[1], now[1]) == "GPU is lost"
    entries[1]["lost"] = False
    src.path.write_text(yaml.safe_dump(entries))
    assert src.read() == before


def test_fake_processes_must_name_pids(tmp_path):
    for bad in ("x", [{"used_memory": 5}], [{"pid": True}], [{"pid": "12"}], [7]):
        r = fake(tmp_path, fake_gpu_list(1, {0: {"processes": bad}})).read()[0]
        assert r.processes == () and r.processes_error.startswith("fake process"), bad
        assert idle(r)  # judged by its reading alone


def test_every_fake_field_is_documented_and_every_documented_one_read():
    from test_docs import FORMAT, _first_column, _section

    doc = _section(FORMAT, "FAKE GPUS")
    assert _first_column(doc) == set(fakegpus.FAKE_FIELDS) | {
        f"processes[].{k}" for k in fakegpus.FAKE_PROCESS_FIELDS}
    code = (REPO / "spoold" / "fakegpus.py").read_text()
    for k in (*fakegpus.FAKE_FIELDS, *fakegpus.FAKE_PROCESS_FIELDS):
        assert f'"{k}"' in code.split("class _FileBinding", 1)[1], k


# ---- health_problem: what drains a GPU -------------------------------------------
def R(**kw) -> GpuReading:  # noqa: N802  (a reading, briefly)
    return GpuReading(index=0, memory_total=100, memory_used=0, utilization=0, **kw)


@pytest.mark.parametrize("prev, now, why", [
    (None, R(), None),
    (None, R(ecc_uncorrected=0, retired_pages_pending=False, energy_mj=5), None),
    (R(ecc_uncorrected=0), R(ecc_uncorrected=2), "uncorrected ECC errors rose from 0 to 2"),
    (None, R(ecc_uncorrected=2), "2 uncorrected ECC errors"),  # first seen, above 0
    (R(), R(ecc_uncorrected=2), "2 uncorrected ECC errors"),  # first known
    (R(ecc_uncorrected=2), R(ecc_uncorrected=2), None),  # no rise: reported once
    (R(ecc_uncorrected=3), R(ecc_uncorrected=1), None),  # reset by a driver reload
    (R(ecc_uncorrected=3), R(), None),  # unknown now
    (R(retired_pages_pending=False), R(retired_pages_pending=True),
     "retired pages or remapped rows pending a GPU reset"),
    (None, R(retired_pages_pending=True), "retired pages or remapped rows pending a GPU reset"),
    (R(retired_pages_pending=True), R(retired_pages_pending=True), None),
    (R(), R(xid=(79,)), "Xid 79 (fell off the bus)"),
    (R(xid=(79,)), R(xid=(79,)), "Xid 79 (fell off the bus)"),  # a new event each time
    (None, R(xid=(48, 63, 64, 74, 92, 94, 95)),
     "Xid 48 (double-bit ECC error); Xid 63 (page retirement or row remapping recorded); "
     "Xid 64 (page retirement or row remapping failed); Xid 74 (NVLink error); "
     "Xid 92 (high single-bit ECC error rate); Xid 94 (contained ECC error); "
     "Xid 95 (uncontained ECC error)"),
    (None, R(xid=(119, 119)), "Xid 119"),
    (None, R(xid=(13, 31, 43, 45, 68)), None),  # the application's, not the GPU's
    (None, R(xid=(45, 62)), "Xid 62"),
    (R(), GpuReading(index=0, error="GPU is lost", lost=True), "GPU is lost"),
    (GpuReading(index=0, error="GPU is lost", lost=True),
     GpuReading(index=0, error="GPU is lost", lost=True), None),
    (None, GpuReading(index=0, error="GPU requires restart", lost=True, xid=(79,)),
     "GPU requires restart; Xid 79 (fell off the bus)"),
    (None, R(error="Unknown Error"), None),  # a failed reading is busy, not unhealthy
    (R(ecc_uncorrected=0), R(ecc_uncorrected=1, retired_pages_pending=True, xid=(94,)),
     "Xid 94 (contained ECC error); uncorrected ECC errors rose from 0 to 1; "
     "retired pages or remapped rows pending a GPU reset"),
])
def test_health_problem(prev, now, why):
    assert health_problem(prev, now) == why


# ---- processes that are not jobs --------------------------------------------
def test_a_process_that_is_no_job_makes_an_idle_gpu_busy_naming_it(tmp_path):
    me, my_name = os.getpid(), pwd.getpwuid(os.getuid()).pw_name
    r = fake(tmp_path, fake_gpu_list(2, {1: {"processes": [{"pid": me, "used_memory": 5000}]}})
             ).read()[1]
    assert r.utilization == 0 and idle(r)  # the reading alone says idle
    strangers = foreign(r, is_job=lambda p: False)
    assert strangers == [(me, my_name)]
    assert busy_reason(r, 0.1, 0.1, foreign=strangers) == (
        f"pid {me} ({my_name}) is not a spoold job")
    assert foreign(r, is_job=lambda p: p == me) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="starting another user's process needs root")
def test_stranger_named_by_user_or_uid_and_vanished_or_graphics_pids_skipped(users):  # noqa: F811
    bob = users["spoold-bob"]
    nameless = next(u for u in range(54321, 54400) if not _has_user(u))
    gone = subprocess.Popen(["true"])
    gone.wait()
    procs = [subprocess.Popen(["sleep", "60"], user=uid) for uid in (bob.pw_uid, nameless)]
    try:
        pids = [p.pid for p in procs]
        r = GpuReading(index=0, memory_total=100, memory_used=0, utilization=0, processes=(
            GpuProcess(gone.pid, 1), GpuProcess(1, 100, "G"),
            *(GpuProcess(p, 10) for p in pids)), processes_error=None)
        got = foreign(r, lambda p: False)
        assert got == [(pids[0], "spoold-bob"), (pids[1], str(nameless))]
        assert busy_reason(r, 0.1, 0.1, foreign=got) == (
            f"pid {pids[0]} (spoold-bob) and 1 more are not spoold jobs")
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _has_user(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def test_the_heartbeat_publishes_each_gpus_processes_and_known_counters(spool, daemon):
    spool.set_gpus(fake_gpu_list(4, {1: {"processes": [{"pid": os.getpid(),
                                                        "used_memory": 5000}]},
                                     2: {"ecc_uncorrected": 0, "energy_mj": 5000,
                                         "retired_pages_pending": False},
                                     3: {"processes": "garbage"}}))
    counters = ("ecc_uncorrected", "retired_pages_pending", "energy_mj", "lost", "xid")

    def published():
        for beat in (spool.root / "state" / "hosts").glob("*.yaml"):
            return [(g["processes"], {k: g[k] for k in counters if k in g})
                    for g in yaml.safe_load(beat.read_text())["gpus"]]
    wait_for(lambda: published() == [
        ([], {}), ([[os.getpid(), 5000, "C"]], {}),
        ([], {"ecc_uncorrected": 0, "energy_mj": 5000, "retired_pages_pending": False}),
        (None, {})], what="the heartbeat to list the process and GPU 2's counters")


# ---- real NVML (pytest -m gpu); skipped without a GPU ------------------------
def real_nvml():
    """The real binding, initialised, or a skip that says why not."""
    try:
        import pynvml

        pynvml.nvmlInit()
        n = pynvml.nvmlDeviceGetCount()
    except Exception as e:  # no binding, no driver, no library: all mean no GPU here
        pytest.skip(f"no NVML here: {e}")
    if not n:
        pytest.skip("NVML found no GPU")
    return pynvml, n


@pytest.mark.gpu
def test_real_nvml_readings_match_the_driver():
    nv, n = real_nvml()
    readings = NvmlGpus().read()
    assert [r.index for r in readings] == list(range(n))
    for r in readings:
        h = nv.nvmlDeviceGetHandleByIndex(r.index)
        assert r.uuid == gpus._text(nv.nvmlDeviceGetUUID(h)) and r.uuid.startswith(("GPU-", "MIG-"))
        assert r.name and isinstance(r.name, str)
        assert r.error or (r.memory_total > 0 and 0 <= r.utilization <= 100), r
        assert os.getpid() not in {p.pid for p in r.processes}  # we never touched CUDA
        assert r.processes_error is None or isinstance(r.processes_error, str)
        for pid, _owner in foreign(r, lambda p: False):
            assert os.path.exists(f"/proc/{pid}") or _owner == "?"
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "--query-gpu=index,uuid", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True).stdout
        assert [tuple(x.strip() for x in line.split(",")) for line in out.splitlines()] == [
            (str(r.index), r.uuid) for r in readings]


@pytest.mark.gpu
def test_real_nvml_health_readings_match_the_driver():
    """A healthy GPU: known counters agree with pynvml's own answers, the
    energy counter only rises, no Xid event, nothing that drains it."""
    nv, n = real_nvml()
    src = NvmlGpus()
    first, second = src.read(), src.read()
    for a, b in zip(first, second, strict=True):
        h = nv.nvmlDeviceGetHandleByIndex(a.index)

        def direct(call, *args, h=h):
            try:
                return getattr(nv, call)(h, *args)
            except nv.NVMLError:
                return None
        assert not a.lost and a.xid == () and health_problem(a, b) is None, (a, b)
        assert b.ecc_uncorrected == direct("nvmlDeviceGetTotalEccErrors",
                                           nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                                           nv.NVML_VOLATILE_ECC)
        assert a.energy_mj is None or b.energy_mj >= a.energy_mj > 0
        rows, pages = direct("nvmlDeviceGetRemappedRows"), direct(
            "nvmlDeviceGetRetiredPagesPendingStatus")
        assert a.retired_pages_pending == (None if rows is None and pages is None else
                                           bool(pages) or bool(rows and (rows[2] or rows[3])))
    assert src._devices._events is not None  # the event set was tried


CUDA_CHILD = """
import ctypes, sys
cu = ctypes.CDLL("libcuda.so.1")
def ok(rc, what):
    if rc:
        print("failed", what, rc, flush=True)
        sys.exit(1)
dev, ctx, ptr = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
ok(cu.cuInit(0), "cuInit")
ok(cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
ok(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
ok(cu.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
ok(cu.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(512 << 20)), "cuMemAlloc")
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.mark.gpu
def test_real_nvml_lists_a_process_that_holds_gpu_memory():
    """A child that allocates 512 MiB through the driver's own libcuda (no CUDA
    toolkit) shows up on NVML index 0 with its pid, is foreign to an is_job that
    claims nothing, and makes that GPU busy by name."""
    real_nvml()
    if not ctypes.util.find_library("cuda"):
        pytest.skip("no libcuda (the driver's CUDA library) to put a process on the GPU")
    src = NvmlGpus()
    if src.read()[0].error:
        pytest.skip(f"GPU 0 gives no reading: {src.read()[0].error}")
    child = subprocess.Popen([sys.executable, "-c", CUDA_CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                                  "CUDA_VISIBLE_DEVICES": "0"})
    try:
        assert child.stdout.readline().strip() == "ready"

        def listed():
            r = src.read()[0]
            return next(((r, p) for p in r.processes if p.pid == child.pid), None)
        r, p = wait_for(listed, 20, "the child's pid on GPU 0 (another pid namespace?)")
        assert p.used_mib is None or p.used_mib >= 512, p
        me = pwd.getpwuid(os.getuid()).pw_name
        assert (child.pid, me) in foreign(r, lambda pid: False)
        assert foreign(r, lambda pid: pid == child.pid) == [
            x for x in foreign(r, lambda pid: False) if x[0] != child.pid]
        assert f"pid {child.pid} ({me})" in busy_reason(r, 1.0, 1.0,
                                                          foreign=[(child.pid, me)])
    finally:
        child.kill()
        child.wait()
