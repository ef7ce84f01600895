"""The YAML that job files and records are made of, written and read fast.

Owns: ``emit`` (a record, a mapping of str keys to scalars, lists and
mappings, as block-style YAML, ~20 times faster than PyYAML's representer,
which dominated the daemon's CPU per job) and ``load`` (the same dialect and
gsub's read back, ~5 times faster than PyYAML's constructor).

Invariants:
- Each answers None for anything outside its dialect (a key that is not a
  str, an unknown type, a list in a list; any line, escape or scalar the
  reader does not know), and the caller falls back to PyYAML. ``emit`` never
  writes text that loads as something else, and ``load`` never answers
  anything but what ``yaml.safe_load`` answers: tests/test_quickyaml.py
  checks both on generated records, and on what gsub writes.
- What repeats from job to job (a user's environment) is converted once:
  ``emit`` keeps the text of each string, and of each block of strings, and
  ``load`` the key and value of each block line; bounded, and only immutable
  values are kept, so an answer never shares a container with another.
- The layout is PyYAML's for the same data (``job.dump``'s settings): block
  mappings, sequences at the key's column, short lists of short scalars in
  flow style (``assigned_gpus: [0, 3]``), no line wrapping; a string is plain
  only when it cannot be read as anything but that string, else double-quoted
  with escapes (single-quoted where nothing needs one, as PyYAML does).
"""

from __future__ import annotations

import json
import math
import re

# Plain only for these: no YAML indicator, no ": " or " #", nothing a YAML 1.1
# resolver turns into a bool, null, number or date (those start with a digit,
# a sign or a dot, or are the words below).
_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./+@=,-]*(?: [A-Za-z0-9_./+@=,()-]+)*\Z")
_WORDS = frozenset(["y", "n", "yes", "no", "true", "false", "on", "off", "null"])
_ESC = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0",
        "\x07": "\\a", "\x08": "\\b", "\x0b": "\\v", "\x0c": "\\f", "\x1b": "\\e",
        "\x85": "\\N", "\xa0": "\\_", "\u2028": "\\L", "\u2029": "\\P"}
_NEEDS_ESC = re.compile(r'[\\"\x00-\x1f\x7f-\xa0\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]'
                        r"|[^\x00-\x7f]")
_ODD = frozenset("\ud800\ufeff\ufffe\uffff")  # never bare, even where printable
FLOW_MAX = 64  # lists longer than this, or with long or nested items, go in block style


class _Unknown(Exception):
    pass


def emit(data: dict) -> str | None:
    """``data`` as YAML text, or None when it is outside this emitter's dialect."""
    out: list[str] = []
    try:
        _mapping(data, "", out)
    except _Unknown:
        return None
    return "".join(out) if out else "{}\n"


def _mapping(data: dict, indent: str, out: list[str]) -> None:
    for k, v in data.items():
        if not isinstance(k, str):
            raise _Unknown
        key = f"{indent}{_str(k)}:"
        if isinstance(v, dict):
            if v:
                out.append(key + "\n")
                out.append(_block(v, indent + "  "))
            else:
                out.append(key + " {}\n")
        elif isinstance(v, list):
            _list(v, key, indent, out)
        else:
            out.append(f"{key} {_scalar(v)}\n")


# A nested mapping of strings (a job's environment, above all) -> its text: the
# same block is written in each of a job's records and in every job of a user.
# (Strings only: 1, 1.0 and True are equal keys but not the same YAML.)
_blocks: dict[tuple, str] = {}


def _block(data: dict, indent: str) -> str:
    key = hit = None
    if all(type(v) is str for v in data.values()):
        key = (indent, tuple(data.items()))
        hit = _blocks.get(key)
    if hit is None:
        out: list[str] = []
        _mapping(data, indent, out)
        hit = "".join(out)
        if key is not None:
            if len(_blocks) >= BLOCKS_MAX:
                _blocks.clear()
            _blocks[key] = hit
    return hit


def _list(items: list, key: str, indent: str, out: list[str]) -> None:
    if not items:
        out.append(key + " []\n")
        return
    if len(items) <= FLOW_MAX and all(
            isinstance(x, (int, float, str)) and not isinstance(x, bool)
            and (not isinstance(x, str) or len(x) < 200) for x in items):
        out.append(f"{key} [{', '.join(map(_flow_scalar, items))}]\n")
        return
    out.append(key + "\n")
    for x in items:
        if isinstance(x, dict) and x:
            first = len(out)
            _mapping(x, indent + "  ", out)
            out[first] = f"{indent}- {out[first][len(indent) + 2:]}"
        elif isinstance(x, (dict, list)):
            if x:  # a list in a list: PyYAML's business
                raise _Unknown
            out.append(f"{indent}- {'{}' if isinstance(x, dict) else '[]'}\n")
        else:
            out.append(f"{indent}- {_scalar(x)}\n")


def _flow_scalar(v) -> str:
    """``_scalar`` inside ``[...]``, where a comma ends a plain scalar."""
    text = _scalar(v)
    if "," in text and text == v:  # plain (a plain string has nothing to escape)
        return "'" + text + "'"
    return text


def _scalar(v) -> str:
    if isinstance(v, str):
        return _str(v)
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(int(v))
    if isinstance(v, float):
        if math.isnan(v):
            return ".nan"
        if math.isinf(v):
            return ".inf" if v > 0 else "-.inf"
        text = repr(v).lower()
        if "." not in text and "e" in text:  # 1e+20: YAML 1.1 needs the dot
            text = text.replace("e", ".0e", 1)
        return text
    raise _Unknown


