"""End to end: the real daemon, the real bin/ tools, real child processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import HOST, fake_gpu_list, wait_for

PY = sys.executable


def test_exit_codes_and_signals_are_recorded(spool, daemon):
    ok = spool.gsub("-n", "0", "--", "true")
    three = spool.gsub("-n", "0", "-c", "exit 3")
    sig = spool.gsub("-n", "0", "-c", "kill -9 $$")
    assert spool.wait_state(ok)["exit_code"] == 0
    assert spool.where(ok) == "done"
    rec = spool.wait_state(three)
    assert spool.where(three) == "failed" and rec["exit_code"] == 3
    assert rec["reason"] == "exit code 3"
    rec = spool.wait_state(sig)
    assert rec["exit_code"] == 128 + 9 and "signal 9" in rec["reason"]
    for r in (spool.record(ok), rec):
        assert r["started_at"] <= r["ended_at"]
        assert r["host"] and isinstance(r["uid"], int)


def test_job_sees_gpus_env_cwd_and_output_goes_to_log(spool, daemon, tmp_path):
    work = tmp_path / "work dir"
    work.mkdir()
    j = spool.gsub("-n", "2", "-c", 'echo "$CUDA_VISIBLE_DEVICES|$CUDA_DEVICE_ORDER|'
                   '$SPOOLD_JOB_ID|$SPOOLD_GPUS|$SPOOLD_SPOOL|$MY_VAR|$PWD"',
                   cwd=work, env={"MY_VAR": "it's \"mine\""})
    rec = spool.wait_state(j, "done")
    gpus = ",".join(map(str, rec["assigned_gpus"]))
    assert len(rec["assigned_gpus"]) == 2 and rec["gpus"] == 2
    assert spool.log(j).strip() == (f"{gpus}|PCI_BUS_ID|{j}|{gpus}|{spool.root}|"
                                    f"it's \"mine\"|{work}")


HOSTILE = ["", " ", "'", '"', "$HOME", "`id`", "\\", "a\nb", "\t", "--", "-n", "é ü 中文 🚀",
           "$(echo x)", "*", "a b  c", "\r\n", "\x01\x7f", "line\u2028sep"]


def test_argv_round_trips_byte_exact(spool, daemon, tmp_path):
    out = tmp_path / "argv.json"
    code = "import sys, json; json.dump(sys.argv[1:], open(sys.argv[1], 'w'))"
    j = spool.gsub("-n", "0", "--", PY, "-c", code, str(out), *HOSTILE)
    spool.wait_state(j, "done")
    assert json.loads(out.read_text()) == [str(out), *HOSTILE]


def test_shell_string_runs_exactly(spool, daemon, tmp_path):
    out = tmp_path / "out"
    j = spool.gsub("-n", "0", "-c", f"printf '%s|' \"$((1+2))\" 'a  b' \"q'q\" > '{out}'")
    spool.wait_state(j, "done")
    assert out.read_text() == "3|a  b|q'q|"


def test_priority_then_submission_order(spool, daemon_factory, tmp_path):
    order = tmp_path / "order"
    spool.set_gpus(fake_gpu_list(1))
    ids = {}
    for name, prio in (("a", 10), ("b", 5), ("c", 10), ("d", 0), ("e", 5)):
        ids[name] = spool.gsub("-p", str(prio), "-J", name, "-c", f"echo {name} >> '{order}'")
    daemon_factory()
    for j in ids.values():
        spool.wait_state(j, "done")
    assert order.read_text().split() == ["d", "b", "e", "a", "c"]


def test_renaming_a_pending_file_reprioritises_it(spool, daemon_factory, tmp_path):
    order = tmp_path / "order"
    spool.set_gpus(fake_gpu_list(1))
    first = spool.gsub("-c", f"echo first >> '{order}'")
    second = spool.gsub("-c", f"echo second >> '{order}'")
    src = spool.root / "pending" / f"0010-{second:08d}.yaml"
    os.rename(src, spool.root / "pending" / f"0001-{second:08d}.yaml")
    daemon_factory()
    spool.wait_state(first, "done")
    spool.wait_state(second, "done")
    assert order.read_text().split() == ["second", "first"]


def test_cancel_pending_job(spool, daemon):
    spool.set_gpus(fake_gpu_list(4, {i: {"utilization": 100} for i in range(4)}))
    spool.gpus_seen({0, 1, 2, 3})
    j = spool.gsub("-n", "1", "--", "true")
    spool.run("gcancel", str(j))
    rec = spool.wait_state(j, "cancelled")
    assert "cancel" in rec["reason"]
    assert not list((spool.root / "requests").iterdir())


def test_kill_takes_the_whole_tree_including_setsid_grandchild(spool, daemon, tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    # The grandchild leaves the session and ignores TERM: only KILL gets it.
    j = spool.gsub("-n", "1", "-c",
                   f"setsid sh -c 'trap \"\" TERM; echo $$ > {pidfile}; "
                   "while :; do sleep 1; done' & sleep 300")
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), what="grandchild")
    grandchild = int(pidfile.read_text())
    spool.wait_state(j, "running")
    spool.run("gkill", str(j))
    rec = spool.wait_state(j, "cancelled")
    assert rec["exit_code"] == 143 and "killed on request" in rec["reason"]

    def gone():
        try:
            with open(f"/proc/{grandchild}/stat") as f:
                return f.read().split(")")[1].split()[0] == "Z"
        except FileNotFoundError:
            return True
    wait_for(gone, 10, "grandchild killed")


def test_file_dropped_by_another_program_gets_an_id_and_runs(spool, daemon, tmp_path):
    out = tmp_path / "cron.out"
    spool.drop("0003-nightly-backup.yaml", f"cmd: echo cron-ran > {out}\ngpus: 0\n")
    spool.drop("plain.yaml", "argv: ['true']\ngpus: 0\n")
    wait_for(lambda: out.exists(), what="dropped job to run")
    done = wait_for(lambda: len(list((spool.root / "done").glob("*.yaml"))) == 2 and
                    sorted((spool.root / "done").glob("*.yaml")), what="both done")
    recs = [spool.record(int(p.stem), "done") for p in done]
    assert len({r["id"] for r in recs}) == 2
    assert not any((spool.root / "pending").iterdir())


def test_busy_gpu_holds_job_until_idle(spool, daemon):
    loaded = {0: {"utilization": 50}, 1: {"memory_used": 20000}, 2: {"utilization": 100},
              3: {"error": "GPU is lost"}}
    spool.set_gpus(fake_gpu_list(4, loaded))
    spool.gpus_seen({0, 1, 2, 3})
    j = spool.gsub("-n", "1", "--", "true")
    st = spool.run("gstat", "--json")
    pending = json.loads(st.stdout)["pending"]
    assert [p["id"] for p in pending] == [j] and "GPUs busy" in pending[0]["reason"]
    spool.set_gpus(fake_gpu_list(4, {**loaded, 1: {"memory_used": 1000}}))
    rec = spool.wait_state(j, "done")
    assert rec["assigned_gpus"] == [1]


def test_over_limit_and_absent_gpus_fail_at_once(spool, daemon_factory):
    daemon_factory("--limit", "2")
    # gsub refuses these itself now; files other programs drop get the daemon's check
    spool.drop("0010-big.yaml", "argv: ['true']\ngpus: 3\n")
    spool.drop("0010-huge.yaml", "argv: ['true']\ngpus: 64\n")
    small = spool.gsub("-n", "2", "--", "true")
    big, huge = (wait_for(lambda n=n: _renamed(spool, n), what=f"{n} named")
                 for n in ("0010-big.yaml", "0010-huge.yaml"))
    assert "limit of 2" in spool.wait_state(big, "failed")["reason"]
    assert "manages only 4" in spool.wait_state(huge, "failed")["reason"]
    spool.wait_state(small, "done")


def test_cpu_only_machine_fails_gpu_jobs_and_runs_cpu_jobs(spool, daemon_factory):
    spool.set_gpus([])
    daemon_factory()
    spool.drop("0010-g.yaml", "argv: ['true']\ngpus: 1\n")  # gsub would refuse it itself
    g = wait_for(lambda: _renamed(spool, "0010-g.yaml"), what="the file named")
    c = spool.gsub("-n", "0", "--", "true")
    assert "manages none" in spool.wait_state(g, "failed")["reason"]
    spool.wait_state(c, "done")


def test_one_daemon_per_spool(spool, daemon, daemon_factory):
    second = daemon_factory(start=False).start(wait=False)
    assert second.proc.wait(20) != 0
    assert "already runs the spool" in second.output()
    assert daemon.alive()


def test_bad_files_fail_with_reason_and_daemon_survives(spool, daemon):
    spool.drop("0010-junk.yaml", b"\x00\xff\xfe binary")
    spool.drop("0010-typo.yaml", "argv: [true]\ngpu: 2\n")
    os.symlink("/etc/passwd", spool.root / "pending" / "0010-link.yaml")
    good = spool.gsub("-n", "0", "--", "true")
    spool.wait_state(good, "done")
    reasons = wait_for(lambda: len(list((spool.root / "failed").glob("*.yaml"))) == 3 and [
        spool.record(int(p.stem), "failed")["reason"]
        for p in (spool.root / "failed").glob("*.yaml")], what="3 rejected files")
    text = " | ".join(reasons)
    assert "not UTF-8" in text and "'gpu' (did you mean 'gpus'?)" in text
    assert "symbolic link" in text
    origs = {p.name: p for p in (spool.root / "failed").glob("*.orig")}
    assert len(origs) == 3 and any(p.is_symlink() for p in origs.values())
    assert daemon.alive()


def test_sigterm_leaves_running_jobs_running_and_next_daemon_adopts(spool, daemon_factory,
                                                                  tmp_path):
    d = daemon_factory()
    go = tmp_path / "go"
    j = spool.gsub("-n", "1", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done; exit 7")
    spool.wait_state(j, "running")
    assert d.stop() == 0
    assert spool.where(j) == "running"
    go.touch()  # the job ends while no daemon runs
    run_file = spool.root / "state" / "run" / HOST / f"{j}.lock"
    wait_for(lambda: run_file.read_text().split() == ["s", "7"],
             what="shepherd to record the exit status")
    daemon_factory()
    assert spool.wait_state(j, "failed")["exit_code"] == 7


def test_gstat_ghist_glog(spool, daemon):
    j = spool.gsub("-n", "1", "-J", "hello", "-c", "echo out; echo err >&2; exit 4")
    spool.wait_state(j, "failed")
    hist = json.loads(spool.run("ghist", "-f", "--json").stdout)
    assert [(h["id"], h["state"], h["exit_code"], h["name"]) for h in hist] == \
        [(j, "failed", 4, "hello")]
    assert json.loads(spool.run("ghist", "--json").stdout) == []
    table = spool.run("ghist", "-f").stdout.decode().splitlines()
    assert table[1].split()[0] == str(j)
    log = spool.run("glog", str(j)).stdout.decode()
    assert "out" in log and "err" in log
    p = spool.run("glog", "-f", str(j), check=False)
    assert p.returncode == 4


def test_glog_follow_streams_and_returns_exit_code(spool, daemon, tmp_path):
    go = tmp_path / "go"
    j = spool.gsub("-n", "0", "-c", f"echo first; while [ ! -e {go} ]; do sleep 0.05; done; "
                   "echo second; exit 5")
    spool.wait_state(j, "running")
    proc = subprocess.Popen([PY, "-c", "import sys; from spoold.tools import glog_main as m; "
                             "sys.exit(m())", "-f", str(j)], stdout=subprocess.PIPE,
                            env={**os.environ, "SPOOLD_SPOOL": str(spool.root)})
    assert proc.stdout.readline() == b"first\n"
    go.touch()
    assert proc.stdout.readline() == b"second\n"
    assert proc.wait(20) == 5


@pytest.mark.parametrize("n", [20])
def test_concurrent_gsub_get_distinct_ids(spool, daemon, n):
    procs = [subprocess.Popen(["dash", "bin/gsub", "-n", "0", "--", "true"],
                              stdout=subprocess.PIPE, cwd=os.path.dirname(os.path.dirname(
                                  os.path.abspath(__file__))),
                              env={**os.environ, "SPOOLD_SPOOL": str(spool.root)})
             for _ in range(n)]
    ids = [int(p.communicate()[0]) for p in procs]
    assert len(set(ids)) == n
    for j in ids:
        spool.wait_state(j, "done")


def _renamed(spool, name: str) -> int | None:
    """The id the daemon gave pending/NAME, from its log line."""
    import re

    m = re.search(rf"pending/{re.escape(name)}: dropped without an id; now job (\d+)",
                  spool.root.joinpath("state", "spoold.log").read_text())
    return int(m.group(1)) if m else None


def test_files_in_pending_that_are_not_jobs_are_named_once(spool, daemon):
    """issue 15 item 8: notes.txt and x.yaml~ in pending/ get one log line each."""
    for name in ("notes.txt", "x.yaml~"):
        (spool.root / "pending" / name).write_text("not a job\n")
    log = spool.root / "state" / "spoold.log"
    for _ in range(3):  # several passes
        spool.wait_state(spool.gsub("-n", "0", "--", "true"), "done")
    text = log.read_text()
    for name in ("notes.txt", "x.yaml~"):
        assert text.count(f"pending/{name}: not a job file name") == 1, text
    assert (spool.root / "pending" / "notes.txt").exists()  # left alone


def test_a_start_right_after_a_heartbeat_shows_in_the_next_one_soon(spool, daemon_factory,
                                                                   tmp_path):
    """A busy queue rewrites the heartbeat at most every 0.25 s; a job started
    just after a write is in the next one 0.25 s later, not at the next GPU
    poll (30 s here)."""
    import yaml

    daemon_factory("--poll", "30")
    go = tmp_path / "go"
    wait = f"until [ -e {go} ]; do sleep 0.05; done"
    jobs = [spool.gsub("-n", "0", "-c", wait) for _ in range(3)]  # ~10 ms apart
    beat = spool.root / "state" / "hosts" / f"{HOST}.yaml"

    def shown() -> set:
        return {j["id"] for j in (yaml.safe_load(beat.read_text()) or {}).get("jobs") or ()}

    try:
        wait_for(lambda: set(jobs) <= shown(), 5, "every running job in the heartbeat")
    finally:
        go.touch()
