# Where setup-single-node.sh and stop-single-node.sh keep the test cluster's
# files (sourced by both). Each can be set in the environment.
CONF_DIR=${SPOOLD_SLURM_CONF_DIR:-/etc/slurm}
CONF=$CONF_DIR/slurm.conf
GRES=$CONF_DIR/gres.conf
LOG_DIR=${SPOOLD_SLURM_LOG_DIR:-/var/log/slurm}
CTLD_STATE=${SPOOLD_SLURM_STATE_DIR:-/var/spool/slurmctld}
SLURMD_SPOOL=${SPOOLD_SLURM_SLURMD_DIR:-/var/spool/slurmd}
RUN_DIR=${SPOOLD_SLURM_RUN_DIR:-/run}
CTLD_PID=$RUN_DIR/slurmctld.pid
SLURMD_PID=$RUN_DIR/slurmd.pid
export SLURM_CONF="$CONF"