_seen: dict[str, str] = {}  # str -> its YAML form: a job's environment repeats in each
# record and across one user's jobs, and a lookup costs a tenth of the checks
SEEN_MAX = 8192
BLOCKS_MAX = 256


def _str(s: str) -> str:
    hit = _seen.get(s)
    if hit is not None:
        return hit
    if len(_seen) >= SEEN_MAX:
        _seen.clear()
    out = _seen[s] = _quote(s)
    return out


def _quote(s: str) -> str:
    if _PLAIN.match(s) and s.lower() not in _WORDS:
        return s
    if not _NEEDS_ESC.search(s) or all(c.isprintable() and c not in _ESC and c not in _ODD
                                       for c in s):
        return "'" + s.replace("'", "''") + "'"  # PyYAML's choice too: nothing to escape
    return '"' + "".join(_char(c) for c in s) + '"'


def _char(c: str) -> str:
    if c in _ESC:
        return _ESC[c]
    n = ord(c)
    if n < 0x20 or n == 0x7F or 0x80 <= n < 0xA0:
        return f"\\x{n:02x}"
    if 0xD800 <= n <= 0xDFFF or n in (0xFEFF, 0xFFFE, 0xFFFF) or not c.isprintable():
        return f"\\u{n:04x}" if n <= 0xFFFF else f"\\U{n:08x}"
    return c


# ---- reading ------------------------------------------------------------------
_OUTSIDE = re.compile(r"[^\t\n\x20-\x7e\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# A double-quoted scalar whose escapes all mean the same in JSON and in YAML
# (no \x, \0, \e, \N..., and no \u for half a surrogate pair, which JSON
# joins with the other half and YAML does not)
_DQ = re.compile(r'"(?:[^"\\]|\\["\\/bfnrt]|\\u(?![dD][89abAB])[0-9a-fA-F]{4})*"\Z')
_KEY = re.compile(r'(?:"([^"\\]*)"|([A-Za-z_][A-Za-z0-9_-]*)):(?: (.*))?\Z')
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)\Z")
_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)\.[0-9]+(?:e[-+][0-9]+)?\Z")
_ITEM = re.compile(r'\s*("(?:[^"\\]|\\.)*"|\'(?:[^\']|\'\')*\'|[^,"\'\[\]{}]+?)\s*(,|\]\Z)')
_FIXED = {"true": True, "false": False, "null": None, "{}": {}, "[]": []}


# A line of a block (a job's environment, above all) -> its (key, value): the
# same lines come in every job of a user and in each job's two reads.
_inner_seen: dict[str, tuple] = {}


def load(text: str) -> dict | None:
    """``text`` as ``yaml.safe_load`` reads it, if it is a mapping in the
    dialect (block mappings two levels deep, scalar lists in flow or block
    style, JSON's escapes only, no comments); else None."""
    if _OUTSIDE.search(text):  # a control character, a BOM...
        return None
    out: dict = {}
    inner: dict | list | None = None
    blocks = []  # keys whose value is the block below them
    try:
        for line in text.split("\n"):
            if not line:
                continue
            if line.startswith("  "):
                if not isinstance(inner, dict):
                    return None
                hit = _inner_seen.get(line)
                if hit is None:
                    k, v = _pair(line[2:])
                    if v is None:
                        return None  # a third level
                    hit = k, _scalar_of(v)
                    if not isinstance(hit[1], (dict, list)):  # (only what cannot change)
                        if len(_inner_seen) >= SEEN_MAX:
                            _inner_seen.clear()
                        _inner_seen[line] = hit
                inner[hit[0]] = hit[1]
            elif line.startswith("- "):
                if isinstance(inner, dict) and not inner:  # the block is a list
                    inner = out[blocks[-1]] = []
                if not isinstance(inner, list):
                    return None
                inner.append(_scalar_of(line[2:]))
            else:
                k, v = _pair(line)
                if v is None:  # a block follows: a mapping, or a list at this column
                    inner = out[k] = {}
                    blocks.append(k)
                    continue
                inner = None
                out[k] = _value(v)
    except _Unknown:
        return None
    for k in blocks:  # an empty block is null
        if out.get(k) == {}:
            out[k] = None
    return out or None  # (an empty text is null, not a mapping)


def _pair(line: str) -> tuple[str, str | None]:
    m = _KEY.match(line)
    if m is None:
        raise _Unknown
    key = m.group(1) if m.group(1) is not None else m.group(2)
    if m.group(2) is not None and key.lower() in _WORDS:
        raise _Unknown
    return key, m.group(3)


def _value(v: str):
    if v.startswith("[") and v.endswith("]") and v != "[]":
        items, pos = [], 1
        while pos < len(v):
            m = _ITEM.match(v, pos)
            if m is None:
                raise _Unknown
            items.append(_scalar_of(m.group(1)))
            pos = m.end()
            if m.group(2) != ",":
                break
        if pos != len(v):
            raise _Unknown
        return items
    return _scalar_of(v)


def _scalar_of(v: str):
    if v in _FIXED:
        fixed = _FIXED[v]
        return type(fixed)() if isinstance(fixed, (dict, list)) else fixed
    if len(v) >= 2 and v[0] == v[-1] == '"':
        if "\\" not in v and '"' not in v[1:-1]:
            return v[1:-1]
        if _DQ.match(v):
            return json.loads(v, strict=False)
        raise _Unknown
    if len(v) >= 2 and v[0] == v[-1] == "'" and "'" not in v[1:-1].replace("''", ""):
        return v[1:-1].replace("''", "'")
    if _INT.match(v):
        return int(v)
    if _FLOAT.match(v):
        return float(v)
    if _PLAIN.match(v) and v.lower() not in _WORDS:
        return v
    raise _Unknown
