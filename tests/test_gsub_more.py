"""gsub: --wait, quoting exhaustively, the shared spool and SLURM options."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from gsub_helpers import *  # noqa: F403 - the shared helpers and fixtures (spool, daemon)
from test_reliability import tiny_spool  # noqa: F401 - a fixture: a spool on a small tmpfs

from spoold import job as jobmod


# ---------------------------------------------------------------- --wait
@pytest.mark.parametrize("shell", SHELLS)
def test_wait_exit_code(spool, daemon, shell):
    daemon[1] = "name: x\nexit_code: 3\nreason: exited with 3\n"
    p = run(spool, "--wait", "false", shell=shell)
    assert p.returncode == 3
    assert p.stdout == b"1\n"
    assert (spool / "failed" / "1.yaml").exists()


def test_wait_success_and_padded_record(spool):
    def later():
        f = wait_for(lambda: [n for n in os.listdir(spool / "pending") if n.endswith(".yaml")])
        (spool / "done" / "00000001.yaml").write_text("id: 1\nexit_code: 0\n")
        os.unlink(spool / "pending" / f[0])

    t = threading.Thread(target=later)
    t.start()
    p = run(spool, "--wait", "true")
    t.join()
    assert p.returncode == 0 and p.stdout == b"1\n"


def test_wait_no_exit_code(spool, daemon):
    daemon[1] = "reason: the dependency 7 failed\n"
    p = run(spool, "--wait", "true")
    assert p.returncode == 1
    assert b"reason: the dependency 7 failed" in p.stderr


def test_wait_array_first_nonzero(spool, daemon):
    daemon.update({1: "exit_code: 0\n", 2: "exit_code: 5\n", 3: "exit_code: 2\n"})
    p = run(spool, "--wait", "--array", "1-3", "true")
    assert p.returncode == 5
    assert p.stdout == b"1\n2\n3\n"


def test_wait_all_zero(spool, daemon, tmp_path):
    daemon.update({1: "exit_code: 0\n", 2: "exit_code: 0\n"})
    f = tmp_path / "jobs"
    f.write_text("a\nb\n")
    p = run(spool, "--wait", "--file", str(f))
    assert p.returncode == 0 and p.stdout == b"1\n2\n"


# ---------------------------------------------------------------- quoting, exhaustively
def quoting_harness(tmp_path: Path) -> Path:
    """gsub's quoting functions alone (its _gq, and _gqx from gsub-quote.sh,
    loaded as gsub loads it), run over their arguments: one line out per
    argument, the YAML scalar or INVALID."""
    src = GSUB.read_text()
    head = src[:src.index("# " + "=" * 64 + " main")]
    h = tmp_path / "quote.sh"
    for lib in ("gspool.sh", "gsub-quote.sh"):  # sourced from beside the script
        shutil.copy(GSUB.parent / lib, tmp_path)
    h.write_text(head + 'for _ga; do if _gq "$_ga"; then printf "%s\\n" "$_gr"; '
                 "else echo INVALID; fi; done\n")
    return h


def check_quoting(shell: str, harness: Path, inputs: list[bytes]) -> None:
    for i in range(0, len(inputs), 5000):
        chunk = inputs[i:i + 5000]
        out = subprocess.run([shell, str(harness), *chunk], capture_output=True,
                             check=True).stdout.split(b"\n")
        assert len(out) == len(chunk) + 1
        expected, doc = [], []
        for raw, line in zip(chunk, out[:-1], strict=True):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                assert line == b"INVALID", raw
                continue
            assert line != b"INVALID", raw
            expected.append(text)
            doc.append(b"- " + line)
        assert (load_both(b"\n".join(doc)) or []) == expected


BOUNDARY = [0x01, 0x09, 0x0A, 0x0D, 0x1F, 0x22, 0x41, 0x5C, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0,
            0xA8, 0xA9, 0xBB, 0xBE, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE2, 0xED, 0xEF, 0xF0,
            0xF4, 0xF5, 0xFF]


@pytest.mark.parametrize("shell", SHELLS)
def test_quoting_every_two_byte_string(tmp_path, shell):
    """Validation and escapes agree with Python for every 1- and 2-byte string
    and for 3- and 4-byte strings of the bytes where UTF-8's rules change."""
    h = quoting_harness(tmp_path)
    inputs = [bytes([a]) for a in range(1, 256)]
    inputs += [bytes([a, b]) for a in range(1, 256) for b in range(1, 256)
               if a >= 0x80 or b >= 0x80 or a < 0x20 or b < 0x20 or (a + b) % 7 == 0]
    inputs += [bytes([a, b, c]) for a in BOUNDARY[8:] for b in BOUNDARY for c in BOUNDARY[6:]]
    inputs += [b"x" + bytes([a, b, c, d]) for a in BOUNDARY[18:] for b in BOUNDARY[8:19]
               for c in BOUNDARY[7:20] for d in (0x41, 0x80, 0xBF, 0xC2)]
    if shell != "dash":  # slower; dash is /bin/sh on Debian and Ubuntu
        inputs = inputs[::4]
    check_quoting(shell, h, inputs)


