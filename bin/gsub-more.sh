# gsub-more.sh - not a command: sourced by gsub (its _gmore) the first time
# one of its rare paths is taken.  gsub itself holds only what one plain job
# needs, because dash parses a script as it runs it; everything else is
# here, each rule once:
#
# - the usage text (--help);
# - the rare option values: durations, sizes, job ids, SLURM words;
# - quoting what is not printable ASCII (_gqx, with _ginit's bytes), and
#   the environment when export -p is not plain (_genvx, _genvmore);
# - --array and --file (_gmany, _gdelivermany), --wait (_gwaitall);
# - why no live host can run a job (_grefuse), the clock (_gbeatx),
#   counter recovery (_grecover), and each way a delivery can fail.
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
# ..., written as the `slurm:` mapping.  The rule is job.py's _SLURM_VALUE:
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
}

# ---------------------------------------------------------------- quoting
_gQ64='????????????????????????????????????????????????????????????????'  # _gcutbig's step

# Bytes for the slow path of _gq, built on first use (one fork): single
# bytes, the ranges made of them, and _gb0.._gb4: the bytes of 01-1F and
# 80-9F whose bit 0..4 is set.  (No range ends on 81-88, the bytes dash
# uses internally.)
_ginit() {
  _gtb=$(printf '%b|' \
    '\0001\0003\0005\0007\0011\0013\0015\0017\0021\0023\0025\0027\0031\0033\0035\0037\0201\0203\0205\0207\0211\0213\0215\0217\0221\0223\0225\0227\0231\0233\0235\0237' \
    '\0002\0003\0006\0007\0012\0013\0016\0017\0022\0023\0026\0027\0032\0033\0036\0037\0202\0203\0206\0207\0212\0213\0216\0217\0222\0223\0226\0227\0232\0233\0236\0237' \
    '\0004\0005\0006\0007\0014\0015\0016\0017\0024\0025\0026\0027\0034\0035\0036\0037\0204\0205\0206\0207\0214\0215\0216\0217\0224\0225\0226\0227\0234\0235\0236\0237' \
    '\0010\0011\0012\0013\0014\0015\0016\0017\0030\0031\0032\0033\0034\0035\0036\0037\0210\0211\0212\0213\0214\0215\0216\0217\0230\0231\0232\0233\0234\0235\0236\0237' \
    '\0020\0021\0022\0023\0024\0025\0026\0027\0030\0031\0032\0033\0034\0035\0036\0037\0220\0221\0222\0223\0224\0225\0226\0227\0230\0231\0232\0233\0234\0235\0236\0237' \
    '\0001|\0037|\0177|\0200|\0217|\0220|\0237|\0240|\0277|\0300|\0301|\0302|\0337|\0340|\0357|\0360|\0364|\0365|\0377|\0342|\0250|\0251|\0355|\0273|\0276|\0011|\0015')
  set -f; IFS='|'
  # shellcheck disable=SC2086
  set -- $_gtb
  IFS=$_gifs; set +f
  _gb0=$1 _gb1=$2 _gb2=$3 _gb3=$4 _gb4=$5
  shift 5
  _g01=$1 _g1F=$2 _gdel=$3 _g80=$4 _g8F=$5 _g90=$6 _g9F=$7 _gA0=$8 _gBF=$9
  shift 9
  _gC0=$1 _gC1=$2 _gC2=$3 _gDF=$4 _gE0=$5 _gEF=$6 _gF0=$7 _gF4=$8 _gF5=$9
  shift 9
  _gFF=$1 _gE2=$2 _gA8=$3 _gA9=$4 _gED=$5 _gBB=$6 _gBE=$7 _gtab=$8 _gcr=$9
  _gCTL=$_g01-$_g1F _gCT=$_g80-$_gBF _gHI=$_g80-$_gFF _gBADB=$_gC0$_gC1$_gF5-$_gFF
  _gLEAD=$_gC2-$_gF4 _gL34=$_gE0-$_gF4 _gL4=$_gF0-$_gF4 _gL2=$_gC2-$_gDF _gL3=$_gE0-$_gEF
  _g809F=$_g80-$_g9F _gA0BF=$_gA0-$_gBF _g808F=$_g80-$_g8F _g90BF=$_g90-$_gBF
  _gSTOP=$_gCTL$_gdel
}

# _glow5 STRING: the low 5 bits of its first byte (01-1F or 80-9F) -> _gv
_glow5() {
  _gv=0
  case $1 in [$_gb0]*) _gv=1 ;; esac
  case $1 in [$_gb1]*) _gv=$((_gv + 2)) ;; esac
  case $1 in [$_gb2]*) _gv=$((_gv + 4)) ;; esac
  case $1 in [$_gb3]*) _gv=$((_gv + 8)) ;; esac
  case $1 in [$_gb4]*) _gv=$((_gv + 16)) ;; esac
}

# _ghex N (0..255) -> _gh, two upper-case hex digits
_ghex() {
  _gh=
  for _gd in $(($1 / 16)) $(($1 % 16)); do
    case $_gd in
      10) _gd=A ;; 11) _gd=B ;; 12) _gd=C ;; 13) _gd=D ;; 14) _gd=E ;; 15) _gd=F ;;
    esac
    _gh=$_gh$_gd
  done
}

