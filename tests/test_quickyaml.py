"""The fast record emitter reads back as what it was given, in PyYAML's layout."""

import math

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from spoold import job as jobmod
from spoold.quickyaml import emit, load

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=False) | st.text(max_size=40)
           | st.sampled_from(["yes", "No", "null", "~", "true", "1e3", "0x1f", "1:30", "-",
                              "a: b", "a #b", " x", "x ", "2026-11-30", ".inf", "=", "<<",
                              "@x", "*a", "&a", "!x", "%x", "[x]", "{x}", "'q'", '"q"', "",
                              "é", "\x85", "\u2028", "\ud800", "\ufeff", "a\nb", "tab\tx"]))
keys = st.text(max_size=12) | st.sampled_from(["id", "env", "y", "on", "1", ""])
records = st.recursive(
    st.dictionaries(keys, scalars, max_size=6),
    lambda inner: st.dictionaries(keys, inner | st.lists(scalars, max_size=70)
                                  | st.lists(st.dictionaries(keys, scalars, min_size=1,
                                                             max_size=3), max_size=3),
                                  max_size=6),
    max_leaves=40)


@settings(max_examples=400, deadline=None)
@given(records)
def test_what_is_emitted_loads_back_equal(rec):
    text = emit(rec)
    assert text is not None
    assert yaml.safe_load(text) == rec


def test_layout_is_pyyamls_for_a_typical_record():
    rec = {"id": 12, "argv": ["python", "train.py", "--lr", "0.1"], "name": "train",
           "gpus": 2, "priority": 10, "cwd": "/home/ann/work dir", "time_limit": 3600.0,
           "env": {"HOME": "/home/ann", "PS1": "\\u@\\h: ", "EMPTY": "", "N": "007"},
           "assigned_gpus": [0, 3], "usage": {"cpu_s": 1.5, "max_rss_mib": 12},
           "reason": "killed: time limit 1h reached", "exit_code": None, "hold": False,
           "jobs": [{"id": 1, "gpus": [0]}, {"id": 2, "gpus": []}], "started_at": 1.8e9}
    ours = emit(rec)
    theirs = yaml.dump(rec, Dumper=jobmod._RecordDumper, sort_keys=False, allow_unicode=True,
                       width=10**9, default_flow_style=False)
    assert yaml.safe_load(ours) == yaml.safe_load(theirs) == rec
    assert ours.startswith("id: 12\nargv: [python, train.py, ")  # flow style, as PyYAML
    assert "reason: 'killed: time limit 1h reached'\n" in ours  # as sh tools read it
    assert "assigned_gpus: [0, 3]\n" in ours and "exit_code: null\n" in ours


def test_outside_the_dialect_falls_back_to_pyyaml():
    odd = {"id": 1, 3: "int key", "nested": [[1, 2]]}
    assert emit(odd) is None
    assert yaml.safe_load(jobmod.dump(odd)) == odd


def test_special_floats():
    text = emit({"a": math.inf, "b": -math.inf, "c": 1e20, "d": float("nan")})
    back = yaml.safe_load(text)
    assert back["a"] == math.inf and back["b"] == -math.inf and back["c"] == 1e20
    assert math.isnan(back["d"])


@settings(max_examples=400, deadline=None)
@given(records)
def test_what_load_reads_is_what_pyyaml_reads(rec):
    text = emit(rec)
    got = load(text)
    assert got is None or got == yaml.safe_load(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(
    ['id: 3', 'argv: ["a b", "", \'it\'\'s\', x]', 'name: "n"', 'gpus: 0', 'hold: true',
     'env:', '  "K": "v"', '  K2: \'0022\'', '  y: 1', 'after: [3, 4]', 'after:', '- 3',
     '- "x"', 'x-a: 1.5', 'x-b: -0', 'x-c: 010', 'x-d: 1e5', 'x-e: ~', 'x-f: Yes',
     'x-g: "a\\tb"', 'x-h: a: b', 'x-i: a #c', '# c', '---', 'x-j: [a, [b]]', 'x-k: {a: 1}',
     'x-l:', '  - 1', 'x-m: \t1', '\tx-n: 1', 'x-o: 0x1f', 'x-p: 1_0', 'x-q: .5', 'x-r: 2e+3',
     'x-s: 1.0e+20', 'x-t: [1, 2.5, "s", null]', 'x-u: []', 'x-v: {}', 'x-w: ', 'x-x:  y',
     '  "a": "b"', 'x-y: "q\\"', 'x-y: "q\\"r"', 'x-y: "\\u00e9\\t\\/"', 'x-y: "\\ud83d\\ude00"',
     'x-y: "\\x41"', 'x-y: "a\\\\"', 'x-y: ["a\\"b", "c"]', "x-z: 'a''", 'x-z: \'a"b\'',
     'N: 1', 'x-A: 09']),
    max_size=12))
