# bash completion for spoold's tools. Install: source it from ~/.bashrc, or copy it to
# /usr/share/bash-completion/completions/ (one link per tool name). After pip install,
# `spoold --completion bash` prints this file.

_spoold_ids() {
  # Job ids from the spool, read straight from file names (no daemon needed).
  local spool=${SPOOLD_SPOOL:-$HOME/.local/share/spoold} f n
  for f in "$spool"/pending/*.yaml "$spool"/running/*.yaml "$@"; do
    n=${f##*/}; n=${n%.yaml}; n=${n##*-}; n=${n##+(0)}
    [[ $n =~ ^[0-9]+$ ]] && printf '%s\n' "$n"
  done
}

_spoold_tool() {
  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} opts
  shopt -s extglob nullglob
  case ${COMP_WORDS[0]##*/} in
    gsub) opts="-n -p -J -t -c -o -h --gpus --priority --name --time --cpus --mem --gpu-mem
                --after --hold --output --on-finish --host --requeue --array --file --wait
                -D --chdir --partition --account --qos --constraint --spool --help" ;;
    gkill|gcancel|ghold|grelease|grequeue) opts="--spool --help" ;;
    gstat) opts="--json -u --user -a --all --watch --spool --help" ;;
    ghist) opts="-f --failed -n -u --user --since --json --clean --older-than --timeline
                 --spool --help" ;;
    glog) opts="-f --follow --spool --help" ;;
    gpause|gresume|gprio) opts="--spool --help" ;;
    gdrain) opts="--spool --host --reason --undo --help" ;;
    spoold) opts="--spool --gpus --max-pending --max-pending-per-user --keep --limit --max-load
                  --max-memory --poll --fake-gpus --cpus --mem --kill-grace --host
                  --default-time-limit --host-timeout --hook-limit --fairshare-halflife
                  --max-gpus-per-user --max-cpus-per-user --policy --executor --polling
                  --no-polling --drain --foreign-procs --blackhole --metrics --stop --completion
                  --verbose --help" ;;
  esac
  case $prev in
    --spool|-o|--output|--file|--fake-gpus|--policy|--metrics)
      COMPREPLY=($(compgen -f -- "$cur")); return ;;
    --completion) COMPREPLY=($(compgen -W "bash zsh" -- "$cur")); return ;;
    --executor) COMPREPLY=($(compgen -W "local slurm" -- "$cur")); return ;;
    --foreign-procs) COMPREPLY=($(compgen -W "busy ignore" -- "$cur")); return ;;
    --after) COMPREPLY=($(compgen -W "$(_spoold_ids)" -- "$cur")); return ;;
  esac
  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "$opts" -- "$cur"))
  else
    case ${COMP_WORDS[0]##*/} in
      gkill|gcancel|ghold|grelease|glog|gprio) COMPREPLY=($(compgen -W "$(_spoold_ids)" -- "$cur")) ;;
      grequeue) local s=${SPOOLD_SPOOL:-$HOME/.local/share/spoold}
        COMPREPLY=($(compgen -W "$(_spoold_ids "$s"/done/*.yaml "$s"/failed/*.yaml \
                    "$s"/cancelled/*.yaml)" -- "$cur")) ;;
      gsub) COMPREPLY=($(compgen -c -- "$cur")) ;;
    esac
  fi
}
complete -F _spoold_tool gsub gkill gcancel ghold grelease grequeue gstat ghist glog \
  gpause gresume gprio gdrain spoold
