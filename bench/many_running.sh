#!/bin/sh
# many_running.sh [TREE] [DIR]: the daemon's CPU per short job while many others
# run. Starts spoold (TREE's, default this checkout) on a fresh spool in DIR
# (default a new folder in $TMPDIR or /tmp) with 4 fake GPUs, starts $RUNNING
# (200) CPU jobs that sleep, then submits $SHORT (300) `true` jobs, one gsub
# each, and prints the daemon's CPU time (all threads) per short job. Not part
# of bench/run.py: a probe of the per-pass costs that grow with the running
# jobs (docs/performance.md, "Second pass"). PYTHON: the interpreter with
# spoold's dependencies (default python3).
set -eu
TREE=$(cd "${1:-$(dirname "$0")/..}" && pwd)
DIR=${2:-$(mktemp -d "${TMPDIR:-/tmp}/spoold-many-XXXXXX")}
PY=${PYTHON:-python3} RUNNING=${RUNNING:-200} SHORT=${SHORT:-300}
S=$DIR/spool
mkdir -p "$S"
printf -- '- {index: %s, memory_total: 81559, memory_used: 0, utilization: 0}\n' 0 1 2 3 \
  > "$DIR/gpus.yaml"
cd "$TREE"
"$PY" -m spoold.daemon --spool "$S" --fake-gpus "$DIR/gpus.yaml" --host many \
  > "$DIR/daemon.out" 2>&1 &
P=$!
trap 'kill $P 2>/dev/null || true' EXIT
until [ -e "$S/state/hosts/many.yaml" ]; do sleep 0.1; done
bin/gsub --spool "$S" --array "1-$RUNNING" -n 0 -- sleep 600 > /dev/null
until [ "$(ls "$S/running" | wc -l)" -ge "$RUNNING" ]; do sleep 0.2; done
ticks() { awk '{print $14 + $15}' "/proc/$P/stat"; }
c0=$(ticks)
i=0
while [ $i -lt "$SHORT" ]; do bin/gsub --spool "$S" -n 0 -- true > /dev/null; i=$((i + 1)); done
until [ "$(ls "$S/done" | wc -l)" -ge "$SHORT" ]; do sleep 0.1; done
c1=$(ticks)
awk -v t="$TREE" -v r="$RUNNING" -v n="$SHORT" -v d=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" \
  'BEGIN { printf "%s: daemon CPU per short job with %d running: %.2f ms\n", t, r, d * 1000 / hz / n }'
# The sleepers are the spool's: cancel them all, then let the daemon go.
bin/gkill --spool "$S" $(cd "$S/running" && ls | sed 's/\.yaml$//') > /dev/null 2>&1 || true
until [ -z "$(ls "$S/running")" ]; do sleep 0.2; done
