# gsub-more.sh - not a command: sourced by gsub (its _gmore) the first time
# one of its rare paths is taken.  gsub itself holds only what one plain job
# needs, because dash parses a script as it runs it; everything else is
# here, each rule once, bar quoting and the environment's slow paths
# (bin/gsub-quote.sh):
#
# - the usage text (--help);
# - the rare options (_goptmore): durations, sizes, job ids, SLURM words,
#   and a long default name cut (_gcut40);
# - --array and --file (_gmany, _gdelivermany), --wait (_gwaitall);
# - why no live host can run a job (_grefuse), the clock (_gbeatx), a full
#   queue (_gqmaxfile, _gqfull), counter recovery (_grecover), and each
#   way a delivery can fail.
#
# Plain POSIX sh, builtins only (bar the programs named); every name starts
# with _g, and the variables are gsub's (bin/gsub documents them).

# Patterns built from variables are meant to match as patterns; single
# quotes in the help text are meant literally; `a= b=` sets two empty vars;
# the ^ in [!...^-~] is a range start, not a negation; a && b || die is meant.
# shellcheck disable=SC2016,SC2295,SC1003,SC1007,SC3026,SC1001,SC2015,SC2154

_gusage() {
  printf '%s\n' \
'usage: gsub [options] [--] COMMAND [ARG...]     run COMMAND with ARGs, no shell' \
'       gsub [options] -c '"'"'SHELL STRING'"'"'        run a string with bash -c (or sh -c)' \
'       gsub [options] --file FILE                 one job per non-empty, non-# line' \
'       gsub [options] SCRIPT [ARG...]             a SLURM batch script (below)' \
'Submit a job to the spoold spool; print its id on stdout.' \
'' \
'  -n, --gpus N          whole GPUs (default 1; 0 for a CPU-only job)' \
'  -p, --priority P      0..9999, smaller runs first (default 10)' \
'  -J, --name NAME       job name (default: the command'"'"'s base name)' \
'  -t, --time DURATION   time limit: 90s 10m 2h 1d, H:M:S, M:S, D-H[:M[:S]],' \
'                        a bare number is minutes; "infinite" for none' \
'  --cpus N              CPUs to reserve' \
'  --mem SIZE            memory to reserve: 512M, 30G, 1T, 4096K; bare = MiB' \
'  --gpu-mem SIZE        a slice of one GPU (implies -n 1)' \
'  --after ID[,ID...]    start only after these jobs succeeded' \
'  --hold                keep the job pending until `grelease ID`' \
'  -o, --output FILE     write the log to FILE instead of logs/ID.log' \
'  -D, --chdir DIR       run in DIR (default: the current directory)' \
'  --on-finish CMD       shell command to run when the job ends' \
'  --host NAME           run only on the spoold whose host name is NAME' \
'  --requeue             put the job back in the queue if its host dies' \
'  --partition, --account, --qos, --constraint X' \
'                        SLURM options (spoold --executor slurm only; a' \
'                        local spoold refuses the job): one word of letters,' \
'                        digits and _.,:|&*!()[]+-, not starting with - or +' \
'  --array A-B[%N]       one job per index A..B (SPOOLD_ARRAY_INDEX),' \
'                        at most N running at once; prints one id per line' \
'  --file FILE           one job per line of FILE (- for stdin)' \
'  --wait                block until the job(s) end; exit with the exit code' \
'  --spool DIR           the spool (default $SPOOLD_SPOOL, else' \
'                        ~/.local/share/spoold)' \
'  -h, --help            this text' \
'' \
'A SCRIPT with #SBATCH or #GSUB lines before its first command is a batch' \
'script, as sbatch takes it: its text is saved in the job when it is submitted' \
'(editing the file later changes nothing) and run by the interpreter of its #!' \
'line (sh, bash, zsh, ksh or python; /bin/sh without one).  #SBATCH lines may' \
'give -J/--job-name, -t/--time, --gres=gpu:N, -G/--gpus, --gpus-per-node,' \
'-c/--cpus-per-task, --mem, -a/--array, -d/--dependency=afterok:ID[:ID...],' \
'-o/--output (%j %x %A %a %u filled in), -H/--hold and -D/--chdir; others are' \
'ignored with a warning.  #GSUB lines give gsub'"'"'s own options.  Options on the' \
'command line win.  The job gets SLURM_JOB_ID, SLURM_JOB_NAME, SLURM_SUBMIT_DIR' \
'(and SLURM_ARRAY_TASK_ID ... for an array) as under SLURM.' \
'' \
'When no spoold is running (no fresh heartbeat in state/hosts/) the job is' \
'queued and gsub warns; --wait then waits for one.  When one is, a job that no' \
'running spoold could ever run (too many GPUs, CPUs or memory, an absent' \
'--host) is refused: exit status 2, nothing queued.' \
'' \
'examples:' \
'  gsub python train.py --lr 0.1' \
'  id=$(gsub -n 2 -t 2h -J big -- torchrun --nproc_per_node 2 train.py)' \
'  gsub --after "$id" -n 0 -c '"'"'python eval.py > eval.txt && echo ok'"'"'' \
'  gsub --array 0-9%2 -c '"'"'python sweep.py --seed $SPOOLD_ARRAY_INDEX'"'"'' \
'  gsub job.sh          # job.sh: #!/bin/bash, #SBATCH --gres=gpu:2, ...'
}