@pytest.mark.parametrize("shell", SHELLS)
def test_every_code_point_round_trips(spool, shell):
    """Every Unicode scalar value of the BMP (and a sample beyond) through argv."""
    cps = [c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF
           and (c < 0x10000 or c % 251 == 0)]
    chunks = ["".join(map(chr, cps[i:i + 4000])) for i in range(0, len(cps), 4000)]
    for i in range(0, len(chunks), 6):
        argv = chunks[i:i + 6]
        assert submit(spool, "--", *argv, shell=shell)[1]["argv"] == argv


@pytest.mark.parametrize("shell", SHELLS)
def test_long_strings(spool, shell):
    """Long arguments of every kind: right, and not walked one byte at a time."""
    cases = ["a" * 100000 + "\n" + "b", "\u00e9" * 20000, "\u4e2d" * 10000 + "\x01",
             "\u2019" * 10000, ("x" * 79 + "\n") * 300, '{"k": "v"}, ' * 300,
             "\u2028" * 200 + "z" * 5000]
    start = time.monotonic()
    _, job = submit(spool, "--", *cases, shell=shell)
    assert job["argv"] == cases
    assert time.monotonic() - start < 10


# ---------------------------------------------------------------- shared spool
@pytest.mark.parametrize("shell", SHELLS)
def test_shared_spool_takes_id_markers(shared_spool, shell):
    ids = shared_spool / "state" / "ids"
    (ids / "5").write_text("")
    os.mkfifo(ids / "6")  # never opened (it would block)
    (ids / "7").symlink_to("/dev/null")
    job_id, job = submit(shared_spool, "true", shell=shell)
    assert job_id == 8
    assert (ids / "8").is_file()
    # root's hint: this gsub runs as root, so it moves it on (a user's only reads it)
    assert (shared_spool / "state" / "next-id").read_text() == "9\n"
    assert not (shared_spool / "state" / "next-id.lock").exists()


def test_shared_spool_array_takes_consecutive_ids(shared_spool):
    ids = shared_spool / "state" / "ids"
    (ids / "7").write_text("")
    p = run(shared_spool, "--array", "1-3", "true")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [b"8", b"9", b"10"]
    assert sorted(int(n) for n in os.listdir(ids)) == [5, 6, 7, 8, 9, 10]  # 5, 6: burnt
    assert len(os.listdir(shared_spool / "pending")) == 3


def test_shared_spool_concurrent(shared_spool):
    procs = [subprocess.Popen(["dash", str(GSUB), "--spool", str(shared_spool), "true"],
                              stdout=subprocess.PIPE, env=base_env()) for _ in range(20)]
    got = sorted(int(p.communicate(timeout=30)[0]) for p in procs)
    assert len(set(got)) == 20 and got[0] >= 5
    assert len(os.listdir(shared_spool / "pending")) == 20


def test_shared_spool_garbage_hint(shared_spool):
    (shared_spool / "state" / "next-id").write_text("junk")
    (shared_spool / "done" / "30.yaml").write_text("id: 30\n")
    assert submit(shared_spool, "true")[0] == 31


