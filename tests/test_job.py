"""Job record parsing: the checked-in examples keep parsing; bad input gets a reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from spoold import job as jobmod

EXAMPLES = sorted((Path(__file__).parent / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_parse(path):
    job = jobmod.parse(path.read_bytes())
    assert job.argv or job.cmd
    # A record the daemon rewrites parses again to the same thing.
    assert jobmod.parse(jobmod.dump(job.data)).data == job.data


@pytest.mark.parametrize("raw, reason", [
    (b"", "empty file"),
    (b"\xff\xfe", "not UTF-8"),
    (b"argv: [", "invalid YAML"),
    (b"- a\n- b\n", "must be a YAML mapping"),
    (b"gpus: 1\n", "exactly one of"),
    (b"argv: [a]\ncmd: b\n", "exactly one of"),
    (b"argv: []\n", "non-empty list"),
    (b"argv: [1, 2]\n", "non-empty list of strings"),
    (b"argv: [a]\ngpu: 2\n", "'gpu' (did you mean 'gpus'?)"),
    (b"argv: [a]\ngpus: -1\n", "between 0 and"),
    (b"argv: [a]\ngpus: 100000\n", "between 0 and"),
    (b"argv: [a]\ngpus: '2'\n", "must be a integer"),
    (b"argv: [a]\ngpus: true\n", "must be a integer"),
    (b"argv: [a]\npriority: 10000\n", "between 0 and 9999"),
    (b"argv: [a]\ntime_limit: -5\n", "positive"),
    (b"argv: [a]\nafter: [x]\n", "job ids"),
    (b"argv: [a]\nenv: {A: 1}\n", "map variable names to strings"),
    (b"argv: [a]\ncwd: relative\n", "absolute"),
    (b"!!python/object/apply:os.system [true]\n", "invalid YAML"),
    (b"argv: !!python/object/apply:os.system [true]\n", "invalid YAML"),
    (b"argv: [a]\ngpu_mem: 100\ngpus: 2\n", "gpus` must be 1"),
])
def test_bad_input_has_a_reason(raw, reason):
    with pytest.raises(jobmod.JobError, match=None) as e:
        jobmod.parse(raw)
    assert reason in str(e.value)


def test_alias_bomb_is_cheap_and_refused():
    lines = ["x-a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"x-a{i}: &a{i} [" + ", ".join([f"*a{i-1}"] * 10) + "]" for i in range(1, 9)]
    lines += ["argv: *a8"]
    with pytest.raises(jobmod.JobError):
        jobmod.parse("\n".join(lines).encode())


def test_x_fields_are_kept():
    job = jobmod.parse(b"argv: [a]\nx-note: {deep: [1, 2]}\n")
    assert job.data["x-note"] == {"deep": [1, 2]}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_parse_head_agrees_with_parse_on_queue_fields(path):
    raw = path.read_bytes()
    full, head = jobmod.parse(raw), jobmod.parse_head(raw)
    for field in ("gpus", "gpu_mem", "cpus", "mem", "time_limit", "after", "hold", "priority"):
        assert getattr(full, field) == getattr(head, field)


def test_parse_head_falls_back_when_fields_follow_env():
    raw = b"argv: [a]\nenv:\n  A: b\ngpus: 3\n"
    assert jobmod.parse_head(raw).gpus == 3
    assert jobmod.parse_head(b"argv: [a]\nenv:\n  A: b\n  gpus: '3'\n").gpus == 1
