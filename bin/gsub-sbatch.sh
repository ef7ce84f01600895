# gsub-sbatch.sh - not a command: sourced by gsub when its command is a
# readable file whose first byte is #.  Owns SLURM batch scripts: a file with
# #SBATCH or #GSUB lines before its first command runs unchanged, as sbatch
# would run it (docs/spool-format.md, WRITING A JOB).
#
# - Directives: lines that start with #SBATCH or #GSUB (then a blank) before
#   the first line that is neither blank nor a comment, as sbatch reads them:
#   words split at blanks, '...' and "..." quote, \ escapes, an unquoted #
#   ends the line.  #SBATCH words are SLURM's options (the ones spoold has a
#   meaning for; the others get a warning), #GSUB words gsub's own.  They come
#   after the command line and never change what it set (gsub's _gcli).
# - Snapshot: the job is the script's text at submission, run by the
#   interpreter of its #! line (as the kernel reads it: a path and at most
#   one argument), /bin/sh without one:
#     argv: [INTERPRETER, (ITS ARGUMENT,) -c, TEXT, SCRIPT, ARG...]  (shells)
#     argv: [INTERPRETER, (ITS ARGUMENT,) -c, TEXT, ARG...]          (python)
#   so $0 is the script's name and $1... its arguments.  Plain argv: the
#   SLURM executor (spoold.slurm) passes it through byte for byte.
# - The job's environment gets what SLURM would set about the job
#   (SLURM_JOB_ID, SLURM_JOB_NAME, SLURM_SUBMIT_DIR, SLURM_CPUS_PER_TASK,
#   SLURM_ARRAY_*) instead of the submitter's own SLURM_* variables; -o's
#   SLURM file name patterns %j %x %A %a %u %% are filled in for each job.
#
# A file without directives is left alone (status 1): it runs as a program,
# read when it starts.  Plain POSIX sh, builtins only (`id -un` for %u);
# every name starts with _g.

_guser= _gpatw=   # (never from the environment: %u is the uid's name)

