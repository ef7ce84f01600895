"""The fair-share shell: the policy file, usage read from records, priority overrides.

Owns: reading ``SPOOL/policy.yaml`` (per-user and per-group caps, admin
groups), each user's decayed GPU usage from the records of every host, and
root's priority overrides in ``state/priority/ID``. The rules themselves are
the pure functions of ``fairshare``.

Invariants:
- In a shared spool the policy file counts only if root owns it and no one
  else may write it; otherwise it is ignored with a log line (a user must
  not give themselves more GPUs). The same holds for each override file.
- Usage is a cache of the records: each record is read once (by inode) and
  added to its owner's sum once; a record that is gone stops counting. The
  daemon's own records count as it writes them (``note``); a folder is listed
  again when its mtime moves (at most every RELIST_S), and every folder on each
  full re-check, so another host's finished job counts within RELIST_S.
  Every host computes the same numbers from the same records (up to clock
  skew between hosts).
"""

from __future__ import annotations

import contextlib
import grp
import logging
import math
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import job as jobmod
from . import runner
from . import spool as spoolmod
from .fairshare import Limit, job_usage, weight_integral
from .records import owner_of, read_record
from .spool import BadFile

log = logging.getLogger("spoold")

DIR_SETTLE_S = 1.0  # a folder's mtime this old is trusted to change with its next change
# A folder whose mtime moved is listed again at most this often between full
# re-checks: the daemon's own records are counted as it writes them (note), so
# a listing only finds other hosts' records and deletions, and listing done/
# (up to --keep records per user) at every pass of a busy queue cost more than
# the pass.
RELIST_S = 2.0


@dataclass(frozen=True)
class Policy:
    """policy.yaml, checked. Caps are (gpus, cpus); None means no cap."""

    admin_groups: frozenset[str] = frozenset()
    default: tuple[int | None, int | None] = (None, None)
    users: Mapping[str, tuple] = field(default_factory=dict)
    groups: Mapping[str, tuple] = field(default_factory=dict)


def _caps(entry, where: str) -> tuple[int | None, int | None]:
    if not isinstance(entry, dict) or set(entry) - {"gpus", "cpus"}:
        raise ValueError(f"{where}: a mapping with `gpus:` and/or `cpus:`")
    for k, v in entry.items():
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            raise ValueError(f"{where}.{k}: a whole number >= 0")
    return entry.get("gpus"), entry.get("cpus")


def parse_policy(raw: bytes) -> Policy:
    """The policy file's YAML (docs/scheduling.md); ValueError says what is wrong."""
    data = jobmod.load_record(raw) if raw.strip() else {}
    unknown = set(data) - {"admins", "default", "users", "groups"}
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)}: use admins, default, users, groups")
    admins = data.get("admins") or []
    if not isinstance(admins, list) or not all(isinstance(g, str) for g in admins):
        raise ValueError("admins: a list of group names")
    maps = {}
    for key in ("users", "groups"):
        m = data.get(key) or {}
        if not isinstance(m, dict):
            raise ValueError(f"{key}: a mapping of names to caps")
        maps[key] = {str(k): _caps(v, f"{key}.{k}") for k, v in m.items()}
    return Policy(frozenset(admins), _caps(data.get("default") or {}, "default"),
                  maps["users"], maps["groups"])


