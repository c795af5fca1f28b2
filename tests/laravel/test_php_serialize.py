"""PHP serialize/unserialize: vectors, round trips against real PHP, hostile input."""

from __future__ import annotations

import json
import math
import time

import pytest
from hypothesis import given, settings, strategies as st

from workers.laravel import (
    PhpEnum, PhpObject, PhpRef, PhpSerializeError, dumps, format_php_float, loads,
)

from tests.support.php import needs_php, php_run

VECTORS = [
    (None, b"N;"),
    (True, b"b:1;"),
    (False, b"b:0;"),
    (-3, b"i:-3;"),
    (0.1, b"d:0.1;"),
    (1.0, b"d:1;"),
    (1e25, b"d:1.0E+25;"),
    (1.5e-7, b"d:1.5E-7;"),
    (-0.0, b"d:-0;"),
    (float("inf"), b"d:INF;"),
    (float("-inf"), b"d:-INF;"),
    ("é", b's:2:"\xc3\xa9";'),
    ('a"b;\0', b's:5:"a"b;\0";'),
    ([1, "a"], b'a:2:{i:0;i:1;i:1;s:1:"a";}'),
    ({"a": 2, 0: 1}, b'a:2:{s:1:"a";i:2;i:0;i:1;}'),
    ({"5": "x"}, b'a:1:{i:5;s:1:"x";}'),
    ({"05": "x"}, b'a:1:{s:2:"05";s:1:"x";}'),
    ([], b"a:0:{}"),
    (PhpObject("stdClass"), b'O:8:"stdClass":0:{}'),
    (PhpEnum("Suit", "H"), b'E:6:"Suit:H";'),
]


@pytest.mark.parametrize("value,expected", VECTORS)
def test_vectors(value, expected):
    assert dumps(value) == expected
    back = loads(expected)
    if isinstance(value, float) and math.isnan(value):
        assert math.isnan(back)
    elif isinstance(value, dict) and "5" in value:
        assert back == {5: "x"}
    else:
        assert dumps(back) == expected


def test_nan():
    assert dumps(float("nan")) == b"d:NAN;"
    assert math.isnan(loads(b"d:NAN;"))


def test_visibility_round_trip():
    raw = (b'O:30:"App\\Jobs\\GeolocationProcessJob":4:{s:4:"ipId";i:42;s:7:"\0*\0opts";a:1:{s:4:"city";'
           b's:7:"Z\xc3\xbcrich";}s:38:"\0App\\Jobs\\GeolocationProcessJob\0secret";N;s:5:"queue";s:3:"geo";}')
    obj = loads(raw)
    assert obj.class_name == "App\\Jobs\\GeolocationProcessJob"
    assert obj.props == {"ipId": 42, "opts": {"city": "Zürich"}, "secret": None, "queue": "geo"}
    assert obj.visibility_of("opts") == "protected"
    assert obj.visibility_of("secret") == "private:App\\Jobs\\GeolocationProcessJob"
    assert obj.visibility_of("ipId") == "public"
    assert dumps(obj) == raw


def test_duplicate_plain_names_keep_bytes():
    raw = b'O:1:"A":2:{s:1:"x";i:1;s:4:"\0B\0x";i:2;}'
    obj = loads(raw)
    assert dumps(obj) == raw


def test_refs_kept():
    raw = b'a:3:{i:0;O:8:"stdClass":0:{}i:1;r:2;i:2;R:2;}'
    v = loads(raw)
    assert isinstance(v[1], PhpRef) and v[1].kind == "r" and v[1].index == 2
    assert isinstance(v[1].target, PhpObject)
    assert dumps(v) == raw


def test_invalid_utf8_string_kept_as_bytes():
    raw = b's:2:"\xff\xfe";'
    assert loads(raw) == b"\xff\xfe"
    assert dumps(loads(raw)) == raw


@pytest.mark.parametrize("bad", [
    b"", b"N", b"i:1", b"i:;", b"i:99999999999999999999;", b"b:2;", b"d:x;", b's:5:"abc";', b's:2:"abc";',
    b's:-1:"";', b"s:99999999999:\"a\";", b"a:1:{i:0;N;", b"a:999999999:{", b"a:2:{i:0;N;}", b"a:1:{N;N;}",
    b"a:1:{d:1;N;}", b"O:3:\"Foo\":1:{}", b"O:3:\"Foo\":999999999:{", b"O:0:\"\":0:{}", b"X:1;", b"C:3:\"Foo\":0:{}",
    b"S:1:\"a\";", b"E:3:\"abc\";", b"r:5;", b"R:0;", b"N;N;", b'O:3:"Foo":1:{s:2:"\0x";N;}',
    b"a:1:{i:0;" * 200 + b"N;" + b"}" * 200, "\ud800".encode("utf-8", "surrogatepass"),
])
def test_hostile_inputs_raise_named_error(bad):
    t = time.perf_counter()
    with pytest.raises(PhpSerializeError) as ei:
        loads(bad)
    assert time.perf_counter() - t < 0.5
    assert ei.value.offset is not None


