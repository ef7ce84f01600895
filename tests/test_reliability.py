"""Nothing lost: crashes, restarts and hostile input, against the real daemon."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest
import yaml
from conftest import HOST, lock_free, wait_for

SOAK_JOBS = int(os.environ.get("SPOOLD_SOAK_JOBS", "150"))
SOAK_KILLS = int(os.environ.get("SPOOLD_SOAK_KILLS", "12"))


def finals(spool) -> dict[int, str]:
    out = {}
    for d in ("done", "failed", "cancelled"):
        for p in (spool.root / d).glob("*.yaml"):
            out[int(p.stem)] = d
    return out


def test_soak_kill9_and_restart_never_loses_or_repeats_a_job(spool, daemon_factory, tmp_path):
    """Hundreds of short jobs while the daemon is kill -9'd and restarted again
    and again: every job runs exactly once and every record holds its own code."""
    ran = tmp_path / "ran"
    ran.mkdir()
    rnd = random.Random(int(os.environ.get("SPOOLD_SOAK_SEED", "7")))
    d = daemon_factory()
    want: dict[int, int] = {}
    kills = 0
    for _ in range(SOAK_JOBS):
        code = rnd.choice([0, 0, 0, 1, 3, 42])
        gpus = rnd.choice([0, 1, 1, 2])
        # set -C: a second run of the same job cannot create its marker again.
        j = spool.gsub("-n", str(gpus), "-c",
                       f"set -C; : > {ran}/$SPOOLD_JOB_ID || : > {ran}/dup-$SPOOLD_JOB_ID; "
                       f"sleep 0.0{rnd.randint(0, 9)}; exit {code}")
        want[j] = code
        if rnd.random() < SOAK_KILLS / SOAK_JOBS:
            d.kill9()
            kills += 1
            d = daemon_factory()
    wait_for(lambda: len(finals(spool)) == len(want), 180,
             f"{len(want)} jobs to finish ({len(finals(spool))} so far)", interval=0.2)
    states = finals(spool)
    assert not list(ran.glob("dup-*")), "a job ran twice"
    assert sorted(int(p.name) for p in ran.iterdir()) == sorted(want)
    for j, code in want.items():
        rec = spool.record(j, states[j])
        assert rec["exit_code"] == code, (j, rec)
        assert states[j] == ("done" if code == 0 else "failed")
    assert kills >= 1
    assert not list((spool.root / "running").iterdir())
    assert not list((spool.root / "state" / "run" / HOST).iterdir())


def test_vanished_job_fails_with_reason(spool, daemon_factory):
    d = daemon_factory()
    j = spool.gsub("-n", "1", "--", "sleep", "300")
    spool.wait_state(j, "running")
    shepherd = wait_for(lambda: spool.record(j, "running").get("pid"), what="job started")
    d.kill9()
    os.kill(shepherd, signal.SIGKILL)  # the whole tree dies, as in a reboot
    subprocess.run(["pkill", "-KILL", "-f", "^sleep 300$"], check=False)
    wait_for(lambda: _lock_free(spool, j), what="shepherd gone")
    daemon_factory()
    rec = spool.wait_state(j, "failed")
    assert "vanished" in rec["reason"] and "exit_code" not in rec


def _lock_free(spool, j) -> bool:
    return lock_free(spool.root / "state" / "run" / HOST / f"{j}.lock")


def test_claimed_but_never_started_goes_back_to_pending(spool, daemon_factory):
    # Simulate the crash window between the claim rename and the launch.
    j = spool.gsub("-n", "1", "-p", "4", "--", "true")
    src = spool.root / "pending" / f"0004-{j:08d}.yaml"
    rec = yaml.safe_load(src.read_text())
    rec.update(uid=os.getuid(), host=_host(), assigned_gpus=[2], claimed_at=time.time())
    (spool.root / "running" / f"{j}.yaml").write_text(yaml.safe_dump(rec))
    src.unlink()
    daemon_factory()
    rec = spool.wait_state(j, "done")
    assert rec["exit_code"] == 0


def test_launched_before_its_record_was_written_is_adopted(spool, daemon_factory, tmp_path):
    """The crash window between the launch and the record's one write: running/
    holds the file the claim moved (no host, a fresh ctime) and the run file
    says the job started. The restarted daemon adopts it at once (it is this
    host's, not another's claim in progress): never requeued, never run twice."""
    j = spool.gsub("-n", "0", "--", "false")  # run again, it would end in failed/
    src = spool.root / "pending" / f"0010-{j:08d}.yaml"
    os.rename(src, spool.root / "running" / f"{j}.yaml")  # the claim, as it was
    go = tmp_path / "go"
    run_file = spool.root / "state" / "run" / HOST / f"{j}.lock"
    run_file.parent.mkdir(parents=True, exist_ok=True)
    # A stand-in shepherd: holds the run file's lock, says "started", waits,
    # then records exit status 0 as its last act (runner's protocol).
    shepherd = subprocess.Popen(
        ["python3", "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(run_file)!r}, os.O_RDWR | os.O_CREAT, 0o600)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b's')\n"
         f"while not os.path.exists({str(go)!r}): time.sleep(0.02)\n"
         "os.write(fd, b' 0')\n"])
    wait_for(lambda: run_file.exists() and run_file.read_bytes() == b"s", what="stand-in")
    daemon_factory()
    wait_for(lambda: spool.record(j, "running").get("host"), what="the job adopted")
    assert (spool.root / "running" / f"{j}.yaml").exists()
    assert not list((spool.root / "pending").iterdir()), "requeued while it ran"
    go.touch()
    shepherd.wait(10)
    rec = spool.wait_state(j, "done")
    assert rec["exit_code"] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="a root daemon's shared spool")
def test_a_claimed_file_is_not_another_hosts_because_it_says_so(spool, daemon_factory):
    """The crash window between the claim and the record, in a shared spool:
    running/ holds the user's own file, which says `host: nowhere`. That is
    its owner's word, not a host's claim (it was taken as one, and the job
    stayed in running/ for good): the job goes back to pending/ and runs."""
    j = spool.gsub("-n", "0", "--", "true")
    src = spool.root / "pending" / f"0010-{j:08d}.yaml"
    dst = spool.root / "running" / f"{j}.yaml"
    dst.write_text(src.read_text() + "host: nowhere\n")
    os.chown(dst, 65534, 65534)  # a user's file, as the claim moved it
    src.unlink()
    daemon_factory()
    spool.wait_state(j, "done", "failed", timeout=40)  # (after the claim's grace)


def _host() -> str:
    import socket

    return socket.gethostname()


def test_stale_tmp_and_requests_are_cleaned(spool, daemon_factory):
    old = spool.root / "tmp" / "abandoned.yaml"
    old.write_text("argv: [x]\n")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    fresh = spool.root / "tmp" / "being-written.yaml"
    fresh.write_text("argv: [x]\n")
    for name in ("kill-999", "cancel-abc", "bogus", "kill-0"):
        (spool.root / "requests" / name).touch()
    d = daemon_factory()
    wait_for(lambda: not any((spool.root / "requests").iterdir()), what="requests consumed")
    assert not old.exists() and fresh.exists()
    out = d.output()
    assert "no such job" in out and "not a request" in out


HOSTILE: dict[str, bytes] = {
    "invalid-yaml": b"argv: [unterminated\n",
    "binary": bytes(range(256)) * 4,
    "empty": b"",
    "list": b"- argv\n- true\n",
    "no-command": b"gpus: 1\nname: x\n",
    "wrong-types": b"argv: true\ngpus: two\n",
    "negative-gpus": b"argv: ['true']\ngpus: -3\n",
    "huge-gpus": b"argv: ['true']\ngpus: 99999999999\n",
    "bad-priority": b"argv: ['true']\npriority: urgent\n",
    "python-tag": b"argv: !!python/object/apply:os.system ['touch /tmp/pwned']\n",
    "alias-bomb": b"x-a: &a [x,x,x,x,x,x,x,x]\nx-b: &b [*a,*a,*a,*a,*a,*a,*a,*a]\n"
                  b"x-c: &c [*b,*b,*b,*b,*b,*b,*b,*b]\nargv: *c\n",
    "non-utf8": "argv: ['caf\u00e9']\n".encode("latin-1"),
    "over-cap": b"argv: ['true']\n" + b"#" * (1 << 20) + b"\n",
    "unknown-field": b"argv: ['true']\ngpu: 2\n",
}


def test_hostile_corpus_fails_with_reasons_and_valid_jobs_still_run(spool, daemon, tmp_path):
    for label, raw in HOSTILE.items():
        spool.drop(f"0010-{label}.yaml", raw)
    pend = spool.root / "pending"
    os.mkfifo(pend / "0010-fifo.yaml")
    (pend / "0010-dir.yaml").mkdir()
    os.symlink(tmp_path / "secret", pend / "0010-symlink.yaml")
    (tmp_path / "secret").write_text("argv: ['true']\n")
    (pend / ".hidden.yaml").write_text("argv: ['true']\n")
    good = spool.gsub("-n", "1", "--", "true")
    spool.wait_state(good, "done")
    expected = len(HOSTILE) + 3
    wait_for(lambda: len(list((spool.root / "failed").glob("*.yaml"))) == expected,
             what=f"{expected} refusals")
    recs = [yaml.safe_load(p.read_text()) for p in (spool.root / "failed").glob("*.yaml")]
    by_name = {r["original_name"]: r["reason"] for r in recs}
    assert all(r.startswith("rejected: ") for r in by_name.values())
    assert "fifo" in by_name["0010-fifo.yaml"] and "directory" in by_name["0010-dir.yaml"]
    assert "symbolic link" in by_name["0010-symlink.yaml"]
    assert "cap" in by_name["0010-over-cap.yaml"]
    assert "not UTF-8" in by_name["0010-non-utf8.yaml"]
    assert "gpu" in by_name["0010-unknown-field.yaml"]
    assert not os.path.exists("/tmp/pwned")
    # Original bytes kept, as they were; the symlink target untouched.
    for r in recs:
        orig = spool.root / "failed" / f"{r['id']}.orig"
        assert orig.exists() or orig.is_symlink()
        label = r["original_name"][5:-5]
        if label in HOSTILE:
            assert orig.read_bytes() == HOSTILE[label]
    assert (tmp_path / "secret").read_text() == "argv: ['true']\n"
    assert (pend / ".hidden.yaml").exists()
    assert daemon.alive()


def test_file_written_slowly_in_place_is_never_run_half_written(spool, daemon, tmp_path):
    out = tmp_path / "ran"
    path = spool.root / "pending" / "0010-slow.yaml"
    with open(path, "w") as f:
        f.write('cmd: "echo ran > ')
        f.flush()
        # While it is open the daemon keeps going: later jobs finish...
        for _ in range(2):
            spool.wait_state(spool.gsub("-n", "0", "--", "true"), "done")
        wait_for(lambda: time.time() - path.stat().st_mtime > 2.5, what="settle time")
        spool.wait_state(spool.gsub("-n", "0", "--", "true"), "done")
        # ...but the half-written file is still waiting, untouched.
        assert path.exists() and not list((spool.root / "failed").iterdir())
        f.write(f'{out}"\ngpus: 0\n')
    wait_for(out.exists, what="the completed file to run")
    assert not list((spool.root / "failed").iterdir())


def test_duplicate_id_gets_a_new_one(spool, daemon, tmp_path):
    j = spool.gsub("-n", "0", "--", "true")
    spool.wait_state(j, "done")
    spool.drop(f"0010-{j:08d}.yaml", b"argv: ['true']\ngpus: 0\n")
    wait_for(lambda: len(list((spool.root / "done").glob("*.yaml"))) == 2, what="copy to run")
    assert spool.record(j, "done")["exit_code"] == 0


@pytest.fixture
def tiny_spool(tmp_path):
    """A spool on a 2 MiB tmpfs, so the disk can really fill up."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs",
                                            str(mnt)], capture_output=True).returncode:
        pytest.skip("needs root and mount(8) to make a small filesystem")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_is_reported_retried_and_loses_nothing(tiny_spool, tmp_path):
    from conftest import Daemon, Spool, fake_gpu_list, fill

    from spoold.spool import Spool as RealSpool

    sp = Spool(tiny_spool / "spool", tmp_path / "gpus-small.yaml")
    sp.set_gpus(fake_gpu_list(1, {0: {"utilization": 100}}))
    RealSpool(sp.root).create()
    d = Daemon(sp, ["--poll", "0.2"]).start()
    try:
        sp.gpus_seen({0})
        j = sp.gsub("-n", "1", "-c", "echo ran")
        filler = fill(tiny_spool, one_file=True)[0]
        sp.set_gpus(fake_gpu_list(1))  # the GPU frees up while the disk is full
        wait_for(lambda: "disk full" in d.output(), 30, "the daemon to say the disk is full")
        assert d.alive() and sp.where(j) in ("pending", "running")
        filler.unlink()
        rec = sp.wait_state(j, "done", timeout=60)
        assert rec["exit_code"] == 0 and sp.log(j) == "ran\n"
        for f in sp.root.rglob("*.yaml"):  # nothing half-written anywhere
            yaml.safe_load(f.read_text())
    finally:
        d.stop()