class Shares:
    """What the scheduler needs for fair share, kept up to date cheaply."""

    def __init__(self, spool, o, shared: bool):
        self.spool, self.o, self.shared = spool, o, shared
        self.path = Path(o.policy) if o.policy else spool.root / "policy.yaml"
        self.policy = Policy()
        self._policy_key = None
        self.generation = 0
        self.jobs: dict[tuple, tuple] = {}  # (state, id) -> (inode, uid, gpus, start, end)
        # Usage kept as per-user sums of finished jobs' weight integrals from
        # _base (fairshare.weight_integral), scaled to `now` when asked; jobs
        # still open (running, or ending later) are summed at each call.
        self._base: float | None = None
        self._halflife = 0.0
        self._sums: dict[int, float] = {}
        self._count: dict[int, int] = {}  # records per uid
        self._open: set[tuple] = set()
        self._dirs: dict[str, tuple | None] = {}  # folder -> (inode, mtime) at its listing
        self._listed: dict[str, float] = {}  # folder -> monotonic time of its listing
        self.relist_s = RELIST_S
        self._groups: dict[int, tuple[set[str], str]] = {}

    # ---- the policy file ---------------------------------------------------------
    def reload(self) -> None:
        """Read the policy file again if it changed (each full pass);
        ``generation`` counts the changes (admins change priorities)."""
        old = self.policy
        self._reload()
        if self.policy != old:
            self.generation += 1

    def _reload(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.policy, self._policy_key = Policy(), None
            return
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key == self._policy_key:
            return
        self._policy_key = key
        if self.shared and (st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
            log.error("%s is ignored: in a shared spool it must be root's and writable by "
                      "root only", self.path)
            self.policy = Policy()
            return
        try:
            self.policy = parse_policy(spoolmod.read_untrusted(self.path))
            log.info("policy %s loaded", self.path)
        except (OSError, BadFile, jobmod.JobError, ValueError, UnicodeDecodeError) as e:
            log.error("%s is ignored: %s", self.path, e)
            self.policy = Policy()

    def _who(self, uid: int) -> tuple[set[str], str]:
        hit = self._groups.get(uid)
        if hit is None:
            c = runner.creds_for(uid)
            names = set()
            for gid in (c.gid, *c.groups):
                try:
                    names.add(grp.getgrgid(gid).gr_name)
                except KeyError:
                    continue
            hit = self._groups[uid] = (names, c.name)
        return hit

    def is_admin(self, uid: int) -> bool:
        return uid == 0 or bool(self._who(uid)[0] & self.policy.admin_groups)

    def limit_for(self, uid: int) -> Limit | None:
        groups, name = self._who(uid)
        p = self.policy
        caps = p.users.get(name)
        if caps is None:
            mine = [p.groups[g] for g in groups if g in p.groups]
            if mine:  # the most generous of the user's groups
                caps = tuple(None if any(c[i] is None for c in mine) else max(c[i] for c in mine)
                             for i in (0, 1))
        if caps is None:
            caps = (p.default[0] if p.default[0] is not None else self.o.max_gpus_per_user,
                    p.default[1] if p.default[1] is not None else self.o.max_cpus_per_user)
        if caps == (None, None):
            return None
        return Limit(name, *caps)

    # ---- usage -------------------------------------------------------------------
    def usage(self, now: float, full: bool = False) -> dict[int, float]:
        """Decayed GPU-seconds per uid: finished jobs (all hosts) plus running ones.
        A folder is listed again only when its mtime moved (every folder on
        ``full``, the daemon's periodic re-check), and a finished job is added
        to its owner's sum once: a record counts at the next call, and a call
        with nothing new costs four stat calls."""
        h = self.o.fairshare_halflife
        if full or self._base is None or h != self._halflife:
            self._base, self._halflife, self._dirs = now, h, {}
            entries, self.jobs = self.jobs, {}
            self._sums, self._count, self._open = {}, {}, set()
            for key, entry in entries.items():
                self._add(key, entry, now)
        for state in ("running", *spoolmod.FINAL_DIRS):
            self._rescan(state, now, full)
        for key in [k for k in self._open if _ended_by(self.jobs[k], now)]:
            self._open.discard(key)  # ended by now: into its owner's sum, once
            self._sums[self.jobs[key][1]] += self._part(self.jobs[key])
        if h <= 0 or math.isinf(h):
            total = dict(self._sums)
        else:
            scale = 2.0 ** (-(now - self._base) / h) * h / math.log(2)
            total = {uid: s * scale for uid, s in self._sums.items()}
        for key in self._open:  # running, or ended after `now` (another host's clock)
            _, uid, gpus, start, end = self.jobs[key]
            total[uid] += job_usage(gpus, start, now if end is None else end, now, h)
        return total

    def _rescan(self, state: str, now: float, full: bool) -> None:
        """List ``state``'s folder again if it may have changed since the last
        listing (and that was RELIST_S ago, or ``full``). Its mtime is trusted
        only if it was DIR_SETTLE_S old at that listing: a change in the same
        clock tick as the listing could leave the mtime as it was."""
        path = self.spool.dir(state)
        st = os.stat(path)
        key = (st.st_ino, st.st_mtime_ns)
        if self._dirs.get(state) == key:
            return
        tick = time.monotonic()
        if not full and tick - self._listed.get(state, -math.inf) < self.relist_s:
            return
        self._listed[state] = tick
        seen = set()
        with os.scandir(path) as it:
            for e in it:
                job_id = spoolmod.parse_record_name(e.name)
                if job_id is None:
                    continue
                seen.add(job_id)
                hit = self.jobs.get((state, job_id))
                if hit is not None and hit[0] == e.inode():  # no system call: from the listing
                    continue
                if hit is not None:
                    self._drop((state, job_id))
                entry = self._read(state, e)
                if entry is not None:
                    self._add((state, job_id), entry, now)
        for k in [k for k in self.jobs if k[0] == state and k[1] not in seen]:
            self._drop(k)
        self._dirs[state] = key if time.time() - st.st_mtime > DIR_SETTLE_S else None

    def _part(self, entry: tuple) -> float:
        """A finished job's share of its owner's sum (relative to ``_base``)."""
        _, _, gpus, start, end = entry
        h = self._halflife
        if not gpus or start is None or h <= 0:
            return 0.0
        if math.isinf(h):
            return gpus * max(0.0, end - start)
        return gpus * weight_integral(start, end, self._base, h)

    def _add(self, key: tuple, entry: tuple, now: float) -> None:
        self.jobs[key] = entry
        uid = entry[1]
        self._count[uid] = self._count.get(uid, 0) + 1
        self._sums[uid] = self._sums.get(uid, 0.0)
        if _ended_by(entry, now):
            self._sums[uid] += self._part(entry)
        else:
            self._open.add(key)

    def _drop(self, key: tuple) -> None:
        entry = self.jobs.pop(key)
        uid = entry[1]
        if key in self._open:
            self._open.discard(key)
        else:
            self._sums[uid] -= self._part(entry)
        self._count[uid] -= 1
        if not self._count[uid]:  # no record left: the user drops out, as before
            del self._count[uid], self._sums[uid]

    def note(self, state: str, job_id: int, path: Path, rec: dict, now: float) -> None:
        """The daemon has just written ``rec`` at ``path`` (running/ or a final
        folder): count it now, so that the next listing finds its inode known
        and does not read the record back (it is parsed once per job, not twice)."""
        if self._base is None:
            return
        with contextlib.suppress(OSError):
            entry = _entry(state, os.lstat(path), rec)
            if state != "running" and ("running", job_id) in self.jobs:
                self._drop(("running", job_id))
            if (state, job_id) in self.jobs:
                self._drop((state, job_id))
            self._add((state, job_id), entry, now)

    def _read(self, state: str, entry: os.DirEntry):
        try:
            st = entry.stat(follow_symlinks=False)
            rec = read_record(Path(entry.path))
        except (OSError, BadFile, jobmod.JobError, ValueError, UnicodeDecodeError):
            return None
        return _entry(state, st, rec)

    # ---- priorities ----------------------------------------------------------------
    def overrides(self) -> dict[int, int]:
        """Root's priority overrides: ``state/priority/ID`` holding a number."""
        out = {}
        folder = self.spool.state / "priority"
        try:
            it = os.scandir(folder)
        except FileNotFoundError:
            return out
        with it:
            for e in it:
                if not e.name.isdigit():
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
                        continue
                    text = spoolmod.read_untrusted(Path(e.path), cap=64).strip()
                except (OSError, BadFile):
                    continue
                if text.isdigit() and int(text) <= spoolmod.MAX_PRIORITY:
                    out[int(e.name)] = int(text)
        return out


def _ended_by(entry: tuple, now: float) -> bool:
    end = entry[4]
    return end is not None and end <= now


def _entry(state: str, st: os.stat_result, rec: dict) -> tuple:
    """What usage keeps of one record: (inode, uid, GPUs, start, end)."""
    gpus = len(rec.get("assigned_gpus") or ())
    start = rec.get("started_at")
    end = rec.get("ended_at") if state != "running" else None
    ok = isinstance(start, (int, float)) and (end is None or isinstance(end, (int, float)))
    return (st.st_ino, owner_of(st.st_uid, rec), gpus if ok else 0, start if ok else None, end)