# _gcutbig N: drop the first N bytes of _gs rounded down to 256 bytes (one
# copy of the rest per 256 bytes).  The caller drops the rest with a
# literal `${_gs#"$piece"}`, which costs time quadratic in the piece's length.
_gcutbig() {
  _gqi=$1
  while [ "$_gqi" -ge 256 ]; do _gs=${_gs#$_gQ64$_gQ64$_gQ64$_gQ64}; _gqi=$((_gqi - 256)); done
}

# _gstop: the longest prefix of _gs without a character to escape -> _gp
_gstop() {
  _gp=${_gs%%[\"\\$_gSTOP]*}
  if [ -n "$_gm" ]; then
    _gp=${_gp%%"$_gC2"[$_g809F]*}
    _gp=${_gp%%"$_gE2$_g80"[$_gA8$_gA9]*}
    _gp=${_gp%%"$_gEF$_gBB$_gBF"*}
    _gp=${_gp%%"$_gEF$_gBF"[$_gBE$_gBF]*}
  fi
}

# _gq STRING: STRING as a YAML double-quoted scalar -> _gr.  Fails (status 1)
# when STRING is not valid UTF-8.
# - Safe printable ASCII (the common case): one `case`.
# - Otherwise, if there are bytes >= 0x80, UTF-8 validity is checked by a
#   few patterns, each one linear scan: no byte C0 C1 F5-FF; no continuation
#   byte that no lead byte accounts for; every lead byte followed by as many
#   continuation bytes as it announces; no overlong forms or surrogates.
# - Then one pass copies the runs between characters that need an escape
#   in one piece each, finding them with `%%` (linear scans; no walk over
#   the string one character at a time).
_gqx() {
  [ -n "$_gCT" ] || _ginit
  case $1 in
    *[$_gHI]*)
      case $1 in
        [$_gCT]* | *[!$_gHI][$_gCT]* | *[$_gBADB]* | \
        *[$_gLEAD] | *[$_gLEAD][!$_gCT]* | \
        *[$_gL34][$_gCT] | *[$_gL34][$_gCT][!$_gCT]* | \
        *[$_gL4][$_gCT][$_gCT] | *[$_gL4][$_gCT][$_gCT][!$_gCT]* | \
        *[$_gL2][$_gCT][$_gCT]* | *[$_gL3][$_gCT][$_gCT][$_gCT]* | \
        *[$_gL4][$_gCT][$_gCT][$_gCT][$_gCT]* | \
        *"$_gE0"[$_g809F]* | *"$_gED"[$_gA0BF]* | *"$_gF0"[$_g808F]* | *"$_gF4"[$_g90BF]*)
          return 1 ;;
      esac ;;
  esac
  # _gm: some of the characters escaped as \xNN or \uNNNN occur
  _gm=
  case $1 in
    *"$_gC2"[$_g809F]* | *"$_gE2$_g80"[$_gA8$_gA9]* | *"$_gEF$_gBB$_gBF"* | \
    *"$_gEF$_gBF"[$_gBE$_gBF]*) _gm=1 ;;
  esac
  _gs=$1 _gr=\"
  while :; do
    # _gp: the run up to the next character that needs an escape
    _gstop
    _grun=$_gp
    if [ -n "$_gp" ]; then
      [ ${#_gp} -lt ${#_gs} ] || break
      if [ ${#_gp} -ge 256 ]; then
        _gcutbig ${#_gp}
        _gstop
      fi
      _gs=${_gs#"$_gp"}
    fi
    _gqn=1
    case $_gs in
      \"*) _gqe='\"' ;;
      \\*) _gqe='\\' ;;
      "$_gnl"*) _gqe='\n' ;;
      "$_gtab"*) _gqe='\t' ;;
      "$_gcr"*) _gqe='\r' ;;
      "$_gdel"*) _gqe='\x7F' ;;
      [$_gCTL]*) _glow5 "$_gs"; _ghex "$_gv"; _gqe=\\x$_gh ;;
      "$_gC2"[$_g809F]*) # C1 control U+0080..U+009F
        _glow5 "${_gs#?}"; _ghex $((_gv + 128)); _gqe=\\x$_gh; _gqn=2 ;;
      "$_gE2$_g80$_gA8"*) _gqe='\u2028'; _gqn=3 ;;
      "$_gE2$_g80$_gA9"*) _gqe='\u2029'; _gqn=3 ;;
      "$_gEF$_gBB$_gBF"*) _gqe='\uFEFF'; _gqn=3 ;;
      "$_gEF$_gBF$_gBE"*) _gqe='\uFFFE'; _gqn=3 ;;
      "$_gEF$_gBF$_gBF"*) _gqe='\uFFFF'; _gqn=3 ;;
      '') break ;;
      *) return 1 ;;   # can not happen: _gstop stops only at the above
    esac
    _gr=$_gr$_grun$_gqe
    case $_gqn in
      1) _gs=${_gs#?} ;;
      2) _gs=${_gs#??} ;;
      *) _gs=${_gs#???} ;;
    esac
  done
  _gr=$_gr$_gs\"
}

