#!/bin/sh
# Set up (or check) a single-node SLURM cluster on this machine for spoold's
# SLURM bridge tests: munge, slurmctld and slurmd started by hand (no systemd
# needed), one node with 4 fake GPUs. Run as root. Idempotent: a second run
# changes nothing, and only restarts the daemons when the config changed or
# they are not running.
#
#   sh contrib/slurm/setup-single-node.sh          # install, configure, start
#   SPOOLD_SLURM_NO_INSTALL=1 sh ...                # never call apt-get
#   SPOOLD_SLURM_GPUS=8 sh ...                      # number of fake GPUs (default 4)
#   SPOOLD_SLURM_MIN_JOB_AGE=10 sh ...              # MinJobAge (default 300 s)
#   SPOOLD_SLURM_CONF_DIR=/opt/t/etc sh ...         # where its files go: see env.sh
#   sh contrib/slurm/stop-single-node.sh            # stop slurmd and slurmctld
#
# It writes slurm.conf and gres.conf only where they are missing or were
# written by it (first line "# Written by spoold ..."): another slurm.conf is
# never overwritten. A changed slurm.conf alone is applied with `scontrol
# reconfigure` (running jobs and the controller stay); a changed gres.conf
# restarts the daemons. With SPOOLD_SLURM_CONF_DIR other than /etc/slurm,
# clients need SLURM_CONF=$SPOOLD_SLURM_CONF_DIR/slurm.conf (printed at the end).
#
# Prints one status line on success, e.g.
#   slurm: node vm idle, 2 CPUs, 23081 MiB, gpu:4 (/dev/fakegpu[0-3]); setup took 3s
# Exits non-zero (with the relevant log lines) when the node does not come up.
#
# The fake GPUs are character devices (major 1 minor 3, like /dev/null):
# slurmd only binds CUDA_VISIBLE_DEVICES for gres whose File= is a device.
# This is a TEST cluster: no cgroups (proctrack/linuxproc, task/none), no
# accounting database, job completions in a text file.
set -eu

START=$(date +%s)
NGPU=${SPOOLD_SLURM_GPUS:-4}
MIN_JOB_AGE=${SPOOLD_SLURM_MIN_JOB_AGE:-300}
. "$(dirname "$0")/env.sh"

say() { printf '%s\n' "setup-single-node: $*" >&2; }
die() { say "error: $*"; exit 1; }
case $MIN_JOB_AGE in '' | *[!0-9]*) die "SPOOLD_SLURM_MIN_JOB_AGE must be whole seconds" ;; esac
MARK="# Written by spoold contrib/slurm/setup-single-node.sh"
for f in "$CONF" "$GRES"; do
    if [ -e "$f" ] && [ "$(head -n 1 "$f")" != "$MARK: a one-node TEST cluster." ] &&
        [ "$(head -n 1 "$f")" != "$MARK: fake GPUs (char devices)." ]; then
        die "$f exists and was not written by this script: left alone (set SPOOLD_SLURM_CONF_DIR)"
    fi
done

[ "$(id -u)" = 0 ] || die "run me as root"

# ---- 1. packages ------------------------------------------------------------
have_all() {
    for b in slurmctld slurmd sbatch scontrol munged munge; do
        command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || return 1
    done
}
if ! have_all; then
    [ -z "${SPOOLD_SLURM_NO_INSTALL:-}" ] || die "SLURM is not installed and SPOOLD_SLURM_NO_INSTALL is set"
    command -v apt-get >/dev/null 2>&1 || die "SLURM is not installed and there is no apt-get"
    say "installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge \
        >/dev/null
fi
PATH=/usr/sbin:/sbin:$PATH

# ---- 2. munge -----------------------------------------------------------------
install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    # --force: a socket left over from a killed munged (container restart)
    runuser -u munge -- /usr/sbin/munged --force
    i=0
    until munge -n 2>/dev/null | unmunge >/dev/null 2>&1; do
        i=$((i + 1)); [ $i -lt 100 ] || die "munged does not answer"; sleep 0.1
    done
fi

# ---- 3. fake GPUs ---------------------------------------------------------------
i=0
while [ $i -lt "$NGPU" ]; do
    d=/dev/fakegpu$i
    if [ ! -c "$d" ]; then
        rm -f "$d"
        mknod -m 0666 "$d" c 1 3
    fi
    i=$((i + 1))
done
LAST=$((NGPU - 1))

# ---- 4. configuration ------------------------------------------------------------
NODE=$(hostname -s 2>/dev/null || uname -n | cut -d. -f1)
CPUS=$(nproc)
MEM=$(free -m | awk '/^Mem:/ {print $2}')
# Leave room for the OS (and for slurmd reporting slightly less than free(1)):
# a RealMemory above what slurmd finds drains the node ("Low RealMemory").
MEM=$((MEM - MEM / 20 - 256))
[ "$MEM" -gt 256 ] || MEM=256