# _goptmore: the options of gsub's _gopt (option _go, value _gv) whose
# values need the rules below, or whose jobs need this file anyway (--array,
# --wait)
_goptmore() {
  case $_go in
    -t | --time) _gcli time || return 0; _gdur "$_gv" "$_go"; _gtime=$_gi ;;
    --mem) _gcli mem || return 0; _gsize "$_gv" "$_go"; _gmem=$_gi ;;
    --gpu-mem) _gcli gpus || return 0; _gsize "$_gv" "$_go"; _ggmem=$_gi ;;
    --after) _gcli after || return 0; _gids "$_gv" "$_go"; _gafter=${_gafter:+$_gafter, }$_gx ;;
    --partition | --account | --qos | --constraint) _gcli "$_go" || return 0
      _gslurmopt ;;
    --array) _gcli arr || return 0
      [ -n "$_gv" ] || _gbad "$_go: expected A-B[%N]"
      _garr=$_gv ;;
    --wait) _gwait=1 ;;
  esac
}

# _ggpuone: --gpu-mem asks for a slice of one GPU (_gngpus 1 or unset)
_ggpuone() {
  [ -z "$_gngpus" ] || [ "$_gngpus" -eq 1 ] ||
    _gbad "--gpu-mem asks for a slice of one GPU: it can not be combined with -n $_gngpus"
  _gngpus=1
}

