# gsub-quote.sh - not a command: sourced by gsub (its _gquotes) the first
# time a string or the environment needs more than its plain path (bin/gsub
# holds only what one plain job needs, because dash parses a script as it
# runs it; bin/gsub-more.sh holds its other rare paths):
#
# - quoting what is not printable ASCII (_gqx, with _ginit's bytes);
# - the environment when export -p is not plain (_genvx, _genvmore).
#
# Plain POSIX sh, builtins only (bar the programs named); every name starts
# with _g, and the variables are gsub's (bin/gsub documents them).

# Patterns built from variables are meant to match as patterns; `a= b=` sets
# two empty vars; the ^ in [!...^-~] is a range start, not a negation.
# shellcheck disable=SC2016,SC2295,SC1003,SC1007,SC3026,SC1001,SC2015,SC2154

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
