"""Metrics in Prometheus' text format (spoold/metrics.py): every family, sample
and label read back through prometheus_client's own parser, the histogram's
arithmetic, label escaping, and the metrics file's atomic, idempotent write.
The last test runs the daemon with ``--metrics`` and checks the file against
the spool (skipped until the daemon has that option)."""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from spoold import metrics as metricsmod
from spoold.metrics import MIB, OUTCOMES, STATES, WAIT_BUCKETS, Metrics, write

GPUS = [
    {"index": 0, "utilization": 57, "memory_used": 1234, "busy": None, "assigned": True},
    {"index": 1, "utilization": 0, "memory_used": 0, "busy": None, "assigned": False,
     "energy_mj": 123456},
    {"index": 2, "utilization": 90, "memory_used": 100, "busy": "utilization 90% >= 10%",
     "assigned": False},
    {"index": 3, "utilization": None, "memory_used": None, "busy": "reading failed: lost",
     "assigned": False},
    {"index": 4, "utilization": 95, "memory_used": 30000, "busy": "utilization 95% >= 10%",
     "assigned": True},
]


def parse(text: str) -> dict[str, tuple[str, str, list]]:
    """{family: (type, help, [(sample name, labels, value)])}, each family once."""
    families = list(text_string_to_metric_families(text))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), f"a family is split: {names}"
    return {f.name: (f.type, f.documentation, [(s.name, s.labels, s.value) for s in f.samples])
            for f in families}


def by_gpu(samples) -> dict[str, float]:
    return {labels["gpu"]: value for _, labels, value in samples}


def test_every_family_sample_and_label():
    m = Metrics()
    for wait in (0.5, 3, 3, 7200, 200000):
        m.observe_start(wait)
    for outcome in ("completed", "completed", "timeout", "rejected"):
        m.observe_finish(outcome)
    folders = {"pending": 3, "running": 2, "done": 10, "failed": 1, "cancelled": 0}
    fams = parse(m.render(folders, GPUS, 1700000000.25))

    assert set(fams) == {"spoold_jobs", "spoold_jobs_finished", "spoold_gpu_utilization_ratio",
                         "spoold_gpu_memory_used_bytes", "spoold_gpu_assigned",
                         "spoold_gpu_busy", "spoold_gpu_energy_joules",
                         "spoold_queue_wait_seconds", "spoold_heartbeat_timestamp_seconds"}
    assert all(doc for _, doc, _ in fams.values())
    kind, _, samples = fams["spoold_jobs"]
    assert kind == "gauge"
    assert samples == [("spoold_jobs", {"state": s}, folders[s]) for s in STATES]

    kind, _, samples = fams["spoold_jobs_finished"]
    assert kind == "counter"
    want = {o: 0 for o in OUTCOMES} | {"completed": 2, "timeout": 1, "rejected": 1}
    assert samples == [("spoold_jobs_finished_total", {"outcome": o}, want[o]) for o in OUTCOMES]

    gauges = {name: by_gpu(fams[name][2]) for name in fams if name.startswith("spoold_gpu_")}
    assert all(fams[name][0] == "gauge" for name in gauges if "energy" not in name)
    assert gauges["spoold_gpu_utilization_ratio"] == {"0": 0.57, "1": 0.0, "2": 0.9, "4": 0.95}
    assert gauges["spoold_gpu_memory_used_bytes"] == {"0": 1234 * MIB, "1": 0, "2": 100 * MIB,
                                                      "4": 30000 * MIB}
    assert gauges["spoold_gpu_assigned"] == {"0": 1, "1": 0, "2": 0, "3": 0, "4": 1}
    # A held GPU's load is its job's: busy is 1 only where no job holds it.
    assert gauges["spoold_gpu_busy"] == {"0": 0, "1": 0, "2": 1, "3": 1, "4": 0}
    assert fams["spoold_gpu_energy_joules"][0] == "counter"
    assert fams["spoold_gpu_energy_joules"][2] == [
        ("spoold_gpu_energy_joules_total", {"gpu": "1"}, 123.456)]

    kind, _, samples = fams["spoold_queue_wait_seconds"]
    assert kind == "histogram"
    buckets = {labels["le"]: v for name, labels, v in samples if name.endswith("_bucket")}
    assert buckets["1.0"] == 1 and buckets["5.0"] == 3 and buckets["3600.0"] == 3
    assert buckets["7200.0"] == 4 and buckets["86400.0"] == 4 and buckets["+Inf"] == 5
    assert list(buckets) == [repr(b) for b in WAIT_BUCKETS] + ["+Inf"]
    rest = {name: v for name, _, v in samples if not name.endswith("_bucket")}
    assert rest == {"spoold_queue_wait_seconds_sum": 0.5 + 3 + 3 + 7200 + 200000,
                    "spoold_queue_wait_seconds_count": 5}

    assert fams["spoold_heartbeat_timestamp_seconds"] == (
        "gauge", "Unix time of the daemon's last heartbeat.",
        [("spoold_heartbeat_timestamp_seconds", {}, 1700000000.25)])


