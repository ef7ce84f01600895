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
    (b"argv: [a]\nafter: [100000000]\n", "integers 1 to 99999999"),
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


def test_max_id_is_the_width_of_pending_names():
    assert jobmod.MAX_ID == 99_999_999 == int("9" * len("IIIIIIII"))
    assert jobmod.parse(b"argv: [a]\nid: 99999999\nafter: [99999999]\n").id == jobmod.MAX_ID


@pytest.mark.parametrize("field, bad, lo", [
    ("id", 100_000_000, 1), ("id", 0, 1),
    ("requeued_from", 100_000_000, 1), ("requeued_from", 0, 1),
    ("array_id", 0, 1), ("array_id", 100_000_000, 1),
    ("array_index", -1, 0), ("array_index", 100_000_000, 0),
    ("array_limit", 0, 1), ("array_limit", -3, 1),
])
def test_id_and_array_fields_out_of_range_are_refused_with_the_range(field, bad, lo):
    """array_limit: -3 used to keep its array pending for ever; ids wider than
    pending names used to be accepted."""
    with pytest.raises(jobmod.JobError) as e:
        jobmod.parse(f"argv: [a]\n{field}: {bad}\n".encode())
    assert str(e.value) == f"`{field}` must be between {lo} and 99999999, not {bad}"


@pytest.mark.parametrize("text, value", [("'0077'", 0o77), ("'022'", 0o22), ('"0002"', 0o2),
                                         ("'0777'", 0o777), ("'000'", 0)])
def test_umask_is_a_quoted_octal_string(text, value):
    job = jobmod.parse(f"argv: [a]\numask: {text}\n".encode())
    assert job.umask == value and isinstance(job.data["umask"], str)
    assert jobmod.parse(b"argv: [a]\n").umask is None


@pytest.mark.parametrize("text", ["0077", "22", "'22'", "'0088'", "'00777'", "'u=rwx'",
                                  "''", "' 022'", "'0o22'", "true"])
def test_umask_that_is_not_quoted_octal_is_refused_with_an_example(text):
    with pytest.raises(jobmod.JobError) as e:
        jobmod.parse(f"argv: [a]\numask: {text}\n".encode())
    assert "`umask` must be 3 or 4 octal digits in quotes, like umask: '0022'" in str(e.value)


def test_user_field_is_still_accepted_and_only_informational():
    """Old files carry `user:`; they still parse. It decides nothing (the file's
    owner does), so it is not a typed attribute of the job."""
    job = jobmod.parse(b"argv: [a]\nuser: root\n")
    assert job.data["user"] == "root" and not hasattr(job, "user")