# _gcut40: gsub's _gdefname's name _gx cut to 40 bytes without cutting a
# character in two
_gcut40() {
  _gt=${_gx#????????????????????????????????????????}
  _gx=${_gx%%"$_gt"}
  while ! _gq "$_gx"; do _gx=${_gx%?}; done
}

# _gdur VALUE WHAT: a time limit -> _gi seconds ('' for none).  SLURM's forms.
# The same rule as spoold.util.parse_duration (spoold --default-time-limit,
# ghist): tests/test_conformance.py runs both on the same inputs.
_gdur() {
  _gw=$2
  _gdm="$2: not a duration: '$1' (use e.g. 90s, 10m, 2h, 1:30:00 or infinite)"
  case $1 in
    infinite | INFINITE | unlimited | UNLIMITED) _gi= ; return ;;
    *[0-9][sS]) _gnum "${1%?}" "$_gw" "$_gdm" ;;
    *[0-9][mM]) _gnum "${1%?}" "$_gw" "$_gdm"; _gi=$((_gi * 60)) ;;
    *[0-9][hH]) _gnum "${1%?}" "$_gw" "$_gdm"; _gi=$((_gi * 3600)) ;;
    *[0-9][dD]) _gnum "${1%?}" "$_gw" "$_gdm"; _gi=$((_gi * 86400)) ;;
    *-*) # D-H, D-H:M, D-H:M:S
      _gnum "${1%%-*}" "$_gw" "$_gdm"; _gt=$((_gi * 86400)); _gx=${1#*-}
      case $_gx in
        *:*:*) _gnum "${_gx%%:*}" "$_gw" "$_gdm"; _gt=$((_gt + _gi * 3600)); _gx=${_gx#*:}
          _gnum "${_gx%%:*}" "$_gw" "$_gdm"; _gt=$((_gt + _gi * 60))
          _gnum "${_gx#*:}" "$_gw" "$_gdm"; _gt=$((_gt + _gi)) ;;
        *:*) _gnum "${_gx%%:*}" "$_gw" "$_gdm"; _gt=$((_gt + _gi * 3600))
          _gnum "${_gx#*:}" "$_gw" "$_gdm"; _gt=$((_gt + _gi * 60)) ;;
        *) _gnum "$_gx" "$_gw" "$_gdm"; _gt=$((_gt + _gi * 3600)) ;;
      esac
      _gi=$_gt ;;
    *:*:*) _gnum "${1%%:*}" "$_gw" "$_gdm"; _gt=$((_gi * 3600)); _gx=${1#*:}
      _gnum "${_gx%%:*}" "$_gw" "$_gdm"; _gt=$((_gt + _gi * 60))
      _gnum "${_gx#*:}" "$_gw" "$_gdm"; _gi=$((_gt + _gi)) ;;
    *:*) _gnum "${1%%:*}" "$_gw" "$_gdm"; _gt=$((_gi * 60))
      _gnum "${1#*:}" "$_gw" "$_gdm"; _gi=$((_gt + _gi)) ;;
    *) _gnum "$1" "$_gw" "$_gdm"; _gi=$((_gi * 60)) ;;
  esac
  [ "$_gi" -gt 0 ] || _gbad "$_gw: the time limit must be positive: '$1'"
}

# _gsize VALUE WHAT: a size with an optional binary suffix -> _gi MiB.
_gsize() {
  _gx=${1%%[!0-9]*}
  case ${1#"$_gx"} in
    [kK] | [kK][bB] | [kK][iI][bB]) _gnum "$_gx" "$2"; _gi=$(((_gi + 1023) / 1024)) ;;
    '' | [mM] | [mM][bB] | [mM][iI][bB]) _gnum "$_gx" "$2" ;;
    [gG] | [gG][bB] | [gG][iI][bB]) _gnum "$_gx" "$2"; _gi=$((_gi * 1024)) ;;
    [tT] | [tT][bB] | [tT][iI][bB]) _gnum "$_gx" "$2"; _gi=$((_gi * 1048576)) ;;
    *) _gbad "$2: not a size (like 512M, 30G): '$1'" ;;
  esac
  [ "$_gi" -gt 0 ] || _gbad "$2: the size must be positive: '$1'"
}

