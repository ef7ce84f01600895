"""The daemon's command line: its options, their defaults and checks.

Owns: ``spoold --help`` and the ``Options`` the daemon runs with, and the
facts about the machine the defaults depend on (which filesystems need
polling, the installed version).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from . import control
from . import spool as spoolmod
from .util import parse_duration, parse_size_mib

NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "lustre", "gpfs", "ceph",
              "glusterfs", "fuse.glusterfs", "beegfs", "9p", "afs", "ocfs2"}


@dataclass
class Options:
    spool: Path
    gpus: list[int] | None = None
    max_pending: int = 10000
    max_pending_per_user: int = 5000
    hook_limit: float = 60.0
    keep: int = 10000
    limit: int | None = None
    max_load: float = 0.1
    max_memory: float = 0.1
    poll: float = 1.0
    fake_gpus: Path | None = None
    cpus: int | None = None
    mem: int | None = None
    kill_grace: float = 10.0
    host: str = field(default_factory=socket.gethostname)
    default_time_limit: float | None = None
    drain: bool = False
    host_timeout: float = 60.0
    executor: str = "local"  # or "slurm": the daemon becomes a bridge to sbatch
    polling: bool | None = None  # None: decide from the filesystem type
    fairshare_halflife: float = 7 * 86400.0  # 0: fair share off
    max_gpus_per_user: int | None = None
    max_cpus_per_user: int | None = None
    policy: Path | None = None  # None: SPOOL/policy.yaml
    stop: bool = False  # spoold --stop: signal the running daemon (control.stop), run none
    stop_timeout: float | None = None  # --stop's wait; None: no limit
    foreign_procs: str = "busy"  # or "ignore": processes on a GPU that are no job's
    blackhole: int = 3  # drain a GPU after this many quick failures in a row (0: never)
    metrics: Path | None = None  # Prometheus text file (None: none)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("spoold")
    except Exception:
        return "dev"


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path`` (longest mount-point match)."""
    best, kind = "", ""
    target = os.path.realpath(path)
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            point = left.split()[4].replace("\\040", " ")
            if (target == point or target.startswith(point.rstrip("/") + "/")) and \
                    len(point) >= len(best):
                best, kind = point, right.split()[0]
    return kind


