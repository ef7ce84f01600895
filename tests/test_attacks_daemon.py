"""Issue 11, daemon side: each attack reproduced as written, against the real
daemon (root, on a shared spool, with throwaway users where a user attacks),
and the behaviour expected once it is fixed. Each docstring names its case."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import HOST, REPO, fake_gpu_list, wait_for
from test_multiuser import RUNUSER, as_user

pytest.register_assert_rewrite("attack_helpers")
from attack_helpers import (  # noqa: E402 - after the line above
    ALICE,
    BOB,
    FINAL,
    ROOT_ONLY,
    WAIT_GO,
    alive,
    bobs_copy,
    check_bobs_job,
    daemon_log,
    drop_as,
    final,
    gsub_ids,
    jobs_of,
    load,
    log_says_renamed,
    long_job,
    pending_ids,
    replace_record,
    start_fresh,
    tool_as,
    wait_pid_file,
)

pytest_plugins = ("attack_helpers",)  # fixtures: lab, tmpfs, users
pytestmark = ROOT_ONLY


# ---- A: who runs a job ------------------------------------------------------------
@pytest.mark.parametrize("claimed", ["root", "bob", "negative"])
def test_uid_field_of_a_released_held_file_never_decides_who_runs_it(lab, claimed):
    """issue 11 A1: a held file of alice saying `uid: 0` (or bob's uid, or -5) is
    rewritten by the daemon on grelease; it must still run as alice."""
    lb = lab()
    uid = {"root": 0, "bob": lb.uid(BOB), "negative": -5}[claimed]
    out = lb.base / ALICE / "who"
    drop_as(lb, ALICE, {"0010-a1.yaml": f"cmd: 'id -u > {out}'\ngpus: 0\nhold: true\n"
                                        f"uid: {uid}\n"})
    j = wait_for(lambda: next(iter(pending_ids(lb.sp)), None), what="the file to get an id")
    tool_as(lb, ALICE, "grelease", str(j))
    state, rec = final(lb.sp, j)
    ran_as = out.read_text().strip() if out.exists() else None
    assert (rec.get("uid"), rec.get("user"), state, ran_as) == (
        lb.uid(ALICE), ALICE, "done", str(lb.uid(ALICE)))
    other = gsub_ids(lb, BOB, "-n", "0", "--", "true")[0]
    assert final(lb.sp, other)[0] == "done" and lb.daemon.alive()


def test_user_field_is_the_file_owner_not_the_submitters_USER(lab):
    """issue 11 A6: bob submits with USER=spoold-alice; his record says spoold-bob."""
    lb = lab()
    p = as_user(BOB, "env", f"USER={ALICE}", f"LOGNAME={ALICE}", "dash",
                str(lb.base / "bin" / "gsub"), "--spool", str(lb.sp.root), "-n", "0", "--",
                "true", cwd=lb.base / BOB)
    state, rec = final(lb.sp, int(p.stdout))
    assert (state, rec.get("uid"), rec.get("user")) == ("done", lb.uid(BOB), BOB)


# ---- B: ids and arrays ----------------------------------------------------------------
JUNK = "argv: [unterminated\n\0\1\2"
VALID_DEP = "cmd: 'sleep 1'\ngpus: 0\nafter: [99999]\n"
SETTLED = {"junk": ("failed",), "valid": ("pending", "failed", "cancelled")}


@pytest.mark.parametrize("content", ["junk", "valid"])
def test_file_named_after_a_running_job_gets_a_fresh_id(lab, content):
    """issue 11 B8 (a, b): bob drops pending/0010-<alice's running id>; alice's
    job runs on untouched and ends once, in done/; bob's file becomes job M."""
    lb = lab()
    n = long_job(lb, ALICE, go := lb.base / ALICE / "go")
    drop_as(lb, BOB, {f"0010-{n:08d}.yaml": JUNK if content == "junk" else VALID_DEP})
    m, state = bobs_copy(lb, n, SETTLED[content])
    assert m != n, f"bob's file was handled as job {n} itself ({state}/)"
    check_bobs_job(lb, m, state, content)
    # the daemon logs just after the rename it did: wait for the line
    wait_for(lambda: log_says_renamed(lb, n, m), 10, "a log line saying the file was renamed")
    rec = load(lb.sp.root / "running" / f"{n}.yaml") or {}
    assert (lb.sp.where(n), rec.get("uid")) == ("running", lb.uid(ALICE))
    go.touch()
    state, rec = final(lb.sp, n)
    assert (state, rec.get("uid")) == ("done", lb.uid(ALICE))
    assert not [p.name for d in ("failed", "cancelled", "running")
                for p in (lb.sp.root / d).glob(f"{n}.*")]


@pytest.mark.parametrize("content", ["junk", "valid"])
def test_file_named_after_a_finished_job_gets_a_fresh_id(lab, content):
    """issue 11 B8 (c): bob drops pending/0010-<alice's finished id F>: it is
    renamed to a fresh id, and F stays in exactly one folder."""
    lb = lab()
    f = gsub_ids(lb, ALICE, "-n", "0", "--", "true")[0]
    assert final(lb.sp, f)[0] == "done"
    drop_as(lb, BOB, {f"0010-{f:08d}.yaml": JUNK if content == "junk" else VALID_DEP})
    m, state = bobs_copy(lb, f, SETTLED[content])
    assert m != f, f"bob's file was handled as job {f} itself ({state}/)"
    where = sorted(p.name for d in ("running", *FINAL) for p in (lb.sp.root / d).glob(f"{f}.*"))
    assert where == [f"{f}.yaml"] and (lb.sp.root / "done" / f"{f}.yaml").exists()


@pytest.mark.parametrize("prio", ["0003", "0099"])
def test_planted_name_never_takes_the_submitters_id(lab, prio):
    """issue 11 B8: bob plants pending/<prio>-<N> while alice's gsub takes id N
    (its marker) and delivers 0010-<N>; the daemon lists both at once, bob's
    before or after hers in queue order. Alice's job keeps N; bob's file gets
    a fresh id."""
    lb = lab()
    n = int((lb.sp.root / "state" / "next-id").read_text())
    os.kill(lb.daemon.proc.pid, signal.SIGSTOP)  # both files in one listing
    try:
        drop_as(lb, BOB, {f"{prio}-{n:08d}.yaml": "cmd: 'true'\ngpus: 0\n"})
        assert gsub_ids(lb, ALICE, "-n", "0", "--", "true") == [n]
    finally:
        os.kill(lb.daemon.proc.pid, signal.SIGCONT)
    state, rec = final(lb.sp, n)
    assert (state, rec.get("uid")) == ("done", lb.uid(ALICE))
    bobs = wait_for(lambda: [j for j, d in jobs_of(lb.sp, lb.uid(BOB)).items() if d == "done"],
                    what="bob's job under a fresh id")
    assert bobs != [n]


def test_huge_id_in_a_dropped_name_gets_a_small_fresh_id(lab):
    """issue 11 B9: pending/0010-99999999999999999999.yaml runs under a fresh id
    below 100,000,000; the counter stays small; the next gsub gets a small id."""
    lb = lab()
    drop_as(lb, BOB, {"0010-99999999999999999999.yaml": "cmd: 'true'\ngpus: 0\n"})
    m = bobs_copy(lb, 99999999999999999999, ("running", *FINAL))[0]
    assert m < 100_000_000
    assert final(lb.sp, m)[0] == "done"
    assert int((lb.sp.root / "state" / "next-id").read_text()) < 100_000_000
    assert gsub_ids(lb, ALICE, "-n", "0", "--", "true")[0] < 1000


def test_another_users_job_cannot_throttle_my_array(lab):
    """issue 11 B10: bob's running job claims `array_id: <alice's array>` with
    `array_limit: 1`; alice's first element still starts."""
    lb = lab()
    ids = gsub_ids(lb, ALICE, "--hold", "--array", "0-1%1", "-n", "0", "-c", "sleep 2")
    drop_as(lb, BOB, {"0010-fake.yaml": f"cmd: 'sleep 30'\ngpus: 0\narray_id: {ids[0]}\n"
                                        "array_limit: 1\n"})
    wait_for(lambda: "running" in jobs_of(lb.sp, lb.uid(BOB)).values(), 10, "bob's job to run")
    tool_as(lb, ALICE, "grelease", *map(str, ids))
    wait_for(lambda: any(lb.sp.where(i) in ("running", "done") for i in ids), 5,
             "alice's first array element to start")


def test_array_limit_holds_across_two_hosts(spool):
    """issue 11 B10: two daemons (--host a, --host b) on one spool never run
    two elements of `--array 0-3%1` at once."""
    from test_hosts import start_host

    hosts = [start_host(spool, "a", 2), start_host(spool, "b", 2)]
    try:
        ids = [int(x) for x in spool.run("gsub", "--array", "0-3%1", "-n", "0", "-c",
                                         "sleep 1").stdout.split()]
        running = spool.root / "running"
        peak = [0]

        def all_done():
            peak[0] = max(peak[0], sum(n.endswith(".yaml") for n in os.listdir(running)))
            return all(spool.where(i) == "done" for i in ids)
        wait_for(all_done, 20, "the array to finish", interval=0.005)
        assert peak[0] == 1, f"{peak[0]} elements were in running/ at once"
    finally:
        for d in hosts:
            d.stop()


def test_job_file_just_under_the_cap_runs_and_is_adopted_after_restart(lab):
    """issue 11 B11: a job file just under 1 MiB runs; its record (the file plus
    the daemon's fields) must not lock the job out of adoption after a restart."""
    lb = lab()
    go, pidf = lb.base / ALICE / "go", lb.base / ALICE / "pid"
    head = f"cmd: 'echo $$ > {pidf}; {WAIT_GO.format(go=go)}'\ngpus: 0\nx-pad: '"
    text = head + "x" * ((1 << 20) - 100 - len(head)) + "'\n"
    drop_as(lb, ALICE, {"0010-big.yaml": text})
    pid = wait_pid_file(pidf)
    j = int(next((lb.sp.root / "running").glob("*.yaml")).stem)
    lb.daemon.stop()
    start_fresh(lb.daemon)
    assert alive(pid), "the job died across the restart"
    go.touch()
    state, rec = final(lb.sp, j)
    assert (state, rec.get("uid")) == ("done", lb.uid(ALICE))


# ---- C: requests, locks, logs, limits -------------------------------------------------
def test_directory_planted_as_a_kill_request_is_removed_and_the_owner_can_kill(lab):
    """issue 11 C12: bob's `mkdir requests/kill-<alice's job>` is removed by the
    daemon within seconds; alice's gkill then kills her job."""
    lb = lab()
    j = long_job(lb, ALICE, lb.base / ALICE / "go")
    req = lb.sp.root / "requests" / f"kill-{j}"
    as_user(BOB, "mkdir", str(req))
    wait_for(lambda: not req.exists(), 5, "the daemon to remove bob's directory")
    tool_as(lb, ALICE, "gkill", str(j))
    state, rec = final(lb.sp, j)
    assert state == "cancelled" and "killed on request" in rec.get("reason", "")


def test_directory_kill_request_for_the_next_id_does_not_cancel_it(spool, daemon):
    """issue 11 C12: a directory requests/kill-<next id> is removed and does not
    cancel the next submission."""
    n = int((spool.root / "state" / "next-id").read_text())
    req = spool.root / "requests" / f"kill-{n}"
    req.mkdir()
    j = spool.gsub("-n", "0", "--", "true")
    assert j == n, "the test needs the directory to name the next job"
    state, rec = final(spool, j)
    assert state == "done", rec
    wait_for(lambda: not req.exists(), 5, "the directory to be removed")


def test_directory_pause_request_is_removed_and_does_not_pause(spool, daemon):
    """issue 11 C12: a directory requests/pause is removed and does not pause
    the queue (no state/paused; a new job runs)."""
    req = spool.root / "requests" / "pause"
    req.mkdir()
    wait_for(lambda: not req.exists(), 5, "the directory to be removed")
    assert not (spool.root / "state" / "paused").exists()
    assert final(spool, spool.gsub("-n", "0", "--", "true"))[0] == "done"


def test_host_lock_cannot_be_opened_by_users(lab):
    """issue 11 C13: state/hosts/<host>.lock is 0600; bob cannot open it to flock it."""
    lb = lab()
    lock = lb.sp.root / "state" / "hosts" / f"{HOST}.lock"
    assert oct(os.stat(lock).st_mode & 0o777) == oct(0o600)
    p = as_user(BOB, "/usr/bin/python3", "-c", "import fcntl, os, sys; fcntl.flock(os.open("
                "sys.argv[1], os.O_RDONLY), fcntl.LOCK_SH | fcntl.LOCK_NB)", str(lock),
                check=False)
    assert p.returncode != 0 and b"PermissionError" in p.stderr, p.stderr.decode()[-300:]


def test_daemon_log_is_not_readable_by_users(lab):
    """issue 11 C14: state/spoold.log is 0600, or 0640 root:root."""
    lb = lab()
    log = lb.sp.root / "state" / "spoold.log"
    st = os.stat(log)
    assert st.st_mode & 0o007 == 0 and (st.st_mode & 0o070 == 0 or st.st_gid == 0), \
        oct(st.st_mode)
    assert as_user(BOB, "cat", str(log), check=False).returncode != 0


def test_planted_request_links_add_only_a_few_log_lines(lab):
    """issue 11 C14: 300 symlinks requests/kill-<n> -> /etc/passwd by bob add
    at most ~20 lines to state/spoold.log."""
    lb = lab()
    req = lb.sp.root / "requests"
    before = len(daemon_log(lb.sp))
    as_user(BOB, "sh", "-c", f"i=1000; while [ $i -lt 1300 ]; do ln -s /etc/passwd "
            f"{req}/kill-$i; i=$((i + 1)); done")
    wait_for(lambda: not any(req.iterdir()), 15, "the links to be removed")
    added = len(daemon_log(lb.sp)) - before
    assert added <= 20, f"{added} log lines for 300 planted links"


def test_per_user_pending_cap_keeps_room_for_other_users(lab):
    """issue 11 C15: with --max-pending 10 --max-pending-per-user 3, alice's
    flood (10 id-less and 5 id-named files) ends in failed/ "queue full" beyond
    3; bob's gsub is still accepted."""
    lb = lab("--max-pending", "10", "--max-pending-per-user", "3")
    held = "cmd: 'sleep 60'\ngpus: 0\nhold: true\n"
    files = {f"0010-a{i}.yaml": held for i in range(10)}
    files |= {f"0010-{900 + i:08d}.yaml": held for i in range(5)}
    drop_as(lb, ALICE, files)
    alice = lb.uid(ALICE)

    def settled():  # every file handled, at most 3 left pending
        mine = jobs_of(lb.sp, alice)
        left = [n for n in os.listdir(lb.sp.root / "pending") if "-a" in n]
        return not left and len(mine) == 15 and list(mine.values()).count("pending") <= 3 and mine
    mine = wait_for(settled, 10, "alice's files to be handled, at most 3 left pending")
    full = [j for j, d in mine.items() if d == "failed" and "queue full" in (
        load(lb.sp.root / "failed" / f"{j}.yaml") or {}).get("reason", "")]
    assert len(full) >= 12, mine
    j = gsub_ids(lb, BOB, "--hold", "-n", "0", "-c", "true")[0]
    assert lb.sp.where(j) == "pending"


def test_keep_prunes_each_users_records_separately(lab):
    """issue 11 C15: with --keep 2, bob's six junk files (and a job of his) do
    not prune alice's finished record and log."""
    lb = lab("--keep", "2")
    j = gsub_ids(lb, ALICE, "-n", "0", "-c", "echo mine")[0]
    assert final(lb.sp, j)[0] == "done"
    drop_as(lb, BOB, {f"0010-junk{i}.yaml": JUNK for i in range(6)})
    wait_for(lambda: not os.listdir(lb.sp.root / "pending"), 10, "the junk to be handled")
    k = gsub_ids(lb, BOB, "-n", "0", "--", "true")[0]
    assert final(lb.sp, k)[0] == "done"  # a finish: pruning runs, right after the move
    wait_for(lambda: len(jobs_of(lb.sp, lb.uid(BOB))) <= 2, 5, "bob's records to be pruned")
    assert (lb.sp.root / "done" / f"{j}.yaml").exists(), "alice's record was pruned"
    assert (lb.sp.root / "logs" / f"{j}.log").exists(), "alice's log was pruned"


# ---- F: records and names -------------------------------------------------------------
def test_exit_255_is_an_exit_code_not_a_signal(spool, daemon):
    """issue 11 F25 (1): exit 255 -> failed, "exit code 255"."""
    state, rec = final(spool, spool.gsub("-n", "0", "-c", "exit 255"))
    assert (state, rec.get("exit_code"), rec.get("reason")) == ("failed", 255, "exit code 255")


def test_non_utf8_file_name_gets_its_record_and_original(spool, daemon):
    """issue 11 F25 (2): pending/0010-\\xff.yaml with bad content -> both
    failed/N.yaml and failed/N.orig."""
    tmp = os.fsencode(spool.root / "tmp") + b"/x"
    with open(tmp, "wb") as f:
        f.write(JUNK.encode())
    os.rename(tmp, os.fsencode(spool.root / "pending") + b"/0010-\xff.yaml")
    orig = wait_for(lambda: next((spool.root / "failed").glob("*.orig"), None), 10,
                    "the refused file in failed/")
    wait_for((spool.root / "failed" / f"{orig.stem}.yaml").exists, 5, f"failed/{orig.stem}.yaml")


def test_newline_in_a_file_name_cannot_forge_a_log_line(spool, daemon):
    """issue 11 F25 (3): a name with a newline is logged on one line."""
    spool.drop("0010-x\nforged-line ERROR all jobs lost.yaml", "argv: ['true']\ngpus: 0\n")
    wait_for(lambda: list((spool.root / "done").glob("*.yaml")), 10, "the job to run")
    lines = daemon_log(spool)
    assert any("forged-line" in line for line in lines), "the name was never logged"
    assert not [line for line in lines if line.startswith("forged-line")]


def test_pruned_rejects_stay_pruned_and_orig_folders_go_too(spool, daemon_factory):
    """issue 11 F25 (4): with --keep 1, pruned rejects (a junk file, a folder
    dropped in pending/) leave no .orig behind and do not come back after a
    restart."""
    d = daemon_factory("--keep", "1")
    (spool.root / "pending" / "0010-dir.yaml").mkdir()
    spool.drop("0010-junk.yaml", JUNK)
    failed = spool.root / "failed"
    wait_for(lambda: len(list(failed.glob("*.orig"))) == 2, 10, "two refusals")
    j = spool.gsub("-n", "0", "--", "true")
    assert final(spool, j)[0] == "done"

    def records():
        return sorted(p.name for s in FINAL for p in (spool.root / s).iterdir())
    wait_for(lambda: records() == [f"{j}.yaml"], 5, f"pruning to keep only {j} ({records()})")
    d.stop()
    start_fresh(d)
    assert records() == [f"{j}.yaml"]


@pytest.mark.parametrize("who,mode", [("root", 0o750), (ALICE, 0o755)])
def test_spool_option_on_an_existing_folder_keeps_its_mode(users, who, mode):
    """issue 11 F25 (5): `spoold --spool DIR` on an existing folder that is not a
    spool never changes DIR's mode (root: shared mode would make it 0755;
    a user: private mode would make it 0700)."""
    base = Path(tempfile.mkdtemp(prefix="spoold-notaspool-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        target = base / "data"
        target.mkdir()
        (target / "notes.txt").write_text("mine\n")
        gpus = base / "gpus.yaml"
        gpus.write_text(yaml.safe_dump(fake_gpu_list(1)))
        os.chmod(gpus, 0o644)
        cmd = [sys.executable, "-m", "spoold.daemon", "--spool", str(target), "--fake-gpus",
               str(gpus), "--poll", "0.2"]
        if who != "root":
            shutil.chown(target, who, who)
            if as_user(who, sys.executable, "-c", "import spoold, yaml, watchdog",
                       cwd=REPO, check=False).returncode:
                pytest.skip(f"{who} cannot run this Python ({sys.executable})")
            cmd = [RUNUSER, "-u", who, "--", *cmd]
        os.chmod(target, mode)
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                                     "HOME": "/tmp"})
        try:
            wait_for(lambda: proc.poll() is not None or list(
                (target / "state" / "hosts").glob("*.yaml")), 20, "the daemon to start or refuse")
        finally:
            proc.terminate()
            out = proc.communicate(timeout=10)[0].decode(errors="replace")
        assert oct(os.stat(target).st_mode & 0o7777) == oct(mode), out[-500:]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_adopted_job_without_a_pid_killed_on_request_is_cancelled(spool, daemon_factory):
    """issue 11 F25 (6): a job adopted from a record with no pid, then gkill'ed,
    is cancelled "killed on request", not failed "vanished"."""
    d = daemon_factory()
    j = spool.gsub("-n", "0", "--", "sleep", "300")
    path = spool.root / "running" / f"{j}.yaml"
    wait_for(lambda: (load(path) or {}).get("pid"))
    d.stop()
    replace_record(path, {k: v for k, v in load(path).items() if k != "pid"})
    start_fresh(d)
    spool.run("gkill", str(j))
    state, rec = final(spool, j)
    assert (state, "killed on request" in rec.get("reason", "")) == ("cancelled", True), rec


# ---- D: processes ----------------------------------------------------------------------
def test_stale_record_pid_of_an_unrelated_session_is_never_signalled(spool, daemon_factory):
    """issue 11 D16: running/ holds a record whose pid is the session id of an
    unrelated live session, with a stale run file; the daemon records the job
    failed and kills nothing of that session."""
    victim = subprocess.Popen(["setsid", "sh", "-c", "sleep 1000 & exec sleep 1000"])
    kids = Path(f"/proc/{victim.pid}/task/{victim.pid}/children")
    try:
        child = int(wait_for(lambda: kids.read_text().split(), 5, "the session's child")[0])
        now = time.time()
        j = 4242
        rec = {"id": j, "argv": ["sleep", "1"], "gpus": 0, "uid": 0, "user": "root",
               "host": HOST, "claimed_at": now - 60, "assigned_gpus": [],
               "pid": victim.pid, "started_at": now - 60}
        (spool.root / "running" / f"{j}.yaml").write_text(yaml.safe_dump(rec))
        run_dir = spool.root / "state" / "run" / HOST
        run_dir.mkdir(mode=0o700, exist_ok=True)
        (run_dir / f"{j}.lock").write_text("s\n")
        daemon_factory()
        state, _ = final(spool, j)
        assert (state, alive(victim.pid), alive(child)) == ("failed", True, True)
    finally:
        for pid in (victim.pid, *map(int, kids.read_text().split() if kids.exists() else [])):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        victim.wait(10)


def test_kill_reaches_a_job_process_that_escaped_with_setsid_and_env_i(spool, daemon,
                                                                        tmp_path):
    """issue 11 D17: a job's child escapes with `setsid env -i`; after gkill and
    the cancelled record, no process of the job is left."""
    x = tmp_path / "escaped"
    j = spool.gsub("-n", "0", "-c", f'setsid env -i /bin/sh -c "echo \\$\\$ > {x}; '
                   f'exec sleep 1000" & sleep 1000')
    pid = wait_pid_file(x)
    try:
        spool.run("gkill", str(j))
        assert final(spool, j)[0] == "cancelled"
        assert not alive(pid), f"the escaped process {pid} of job {j} still runs"
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_on_finish_hook_is_time_limited_and_keeps_the_gpus_until_it_ends(
        spool, daemon_factory, tmp_path):
    """issue 11 D18: `--on-finish 'sleep 1000'` with `spoold --hook-limit 2`:
    the hook is killed in a few seconds, and no job gets its GPUs while it runs."""
    daemon_factory("--hook-limit", "2")
    hp = tmp_path / "hook.pid"
    j1 = spool.gsub("-n", "4", "--on-finish", f"echo $$ > {hp}; exec sleep 1000", "--", "true")
    assert final(spool, j1)[0] == "done"
    j2 = spool.gsub("-n", "4", "--", "true")
    hook = wait_pid_file(hp)
    deadline = time.monotonic() + 8
    try:
        while True:
            where = spool.where(j2)  # read before: a live hook now was live then
            if not alive(hook):
                break
            assert where == "pending", f"job {j2} {where} while job {j1}'s hook still runs"
            assert time.monotonic() < deadline, "the hook ran past --hook-limit 2 (+ grace)"
            time.sleep(0.05)
    finally:
        if alive(hook):
            os.kill(hook, signal.SIGKILL)
    assert final(spool, j2)[0] == "done"
