# gspool.sh - not a command: sourced (`.`) by gsub, gkill (and the tools that
# exec it) and gprio, which set _gme (their name) first.  The one sh copy of
# the spool rules they share:
#
# - how a tool complains (_gdie, _gbad, _gwarn: "TOOL: message" on stderr);
# - where its other files are (_glib);
# - which spool to use (_gspoolat: spoold.spool.default_spool's rule);
# - where job N is (_gwhere, _gfind: spoold.spool.Spool.find's rule, plus
#   pending/ names PPPP-IIIIIIII.yaml).
#
# tests/test_conformance.py runs these and the Python side on the same
# spools.  Plain POSIX sh, builtins only; every name starts with _g.

_gat=   # (never from the environment)

_gdie() { # exit status, message
  printf '%s: %s\n' "$_gme" "$2" >&2
  exit "$1"
}
_gbad() { # usage error (exit 2); _gat says where, in a script's #SBATCH lines
  printf '%s: %s%s\n' "$_gme" "${_gat-}" "$1" >&2
  exit 2
}
_gwarn() {
  printf '%s: %s\n' "$_gme" "$1" >&2
}

# _glib FILE: source FILE from beside the running tool ($0), else from PATH
# (how each tool found this file)
# (its own variable: a caller may be in the middle of a loop over _gl)
_glib() {
  case $0 in */*) _glibf=${0%/*}/$1 ;; *) _glibf=./$1 ;; esac
  [ -r "$_glibf" ] || _glibf=$1
  # shellcheck disable=SC1090
  . "$_glibf"
}

# _gpad NUMBER WIDTH -> _gz, zero-padded
_gpad() {
  _gz=$1
  while [ ${#_gz} -lt "$2" ]; do _gz=0$_gz; done
}

# _gspoolat FOLDER: the spool -> _gspool, absolute: --spool (already in
# _gspool), else $SPOOLD_SPOOL if not empty, else ~/.local/share/spoold; exit
# 1 unless it has FOLDER.  (The caller refuses an empty --spool.)
_gspoolat() {
  if [ -z "$_gspool" ]; then
    [ -n "${HOME-}" ] ||
      _gdie 1 "no spool: HOME is not set (pass --spool DIR or set SPOOLD_SPOOL)"
    _gspool=$HOME/.local/share/spoold
  fi
  case $_gspool in
    /*) ;;
    *) _gspool=${PWD:-.}/$_gspool ;;
  esac
  [ -d "$_gspool/$1" ] ||
    _gdie 1 "no spool at $_gspool (start spoold once, or pass --spool / set SPOOLD_SPOOL)"
}

# _gwhere ID: where job ID is, outside pending/ -> _gd (the folder, '' if
# none) and _gf (its record, '' if none): any entry ID.yaml or IIIIIIII.yaml
# in running/ done/ failed/ cancelled/, else failed/ID.orig (a refused file,
# _gf '').  The same rule as spoold.spool.Spool.find.
_gwhere() {
  _gpad "$1" 8
  for _gd in running 'done' failed cancelled; do
    for _gf in "$_gspool/$_gd/$1.yaml" "$_gspool/$_gd/$_gz.yaml"; do
      [ ! -e "$_gf" ] && [ ! -L "$_gf" ] || return 0
    done
  done
  _gd=failed _gf=
  [ ! -e "$_gspool/failed/$1.orig" ] && [ ! -L "$_gspool/failed/$1.orig" ] || return 0
  _gd=
}

# _gqueued ID: its entry in pending/ (PPPP-IIIIIIII.yaml, any priority) ->
# _gf; status 1 if there is none
_gqueued() {
  _gpad "$1" 8
  for _gf in "$_gspool"/pending/[0-9][0-9][0-9][0-9]-"$_gz".yaml; do
    [ ! -e "$_gf" ] && [ ! -L "$_gf" ] || return 0
  done
  return 1
}

# _gfind ID: where job ID is, pending/ included -> _gd (pending, running,
# done, failed, cancelled, or '' for no such job) and _gf (as _gwhere, or the
# pending/ entry).  The folders are looked at in the order a job moves
# through them, so a job moving on is never missed; pending/ is looked at
# once more when nothing was found (a job put back in the queue meanwhile).
_gfind() {
  _gd=pending
  _gqueued "$1" && return
  _gwhere "$1"
  [ -z "$_gd" ] || return 0
  _gd=pending
  _gqueued "$1" || _gd= _gf=
}