# _gscript SCRIPT [ARG...]: apply SCRIPT's directives; make the job run its
# text (_gcl, name, _gsb=1).  Status 1, nothing done, if it has none.
_gscript() {
  [ -n "$_gCT" ] || _ginit
  _gsf=$1 _gtq= _glen=0 _gln=0 _ghead=1 _gdirs=0 _gfirst=
  while IFS= read -r _gl; _gst=$?; [ "$_gst" -eq 0 ] || [ -n "$_gl" ]; do
    _gln=$((_gln + 1))
    [ "$_gln" -gt 1 ] || _gfirst=$_gl
    case $_gl in
      *"$_gcr") _gbad "$_gsf: line $_gln ends with a DOS line break (\\r\\n): convert the script first (dos2unix), as sbatch asks" ;;
    esac
    if [ -n "$_ghead" ]; then
      _gat="$_gsf:$_gln: "
      case $_gl in
        '#SBATCH' | '#SBATCH'[" $_gtab"]*)
          _gdirs=$((_gdirs + 1)) _gdir=sbatch
          _gdirective "${_gl#'#SBATCH'}" ;;
        '#GSUB' | '#GSUB'[" $_gtab"]*)
          _gdirs=$((_gdirs + 1)) _gdir=gsub
          _gdirective "${_gl#'#GSUB'}" ;;
        *) _gx=${_gl#"${_gl%%[! $_gtab]*}"}
          case $_gx in
            '' | '#'*) ;;
            *) _ghead= ;;
          esac ;;
      esac
      _gat= _gdir=
      [ -n "$_ghead" ] || [ "$_gdirs" -gt 0 ] || return 1
    fi
    # The text, quoted a line at a time (_gq's time grows faster than the
    # length of what it quotes) -> _gtq, a YAML double-quoted scalar's inside
    _gq "$_gl" || _gbad "$_gsf: line $_gln is not valid UTF-8 text"
    _gr=${_gr#\"}
    _gtq=$_gtq${_gr%\"}
    [ "$_gst" -ne 0 ] || _gtq=$_gtq\\n
    # one argv string: Linux takes at most 128 KiB (MAX_ARG_STRLEN)
    _glen=$((_glen + ${#_gl} + 1))
    [ "$_glen" -le 131072 ] || _gbad "$_gsf: over 128 KiB: too long to save in a job"
  done < "$_gsf"
  [ "$_gdirs" -gt 0 ] || return 1
  shift
  _gargv "$@"
  [ -n "$_gname" ] || { _gdefname "$_gsf"; _gname=$_gr _gnraw=$_gx; }
  _gsb=1 _gnoenv='SLURM_*'
}

# _gargv ARG...: the job's argv -> _gcl: the interpreter of the #! line of
# _gfirst, the text, the script's name (shells), the arguments
_gargv() {
  _gx=
  case $_gfirst in '#!'*) _gx=${_gfirst#??} ;; esac
  _gx=${_gx#"${_gx%%[! $_gtab]*}"}
  _gint=${_gx%%[ $_gtab]*}
  _garg=${_gx#"$_gint"}
  _garg=${_garg#"${_garg%%[! $_gtab]*}"}
  _garg=${_garg%"${_garg##*[! $_gtab]}"}
  [ -n "$_gint" ] || _gint=/bin/sh
  _gkind=${_gint##*/}
  if [ "$_gkind" = env ]; then
    set -f
    # shellcheck disable=SC2086  # split: env -S's words
    _genvword $_garg
    set +f
  fi
  _gt=\"$_gtq\"
  _gq "$_gsf" || _gbad "$_gsf: its name is not valid UTF-8 text"
  case $_gkind in
    sh | bash | dash | zsh | ksh | ksh93 | mksh | ash | yash | posh) _gt="$_gt, $_gr" ;;
    python | python[0-9]* | pypy*) ;;
    *) _gbad "$_gsf: #! names '$_gkind': gsub runs the text of sh, bash, zsh, ksh and python scripts (run another with gsub $_gkind $_gsf)" ;;
  esac
  _gx=0
  for _ga; do
    _gx=$((_gx + 1))
    _gq "$_ga" || _gbad "argument $_gx is not valid UTF-8 text"
    _gt="$_gt, $_gr"
  done
  _gq "$_gint" || _gbad "$_gsf: its #! line is not valid UTF-8 text"
  _gx=$_gr
  if [ -n "$_garg" ]; then
    _gq "$_garg" || _gbad "$_gsf: its #! line is not valid UTF-8 text"
    _gx="$_gx, $_gr"
  fi
  _gcl="argv: [$_gx, \"-c\", $_gt]$_gnl"
}

# _genvword WORD...: the program `#!/usr/bin/env [-S] [OPTION...] PROGRAM`
# runs -> _gkind (its base name)
_genvword() {
  for _gx; do
    case $_gx in -*) ;; *) _gkind=${_gx##*/}; return ;; esac
  done
}

# _gdirective TEXT: one directive's words (_gwords), applied: #GSUB as gsub's
# options, #SBATCH as SLURM's (_gdir says which)
_gdirective() {
  _gwords "$1"
  set -f; IFS=$_gnl
  # shellcheck disable=SC2086
  set -- $_gws
  IFS=$_gifs; set +f
  if [ "$_gdir" = gsub ]; then
    _gopts "$@"
    [ "$_gused" -eq $# ] || { shift "$_gused"; _gbad "#GSUB: not an option: '$1'"; }
  else
    _gslurm=1
    _gsbatch "$@"
    _gslurm=
  fi
}

# _gwords TEXT: TEXT split as sbatch splits a directive -> _gws, one word a
# line: blanks separate words, '...' and "..." quote, \ takes the next
# character as it is, an unquoted # starts a comment
_gwords() {
  _gws= _gs=$1 _gw= _gin= _gqc=
  while [ -n "$_gs" ]; do
    _gc=${_gs%"${_gs#?}"} _gs=${_gs#?}
    if [ "$_gc" = \\ ]; then
      _gc=${_gs%"${_gs#?}"} _gs=${_gs#?}
    elif [ -n "$_gqc" ]; then
      [ "$_gc" != "$_gqc" ] || { _gqc=; continue; }
    else
      case $_gc in
        \" | \') _gqc=$_gc _gin=1; continue ;;
        ' ' | "$_gtab") [ -z "$_gin" ] || _gws=$_gws$_gw$_gnl; _gw= _gin=; continue ;;
        \#) break ;;
      esac
    fi
    _gw=$_gw$_gc _gin=1
  done
  [ -z "$_gin" ] || _gws=$_gws$_gw$_gnl
}

# _gsbatch WORD...: one #SBATCH line's options, as gsub's (_gopt); an option
# spoold has no meaning for gets a warning, and so does its value
_gsbatch() {
  while [ $# -gt 0 ]; do
    _go=$1 _gv= _ghasv=
    case $_go in
      --?*=*) _gv=${_go#*=}; _go=${_go%%=*}; _ghasv=1 ;;
      -[JtGcadoD]?*) _gv=${_go#-?}; _go=${_go%%"$_gv"}; _ghasv=1 ;;
    esac
    case $_go in
      -J | --job-name) _gt=--name ;;
      -t | --time) _gt=--time ;;
      -G | --gpus | --gpus-per-node | --gres) _gt=--gpus ;;
      -c | --cpus-per-task) _gt=--cpus ;;
      --mem) _gt=--mem ;;
      -a | --array) _gt=--array ;;
      -d | --dependency) _gt=--after ;;
      -o | --output) _gt=--output ;;
      -D | --chdir) _gt=--chdir ;;
      -H | --hold) _gt=--hold ;;
      *) _gt= ;;
    esac
    if [ -z "$_gt" ]; then
      _gx=$1
      if [ -z "$_ghasv" ] && [ $# -ge 2 ]; then
        case $2 in -*) ;; *) _gx="$1 $2"; shift ;; esac
      fi
      _gwarn "$_gat#SBATCH $_gx: not an option spoold takes; ignored"
      shift
      continue
    fi
    if [ "$_gt" = --hold ]; then
      [ -z "$_ghasv" ] || _gbad "$_go takes no value"
    elif [ -z "$_ghasv" ]; then
      [ $# -ge 2 ] || _gbad "$_go needs a value"
      _gv=$2
      shift
    fi
    case $_go in
      --gres) _ggres "$_gv" ;;
      -G | --gpus | --gpus-per-node) _gcount "$_gv" ;;
      -d | --dependency) _gafterok "$_gv" ;;
      --mem) [ "$_gv" != 0 ] || {
          _gwarn "$_gat#SBATCH --mem=0 (all of a node's memory): not a size spoold takes; ignored"
          _gt=; } ;;
    esac
    [ -z "$_gt" ] || { _go=$_gt; _gopt; }
    shift
  done
}