def test_text_format_layout():
    """HELP then TYPE then the family's samples, one family at a time; the
    text ends with a newline (the format requires both)."""
    text = Metrics().render({"pending": 1}, GPUS, 1.0)
    assert text.endswith("\n") and "\n\n" not in text
    seen, current = [], None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# HELP "):
            current = line.split()[2]
            assert current not in seen
            seen.append(current)
            assert lines[i + 1].startswith(f"# TYPE {current} ")
        elif not line.startswith("# TYPE "):
            assert line.startswith(current), (current, line)


def test_unknown_figures_are_omitted_never_guessed():
    gpus = [{"index": 0, "utilization": True, "memory_used": float("nan"), "busy": None,
             "assigned": False},
            {"index": 1},  # no reading, no busy, no assigned
            {"index": -1, "utilization": 5, "assigned": True, "busy": None},  # not a GPU
            {"utilization": 5, "assigned": True, "busy": None},
            {"index": "2", "utilization": 5, "assigned": True, "busy": None},
            "not a dict"]
    fams = parse(Metrics().render({"running": 2, "bogus": 5, "done": None}, gpus,
                                  float("nan")))
    assert fams["spoold_jobs"][2] == [("spoold_jobs", {"state": "running"}, 2)]
    assert fams["spoold_gpu_utilization_ratio"][2] == []
    assert fams["spoold_gpu_memory_used_bytes"][2] == []
    assert by_gpu(fams["spoold_gpu_assigned"][2]) == {"0": 0}
    assert by_gpu(fams["spoold_gpu_busy"][2]) == {"0": 0}
    assert "spoold_gpu_energy_joules" not in fams
    assert fams["spoold_heartbeat_timestamp_seconds"][2] == []


def test_render_is_pure():
    m = Metrics()
    m.observe_start(10)
    first = m.render({"pending": 1}, GPUS, 5.0)
    assert m.render({"pending": 1}, GPUS, 5.0) == first
    assert m.render({"pending": 2}, GPUS, 5.0) != first


def test_observe_finish_refuses_an_unknown_outcome():
    m = Metrics()
    with pytest.raises(ValueError, match="not an outcome"):
        m.observe_finish("exploded")
    assert set(m.finished.values()) == {0}


@given(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                          st.integers(-10, 10**7)), max_size=60))
def test_histogram_is_cumulative_and_matches_count_and_sum(waits):
    m = Metrics()
    for w in waits:
        m.observe_start(w)
    _, _, samples = parse(m.render({}, [], 0.0))["spoold_queue_wait_seconds"]
    known = [max(0.0, float(w)) for w in waits if math.isfinite(w)]  # NaN/inf: unknown
    buckets = [(float(labels["le"]), v) for name, labels, v in samples
               if name.endswith("_bucket")]
    values = [v for _, v in buckets]
    assert values == sorted(values)
    assert buckets[-1] == (math.inf, len(known))
    for le, v in buckets:
        assert v == sum(1 for w in known if w <= le), le
    rest = {name: v for name, _, v in samples if not name.endswith("_bucket")}
    assert rest["spoold_queue_wait_seconds_count"] == len(known)
    assert rest["spoold_queue_wait_seconds_sum"] == pytest.approx(sum(known))


