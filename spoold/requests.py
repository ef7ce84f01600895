"""Requests: files in requests/ that ask the daemon to act on a job or the queue.

Owns: reading requests/ (``kill-ID cancel-ID hold-ID release-ID prio-ID
pause resume``), deciding who may ask what, and applying it. ``prio-ID``
holds the new priority: gprio writes it for a job handed to SLURM and not
started yet (the executor's ``queued``), which the executor renices.

Invariants:
- Only a regular file with one link counts; anything else a user planted
  there (a folder, link, fifo) is removed unread, so it cannot block the
  owner's own request, whose tools create it with O_EXCL.
- A request counts only from the job's owner or root; pause/resume of a
  shared queue only from root. The owner of a job is the kernel's word:
  ``records.owner_of`` of its pending file, or the uid its record got at
  the claim.
- Requests are never opened, except prio-ID and gdrain's, read once closed,
  capped, without following links; one for a job another host runs is left for
  that host's daemon; every other one is removed once handled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time

from . import job as jobmod
from . import spool as spoolmod
from .fairshare import effective_priority
from .pending import SETTLE_S, Slim, Taken
from .records import KILL_REQUEST, read_record
from .spool import BadFile

log = logging.getLogger("spoold")


class Requests:
    def __init__(self, d):
        self.d = d  # the daemon: its runs, queue, kill and end_pending
        self.prio: int | None = None  # the prio-ID request being handled

    def handle_all(self) -> None:
        for name in self.d.spool.list_requests():
            self.d.guard(None, self.handle_request, name)

    def handle_request(self, name: str) -> None:
        path = self.d.spool.requests / name
        parsed = spoolmod.parse_request_name(name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(st.st_mode):
            # A planted folder, link or fifo would block the owner's own request
            # (tools create requests with O_EXCL): never acted on, removed.
            log.warning("requests/%s: not a regular file (uid %d); removed", name, st.st_uid)
            spoolmod.remove_entry(path)
            return
        gpu = spoolmod.parse_gpu_request(name)
        if gpu is not None:
            if gpu[2] != self.d.o.host:
                return  # another host's GPU: that host's daemon consumes it
            if self.d.queue.owner_ok(st.st_uid) and not (self.d.shared and st.st_uid != 0) \
                    and st.st_nlink == 1:
                if self.d.guard(None, self.gpu_request, path, *gpu[:2]) is False:
                    return  # gdrain is still writing the reason: next pass
            else:
                log.warning("requests/%s: only root may drain a GPU; removed", name)
            spoolmod.remove_entry(path)
            return
        if self.d.shared and st.st_nlink > 1:
            log.warning("requests/%s: a hard link (uid %d); removed", name, st.st_uid)
        elif parsed is None:
            log.warning("requests/%s: not a request (kill-ID, cancel-ID, hold-ID, release-ID,"
                        " prio-ID, pause, resume); removed", name)
        elif not self.d.queue.owner_ok(st.st_uid):
            log.warning("requests/%s: owned by uid %d, not ours; removed", name, st.st_uid)
        elif self.d.shared and st.st_uid != 0 and parsed[1] is None:
            log.warning("requests/%s: only root may pause or resume a shared queue; removed",
                        name)
        elif self.d.shared and st.st_uid != 0 and self.job_owner(parsed[1]) not in (
                None, st.st_uid):
            log.warning("requests/%s: uid %d does not own job %d; removed", name, st.st_uid,
                        parsed[1])
        else:
            kind, job_id = parsed
            if kind == "prio" and self.d.guard(None, self.read_prio, path, st.st_uid) is False:
                return  # gprio is still writing it: next pass
            if self.apply_request(kind, job_id) == "elsewhere":
                return  # for a job another host runs: that host's daemon consumes it
        spoolmod.remove_entry(path)

    def job_owner(self, job_id: int) -> int | None:
        """uid that owns a running or pending job (None: no such job)."""
        run = self.d.runs.get(job_id)
        if run is not None:
            return run.record.get("uid")
        p = self.d.queue.find_pending(job_id)
        if p is None:
            return None
        job = self.d.queue.load_pending(p.name, time.time() + SETTLE_S)
        return job.uid if isinstance(job, Slim) else os.lstat(self.d.spool.pending / p.name).st_uid

    def apply_request(self, kind: str, job_id: int | None) -> str | None:
        """Act on a request whose sender may ask it (checked once, above)."""
        if job_id is None:
            QUEUE[kind](self)
            return None
        run = self.d.runs.get(job_id)
        if run is not None:
            act = RUNNING.get(kind)
            if act is None:
                log.info("job %d is running: %s request ignored (gkill kills it)", job_id, kind)
            else:
                act(self, run)
            return None
        p = self.d.queue.find_pending(job_id)
        if p is None:
            where = self.d.spool.where(job_id)
            if where == "running" and self.host_of(job_id) not in (None, self.d.o.host):
                return "elsewhere"
            log.info("%s request for job %d ignored: %s", kind, job_id,
                     f"it is in {where}/" if where else "no such job")
            return None
        job = self.d.queue.load_pending(p.name, time.time() + SETTLE_S)
        if isinstance(job, Taken):
            log.info("%s request for job %d ignored: pending/%s is not that job (%s)", kind,
                     job_id, p.name, job.why)
        elif isinstance(job, str) and kind in ("kill", "cancel"):
            self.d.jobs.reject_file(p, job)  # not a valid job: refused now, with its reason
        else:
            PENDING[kind](self, p)
        return None

    def gpu_request(self, path, kind: str, gpu: int) -> bool:
        """gdrain GPU [--reason TEXT] / gdrain --undo GPU (root's, checked above)."""
        if kind == "undrain":
            self.d.health.undrain(gpu)
            return True
        raw = read_closed(path, 4096)
        if raw is None:
            return False
        text = raw.decode("utf-8", "replace")
        self.d.health.drain(gpu, " ".join(text.split()) or "drained by hand", "admin")
        return True

    def read_prio(self, path, sender: int) -> bool:
        """prio-ID's content -> ``self.prio`` (None: not a priority). False:
        still being written. In a shared spool only root and admins may go
        below the default, as for a pending file (fairshare.effective_priority)."""
        self.prio = None
        try:
            raw = read_closed(path, 16)
        except BadFile as e:  # over the cap, or replaced by something else
            log.warning("requests/%s: not a priority: %s", path.name, e)
            return True
        if raw is None:
            return False
        text = raw.decode("ascii", "replace").strip()
        self.prio = int(text) if text.isdigit() and len(text) <= 4 else None
        if self.prio is None:
            log.warning("requests/%s: not a priority (0-9999): %r", path.name, text)
        else:
            self.prio = effective_priority(
                self.prio, sender, self.d.shared,
                self.d.shared and self.d.shares.is_admin(sender), None,
                jobmod.DEFAULT_PRIORITY)
        return True

    def host_of(self, job_id: int) -> str | None:
        try:
            return read_record(self.d.spool.record("running", job_id)).get("host")
        except (OSError, BadFile, jobmod.JobError, ValueError):
            return None

    def pause(self) -> None:
        self.d.spool.paused_flag.touch()
        log.info("queue paused; running jobs continue")

    def resume(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.d.spool.paused_flag.unlink()
        log.info("queue resumed")

    def kill(self, run) -> None:
        self.d.jobs.kill(run, KILL_REQUEST)

    def cancel_queued(self, run) -> None:
        """gcancel of a job its executor has not started yet (queued in SLURM)."""
        if self.d.jobs.executor.queued(run):
            self.d.jobs.kill(run, "cancel requested before it started")
        else:
            log.info("job %d is running: cancel request ignored (gkill kills it)", run.id)

    def renice(self, run) -> None:
        """gprio of a job its executor has not started yet (queued in SLURM)."""
        if self.prio is None:
            return  # not a priority: logged when read
        if self.d.jobs.executor.queued(run):
            self.d.jobs.executor.renice(run, self.prio)
        else:
            log.info("job %d is running: priority request ignored", run.id)

    def cancel(self, p, kind: str) -> None:
        self.d.jobs.end_pending(p.job_id, "cancelled", f"{kind} requested before it started", p)

    def set_hold(self, p, hold: bool) -> None:
        """Rewrite the pending file with ``hold:`` changed. The new file keeps
        its owner (root hands it back), so who the job runs as cannot change."""
        path = self.d.spool.pending / p.name
        st = os.lstat(path)
        job = jobmod.parse(spoolmod.read_untrusted(path))
        data = dict(job.data)
        data["hold"] = hold
        owner = None
        if self.d.shared and st.st_uid != 0:
            data.pop("uid", None)
            owner = st.st_uid
        self.d.spool.replace_atomic(path, jobmod.dump(data), mode=0o600, owner=owner,
                                  group=st.st_gid if owner is not None else None)
        self.d.queue.touched.add(p.name)
        log.info("job %d %s", p.job_id, "held" if hold else "released")


# What each request does: to the queue, to a running job, to a pending one.
QUEUE = {"pause": Requests.pause, "resume": Requests.resume}
RUNNING = {"kill": Requests.kill, "cancel": Requests.cancel_queued, "prio": Requests.renice}
PENDING = {"kill": lambda r, p: r.cancel(p, "kill"), "cancel": lambda r, p: r.cancel(p, "cancel"),
           "hold": lambda r, p: r.set_hold(p, True), "release": lambda r, p: r.set_hold(p, False),
           "prio": lambda r, p: log.info("priority request for pending job %d ignored: gprio "
                                         "renames its file", p.job_id)}


def read_closed(path, cap: int) -> bytes | None:
    """A request's content once its writer closed it (None: still open)."""
    try:
        return spoolmod.read_untrusted(path, cap, check_closed=True)
    except spoolmod.StillOpen:
        return None
    except spoolmod.LeaseUnsupported:
        return spoolmod.read_untrusted(path, cap)
