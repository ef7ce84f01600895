"""Ids for pending files: the id rule, and naming files dropped without one.

Owns: ``id_taken`` (may a file use the id in its name?), renaming a file to a
fresh id (``rename_with_new_id``, ``renumber``), and naming files dropped
without an id in batches (``name_dropped``). ``pending.PendingQueue`` owns the
mirror these act on; this is its helper and keeps no state of its own.

Invariants:
- A renamed file keeps its content and owner; a rename never replaces a file
  (``move_noreplace``); in a shared spool the new id's ``state/ids`` marker
  is given to the file's owner, as if its gsub had taken the id.
- A batch is renamed, pending/ is fsynced once, and only then is any of the
  new names acted on (queued, refused); one log line says what it named,
  with the per-file words ``pending/NAME: dropped without an id; now job N``
  for the first few.
- A renamed file goes through the id rule like any file seen the first time
  (a counter set back by hand cannot make it reuse a finished job's id).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time

from . import spool as spoolmod
from .spool import DEFAULT_PRIORITY, MAX_PRIORITY, PendingName, parse_pending_name

log = logging.getLogger("spoold")

NAME_BATCH = 2000  # files dropped without an id named per pass, at most, and as many
NAME_BATCH_S = 0.15  # as take about this long: scheduling passes come in between
USED_SNAPSHOT = 32  # acting on more new files in a pass: list the other folders once
NAMES_LOGGED = 3  # dropped files named in full in a batch's log line


class Namer:
    def __init__(self, q):
        self.q = q  # the PendingQueue whose mirror this acts on
        self.d = q.d
        self.spool = q.spool
        self.shared = q.shared
        self.ids_dir = str(q.spool.state_ids)
        self.cost = 0.0005  # seconds per dropped file, as the last batch took

    # ---- the id rule -----------------------------------------------------------------
    def id_taken(self, p, st: os.stat_result) -> str | None:
        """Why the id in pending/<p.name> may not be used (None: it may). The one
        id rule, applied to every (name, inode) the daemon sees the first time:
        at most MAX_ID; in no other folder and not running; in a shared spool,
        its ``state/ids`` marker is the file owner's (made for it if missing);
        and no other pending name of the same owner has it (first seen wins).
        Another user's file under the same id never costs the owner the id."""
        job_id = p.job_id
        if job_id > spoolmod.MAX_ID:
            return f"ids are at most {spoolmod.MAX_ID}"
        if job_id in self.d.runs:
            where = "running"
        elif self.q.used is not None:
            where = self.q.used.get(job_id)
        else:
            where = self.spool.where(job_id)
        if where:
            return f"job {job_id} is in {where}/"
        if self.shared and st.st_uid != 0:  # root's files (ours too) need no marker
            marker = self.spool.marker_owner(job_id)
            if marker is None and not self.spool.claim_marker(job_id, st.st_uid):
                marker = self.spool.marker_owner(job_id)  # someone was quicker
            if marker not in (None, st.st_uid):
                return f"id {job_id} was taken by uid {marker}"
        other = self.q.ids.get(job_id) or self.q.unread_ids.get(job_id)
        if other is not None and other != p.name and self._owner(other) == st.st_uid:
            return f"pending/{other} has that id"
        return None

    def used_ids(self) -> dict[int, str]:
        """``Spool.where`` for every id at once, one listing per folder: for a
        pass that reads many new files (a start on a long queue)."""
        used, orig = {}, {}
        for d in ("running", *spoolmod.FINAL_DIRS):
            with os.scandir(self.spool.dir(d)) as it:
                for e in it:
                    stem, _, ext = e.name.rpartition(".")
                    if not (stem.isascii() and stem.isdigit()) or not int(stem):
                        continue
                    i = int(stem)
                    if ext == "yaml" and stem in (str(i), f"{i:08d}"):
                        used.setdefault(i, d)
                    elif ext == "orig" and d == "failed" and stem == str(i):
                        orig[i] = d
        for i, d in orig.items():
            used.setdefault(i, d)
        return used

    def _owner(self, name: str) -> int | None:
        try:
            return os.lstat(self.q.path(name)).st_uid
        except FileNotFoundError:
            return None

    def renumber(self, p, why: str) -> None:
        """Give pending/<p.name> a fresh id: its own is someone else's."""
        self.q.forget(p.name)
        target = self.rename_with_new_id(p.name, min(p.priority, spoolmod.MAX_PRIORITY))
        if target is not None:
            log.warning("pending/%s: %s; now job %d (%s)", p.name, why, target.job_id,
                        target.name)

    # ---- naming dropped files ----------------------------------------------------------
    def name_dropped(self, now: float) -> None:
        """Give a batch of files dropped without an id one each, by renaming them
        (content kept): read each (the name or its ``priority:`` gives the
        priority; an incomplete file waits), rename, one fsync of pending/,
        one log line; then the new names join the queue as read."""
        if not self.q.foreign:
            return
        t0 = time.monotonic()
        size = max(16, min(NAME_BATCH, int(NAME_BATCH_S / self.cost)))
        batch = sorted(itertools.islice(self.q.foreign, size))
        todo = []
        for name in batch:
            del self.q.foreign[name]
            job = self.q.load_pending(name, now)
            if job is None:
                if name not in self.q.waiting:
                    self.q.forget(name)
                continue
            p = parse_pending_name(name)
            if not isinstance(job, str) and job.prio is not None and not name[0].isdigit():
                prio = job.prio
            else:
                prio = p.priority if p.priority <= MAX_PRIORITY else DEFAULT_PRIORITY
            todo.append((name, job, prio))
        if not todo:
            return
        try:
            named = self.rename_batch(todo)
        except BaseException:
            for name, _, _ in todo:  # the rest is named on a later pass
                if os.path.lexists(self.q.path(name)):
                    self.q.foreign.setdefault(name)
            raise
        if named:
            self.take_named(named, now)
        self.cost = (time.monotonic() - t0) / len(batch)  # sizes the next batch

    def rename_batch(self, todo: list) -> list:
        """Rename each (name, job, prio) to fresh ids; [(name, job, target)]."""
        first = self.spool.allocate_ids(len(todo))
        named = []
        for k, (name, job, prio) in enumerate(todo):
            target = self.rename_to(name, prio, first + k)
            if target is False:  # someone wrote that name by hand: the next free id
                target = self.rename_with_new_id(name, prio)
            if target:
                named.append((name, job, target))
        if named:
            spoolmod.fsync_dir(self.spool.pending)  # durable before we act on any of them
            shown = "; ".join(f"pending/{old}: dropped without an id; now job {t.job_id} "
                              f"({t.name})" for old, _, t in named[:NAMES_LOGGED])
            more = len(named) - NAMES_LOGGED
            log.info("named %d dropped file(s): %s%s", len(named), shown,
                     f"; ({more} more)" if more > 0 else "")
        return named

    def take_named(self, named: list, now: float) -> None:
        """Act on a batch of renamed files: bad ones are refused, the others
        join the queue as read (unless the file changed meanwhile: read again)."""
        if len(named) > USED_SNAPSHOT:
            self.q.used = self.used_ids()
        try:
            for old, job, target in named:
                entry = self.q.cache.pop(old, None)
                if isinstance(job, str):
                    self.d.guard(target.job_id, self.d.jobs.reject_file, target, job, old)
                    continue
                try:
                    st = os.lstat(self.q.path(target.name))
                except FileNotFoundError:
                    continue
                why = self.id_taken(target, st)  # a counter set back by hand, say
                if why:
                    self.d.guard(target.job_id, self.renumber, target, why)
                elif entry is job and entry.key == self.q.stat_key(st):
                    self.q.cache[target.name] = entry
                    self.q.admit(target, entry)
                else:
                    self.q.touched.add(target.name)
        finally:
            self.q.used = None

    def rename_to(self, name: str, prio: int, new_id: int):
        """pending/<name> -> pending/<prio>-<new_id>.yaml: the target, None if
        the file is gone, False if something is at the new name."""
        target = PendingName(prio, new_id, spoolmod.pending_name(prio, new_id))
        if self.shared:  # the id is the file owner's, as if its gsub had taken it
            with contextlib.suppress(FileNotFoundError):
                owner = os.lstat(self.q.path(name)).st_uid
                os.chown(os.path.join(self.ids_dir, str(new_id)), owner, -1,
                         follow_symlinks=False)
        try:
            spoolmod.move_noreplace(self.q.path(name), self.q.path(target.name))
        except FileExistsError:
            return False
        except FileNotFoundError:
            return None
        self.q.gone.add(name)
        self.q.closed.discard(name)
        return target

    def rename_with_new_id(self, name: str, prio: int):
        """pending/<name> -> pending/<prio>-<fresh id>.yaml, never over another
        file, made durable at once (this path is rare: one fsync each)."""
        while True:
            target = self.rename_to(name, prio, self.spool.allocate_ids(1))
            if target is not False:
                if target is not None:
                    spoolmod.fsync_dir(self.spool.pending)
                    self.q.touched.add(target.name)  # not read under that name yet
                return target

