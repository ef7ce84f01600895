"""SLURM arrays: the elements of one spool array handed to SLURM as one
``sbatch --array=<indexes>%N``, so that they run as SLURM array tasks.

Owns: grouping elements into sbatch calls (``split``), the array's sbatch
argv and batch script, and finding an element's task again after a crash
(``find``). Like ``slurm`` it knows nothing about spool folders and runs
every SLURM command through ``run``. See docs/slurm.md ("Arrays").

Invariants:
- One element is one array task: the task id is the element's
  ``array_index``, its SLURM id ``<array job id>_<index>``. Each element
  keeps its own spool id, record, log and status file.
- What sbatch applies to the whole array (resources, time, priority, name,
  cwd, dependencies, ``slurm:`` options, requeue, ``%N``) is the same for
  every element of one sbatch: elements that differ there (a user may edit
  one element's file) go in separate calls. No index appears twice in one call.
- Each element's own words (argv, env, cwd, status file, log path) are in
  its branch of one ``case $SLURM_ARRAY_TASK_ID``, quoted as ``slurm``
  quotes a single job. SLURM's ``--output`` cannot name a log per spool id
  (ids are not index + offset for every array), so it is /dev/null and each
  branch appends to its own log, opened as the job's user.
"""

from __future__ import annotations

import os
import subprocess
from typing import NamedTuple

from . import runner, slurm


class Element(NamedTuple):
    """One array element, ready for sbatch: its parsed job (``id``,
    ``priority`` set), its log (created by the daemon), the SLURM ids it
    depends on and its status file (``slurm.batch_script(status=)``)."""

    job: object
    log_path: str
    deps: list[str]
    status: os.PathLike | str | None = None

    @property
    def index(self) -> int:
        return self.job.get("array_index")


def comment(array_id: int, spool_root) -> str:
    """The --comment of a spool array's SLURM array: ``spoold:array7:/spool``
    (``find`` maps each task back to its element by index)."""
    return slurm.comment(f"array{int(array_id)}", spool_root)


def sbatch_argv(elements: list[Element], spool_root, *,
                creds: runner.Creds | None = None) -> list[str]:
    """sbatch's argv for ``elements`` (one group of ``split``): the first
    element's, with ``--array=<indexes>[%N]``, the array's comment and
    ``--output=/dev/null`` (each branch of the script writes its own log)."""
    first = elements[0]
    argv = _shared_argv(first, spool_root, creds)
    spec = ranges(sorted(e.index for e in elements))
    limit = first.job.get("array_limit")
    argv.insert(2, f"--array={spec}%{limit}" if limit else f"--array={spec}")
    return argv


def batch_script(elements: list[Element], spool_root, *,
                 creds: runner.Creds | None = None) -> bytes:
    """One script for all tasks: ``case $SLURM_ARRAY_TASK_ID``, each branch
    first sending its output to its element's log, then that element's body
    (``slurm.script_body``). A task with no branch fails with exit 1."""
    ids = ", ".join(str(e.job.id) for e in elements)
    out = [slurm.script_head(f"spoold jobs {ids} (array {elements[0].job.get('array_id')}), "
                             "written by spoold/slurmarray.py: one per SLURM array task."
                             .encode()),
           b'case "${SLURM_ARRAY_TASK_ID-}" in\n']
    for e in elements:
        out += [b"%d)\n" % e.index,
                b"exec >> " + slurm._q(os.fsencode(e.log_path)) + b" 2>&1\n",
                slurm.script_body(e.job, spool_root, creds=creds, status=e.status),
                b";;\n"]
    out.append(b'*) echo "spoold: no job for array task ${SLURM_ARRAY_TASK_ID-}" >&2; exit 1 ;;\n'
               b"esac\n")
    return b"".join(out)


def split(elements: list[Element], spool_root, *,
          creds: runner.Creds | None = None) -> list[list[Element]]:
    """``elements`` (of one owner's array) in groups that one sbatch can take:
    the same shared argv and cwd, no index twice; queue order kept."""
    groups: list[tuple[tuple, set[int], list[Element]]] = []
    for e in elements:
        key = (tuple(_shared_argv(e, spool_root, creds)), slurm._cwd(e.job, creds),
               e.job.get("array_limit"))
        for k, seen, members in groups:
            if k == key and e.index not in seen:
                seen.add(e.index)
                members.append(e)
                break
        else:
            groups.append((key, {e.index}, [e]))
    return [members for _, _, members in groups]


def submit(elements: list[Element], spool_root, run=subprocess.run, *,
           creds: runner.Creds | None = None) -> str:
    """sbatch one group of ``split``; return the array job id (element I is
    ``<id>_I``). Raises SlurmError with sbatch's message. Runs as
    ``slurm.submit`` does: as the owner, in the jobs' cwd."""
    return slurm.sbatch(sbatch_argv(elements, spool_root, creds=creds),
                        batch_script(elements, spool_root, creds=creds),
                        slurm._cwd(elements[0].job, creds), run, creds)


def find(array_id: int, index: int, spool_root, user: str | int,
         run=subprocess.run) -> list[str]:
    """``<jobid>_<index>`` of ``user``'s live array tasks submitted for this
    spool's array ``array_id`` (by --comment) with task id ``index``: a daemon
    that died between sbatch and recording the ids adopts each element."""
    out = slurm._run(run, ["squeue", "--noheader", "--array", f"--user={user}",
                           "--format=%i %k"])
    want = comment(array_id, spool_root)
    found = []
    for line in out.splitlines():
        sid, _, com = line.partition(" ")
        if com.strip() == want and sid.endswith(f"_{index}") and slurm._ID.fullmatch(sid):
            found.append(sid)
    return found


def max_array_size(run=subprocess.run) -> int:
    """SLURM's MaxArraySize (task ids go up to one less); 1001, SLURM's
    default, when the controller does not say."""
    value = slurm.config(run).get("MaxArraySize", "")
    return int(value) if value.isdigit() else 1001


def ranges(indexes: list[int]) -> str:
    """Sorted indexes as SLURM's array spec: [1, 2, 3, 5] -> ``1-3,5``."""
    parts: list[str] = []
    start = prev = None
    for i in [*indexes, None]:
        if prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = i
    return ",".join(parts)


def _shared_argv(e: Element, spool_root, creds) -> list[str]:
    """What sbatch says about every task: the element's own sbatch argv with
    no log of its own and the array's comment."""
    argv = slurm.sbatch_argv(e.job, spool_root, "/dev/null", e.deps, creds=creds)
    own = f"--comment={slurm.comment(e.job.id, spool_root)}"
    return [f"--comment={comment(e.job.get('array_id'), spool_root)}" if w == own else w
            for w in argv]