def test_hand_written_lines_read_as_pyyaml_reads_them_or_not_at_all(lines):
    text = "\n".join(lines) + "\n"
    got = load(text)
    if got is None:
        return
    try:
        want = yaml.safe_load(text)
    except yaml.YAMLError:
        raise AssertionError(f"read text PyYAML refuses: {text!r} -> {got!r}") from None
    assert got == want, text


def test_gsub_files_read_the_same(tmp_path):
    import os
    import subprocess
    from pathlib import Path

    from spoold.spool import Spool

    spool = tmp_path / "s"
    Spool(spool).create()
    gsub = Path(__file__).resolve().parent.parent / "bin" / "gsub"
    env = dict(os.environ, ODD="a\tb", QUOTE='say "hi"', UNI="é€😀", EMPTY="",
               BACK="a\\b", YES="yes", NUM="007")
    for args in (["--", "echo", "it's", "a: b", "#x", ""], ["-n", "2", "-J", "j", "--", "true"],
                 ["-c", "echo 'x' \"y\" && exit 3"], ["--array", "1-2", "--", "true"]):
        subprocess.run([str(gsub), "--spool", str(spool), *args], env=env, check=True,
                       capture_output=True)
    files = list((spool / "pending").iterdir())
    assert len(files) == 5
    read = 0
    for f in files:
        text = f.read_text()
        got = load(text)
        read += got is not None
        assert got is None or got == yaml.safe_load(text)
    assert read == 5  # tabs, quotes and backslashes as gsub escapes them: JSON's escapes
    for f in files:
        f.unlink()
    env["CTRL"] = "a\x01b"  # an escape JSON does not share: PyYAML reads it
    subprocess.run([str(gsub), "--spool", str(spool), "--", "echo", "it's"], env=env,
                   check=True, capture_output=True)
    (f,) = (spool / "pending").iterdir()
    assert load(f.read_text()) is None and yaml.safe_load(f.read_text())["env"]["CTRL"] == "a\x01b"


def test_a_line_read_before_gives_the_same_value_and_never_a_shared_container():
    """load() keeps what each line of a block read as (a job's environment
    repeats across jobs): a second read is equal, and a value that can change
    ({} or []) is fresh in each answer."""
    text = "env:\n  HOME: /root\n  NUM: '3'\n  E: {}\n  L: []\nid: 4\n"
    first, second = load(text), load(text)
    assert first == second == yaml.safe_load(text)
    first["env"]["E"]["x"] = 1
    first["env"]["L"].append(1)
    assert load(text)["env"] == {"HOME": "/root", "NUM": "3", "E": {}, "L": []}


def test_a_block_written_before_is_written_the_same_and_never_for_other_types():
    """emit() keeps the text of a block of strings (a job's environment): the
    next record with the same block gets the same text; 1, 1.0 and True are
    equal in Python but not in YAML, so a block with them is never taken for
    another."""
    env = {"HOME": "/root", "PATH": "/usr/bin:/bin", "X": "1"}
    first = emit({"env": env})
    assert emit({"env": dict(env)}) == first and yaml.safe_load(first) == {"env": env}
    for same in ({"a": True}, {"a": 1}, {"a": 1.0}, {"a": "1"}):
        assert yaml.safe_load(emit({"m": same})) == {"m": same}
        assert type(yaml.safe_load(emit({"m": same}))["m"]["a"]) is type(same["a"])


def test_a_comma_in_a_flow_list_item_stays_in_it():
    """A plain scalar ends at a comma inside [...]: `gsub train lr=0.1,0.2`
    was recorded as argv [train, lr=0.1,0.2], read back as three arguments
    (hypothesis found it)."""
    rec = {"argv": ["train", "lr=0.1,0.2", "a,b c"], "name": "x,y"}
    text = emit(rec)
    assert yaml.safe_load(text) == rec and load(text) == rec
    assert jobmod.parse(text.encode()).data["argv"] == rec["argv"]