# ---------------------------------------------------------------- environment
# _genvx: the environment (gsub's _genv) when export -p is not plain: under
# bash, or with empty lines in export -p (values ending in newlines).
_genvx() {
  if [ -n "${BASH_VERSION-}" ] && command -v compgen > /dev/null 2>&1; then
    # bash's export -p quotes with $'...', so ask it for the names alone
    # shellcheck disable=SC3044
    _gt=$(umask; compgen -e)
    _gumaskline
    set -f; IFS=$_gnl
    # shellcheck disable=SC2086
    set -- $_gt
    IFS=$_gifs; set +f
    for _gek; do
      case $_gek in _g* | _ | '' | [0-9]* | *[!A-Za-z0-9_]* | $_gnoenv) continue ;; esac
      eval "_gv=\${$_gek+x}"
      [ -n "$_gv" ] || continue
      eval "_gv=\${$_gek}"
      if [ "$_gek" = LC_ALL ]; then
        [ -n "$_glcset" ] || continue
        _gv=$_glc
      fi
      _genvadd
    done
    return
  fi
  [ -n "${BASH_VERSION-}" ] && { _gt=$(umask; export -p); _gumaskline; }
  # dash and its kin: export NAME='value' lines; a value's newlines are
  # printed as they are, so a NAME with N newlines in its value takes N
  # more lines.  Field splitting would drop empty lines: split by hand.
  set -f
  set --
  _gs=$_gt
  while :; do
    _gp=${_gs%%"$_gnl"*}
    set -- "$@" "$_gp"
    [ ${#_gp} -lt ${#_gs} ] || break
    if [ ${#_gp} -ge 256 ]; then
      _gcutbig ${#_gp}
      _gp=${_gs%%"$_gnl"*}
    fi
    _gs=${_gs#"$_gp"?}
  done
  set +f
  for _gl; do _genvmore; done
}

# _gumaskline: the first line of _gt, umask's output, -> _gumask; drop it
_gumaskline() {
  _gumask=${_gt%%"$_gnl"*}
  case $_gt in *"$_gnl"*) _gt=${_gt#*"$_gnl"} ;; *) _gt= ;; esac
  case $_gumask in
    [0-7][0-7][0-7]) _gumask=0$_gumask ;;
    0[0-7][0-7][0-7]) ;;
    *) _gumask= ;;
  esac
}

# _genvmore: one line _gl of dash's export -p that gsub's _genv did not take
# as plain: a line of a value that spans lines (_gskip more to skip), of a
# quoted value being followed (_gst), an unset or odd name, a name of ours,
# LC_ALL (the submitter's, not gsub's C), a value to quote with _gq.  Names
# starting _g (ours, changed since) and names that are not identifiers are
# skipped by following the quotes instead.
_genvmore() {
  case $_gskip in 0) ;; *) _gskip=$((_gskip - 1)); return ;; esac
  case $_gst in '') ;; *) _grest=$_gl; _gquote; return ;; esac
  case $_gl in export\ ?*=*) ;; *) return ;; esac
  _gek=${_gl#export }
  _gek=${_gek%%=*}
  case $_gek in
    _g* | [0-9]* | *[!A-Za-z0-9_]*) _grest=${_gl#*=}; _gst=o; _gquote; return ;;
  esac
  eval "_gv=\${$_gek}"
  case $_gv in
    *"$_gnl"*)
      case $_gl in
        "export $_gek=\$'"*) ;;
        *) _gs=$_gv
          while :; do
            _gp=${_gs%%"$_gnl"*}
            [ ${#_gp} -lt ${#_gs} ] || break
            if [ ${#_gp} -ge 256 ]; then
              _gcutbig ${#_gp}
              _gp=${_gs%%"$_gnl"*}
            fi
            _gs=${_gs#"$_gp"?}
            _gskip=$((_gskip + 1))
          done ;;
      esac ;;
  esac
  case $_gek in
    _ | $_gnoenv) return ;;
    LC_ALL) [ -n "$_glcset" ] || return; _gv=$_glc ;;
  esac
  _genvadd
}
# follow sh quoting ('...', "...", \c) through _grest; _gst: o (outside),
# s (in '...'), d (in "..."), '' when the value ended on this line
_gquote() {
  while :; do
    case $_gst in
      o) case $_grest in
           \'*) _grest=${_grest#?}; _gst=s ;;
           \"*) _grest=${_grest#?}; _gst=d ;;
           \\?*) _grest=${_grest#??} ;;
           *) _gst=; return ;;
         esac ;;
      s) case $_grest in *\'*) _grest=${_grest#*\'}; _gst=o ;; *) return ;; esac ;;
      *) case $_grest in *\"*) _grest=${_grest#*\"}; _gst=o ;; *) return ;; esac ;;
    esac
  done
}

_genvadd() {
  if _gq "$_gv"; then
    _genvy="$_genvy  \"$_gek\": $_gr$_gnl"
  else
    printf 'gsub: warning: environment variable %s is not valid UTF-8 text; not recorded\n' \
      "$_gek" >&2
  fi
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