def parse_args(argv: list[str] | None = None) -> Options:
    ap = argparse.ArgumentParser(
        prog="spoold", description="Run GPU jobs from a spool directory (foreground daemon).",
        epilog="Example: spoold --gpus 0 1 --max-load 0.2 &   then   gsub -n 1 python train.py")
    ap.add_argument("--spool", type=spoolmod.spool_path, default=None, metavar="DIR",
                    help="spool directory (default: $SPOOLD_SPOOL, else ~/.local/share/spoold)")
    ap.add_argument("--gpus", nargs="+", default=None,
                    help="GPU indices to manage, e.g. --gpus 0 1 or --gpus 0,1 (default: all)")
    ap.add_argument("--max-pending", type=int, default=10000, help="queue length cap (10000)")
    ap.add_argument("--max-pending-per-user", type=int, default=None, metavar="N",
                    help="pending jobs one user may have (half of --max-pending)")
    ap.add_argument("--fairshare-halflife", default="7d", metavar="DURATION",
                    help="shared spool: between jobs of one priority the user with the least "
                         "GPU use, decayed with this half-life, goes first; 0 turns it off "
                         "(7d)")
    ap.add_argument("--max-gpus-per-user", type=int, default=None, metavar="N",
                    help="GPUs one user may hold at once (no cap; the policy file overrides)")
    ap.add_argument("--max-cpus-per-user", type=int, default=None, metavar="N",
                    help="CPUs one user may hold at once (no cap; the policy file overrides)")
    ap.add_argument("--policy", type=Path, default=None, metavar="FILE",
                    help="per-user and per-group caps and admin groups (SPOOL/policy.yaml; "
                         "root's only in a shared spool; docs/scheduling.md)")
    ap.add_argument("--blackhole", type=int, default=3, metavar="N",
                    help="drain a GPU after N jobs in a row failed on it within 60 s of their "
                         "start while the same commands succeeded on other GPUs (3; 0: never)")
    ap.add_argument("--foreign-procs", choices=("busy", "ignore"), default="busy",
                    help="a process on a managed GPU that is no job of ours makes the GPU busy "
                         "(busy, the default) or is ignored")
    ap.add_argument("--metrics", type=Path, default=None, metavar="FILE",
                    help="Prometheus text file, rewritten at each poll when something changed "
                         "(SPOOL/state/hosts/HOST.prom; '-' for none)")
    ap.add_argument("--hook-limit", type=float, default=60.0, metavar="SECONDS",
                    help="how long an --on-finish command may run; the job's GPUs stay booked "
                         "until it ends (60)")
    ap.add_argument("--keep", type=int, default=10000, help="finished records kept (10000)")
    ap.add_argument("--limit", type=int, default=None, help="GPUs per job (min(8, #gpus))")
    ap.add_argument("--max-load", type=float, default=0.1,
                    help="a GPU is busy at this utilisation fraction or more (0.1)")
    ap.add_argument("--max-memory", type=float, default=0.1,
                    help="a GPU is busy at this memory-used fraction or more (0.1)")
    ap.add_argument("--poll", type=float, default=1.0, help="seconds between GPU readings (1)")
    ap.add_argument("--fake-gpus", type=Path, default=None, metavar="FILE",
                    help="read GPUs from a YAML file instead of NVML (tests, demos)")
    ap.add_argument("--cpus", type=int, default=None, help="CPUs to hand out (all online)")
    ap.add_argument("--mem", default=None, help="memory to hand out, e.g. 64G (physical)")
    ap.add_argument("--kill-grace", type=float, default=10.0,
                    help="seconds between TERM and KILL (10)")
    ap.add_argument("--host", default=socket.gethostname(), help="host name to record")
    ap.add_argument("--default-time-limit", default=None, metavar="DURATION",
                    help="time limit for jobs submitted without -t (none)")
    ap.add_argument("--host-timeout", type=float, default=60.0, metavar="SECONDS",
                    help="shared spool: a host whose heartbeat is older than this is lost and "
                         "its running jobs fail (or requeue) (60)")
    ap.add_argument("--polling", action=argparse.BooleanOptionalAction, default=None,
                    help="watch the spool by polling, not inotify (default: on for network "
                         "filesystems such as NFS, whose other clients' writes inotify misses)")
    ap.add_argument("--executor", choices=("local", "slurm"), default="local",
                    help="local: run jobs here (default); slurm: hand every job to sbatch and "
                         "record what SLURM reports (docs/slurm.md)")
    ap.add_argument("--drain", action="store_true",
                    help="start no new job; exit once running jobs have ended (also SIGUSR1)")
    ap.add_argument("--stop", nargs="?", type=float, const=None, default=False,
                    metavar="SECONDS",
                    help="run no daemon: stop the spoold that runs --spool for --host (SIGTERM; "
                         "its running jobs keep running) and wait up to SECONDS (30) until it "
                         "has exited; with --drain, drain it (SIGUSR1) and wait for its jobs "
                         "to end (no limit unless SECONDS). Exit 0 once stopped, 1 if none runs")
    ap.add_argument("--completion", choices=("bash", "zsh"), action=control.CompletionAction,
                    help="print the bash or zsh completion of spoold's tools and exit")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    a = ap.parse_args(argv)
    if a.stop is not False and a.stop is not None and not a.stop > 0:
        ap.error("--stop SECONDS must be positive")
    gpus = None
    if a.gpus is not None:
        try:
            gpus = sorted({int(x) for g in a.gpus for x in g.split(",") if x})
        except ValueError:
            ap.error(f"--gpus takes GPU indices, got {' '.join(a.gpus)!r}")
    try:
        mem = parse_size_mib(a.mem) if a.mem else None
        # gsub's -t forms ("infinite": no default limit)
        dtl = parse_duration(a.default_time_limit) if a.default_time_limit is not None else None
        spool = a.spool or spoolmod.default_spool()
        # 0 or off: fair share off; "infinite": usage never decays
        halflife = 0.0 if a.fairshare_halflife in ("0", "0s", "off") else float(
            parse_duration(a.fairshare_halflife) or math.inf)
    except ValueError as e:  # (spool.NotASpool is one)
        ap.error(str(e))
    try:
        spoolmod.check_host(a.host)
    except ValueError as e:
        ap.error(f"--host: {e}")
    if a.max_pending_per_user is None:
        a.max_pending_per_user = max(1, a.max_pending // 2)
    for name in ("max_pending", "max_pending_per_user", "keep", "poll", "kill_grace",
                 "host_timeout", "hook_limit"):
        if getattr(a, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("blackhole", "max_gpus_per_user", "max_cpus_per_user"):
        if (getattr(a, name) or 0) < 0:
            ap.error(f"--{name.replace('_', '-')} must be 0 or more")
    if a.cpus is not None and a.cpus < 1:
        ap.error("--cpus must be positive")
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s spoold[%(process)d] %(levelname)s %(message)s")
    online = len(os.sched_getaffinity(0))
    if a.cpus is not None and a.cpus > online and a.stop is False:
        logging.getLogger("spoold").warning(
            "--cpus %d: only %d CPU(s) are available to spoold here; it hands out %d",
            a.cpus, online, online)
    return Options(spool=spool, gpus=gpus,
                   max_pending=a.max_pending, max_pending_per_user=a.max_pending_per_user,
                   hook_limit=a.hook_limit, keep=a.keep, limit=a.limit, max_load=a.max_load,
                   max_memory=a.max_memory, poll=a.poll, fake_gpus=a.fake_gpus, cpus=a.cpus,
                   mem=mem, kill_grace=a.kill_grace, host=a.host, default_time_limit=dtl,
                   drain=a.drain, host_timeout=a.host_timeout, polling=a.polling,
                   executor=a.executor, fairshare_halflife=halflife,
                   max_gpus_per_user=a.max_gpus_per_user, max_cpus_per_user=a.max_cpus_per_user,
                   policy=a.policy, foreign_procs=a.foreign_procs, blackhole=a.blackhole,
                   stop=a.stop is not False,
                   stop_timeout=a.stop if a.stop not in (False, None, math.inf) else (
                       None if a.drain else control.STOP_WAIT_S),
                   metrics=None if str(a.metrics) == "-" else (
                       a.metrics or Path(spool) / "state" / "hosts" / f"{a.host}.prom"))