# _gids VALUE WHAT: ID[,ID...] -> _gx "3, 4" (leading zeros stripped).  Ids
# are 1..99999999: 8 digits, the width of the id in pending/ names.
_gids() {
  _gx=
  _gt=$1,
  while [ -n "$_gt" ]; do
    _gnum "${_gt%%,*}" "$2"
    [ "$_gi" -gt 0 ] && [ ${#_gi} -le 8 ] || _gbad "$2: not a job id: '${_gt%%,*}'"
    _gx=${_gx:+$_gx, }$_gi
    _gt=${_gt#*,}
  done
}

# _gslurmopt: --partition/--account/--qos/--constraint X -> _gs_partition
# ..., and _gslurmy, the lines of the `slurm:` mapping gsub writes.  The rule is job.py's _SLURM_VALUE:
# 1-200 bytes of [A-Za-z0-9_.,:|&*!()[]+-], the first one of [A-Za-z0-9_.]
# (never an option to sbatch); the set is in a variable because | ( ) & would
# end a case pattern.
_gslurmok='[!]A-Za-z0-9_.,:|&*!()[+-]'
_gslurmopt() {
  case $_gv in
    [A-Za-z0-9_.]*) case $_gv in *$_gslurmok*) ;; *) _gslurmbad= ;; esac ;;
  esac
  [ -n "${_gslurmbad-x}" ] &&
    _gbad "$_go: must be one word of letters, digits and _.,:|&*!()[]+-, starting with a letter, digit, _ or .: '$_gv'"
  unset _gslurmbad
  [ ${#_gv} -le 200 ] || _gbad "$_go: at most 200 characters"
  eval "_gs_${_go#--}=\$_gv"
  # in a fixed order; quoted: '123' or 'null' stay words (job.py checks them again)
  _gslurmy=
  [ -z "$_gs_partition" ] || _gslurmy="$_gslurmy  partition: '$_gs_partition'$_gnl"
  [ -z "$_gs_account" ] || _gslurmy="$_gslurmy  account: '$_gs_account'$_gnl"
  [ -z "$_gs_qos" ] || _gslurmy="$_gslurmy  qos: '$_gs_qos'$_gnl"
  [ -z "$_gs_constraint" ] || _gslurmy="$_gslurmy  constraint: '$_gs_constraint'$_gnl"
}

# ---------------------------------------------------------------- --array, --file
# _gmany NARGS: the checks of --file (NARGS: the words left after the
# options), --array A-B[%N] -> _garrlo _garrhi _garrlim, and _gk the number
# of jobs; --file's lines are read (_gfileread).
_gmany() {
  if [ -n "$_gfile_set" ]; then
    [ -z "$_gcmd_set" ] && [ "$1" -eq 0 ] ||
      _gbad "--file takes its commands from the file: no -c and no command"
    [ -z "$_garr" ] || _gbad "--array and --file can not be combined"
    [ -n "$_gfile" ] || _gbad "--file: empty file name"
    _gfileread
    return
  elif [ -n "$_gcmd_set" ]; then
    [ "$1" -eq 0 ] || _gbad "give either -c 'command' or a command with arguments, not both"
  elif [ "$1" -eq 0 ]; then
    _gbad "no command given (see gsub --help)"
  fi
  _garrlo= _garrlim=
  _gx=${_garr%%%*}
  if [ "$_gx" != "$_garr" ]; then
    _gnum "${_garr#*%}" --array
    [ "$_gi" -ge 1 ] || _gbad "--array: the %N limit must be at least 1: '$_garr'"
    [ ${#_gi} -le 8 ] || _gbad "--array: the %N limit is at most 99999999: '$_garr'"
    _garrlim=$_gi
  fi
  case $_gx in
    *-*) _gnum "${_gx%%-*}" --array; _garrlo=$_gi
      _gnum "${_gx#*-}" --array; _garrhi=$_gi ;;
    *) _gnum "$_gx" --array; _garrlo=$_gi _garrhi=$_gi ;;
  esac
  [ "$_garrlo" -le "$_garrhi" ] || _gbad "--array: A-B needs A <= B: '$_garr'"
  [ ${#_garrhi} -le 8 ] || _gbad "--array: indexes are at most 99999999: '$_garr'"
  _gk=$((_garrhi - _garrlo + 1))
  [ "$_gk" -le 20000 ] || _gbad "--array: at most 20000 jobs per submission"
}

# _gfileread: --file's commands, one per line -> _gf1.._gfK
# ("cmd: ...\nname: ...\n"), _gk
_gfileread() {
  [ -n "$_gCT" ] || _ginit
  if [ "$_gfile" = - ]; then
    _gx=/dev/stdin
  else
    _gx=$_gfile
    [ -f "$_gx" ] && [ -r "$_gx" ] || _gbad "--file: can not read '$_gfile'"
  fi
  _gk=0 _gx2=0
  while IFS= read -r _gl || [ -n "$_gl" ]; do
    _gx2=$((_gx2 + 1))
    _gl=${_gl%"$_gcr"}
    _gt=${_gl#"${_gl%%[! $_gtab]*}"}
    case $_gt in '' | \#*) continue ;; esac
    _gk=$((_gk + 1))
    _gq "$_gl" || _gbad "--file: line $_gx2 is not valid UTF-8 text"
    _gfc="cmd: $_gr${_gnl}name: "
    if [ -n "$_gname" ]; then _gr=$_gname; else _gdefname "$_gl" word; fi
    eval "_gf$_gk=\$_gfc\$_gr\$_gnl"
  done < "$_gx"
  [ "$_gk" -gt 0 ] || _gbad "--file: no commands in '$_gfile'"
  [ "$_gk" -le 20000 ] || _gbad "--file: at most 20000 jobs per submission"
}

# _gdelivermany: the jobs of --array or --file, written under their final
# names into a new folder of their own in tmp/ (mktemp -d), all synced, one
# `mv -n` into pending/, then one sync of pending/ and state/ids/; prints
# the ids that got in (exit 1 if any was left behind)
_gdelivermany() {
  set -C   # create files with O_EXCL: never write over another file
  _glast=$((_gid + _gk - 1))
  _gstage=$(mktemp -d "$_gspool/tmp/$_gid-$_glast.XXXXXXXX" 2> /dev/null) && cd -- "$_gstage" ||
    _gdie 1 "can not create a folder in $_gspool/tmp (disk full?)"
  _gfail() {
    cd / && rm -rf -- "$_gstage"
    _gdie 1 "$1"
  }
  _gx=0
  while [ "$_gx" -lt "$_gk" ]; do
    _gt=$((_gid + _gx))
    [ -z "$_gsb" ] || _gperjob "$_gt" $((_garrlo + _gx))
    _gpad "$_gt" 8
    if [ -n "$_garr" ]; then
      _gv="array_id: $_gid${_gnl}array_index: $((_garrlo + _gx))$_gnl"
      [ -z "$_garrlim" ] || _gv="${_gv}array_limit: $_garrlim$_gnl"
      2> /dev/null printf '%s' \
        "id: $_gt$_gnl${_gcl}name: $_gname$_gnl$_gcom$_gv$_gjx$_genvy$_gje" > "$_gpp-$_gz.yaml"
    else
      eval "_gv=\$_gf$((_gx + 1))"
      2> /dev/null printf '%s' "id: $_gt$_gnl$_gv$_gcom$_genvy" > "$_gpp-$_gz.yaml"
    fi || _gfail "can not write $_gstage/$_gpp-$_gz.yaml (disk full?)"
    _gx=$((_gx + 1))
  done
  if [ "$_gk" -le 100 ]; then
    sync -- ./*.yaml
  else
    sync -f .
  fi || _gfail "can not sync $_gstage (disk full?)"
  # -n: never over an entry, never into a folder.  mv -n exits 0 for what
  # it leaves here, and GNU mv with several files stats each one after its
  # rename and fails when spoold has claimed it already: what counts is
  # what is left here.
  _gx=$(mv -n -- ./*.yaml "$_gspool/pending/" 2>&1)
  set -- ./*.yaml
  if [ -e "$1" ] || [ -L "$1" ]; then
    [ -z "$_gx" ] || printf '%s\n' "$_gx" >&2
    _gx=$_gid
    while [ "$_gx" -le "$_glast" ]; do   # print the ids that did get in
      _gpad "$_gx" 8
      [ -e "$_gpp-$_gz.yaml" ] || printf '%s\n' "$_gx"
      _gx=$((_gx + 1))
    done
    sync -- "$_gspool/pending" "$_gsd/ids"
    _gx=$_gspool/pending/${1#./}
    if [ -e "$_gx" ] || [ -L "$_gx" ]; then
      _gfail "could not deliver $# of the jobs $_gid-$_glast: $_gx already exists (nothing was written there)"
    fi
    _gfail "could not deliver $# of the jobs $_gid-$_glast"
  fi
  sync -- "$_gspool/pending" "$_gsd/ids" || _gdie 1 "can not sync $_gspool/pending"
  cd / && rmdir -- "$_gstage"
  _gx=$_gid
  while [ "$_gx" -le "$_glast" ]; do
    printf '%s\n' "$_gx"
    _gx=$((_gx + 1))
  done
}

# ---------------------------------------------------------------- one job's delivery
# _gtmpname [failed]: the job (_gjob) goes to a file from mktemp (O_EXCL, a
# random name), ours, written with >|: something was at _gtmp already (a
# planted fifo is never opened), no random name could be read (_gtmp
# empty), or (`failed`) the write under `set -C` failed.  Then a regular
# file of ours at _gtmp is what that write made (only we make files owned
# by us, and this id's names are ours alone): removed, and gsub fails.
_gtmpname() {
  if [ -n "${1-}" ] && [ -f "$_gtmp" ] && [ ! -L "$_gtmp" ] && [ -O "$_gtmp" ]; then
    _gundelivered "can not write $_gtmp (disk full?)"
  fi
  _gtmp=$(mktemp "$_gspool/tmp/$_gid.XXXXXXXX" 2> /dev/null) ||
    _gdie 1 "can not create a file in $_gspool/tmp (disk full?)"
  2> /dev/null printf '%s' "$_gjob" >| "$_gtmp" ||
    _gundelivered "can not write $_gtmp (disk full?)"
}

# _gundelivered [MESSAGE]: the job is still in tmp/: it could not be
# written (MESSAGE), or the mv of gsub's delivery left it there.  Then mv is
# run again, to say why (its message, in _gx): if the file does move this
# time (the entry in its way has gone), it is delivered after all.  Else it
# is removed and gsub fails.
_gundelivered() {
  if [ -z "${1-}" ]; then
    _gx=$(mv -T -n -- "$_gtmp" "$_gdst" 2>&1)
    [ -e "$_gtmp" ] || [ -L "$_gtmp" ] || return 0
  fi
  rm -f -- "$_gtmp"
  [ -z "${1-}" ] || _gdie 1 "$1"
  if [ -e "$_gdst" ] || [ -L "$_gdst" ]; then
    _gdie 1 "job $_gid not submitted: $_gdst already exists; nothing was written there"
  fi
  _gdie 1 "job $_gid not submitted: could not move it into $_gspool/pending${_gx:+: $_gx}"
}

# _gsyncmoved: the sync of the job in pending/ failed.  If spoold has taken
# the file on already (it may claim it at once), it is synced where it is
# now: with the whole filesystem (sync -f), the spool being on one.
_gsyncmoved() {
  if [ -e "$_gdst" ] || [ -L "$_gdst" ]; then
    sync -- "$_gdst" "$_gspool/pending" "$_gsd/ids" ||
      _gdie 1 "can not sync $_gdst (disk full?)"
  else
    sync -f -- "$_gspool/pending" || _gdie 1 "can not sync $_gspool (disk full?)"
  fi
}

# ---------------------------------------------------------------- queue limit
# _gqmaxfile: gsub's _gqueue's cap when no live host publishes one -> _gmax
# (already 10000): state/max-pending, which spoold writes as it starts
_gqmaxfile() {
  _gx=
  { read -r _gx < "$_gspool/state/max-pending"; } 2> /dev/null
  case $_gx in
    '' | *[!0-9]*) ;;
    *) _gx=${_gx#"${_gx%%[!0]*}"}; [ ${#_gx} -gt 12 ] || _gmax=${_gx:-0} ;;
  esac
}

# _gqfull N: N jobs are pending and _gk more would pass _gmax: gsub fails
_gqfull() {
  if [ "$_gk" -eq 1 ] || [ "$1" -ge "$_gmax" ]; then
    _gdie 1 "queue full: $1 jobs pending (spoold --max-pending)"
  fi
  _gdie 1 "queue full: $1 jobs pending, $_gk more would pass the limit of $_gmax (spoold --max-pending)"
}

# ---------------------------------------------------------------- ids
# _grecover: the next id -> _gx, rebuilt when the hint is missing, empty,
# not a number or out of range (a crash mid-write): 1 + the largest id in
# any file name of the spool.  Ids have at most 8 digits (99999999), the
# width of the id in pending/ names; names with wider ids are not ours and
# are ignored.  The same folders and names as spoold.spool.Spool.max_id_seen
# (tests/test_conformance.py): no dot names; in folders of tmp/ (staged
# arrays) but not through links.
_grecover() {
  _gx=0
  for _gf in "$_gspool"/pending/* "$_gspool"/running/* "$_gspool"/done/* \
    "$_gspool"/failed/* "$_gspool"/cancelled/* "$_gspool"/tmp/* \
    "$_gspool"/tmp/*/* "$_gspool"/logs/* "$_gspool"/state/ids/*; do
    case ${_gf#"$_gspool"/} in tmp/*/*) [ ! -L "${_gf%/*}" ] || continue ;; esac
    _gt=${_gf##*/}
    _gt=${_gt%%.*}
    _gt=${_gt##*-}
    case $_gt in '' | *[!0-9]*) continue ;; esac
    _gt=${_gt#"${_gt%%[!0]*}"}
    [ -n "$_gt" ] && [ ${#_gt} -le 8 ] || continue
    [ "$_gt" -le "$_gx" ] || _gx=$_gt
  done
  _gx=$((_gx + 1))
}

# _gnoids: a marker could not be made and nothing is there: in a private
# spool without state/ids/ (made by an older spoold, or by hand) gsub makes
# the folder; anything else is an error
_gnoids() {
  if [ -z "$_gshared" ] && [ ! -e "$_gsd/ids" ] && [ ! -L "$_gsd/ids" ]; then
    mkdir -m 700 -- "$_gsd/ids" 2> /dev/null || [ -d "$_gsd/ids" ] ||
      _gdie 1 "can not make $_gsd/ids: ids are taken there"
    return
  fi
  [ -d "$_gsd/ids" ] || _gdie 1 "no folder $_gsd/ids in this spool (start spoold once)"
  _gdie 1 "can not take an id in $_gsd/ids"
}

# ---------------------------------------------------------------- live hosts
# _gbeatx: the clock -> _gclock (bash's printf, else one `date`), for a
# heartbeat from another machine or boot
_gbeatx() {
  _gclock=
  # shellcheck disable=SC3045  # bash only: dash never runs it
  [ -z "${BASH_VERSION-}" ] || printf -v _gclock '%(%s)T' -1 2> /dev/null
  case $_gclock in '' | *[!0-9]*) _gclock=$(date +%s) ;; esac
}

# _gsays DIM HAVE PER: the job's ask -> _gask ("9 GPUs"), the host's -> _gx
_gsays() {
  case $1 in
    gpus) _gask="$_gngpus GPU" _gx="has $2"
      [ "$_gngpus" -eq 1 ] || _gask=${_gask}s
      [ -z "$3" ] || _gx="takes $2 per job (spoold --limit)" ;;
    cpus) _gask="$_gcpus CPU" _gx="has $2"
      [ "$_gcpus" -eq 1 ] || _gask=${_gask}s ;;
    mem) _gask="$_gmem MiB of memory" _gx="has $2 MiB" ;;
    *) _gask="$_ggmem MiB of one GPU" _gx="has GPUs of $2 MiB" ;;
  esac
}

# _grefuse: no live host (_glive) can ever run this job: say why, as sbatch
# would (exit 2): each host's shortfall (gsub's _gshort), or the largest
# host's when all fall short of the same thing
_grefuse() {
  _gd1= _gmixed= _gbest= _glist=
  for _gbh in $_glive; do
    [ -z "$_ghostraw" ] || [ "$_gbh" = "$_ghostraw" ] || continue
    _gsum "$_gspool/state/hosts/$_gbh.yaml" || continue
    _gshort
    [ -n "$_gdim" ] || return 0   # (it fits after all: rewritten meanwhile)
    _gsays "$_gdim" "$_ghave" "$_gper"
    _glist="${_glist:+$_glist; }$_gbh: it asks for $_gask, $_gbh $_gx"
    [ -z "$_gd1" ] || [ "$_gd1" = "$_gdim" ] || _gmixed=1
    _gd1=$_gdim
    if [ -z "$_gbest" ] || [ "$_ghave" -gt "$_gbest" ]; then
      _gbest=$_ghave _gbesth=$_gbh _gbestp=$_gper
    fi
  done
  if [ -z "$_gd1" ]; then   # pinned to a host that is not live
    _gbad "no host can run this job: it is pinned to host $_ghostraw (--host), which runs no spoold now (live:$_glive)"
  elif [ -n "$_gmixed" ]; then
    _gbad "no host can run this job: $_glist"
  fi
  _gsays "$_gd1" "$_gbest" "$_gbestp"
  if [ -n "$_ghostraw" ]; then
    _gbad "no host can run this job: it asks for $_gask, host $_gbesth (--host) $_gx"
  fi
  _gbad "no host can run this job: it asks for $_gask, the largest host ($_gbesth) $_gx"
}

# ---------------------------------------------------------------- --wait
# _grecord FILE ID: the record's exit_code -> _gcode (1 when it has none).
# Only a regular file is read (never a link, a fifo or a folder).
_grecord() {
  _gcode= _greason=
  _gcode=1
  if [ -z "$1" ]; then
    printf 'gsub: job %s: refused (failed/%s.orig, no record yet)\n' "$2" "$2" >&2
    return
  elif [ ! -f "$1" ] || [ -L "$1" ]; then
    printf 'gsub: job %s: %s is not a regular file\n' "$2" "$1" >&2
    return
  fi
  _gcode=
  while IFS= read -r _gl || [ -n "$_gl" ]; do
    case $_gl in
      exit_code:*) _gcode=${_gl#exit_code:} ;;
      reason:*) _greason=$_gl ;;
    esac
  done < "$1"
  _gcode=${_gcode#"${_gcode%%[! ]*}"}
  _gcode=${_gcode%%[ #]*}
  case $_gcode in
    '' | *[!0-9]*)
      printf 'gsub: job %s: %s\n' "$2" "${_greason:-no exit code recorded}" >&2
      _gcode=1 ;;
    *) _gcode=${_gcode#"${_gcode%%[!0]*}"}
      [ -n "$_gcode" ] || _gcode=0
      [ ${#_gcode} -le 3 ] && [ "$_gcode" -le 255 ] || _gcode=1 ;;
  esac
}

# _gwaitall: block until jobs _gid.._glast have ended; exit with the first
# one's exit code that is not 0
_gwaitall() {
  _grc=0
  _gx=$_gid
  while [ "$_gx" -le "$_glast" ]; do
    while _gwhere "$_gx"; case $_gd in 'done' | failed | cancelled) false ;; esac; do
      sleep 0.1 || sleep 1
    done
    _grecord "$_gf" "$_gx"
    [ "$_grc" -ne 0 ] || _grc=$_gcode
    _gx=$((_gx + 1))
  done
  exit "$_grc"
}