@pytest.mark.parametrize("value", ['a"b', "a\\b", "a\nb", 'end\\', '\\n"\\\n', "plain", ""])
def test_label_values_are_escaped(value):
    lines = metricsmod._family("x", "gauge", "help with \\ and\nnewline",
                               [("", {"v": value}, 1)])
    (fam,) = text_string_to_metric_families("\n".join(lines) + "\n")
    assert fam.samples[0].labels == {"v": value}
    assert fam.documentation == "help with \\ and\nnewline"
    assert "\n" not in lines[2] and "\n" not in lines[0]


# ---- the file ---------------------------------------------------------------


def test_write_replaces_atomically_and_only_on_change(tmp_path):
    path = tmp_path / "spoold.prom"
    assert write(path, "a 1\n") is True
    assert path.read_text() == "a 1\n"
    inode = path.stat().st_ino
    assert write(path, "a 1\n") is False  # unchanged: not rewritten, mtime kept
    assert path.stat().st_ino == inode
    assert write(path, "a 2\n") is True
    assert path.read_text() == "a 2\n" and path.stat().st_ino != inode  # a new file, renamed
    assert write(path, "a 2\nb 1\n") is True and write(path, "a 2\n") is True  # prefix, longer
    assert path.read_text() == "a 2\n"
    path.unlink()  # removed behind its back: written again
    assert write(path, "a 2\n") is True and path.read_text() == "a 2\n"
    assert os.listdir(tmp_path) == ["spoold.prom"]  # no temp file left


def test_write_mode_ignores_umask(tmp_path):
    old = os.umask(0o077)
    try:
        write(tmp_path / "spoold.prom", "a 1\n")
    finally:
        os.umask(old)
    assert (tmp_path / "spoold.prom").stat().st_mode & 0o777 == 0o644


def test_a_reader_never_sees_a_partial_file(tmp_path):
    """node_exporter reads while the daemon writes: each read is one whole text."""
    path = tmp_path / "spoold.prom"
    texts = ["short 1\n", "long 2\n" * 5000]
    write(path, texts[0])
    stop, seen = threading.Event(), set()

    def writer():
        for i in range(300):
            write(path, texts[i % 2 == 0])
        stop.set()

    t = threading.Thread(target=writer)
    t.start()
    while not stop.is_set():
        seen.add(path.read_text())
    t.join()
    assert seen <= set(texts), {len(s) for s in seen}


@pytest.mark.parametrize("same", [True, False])
def test_write_replaces_a_link_and_never_follows_it(tmp_path, same):
    """Not followed to write, nor to compare: a link to a file that holds the
    same text is still replaced by a file of our own."""
    victim = tmp_path / "victim"
    victim.write_text("a 1\n" if same else "precious\n")
    path = tmp_path / "spoold.prom"
    path.symlink_to(victim)
    assert write(path, "a 1\n") is True
    assert not path.is_symlink() and path.read_text() == "a 1\n"
    assert victim.read_text() == ("a 1\n" if same else "precious\n")


@pytest.mark.timeout(10)
def test_write_does_not_hang_on_a_fifo(tmp_path):
    path = tmp_path / "spoold.prom"
    os.mkfifo(path)  # opening it to read would block without O_NONBLOCK
    assert write(path, "a 1\n") is True
    assert path.is_file() and path.read_text() == "a 1\n"