install -d -o root -g root -m 0755 "$CONF_DIR" "$SLURMD_SPOOL"
mkdir -p "$RUN_DIR"
install -d -o slurm -g slurm -m 0755 "$LOG_DIR" "$CTLD_STATE"

CHANGED=""
write_if_changed() {  # $1 = target; new content on stdin
    cat >"$1.new"
    if cmp -s "$1.new" "$1"; then
        rm -f "$1.new"
    else
        mv "$1.new" "$1"
        CHANGED="$CHANGED $1"
    fi
}

write_if_changed "$CONF" <<EOF
$MARK: a one-node TEST cluster.
ClusterName=spoold-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=100
GresTypes=gpu
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
PriorityType=priority/basic
# Completed jobs stay in slurmctld's memory (scontrol show job) this long:
# spoold reads exit codes from there; the text file below is its fallback.
MinJobAge=$MIN_JOB_AGE
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# TERM, then KILL after KillWait seconds (spoold's --kill-grace default is 10 s)
KillWait=10
ReturnToService=2
MailProg=/bin/true
StateSaveLocation=$CTLD_STATE
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM Gres=gpu:$NGPU State=UNKNOWN
PartitionName=spoold Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

write_if_changed "$GRES" <<EOF
$MARK: fake GPUs (char devices).
AutoDetect=off
Name=gpu File=/dev/fakegpu[0-$LAST]
EOF
chmod 0644 "$CONF" "$GRES"

# ---- 5. daemons -------------------------------------------------------------------
alive() {  # $1 = pid file, $2 = program name; a zombie (killed, not yet reaped) is dead
    [ -s "$1" ] || return 1
    p=$(cat "$1" 2>/dev/null)
    [ -n "$p" ] && grep -qx "$2" "/proc/$p/comm" 2>/dev/null || return 1
    st=$(sed 's/.*) \(.\).*/\1/' "/proc/$p/stat" 2>/dev/null) || return 1
    [ "$st" != Z ] && [ "$st" != X ]
}
stop() {  # $1 = pid file, $2 = program name
    alive "$1" "$2" || return 0
    say "stopping $2 (pid $p)"
    kill "$p"
    i=0
    while alive "$1" "$2"; do
        i=$((i + 1)); [ $i -lt 300 ] || die "$2 (pid $p) does not stop"; sleep 0.1
    done
}
case $CHANGED in
    *"$GRES"*)
        stop "$SLURMD_PID" slurmd
        stop "$CTLD_PID" slurmctld ;;
    ?*)
        if alive "$CTLD_PID" slurmctld && alive "$SLURMD_PID" slurmd; then
            say "slurm.conf changed: scontrol reconfigure"
            scontrol reconfigure || { stop "$SLURMD_PID" slurmd; stop "$CTLD_PID" slurmctld; }
        fi ;;
esac
if ! alive "$CTLD_PID" slurmctld; then
    say "starting slurmctld"
    slurmctld -f "$CONF"
fi
i=0
until scontrol ping 2>/dev/null | grep -q 'is UP'; do
    i=$((i + 1))
    if [ $i -ge 300 ]; then
        tail -n 20 "$LOG_DIR/slurmctld.log" >&2 || true
        die "slurmctld does not answer"
    fi
    sleep 0.1
done
SLURMD_SINCE=0
if ! alive "$SLURMD_PID" slurmd; then
    say "starting slurmd"
    SLURMD_SINCE=$(date +%s)
    slurmd -f "$CONF"
fi
registered() {  # slurmctld has heard from the slurmd we started (not only from its state file)
    [ "$SLURMD_SINCE" = 0 ] && return 0
    t=$(scontrol show node "$NODE" 2>/dev/null | sed -n 's/.*SlurmdStartTime=\([^ ]*\).*/\1/p')
    t=$(date -d "$t" +%s 2>/dev/null) || return 1
    [ "$t" -ge $((SLURMD_SINCE - 1)) ]
}

# ---- 6. wait for the node ---------------------------------------------------------
i=0
while :; do
    STATE=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n 1)
    case $STATE in
        idle | mixed | allocated | completing) registered && break ;;
        down* | drain* | fail*)
            # e.g. left DOWN by a previous run whose slurmd was killed
            scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    i=$((i + 1))
    if [ $i -ge 600 ]; then
        scontrol show node "$NODE" >&2 || true
        tail -n 20 "$LOG_DIR/slurmd.log" >&2 || true
        die "node $NODE is '$STATE', not idle, after 60 s"
    fi
    sleep 0.1
done

echo "slurm: node $NODE $STATE, $CPUS CPUs, $MEM MiB, gpu:$NGPU (/dev/fakegpu[0-$LAST])," \
    "MinJobAge $MIN_JOB_AGE s; setup took $(( $(date +%s) - START ))s"
[ "$CONF" = /etc/slurm/slurm.conf ] || echo "clients need: export SLURM_CONF=$CONF"
