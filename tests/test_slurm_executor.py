"""`spoold --executor slurm` against a real one-node SLURM: the core scenarios of
the local executor, unchanged. Set up by contrib/slurm/setup-single-node.sh
(CI runs it as root); skipped, with the reason, where SLURM does not answer."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import wait_for

from spoold import slurm

pytestmark = pytest.mark.skipif(not slurm.available(), reason=(
    "no SLURM controller answers (`scontrol ping`); run `sh contrib/slurm/"
    "setup-single-node.sh` as root for a one-node SLURM"))


@pytest.fixture
def bridge(daemon_factory, spool):
    yield daemon_factory("--executor", "slurm")
    # A failed test must not leave SLURM jobs holding the one node for the next.
    out = subprocess.run(["squeue", "-h", "-o", "%i %k"], capture_output=True, text=True).stdout
    mine = [line.split()[0] for line in out.splitlines() if str(spool.root) in line]
    if mine:
        subprocess.run(["scancel", *mine], check=False)


def test_submit_gpus_exit_codes(spool, bridge, tmp_path):
    two = spool.gsub("-n", "2", "-c", "echo gpus=$CUDA_VISIBLE_DEVICES id=$SPOOLD_JOB_ID")
    bad = spool.gsub("-n", "0", "-c", "exit 3")
    sig = spool.gsub("-n", "0", "-c", "kill -9 $$")
    rec = spool.wait_state(two, "done", timeout=60)
    assert rec["slurm_id"] and rec["executor"] == "slurm"
    gpus = spool.log(two).split()[0].split("=")[1].split(",")
    assert len(gpus) == 2 and len(set(gpus)) == 2
    assert f"id={two}" in spool.log(two)
    assert spool.wait_state(bad, "failed", timeout=60)["exit_code"] == 3
    assert spool.wait_state(sig, "failed", timeout=60)["exit_code"] == 137


def test_cancel_kill_and_dependencies(spool, bridge, tmp_path):
    go = tmp_path / "go"
    first = spool.gsub("-n", "0", "-c", f"while [ ! -e {go} ]; do sleep 0.1; done")
    after = spool.gsub("-n", "0", "--after", str(first), "-c", f"echo after > {tmp_path}/a")
    doomed = spool.gsub("-n", "0", "--after", str(after), "--", "true")
    wait_for(lambda: spool.where(doomed) == "running" and spool.record(doomed).get("slurm_id"),
             30, "all handed to SLURM")
    spool.run("gcancel", str(doomed), check=False)  # running/ = handed to SLURM: gkill it
    spool.run("gkill", str(doomed))
    assert spool.wait_state(doomed, "cancelled", timeout=60)["reason"].startswith("killed")
    go.touch()
    spool.wait_state(first, "done", timeout=60)
    spool.wait_state(after, "done", timeout=60)
    assert (tmp_path / "a").read_text() == "after\n"
    failing = spool.gsub("-n", "0", "-c", "sleep 1; exit 1")
    dependent = spool.gsub("-n", "0", "--after", str(failing), "--", "true")
    spool.wait_state(failing, "failed", timeout=60)
    assert spool.wait_state(dependent, "cancelled", timeout=60)["reason"]
    marker = tmp_path / "started"
    runner_ = spool.gsub("-n", "0", "-c", f"touch {marker}; sleep 300")
    wait_for(marker.exists, 60, "the SLURM job to run")
    spool.run("gkill", str(runner_))
    rec = spool.wait_state(runner_, "cancelled", timeout=60)
    assert rec["exit_code"] in (143, 137) and rec["reason"].startswith("killed on request")


def test_priority_order(spool, daemon_factory, tmp_path):
    order = tmp_path / "order"
    # Submitted while no daemon runs; SLURM then sees them in the spool's order.
    ids = {name: spool.gsub("-n", "4", "-p", str(prio), "-c", f"echo {name} >> {order}")
           for name, prio in (("low", 50), ("high", 1), ("mid", 20))}
    daemon_factory("--executor", "slurm")
    for j in ids.values():
        spool.wait_state(j, "done", timeout=90)
    assert order.read_text().split() == ["high", "mid", "low"]
    hist = json.loads(spool.run("ghist", "--json").stdout)
    assert len(hist) == 3