def test_write_never_follows_a_link_at_its_temp_name(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    monkeypatch.setattr(metricsmod.secrets, "token_hex", lambda n: "deadbeef")
    planted = tmp_path / ".spoold.prom.deadbeef.tmp"
    planted.symlink_to(victim)
    with pytest.raises(FileExistsError):
        write(tmp_path / "spoold.prom", "a 1\n")
    assert victim.read_text() == "precious\n"
    assert planted.is_symlink()  # not ours: left where it is
    assert not (tmp_path / "spoold.prom").exists()


def test_write_errors_raise_and_leave_nothing(tmp_path):
    """A failed write raises OSError for the daemon to log and leaves no temp
    file; the same call succeeds once the cause is gone."""
    missing = tmp_path / "no-such-folder" / "spoold.prom"
    with pytest.raises(FileNotFoundError):
        write(missing, "a 1\n")
    missing.parent.mkdir()
    assert write(missing, "a 1\n") is True

    blocked = tmp_path / "blocked.prom"
    (blocked / "inside").mkdir(parents=True)  # a non-empty folder: rename fails
    with pytest.raises(OSError):
        write(blocked, "a 1\n")
    assert sorted(os.listdir(tmp_path)) == ["blocked.prom", "no-such-folder"]
    os.rmdir(blocked / "inside")
    os.rmdir(blocked)
    assert write(blocked, "a 1\n") is True and blocked.read_text() == "a 1\n"


# ---- the daemon's file against the spool --------------------------------------


def _daemon_has_metrics() -> bool:
    from spoold.options import Options

    return "metrics" in Options.__dataclass_fields__


@pytest.mark.skipif(not _daemon_has_metrics(), reason="spoold has no --metrics option yet")
def test_daemon_metrics_file_matches_the_spool(spool, daemon_factory, tmp_path):
    from conftest import fake_gpu_list, wait_for

    spool.set_gpus(fake_gpu_list(4, {3: {"utilization": 90}}))
    prom = tmp_path / "exporter" / "spoold.prom"
    prom.parent.mkdir()
    daemon_factory("--metrics", str(prom))
    ok = spool.gsub("-n", "0", "--", "true")
    bad = spool.gsub("-n", "0", "-c", "exit 3")
    long = spool.gsub("-n", "1", "--", "sleep", "60")
    held = spool.gsub("-n", "1", "--hold", "--", "true")
    spool.wait_state(ok, "done")
    spool.wait_state(bad, "failed")
    running = spool.wait_state(long, "running")
    assert spool.where(held) == "pending"
    root = spool.root

    def matches():
        try:
            fams = parse(prom.read_text())
        except (OSError, ValueError):
            return False
        beat = yaml.safe_load(next((root / "state" / "hosts").glob("*.yaml")).read_text())
        folders = {s: len(list((root / s).glob("*.yaml"))) for s in STATES}
        jobs = {labels["state"]: v for _, labels, v in fams["spoold_jobs"][2]}
        finished = {labels["outcome"]: v for _, labels, v in fams["spoold_jobs_finished"][2]}
        waits = {name: v for name, _, v in fams["spoold_queue_wait_seconds"][2]}
        assigned = by_gpu(fams["spoold_gpu_assigned"][2])
        (stamp,) = fams["spoold_heartbeat_timestamp_seconds"][2]
        return (jobs == folders
                and finished == {o: 0 for o in OUTCOMES} | {"completed": 1, "failed": 1}
                and waits["spoold_queue_wait_seconds_count"] == 3
                and assigned == {str(g): int(g in running["assigned_gpus"]) for g in range(4)}
                and by_gpu(fams["spoold_gpu_busy"][2]) == {"0": 0, "1": 0, "2": 0, "3": 1}
                and by_gpu(fams["spoold_gpu_utilization_ratio"][2])["3"] == 0.9
                and abs(stamp[2] - beat["time"]) < 10)

    wait_for(matches, 20, f"the metrics file to match the spool: {prom}")
    assert Path(prom).stat().st_mode & 0o777 == 0o644
