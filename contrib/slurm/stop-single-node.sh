#!/bin/sh
# Stop the test cluster of setup-single-node.sh: slurmd, then slurmctld (their
# pid files, checked against /proc/PID/comm, never a process found by name).
# Jobs still running are killed with slurmd. munged is left running unless
# SPOOLD_SLURM_STOP_MUNGE=1. The same SPOOLD_SLURM_* variables as the setup.
set -eu
. "$(dirname "$0")/env.sh"
say() { printf '%s\n' "stop-single-node: $*" >&2; }
[ "$(id -u)" = 0 ] || { say "error: run me as root"; exit 1; }
stop() {  # $1 = pid file, $2 = program name
    [ -s "$1" ] || return 0
    p=$(cat "$1")
    grep -qx "$2" "/proc/$p/comm" 2>/dev/null || return 0
    say "stopping $2 (pid $p)"
    kill "$p"
    i=0
    while grep -qx "$2" "/proc/$p/comm" 2>/dev/null; do
        i=$((i + 1)); [ $i -lt 300 ] || { say "error: $2 (pid $p) does not stop"; exit 1; }
        sleep 0.1
    done
}
stop "$SLURMD_PID" slurmd
stop "$CTLD_PID" slurmctld
if [ "${SPOOLD_SLURM_STOP_MUNGE:-}" = 1 ] && [ -s /run/munge/munged.pid ]; then
    stop /run/munge/munged.pid munged
fi
say "stopped"
