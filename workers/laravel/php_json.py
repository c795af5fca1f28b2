"""PHP ``json_encode`` byte rules and the ``queue_key`` dedup hash.

``php_json_encode(v)`` writes exactly what PHP 8 (``serialize_precision=-1``) writes for the same
value held in a PHP array: ``/`` escaped as ``\\/``, lowercase ``\\uXXXX`` with surrogate pairs,
DEL (0x7F) raw, integral floats without ``.0``, ``1.0e+25`` exponent form, a dict whose
(PHP-normalized) keys are 0..n-1 in order written as a list, and an empty dict written as ``[]``.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Mapping

from .php_serialize import INT64_MAX, INT64_MIN, PhpSerializeError, format_php_float, php_array_key
from .errors import WireFormatError

__all__ = ["PhpJsonError", "php_json_encode", "php_array", "php_array_union", "queue_key", "queue_key_json"]


class PhpJsonError(WireFormatError):
    """A value PHP's json_encode would refuse (invalid UTF-8, NAN/INF, unsupported type)."""


_SHORT = {
    '"': '\\"',
    "\\": "\\\\",
    "/": "\\/",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def _escape(s: str, unescaped_unicode: bool, unescaped_slashes: bool) -> str:
    out = ['"']
    append = out.append
    for ch in s:
        o = ord(ch)
        if o < 0x80:
            if ch in _SHORT:
                if ch == "/" and unescaped_slashes:
                    append("/")
                else:
                    append(_SHORT[ch])
            elif o < 0x20:
                append("\\u%04x" % o)
            else:
                append(ch)
        elif 0xD800 <= o <= 0xDFFF:
            raise PhpJsonError("Malformed UTF-8 characters, possibly incorrectly encoded")
        elif unescaped_unicode and o not in (0x2028, 0x2029):
            append(ch)
        elif o >= 0x10000:
            v = o - 0x10000
            append("\\u%04x\\u%04x" % (0xD800 | (v >> 10), 0xDC00 | (v & 0x3FF)))
        else:
            append("\\u%04x" % o)
    append('"')
    return "".join(out)


def php_array(value: Mapping | list | tuple) -> dict:
    """A Python mapping/sequence as the PHP array it would be: keys normalized, order kept."""
    if isinstance(value, (list, tuple)):
        return dict(enumerate(value))
    out: dict[Any, Any] = {}
    for k, v in value.items():
        try:
            out[php_array_key(k)] = v
        except PhpSerializeError as e:
            raise PhpJsonError(str(e)) from None
    return out


def _is_list(arr: dict) -> bool:
    i = 0
    for k in arr:
        if k != i or isinstance(k, bool) or not isinstance(k, int):
            return False
        i += 1
    return True


def _encode(v: Any, uu: bool, us: bool, out: list[str], depth: int) -> None:
    if depth > 512:  # PHP's default json_encode depth limit
        raise PhpJsonError("Maximum stack depth exceeded")
    if v is None:
        out.append("null")
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif isinstance(v, int):
        if not INT64_MIN <= v <= INT64_MAX:
            raise PhpJsonError(f"integer {v} out of 64-bit range")
        out.append(str(v))
    elif isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            raise PhpJsonError("Inf and NaN cannot be JSON encoded")
        out.append(format_php_float(v, exp_char="e"))
    elif isinstance(v, str):
        out.append(_escape(v, uu, us))
    elif isinstance(v, bytes):
        try:
            s = v.decode("utf-8")
        except UnicodeDecodeError:
            raise PhpJsonError("Malformed UTF-8 characters, possibly incorrectly encoded") from None
        out.append(_escape(s, uu, us))
    elif isinstance(v, (list, tuple)):
        if not v:
            out.append("[]")
            return
        out.append("[")
        for i, item in enumerate(v):
            if i:
                out.append(",")
            _encode(item, uu, us, out, depth + 1)
        out.append("]")
    elif isinstance(v, Mapping):
        arr = php_array(v)
        if _is_list(arr):
            _encode(list(arr.values()), uu, us, out, depth)
            return
        out.append("{")
        first = True
        for k, item in arr.items():
            if not first:
                out.append(",")
            first = False
            if isinstance(k, int):
                out.append('"%d"' % k)
            else:
                _encode(k, uu, us, out, depth + 1)
            out.append(":")
            _encode(item, uu, us, out, depth + 1)
        out.append("}")
    else:
        raise PhpJsonError(f"cannot json_encode {type(v).__name__}")


def php_json_encode(value: Any, unescaped_unicode: bool = False, unescaped_slashes: bool = False) -> str:
    """``json_encode($value[, JSON_UNESCAPED_UNICODE][|JSON_UNESCAPED_SLASHES])`` as PHP 8 writes it."""
    out: list[str] = []
    _encode(value, unescaped_unicode, unescaped_slashes, out, 0)
    return "".join(out)


def php_array_union(left: Mapping | list, right: Mapping | list) -> dict:
    """PHP ``$left + $right``: left's entries, then right's keys not already present (left wins)."""
    out = php_array(left)
    for k, v in php_array(right).items():
        if k not in out:
            out[k] = v
    return out


def queue_key_json(class_name: str, data: Mapping | list) -> str:
    """``json_encode(['class' => $class] + $data)``."""
    return php_json_encode(php_array_union({"class": class_name}, data))


def queue_key(class_name: str, data: Mapping | list) -> str:
    """``md5(json_encode(['class' => $class] + $data))`` (hex), byte-identical to PHP."""
    return hashlib.md5(queue_key_json(class_name, data).encode("utf-8")).hexdigest()
