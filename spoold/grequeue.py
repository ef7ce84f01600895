"""grequeue: submit finished jobs again, as new pending jobs of the same owner.

Owns: turning a finished record back into a job file.

Invariants:
- The new file belongs to the job's owner (``toolbase.read_owned``): root's
  grequeue writes it in tmp/, fchowns it to that uid and its primary gid, and
  only then renames it into pending/ (never replacing anything), so the daemon
  runs it as that user, never as root. Others may requeue only their own jobs.
- It carries only what a submitter writes (``job.SUBMIT_FIELDS``), never the
  daemon's fields (``uid``, ``pid``, ``host`` ...) nor ``user:``; mode 0600
  (it holds the environment).
"""

from __future__ import annotations

import argparse
import os
import pwd

from . import job as jobmod
from . import spool as spoolmod
from .spool import Spool
from .toolbase import fail, find_job, open_spool, read_owned, spool_arg, user_name

# Submit fields that describe the old submission, not the job to run again.
NOT_CARRIED = ("id", "submitted_at", "array_id", "array_index", "array_limit", "after",
               "hold", "user", "requeued_from")


def requeue_data(rec: dict, old: int, new: int) -> dict:
    data = {k: v for k, v in rec.items() if k in jobmod.SUBMIT_FIELDS and k not in NOT_CARRIED}
    return {"id": new, **data, "requeued_from": old}


def give_id(sp: Spool, job_id: int, uid: int) -> None:
    """In a shared spool an id belongs to whoever owns ``state/ids/ID``: the
    marker root just made becomes the owner's, as if they had taken the id."""
    marker = sp.root / "state" / "ids" / str(job_id)
    try:
        os.chown(marker, uid, -1, follow_symlinks=False)
    except FileNotFoundError:
        pass  # no marker (made by an older spoold): the name alone holds the id


def check(sp: Spool, job_id: int) -> tuple[dict, int] | str:
    """(record, owner uid) of a job that may be requeued by us, or why not."""
    found = find_job(sp, job_id)
    if found is None or found[0] not in spoolmod.FINAL_DIRS:
        return (f"job {job_id} is {found[0] if found else 'not in the spool'}: only finished "
                "jobs can be requeued")
    rec, owner = read_owned(found[1])
    if rec is None:
        return f"cannot read job {job_id}'s record (another user's job?)"
    if not (rec.get("argv") or rec.get("cmd")):
        return f"job {job_id} has no command to run again (a refused file?)"
    if os.geteuid() != 0 and owner != os.getuid():
        return (f"job {job_id} belongs to {user_name(owner, rec.get('user'))}: you can requeue "
                "only your own jobs")
    if os.geteuid() == 0 and owner != 0:
        try:
            pwd.getpwuid(owner)
        except KeyError:
            return f"job {job_id}'s owner (uid {owner}) no longer exists"
    return rec, owner


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="grequeue", description="Submit finished, failed or cancelled jobs again: same "
        "command, environment, working directory and resources, same owner; prints the new "
        "ids.",
        epilog="Examples: grequeue 12 | grequeue $(ghist -f --json | jq '.[] | "
               "select(.state==\"failed\") | .id')")
    spool_arg(ap)
    ap.add_argument("ids", nargs="+", metavar="ID")
    a = ap.parse_args(argv)
    bad = [i for i in a.ids if not i.isdigit() or int(i) == 0]
    if bad:
        ap.error(f"not a job id: {bad[0]!r}")
    sp = open_spool(a.spool, "grequeue")
    jobs = []
    for i in map(int, a.ids):  # all checked before any is submitted
        ok = check(sp, i)
        if isinstance(ok, str):
            return fail("grequeue", ok)
        jobs.append((i, *ok))
    root = os.geteuid() == 0  # then the new file and its id must become the owner's
    for old, rec, owner in jobs:
        new = sp.allocate_ids(1)
        if root and owner != 0:
            give_id(sp, new, owner)
        data = requeue_data(rec, old, new)
        tmp = sp.write_tmp(jobmod.dump(data), f"requeue-{new}", mode=0o600,
                           owner=owner if root else None,
                           group=pwd.getpwuid(owner).pw_gid if root else None)
        prio = data.get("priority", jobmod.DEFAULT_PRIORITY)
        try:
            spoolmod.move_noreplace(tmp, sp.pending / spoolmod.pending_name(prio, new))
        except BaseException:
            os.unlink(tmp)
            raise
        spoolmod.fsync_dir(sp.pending)
        print(new, flush=True)
    return 0
