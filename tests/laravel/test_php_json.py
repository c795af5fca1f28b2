"""php_json_encode / queue_key against PHP's json_encode + md5."""

from __future__ import annotations

import json
import random

import pytest

from workers.laravel import (
    PhpJsonError, php_array_union, php_json_encode, queue_key, queue_key_json,
)

from tests.support.php import needs_php, run_oracle

GEO = "App\\Jobs\\GeolocationProcessJob"


def test_reference_worked_example():
    data = {"class": "ignored", "ip": "8.8.8.8", "lat": 1.0, "n": 5, "tags": ["x", "y"], "url": "http://a/b"}
    assert queue_key_json(GEO, data) == (
        '{"class":"App\\\\Jobs\\\\GeolocationProcessJob","ip":"8.8.8.8","lat":1,"n":5,"tags":["x","y"],'
        '"url":"http:\\/\\/a\\/b"}')
    assert queue_key(GEO, data) == "b1817c6d538844170741b98645133719"


@pytest.mark.parametrize("value,expected", [
    (1.0, "1"), (100.0, "100"), (1e16, "10000000000000000"), (1e17, "1.0e+17"), (-0.0, "-0"), (0.0001, "0.0001"),
    (1e-5, "1.0e-5"), (1.5e-7, "1.5e-7"), (1e25, "1.0e+25"), (1.2345678901234568e17, "1.2345678901234568e+17"),
    (0.1, "0.1"), ("😀", '"\\ud83d\\ude00"'), ("é", '"\\u00e9"'), ("\x7f", '"\x7f"'), ("\x01", '"\\u0001"'),
    ("\b\f\n\r\t", '"\\b\\f\\n\\r\\t"'), ("<>&'", '"<>&\'"'), ({}, "[]"), ([], "[]"),
    ({"0": "x", "1": "y"}, '["x","y"]'), ({"1": "x", "0": "y"}, '{"1":"x","0":"y"}'),
    ({"01": 1}, '{"01":1}'), ({"-1": 1}, '{"-1":1}'), ({0: "a", 2: "b"}, '{"0":"a","2":"b"}'),
    (True, "true"), (None, "null"), (-(2**63), "-9223372036854775808"),
])
def test_encode_vectors(value, expected):
    assert php_json_encode(value) == expected


def test_unescaped_unicode_keeps_line_separators_escaped():
    assert php_json_encode("é😀\u2028\u2029/", unescaped_unicode=True) == '"é😀\\u2028\\u2029\\/"'


def test_union_left_wins_and_keeps_positions():
    assert php_array_union({0: "x"}, {0: "y", 1: "z"}) == {0: "x", 1: "z"}
    assert list(php_array_union({"class": "A"}, {"b": 1, "class": "B"}).items()) == [("class", "A"), ("b", 1)]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), b"\xff", "\ud800", object(), 2**64])
def test_unencodable(bad):
    with pytest.raises(PhpJsonError):
        php_json_encode(bad)


# ---- random differential test against PHP ------------------------------------------------------

_ALPHABETS = ["abcxyz", "/\\\"'<>&", "\x00\x01\x1f\x7f\b\t\n", "éüßñ", "日本語", "😀🎉𝄞", "\u2028\u2029\ufeff", "09-."]


def _rand_str(r: random.Random, n: int = 8) -> str:
    return "".join(r.choice(r.choice(_ALPHABETS)) for _ in range(r.randint(0, n)))


def _rand_float(r: random.Random) -> float:
    k = r.randint(0, 6)
    if k == 0:
        return float(r.randint(-10**6, 10**6))
    if k == 1:
        return r.uniform(-1, 1) * 10.0 ** r.randint(-320, 308)
    if k == 2:
        return 10.0 ** r.randint(-25, 25) * r.choice([1, -1, 1.5, 2.5])
    if k == 3:
        return float(r.randint(0, 10**19))
    if k == 4:
        return r.choice([0.0, -0.0, 0.1, 1e15, 1e16, 1e17, 1e-4, 1e-5, 5e-324, 1.7976931348623157e308])
    return round(r.uniform(-180, 180), r.randint(0, 15))


def _rand_key(r: random.Random) -> str:
    k = r.randint(0, 5)
    if k == 0:
        return str(r.randint(-5, 20))
    if k == 1:
        return r.choice(["01", "-0", "1.5", " 1", "1e3", "9223372036854775807", "9223372036854775808", "", "class"])
    return _rand_str(r, 6)


def _rand_value(r: random.Random, depth: int = 0):
    k = r.randint(0, 9 if depth < 3 else 5)
    if k == 0:
        return None
    if k == 1:
        return r.choice([True, False])
    if k == 2:
        return r.randint(-(2**63), 2**63 - 1) if r.random() < 0.3 else r.randint(-1000, 1000)
    if k == 3:
        return _rand_float(r)
    if k in (4, 5):
        return _rand_str(r)
    if k in (6, 7):
        return [_rand_value(r, depth + 1) for _ in range(r.randint(0, 4))]
    return _rand_map(r, depth + 1)


def _rand_map(r: random.Random, depth: int = 0) -> dict:
    if r.random() < 0.15:  # sequential numeric-string keys -> a PHP list
        return {str(i): _rand_value(r, depth + 1) for i in range(r.randint(0, 4))}
    return {_rand_key(r): _rand_value(r, depth + 1) for _ in range(r.randint(0, 5))}


@needs_php
def test_queue_key_matches_php_on_10000_random_arrays(tmp_path):
    r = random.Random(20240601)
    cases = []
    for i in range(10_000):
        cls = r.choice([GEO, "App\\Jobs\\FaceProcessJob", "App/Jobs/Odd", "Üñí😀"])
        data = _rand_map(r)
        if i % 7 == 0:
            data = {"image_id": r.randint(1, 10**6), **data}
        cases.append({"c": cls, "d": data})
    php = run_oracle("qkeys", cases, tmp_path, raw_lines=True)
    assert len(php) == len(cases)
    mismatches = []
    for case, want in zip(cases, php):
        # Python sees the same values PHP's json_decode(assoc) sees
        back = json.loads(json.dumps(case))
        got = queue_key(back["c"], back["d"])
        if got != want:
            mismatches.append((case, want, got, queue_key_json(back["c"], back["d"])))
    assert not mismatches[:5], mismatches[:5]


@needs_php
def test_php_json_encode_unescaped_unicode_matches_php(tmp_path):
    from tests.support.php import php_run

    r = random.Random(5)
    values = [_rand_map(r) for _ in range(2000)]
    lines = "\n".join(json.dumps(v) for v in values) + "\n"
    out = php_run('while(($l=fgets(STDIN))!==false){ echo json_encode(json_decode($l,true), JSON_UNESCAPED_UNICODE),"\\n"; }',
                  lines.encode()).decode("utf-8").split("\n")
    for v, want in zip(values, out):
        assert php_json_encode(json.loads(json.dumps(v)), unescaped_unicode=True) == want