def test_c_type_message():
    with pytest.raises(PhpSerializeError, match="C:"):
        loads(b'C:3:"Foo":0:{}')


def test_huge_nesting_and_counts_fast():
    deep = b"a:1:{i:0;" * 100_000 + b"N;" + b"}" * 100_000
    t = time.perf_counter()
    with pytest.raises(PhpSerializeError, match="depth"):
        loads(deep)
    with pytest.raises(PhpSerializeError, match="count"):
        loads(b"a:999999999:{" + b"i:0;N;" * 1000)
    with pytest.raises(PhpSerializeError):
        loads(b"s:999999999999999999:\"")
    with pytest.raises(PhpSerializeError, match="too many"):
        loads(b"a:3:{i:0;a:3:{i:0;N;i:1;N;i:2;N;}i:1;N;i:2;N;}", max_items=4)
    assert time.perf_counter() - t < 2


def test_truncations_of_real_command_all_fail_cleanly():
    obj = PhpObject("App\\Jobs\\X", {"data": {"a": [1, 2.5, "ü"], "b": None}, "q": True}, {"data": "protected"})
    raw = dumps(obj)
    for i in range(len(raw)):
        with pytest.raises(PhpSerializeError):
            loads(raw[:i])


php_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=5) | st.integers(-5, 5), children, max_size=5),
    max_leaves=20,
)


@given(php_values)
@settings(max_examples=300, deadline=None)
def test_round_trip_property(v):
    raw = dumps(v)
    assert dumps(loads(raw)) == raw


@needs_php
def test_python_dumps_equals_php_serialize_and_php_reads_it(tmp_path):
    import random

    rnd = random.Random(7)
    floats = [rnd.uniform(-1e6, 1e6) for _ in range(300)] + [10.0 ** e for e in range(-30, 30)] + \
             [rnd.random() * 10.0 ** rnd.randint(-320, 308) for _ in range(500)] + [5e-324, 1.7976931348623157e308, 0.1 + 0.2]
    values = [{"f": f} for f in floats] + [
        {"s": "日本😀\u2028/\\\"\0\x7f", "n": {"1": 1, "0": 0}, "l": [[], [None, True]], "neg": -(2**63)},
    ]
    # PHP: json_decode each line, serialize it; compare with Python's dumps of the same decoded value
    lines = "\n".join(json.dumps(v) for v in values) + "\n"
    out = php_run('while(($l=fgets(STDIN))!==false){ echo base64_encode(serialize(json_decode($l,true))),"\\n"; }',
                  lines.encode())
    import base64

    php = [base64.b64decode(x) for x in out.decode().split()]
    assert len(php) == len(values)
    for v, p in zip(values, php):
        assert dumps(json.loads(json.dumps(v))) == p, (v, p)
        assert dumps(loads(p)) == p


@needs_php
def test_php_float_format_matches_var_export_free_serialize():
    xs = [1e15, 1e16, 1e17, 123456789012345678.0, 0.001, 0.0001, 0.00001, 1.25e-5, 2.5, -1e100, 1e-300]
    code = "foreach ([" + ",".join(repr(x) for x in xs) + "] as $x) echo serialize($x), \"\\n\";"
    out = php_run(code).decode().split()
    assert out == [f"d:{format_php_float(x)};" for x in xs]


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_random_bytes_only_raise_named_error(b):
    try:
        loads(b)
    except PhpSerializeError:
        pass


_SEED = dumps(PhpObject("App\\Jobs\\X", {"data": {"a": [1, 2.5, "ü", None, True], "b": {"c": -1}}, "chained": ["O:1:\"A\":0:{}"]},
                        {"data": "private:App\\Jobs\\X"}))


@given(st.lists(st.tuples(st.integers(0, len(_SEED) - 1), st.integers(0, 255)), min_size=1, max_size=4))
@settings(max_examples=500, deadline=None)
def test_mutated_commands_only_raise_named_error(muts):
    b = bytearray(_SEED)
    for i, v in muts:
        b[i] = v
    try:
        v = loads(bytes(b))
    except PhpSerializeError:
        return
    dumps(v)
