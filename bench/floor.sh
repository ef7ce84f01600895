#!/bin/sh
# floor.sh SPOOL COMMAND [ARG...]: the durable floor of a sh submit (issue 13),
# timed by bench/scenarios/submit.py against gsub. The least a POSIX-sh submitter
# can do and still have the job on disk when it prints the id: read the id hint
# with `read`; take an id by creating state/ids/N under `set -C` (O_EXCL) with the
# builtin `true` (no flock program); write the job and `export -p` into pending/
# in one redirection (O_EXCL too); one `sync` program for the file and pending/.
# Not a job a daemon would take (the environment is export -p's text), and no
# daemon ever runs on its folder. SPOOL must have state/ids/ and pending/.
cd -- "$1" && [ -d state/ids ] && shift || exit 2
read -r n < state/next-id || n=1
set -C
until true 2> /dev/null > "state/ids/$n"; do n=$((n + 1)); done
echo $((n + 1)) >| state/next-id
p=0000000$n
f=pending/0010-${p#"${p%????????}"}.yaml
{ printf 'argv: [%s]\ngpus: 0\n' "$*"; export -p; } > "$f"
sync -- "$f" pending/ && echo "$n"