def test_shared_spool_without_ids_folder(spool):
    (spool / "pending").chmod(0o1777)
    p = run(spool, "true")
    assert p.returncode == 1 and b"gsub: " in p.stderr
    assert os.listdir(spool / "pending") == []


def test_bash_exported_functions_and_options_do_not_interfere(spool):
    if "bash" not in SHELLS:
        pytest.skip("no bash")
    env = base_env(SHELLOPTS="errexit:nounset:braceexpand:hashall:interactive-comments")
    env["BASH_FUNC_mv%%"] = "() { echo hijacked; return 0; }"
    env["BASH_FUNC_printf%%"] = "() { echo hijacked; }"
    env["BASH_FUNC_mktemp%%"] = "() { echo /nonexistent/hijacked; }"
    env["BASH_FUNC_umask%%"] = "() { echo 0777; }"
    job_id, job = submit(spool, "-c", "a\tb", shell="bash", env=env)
    assert job["cmd"] == "a\tb" and job_id == 1
    assert job["umask"] == "0022"
    assert pending_file(spool, job_id).stat().st_mode & 0o777 == 0o600


# ---------------------------------------------------------------- SLURM options
SLURM_VALUES = ["gpu", "123", "null", "true", "1.5", ".x", "_x", "a|b&c", "x(y)[1]*2!z",
                "a,b:c+d-e", "x" * 200, "x" * 201, "", "-x", "+x", "*x", "(x)", "a b", "a'b",
                'a"b', "a=b", "a\nb", "a\tb", "caf\u00e9", "a/b", "a\\b", "a;b", "$x", "a%b"]


@pytest.mark.parametrize("shell", SHELLS)
def test_slurm_options_written_as_a_mapping(spool, shell):
    """--partition/--account/--qos/--constraint become `slurm:`; on the
    command line the last one wins; job.py takes the file as it is."""
    _, job = submit(spool, "-n", "0", "--partition", "p1", "--partition=spoold",
                    "--account=123", "--qos", "null", "--constraint", "a|b&(c*2)", "true",
                    shell=shell)
    assert job["slurm"] == {"partition": "spoold", "account": "123", "qos": "null",
                            "constraint": "a|b&(c*2)"}
    jobmod.parse(yaml.safe_dump(job).encode())
    _, job = submit(spool, "-n", "0", "--qos", "q", "true", shell=shell)
    assert job["slurm"] == {"qos": "q"}
    assert "slurm" not in submit(spool, "-n", "0", "true", shell=shell)[1]


@pytest.mark.parametrize("shell", SHELLS)
def test_slurm_options_refused_as_job_py_refuses_them(spool, shell):
    """gsub refuses exactly the values job.py's _SLURM_VALUE refuses (exit 2,
    nothing queued, the option named) and queues the others."""
    for value in SLURM_VALUES:
        ok = bool(jobmod._SLURM_VALUE.fullmatch(value))
        for opt in ("--partition", "--constraint"):
            p = run(spool, "-n", "0", opt, value, "true", shell=shell)
            if ok:
                assert p.returncode == 0, (value, p.stderr)
                job = load_both(pending_file(spool, int(p.stdout)).read_bytes())
                assert job["slurm"] == {opt[2:]: value}
            else:
                assert p.returncode == 2 and p.stderr.startswith(
                    f"gsub: {opt}: ".encode()), (value, p.stderr)
    assert sorted(os.listdir(spool / "pending")) and all(
        jobmod.parse((spool / "pending" / f).read_bytes()).data.get("slurm")
        for f in os.listdir(spool / "pending"))


def test_slurm_options_from_gsub_lines(spool, tmp_path):
    """#GSUB lines take them too; the command line wins."""
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\n#GSUB --partition=a\n#GSUB --qos q\necho hi\n")
    _, job = submit(spool, "-n", "0", "--partition", "b", str(script))
    assert job["slurm"] == {"partition": "b", "qos": "q"}
