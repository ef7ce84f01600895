"""The fast record emitter reads back as what it was given, in PyYAML's layout."""

import math

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from spoold import job as jobmod
from spoold.emit import emit

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