# _ggres LIST: the GPUs of --gres=gpu[:TYPE][:N][,...] -> _gv; any other
# resource gets a warning; _gt='' when it names no GPUs
_ggres() {
  _gs=$1, _gv=
  while [ -n "$_gs" ]; do
    _gx=${_gs%%,*} _gs=${_gs#*,}
    case $_gx in
      gpu) _gv=1 ;;
      gpu:*) _gcount "${_gx#gpu:}" ;;
      *) _gwarn "$_gat#SBATCH --gres=$_gx: spoold has only GPUs; ignored" ;;
    esac
  done
  [ -n "$_gv" ] || _gt=
}

# _gcount [TYPE:]N: a GPU count -> _gv; a type (all of spoold's GPUs are
# one kind) gets a warning, and a type alone is one GPU
_gcount() {
  _gv=${1##*:}
  case $1 in
    *:*) ;;
    *[!0-9]*) _gv=1 ;;
    *) return ;;
  esac
  _gwarn "$_gat#SBATCH: GPU type '${1%:*}' ignored: spoold does not tell GPUs apart"
}

# _gafterok SPEC: afterok:ID[:ID...][,afterok:...] -> _gv, ID,ID...  Any
# other kind of dependency is refused: ignoring it would start the job early.
_gafterok() {
  _gs=$1, _gv=
  while [ -n "$_gs" ]; do
    _gx=${_gs%%,*} _gs=${_gs#*,}
    case $_gx in
      afterok:?*) _gx=${_gx#afterok:} ;;
      *) _gbad "--dependency: spoold has afterok:ID[:ID...] only: '$1'" ;;
    esac
    while :; do
      case $_gx in *:*) _gx=${_gx%%:*},${_gx#*:} ;; *) break ;; esac
    done
    _gv=${_gv:+$_gv,}$_gx
  done
}

# _gperjob ID INDEX: what differs between the jobs of a batch script ->
# _gjx (the log: line, when -o has patterns) and _gje (SLURM's variables,
# the last lines of env:)
_gperjob() {
  _gje="  \"SLURM_JOB_ID\": \"$1\"$_gnl  \"SLURM_JOB_NAME\": $_gname$_gnl"
  _gq "$_gsubmit" && _gje="$_gje  \"SLURM_SUBMIT_DIR\": $_gr$_gnl"
  [ -z "$_gcpus" ] || _gje="$_gje  \"SLURM_CPUS_PER_TASK\": \"$_gcpus\"$_gnl"
  if [ -n "$_garr" ]; then
    _gje="$_gje  \"SLURM_ARRAY_JOB_ID\": \"$_gid\"$_gnl  \"SLURM_ARRAY_TASK_ID\": \"$2\"$_gnl"
    _gje="$_gje  \"SLURM_ARRAY_TASK_MIN\": \"$_garrlo\"$_gnl  \"SLURM_ARRAY_TASK_MAX\": \"$_garrhi\"$_gnl"
    _gje="$_gje  \"SLURM_ARRAY_TASK_COUNT\": \"$_gk\"$_gnl"
  fi
  [ -n "$_glogpat" ] || return 0
  _gpat "$_glog" "$1" "$2"
  _gq "$_gr" || _gr=\"$_glog\"   # (can not happen: only ids and names go in)
  _gjx="log: $_gr$_gnl"
}

# _gpat TEMPLATE ID INDEX: SLURM's file name pattern filled in -> _gr: %j
# the job id, %A the array's first id (else the id), %a the index, %x the
# name, %u the user, %% a %.  Others stay as they are, with one warning.
_gpat() {
  _gs=$1 _gr=
  while :; do
    case $_gs in *%*) ;; *) break ;; esac
    _gr=$_gr${_gs%%\%*} _gs=${_gs#*\%}
    case $_gs in
      %*) _gr=$_gr% ;;
      j*) _gr=$_gr$2 ;;
      A*) if [ -n "$_garr" ]; then _gr=$_gr$_gid; else _gr=$_gr$2; fi ;;
      a*) _gr=$_gr${3:-0} ;;
      x*) _gr=$_gr$_gnraw ;;
      u*) [ -n "$_guser" ] || _guser=$(id -un)
        _gr=$_gr$_guser ;;
      *) _gr=$_gr%
        [ -n "$_gpatw" ] || _gwarn "-o: only %j %x %A %a %u %% are filled in: '$1'"
        _gpatw=1
        continue ;;
    esac
    _gs=${_gs#?}
  done
  _gr=$_gr$_gs
}
