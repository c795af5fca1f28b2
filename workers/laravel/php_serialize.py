"""PHP ``serialize()`` / ``unserialize()`` for the values a Laravel job command holds.

Safe for hostile input: nothing is executed or imported. Objects become :class:`PhpObject`
(class name + properties, with each property's visibility kept so re-serialization is
byte-exact). Depth, size and element counts are bounded, and every malformed input raises
:class:`PhpSerializeError` carrying the byte offset.

Value mapping (PHP -> Python):

=============  =====================================================================
``N;``         ``None``
``b:0;``       ``False`` / ``True``
``i:…;``       ``int``
``d:…;``       ``float`` (``INF``, ``-INF``, ``NAN`` included)
``s:…;``       ``str`` when the bytes are valid UTF-8, otherwise ``bytes``
``a:…{}``      ``list`` when the keys are exactly 0..n-1 in order, otherwise ``dict``
``O:…{}``      :class:`PhpObject`
``E:…;``       :class:`PhpEnum`
``r:``/``R:``  :class:`PhpRef` (kept as a marker; ``.target`` points at the referenced value)
``C:``         refused (legacy ``Serializable``; Laravel jobs never use it)
=============  =====================================================================
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from .errors import WireFormatError

__all__ = [
    "PhpSerializeError",
    "PhpObject",
    "PhpEnum",
    "PhpRef",
    "loads",
    "dumps",
    "format_php_float",
    "php_array_key",
]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

DEFAULT_MAX_DEPTH = 128
DEFAULT_MAX_ITEMS = 2_000_000
DEFAULT_MAX_LENGTH = 256 * 1024 * 1024


class PhpSerializeError(WireFormatError):
    """Malformed, unsupported or over-limit serialized data (``offset`` = byte position)."""

    def __init__(self, message: str, offset: int | None = None):
        self.offset = offset
        self.reason = message
        super().__init__(message if offset is None else f"{message} at offset {offset}")


PUBLIC = "public"
PROTECTED = "protected"


@dataclass
class PhpObject:
    """A PHP object as plain data.

    ``props`` maps the *plain* property name to its value, in serialized order.
    ``visibility`` maps a name to ``"public"``, ``"protected"`` or ``"private:<DeclaringClass>"``;
    a name missing from ``visibility`` is public.
    """

    class_name: str
    props: dict[Any, Any] = field(default_factory=dict)
    visibility: dict[Any, str] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        return self.props.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self.props

    def __getitem__(self, name: str) -> Any:
        return self.props[name]

    def set(self, name: str, value: Any, visibility: str | None = None) -> None:
        """Set a property (appended at the end if new). Visibility kept unless given."""
        self.props[name] = value
        if visibility is not None and visibility != PUBLIC:
            self.visibility[name] = visibility
        elif visibility == PUBLIC:
            self.visibility.pop(name, None)

    def remove(self, name: str) -> None:
        self.props.pop(name, None)
        self.visibility.pop(name, None)

    def visibility_of(self, name: Any) -> str:
        return self.visibility.get(name, PUBLIC)

    def mangled_name(self, name: Any) -> Any:
        """The property name as PHP writes it (``\\0*\\0name`` / ``\\0Class\\0name``)."""
        vis = self.visibility.get(name, PUBLIC)
        if vis == PUBLIC or isinstance(name, int):
            return name
        if vis == PROTECTED:
            return "\0*\0" + name
        if vis.startswith("private:"):
            return "\0" + vis[len("private:"):] + "\0" + name
        raise PhpSerializeError(f"unknown visibility {vis!r} for property {name!r}")


@dataclass(frozen=True)
class PhpEnum:
    class_name: str
    case: str


@dataclass(eq=False)
class PhpRef:
    """``r:n;`` (``kind='r'``, object back-reference) or ``R:n;`` (``kind='R'``, PHP reference)."""

    kind: str
    index: int
    target: Any = field(default=None, repr=False, compare=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PhpRef) and (self.kind, self.index) == (other.kind, other.index)

    def __hash__(self) -> int:
        return hash((self.kind, self.index))


# --------------------------------------------------------------------------------------------
# float formatting


def _float_digits(x: float) -> tuple[str, int]:
    """Shortest round-trip digits and decpt (decimal point position) of a finite, non-zero |x|."""
    sign, digits, exp = Decimal(repr(abs(x))).as_tuple()
    ds = "".join(map(str, digits)).rstrip("0") or "0"
    # value = 0.ds * 10**decpt
    decpt = len(digits) + exp
    # strip leading zeros (Decimal('0.001') -> digits (1,), exp -3: fine; but repr never has them)
    return ds, decpt


def format_php_float(x: float, *, exp_char: str = "E", precision17: int = 17) -> str:
    """Format like PHP with ``serialize_precision=-1``.

    ``exp_char='E'`` is ``serialize()``/``var_export`` style, ``'e'`` is ``json_encode`` style.
    """
    if math.isnan(x):
        return "NAN"
    if math.isinf(x):
        return "INF" if x > 0 else "-INF"
    if x == 0.0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    neg = x < 0
    ds, decpt = _float_digits(x)
    if decpt < -3 or decpt > precision17:
        mant = ds[0] + "." + (ds[1:] or "0")
        e = decpt - 1
        out = f"{mant}{exp_char}{'+' if e >= 0 else '-'}{abs(e)}"
    elif decpt <= 0:
        out = "0." + "0" * (-decpt) + ds
    elif decpt >= len(ds):
        out = ds + "0" * (decpt - len(ds))
    else:
        out = ds[:decpt] + "." + ds[decpt:]
    return "-" + out if neg else out


# --------------------------------------------------------------------------------------------
# keys

_CANON_INT = re.compile(r"(?:0|-?[1-9][0-9]*)\Z")


def php_array_key(key: Any) -> int | str | bytes:
    """Normalize a key as a PHP array would store it (``"12"`` -> ``12``; ``"012"`` stays)."""
    if isinstance(key, bool):
        return int(key)
    if isinstance(key, int):
        if not INT64_MIN <= key <= INT64_MAX:
            raise PhpSerializeError(f"array key {key} out of 64-bit range")
        return key
    if isinstance(key, str):
        if _CANON_INT.match(key):
            v = int(key)
            if INT64_MIN <= v <= INT64_MAX:
                return v
        return key
    if isinstance(key, bytes):
        try:
            s = key.decode("ascii")
        except UnicodeDecodeError:
            return key
        k = php_array_key(s)
        return k if isinstance(k, int) else key
    if key is None:
        return ""
    raise PhpSerializeError(f"unsupported array key type {type(key).__name__}")


# --------------------------------------------------------------------------------------------
# unserialize

_INT_RE = re.compile(rb"[+-]?[0-9]+")
_UINT_RE = re.compile(rb"[0-9]+")
_FLOAT_RE = re.compile(
    rb"(?:[+-]?(?:INF|NAN)|[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
)
# smallest possible encoding of one array entry: key "i:0;" + value "N;"
_MIN_ENTRY = 6


def _text(b: bytes) -> str | bytes:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b


class _Parser:
    __slots__ = ("data", "pos", "max_depth", "items_left", "slots")

    def __init__(self, data: bytes, max_depth: int, max_items: int):
        self.data = data
        self.pos = 0
        self.max_depth = max_depth
        self.items_left = max_items
        self.slots: list[Any] = []

    def fail(self, msg: str, at: int | None = None) -> PhpSerializeError:
        return PhpSerializeError(msg, self.pos if at is None else at)

    def expect(self, lit: bytes) -> None:
        d = self.data
        if d[self.pos:self.pos + len(lit)] != lit:
            if self.pos >= len(d):
                raise self.fail(f"unexpected end of data, expected {lit.decode()!r}")
            raise self.fail(f"expected {lit.decode()!r}")
        self.pos += len(lit)

    def uint(self) -> int:
        m = _UINT_RE.match(self.data, self.pos)
        if not m:
            raise self.fail("expected unsigned integer")
        if len(m.group()) > 19:
            raise self.fail("length/count too large")
        self.pos = m.end()
        return int(m.group())

    def int_(self) -> int:
        m = _INT_RE.match(self.data, self.pos)
        if not m:
            raise self.fail("expected integer")
        if len(m.group()) > 21:
            raise self.fail("integer too large")
        v = int(m.group())
        if not INT64_MIN <= v <= INT64_MAX:
            raise self.fail("integer out of 64-bit range")
        self.pos = m.end()
        return v

    def raw_string(self) -> bytes:
        """``<len>:"<bytes>"`` (the part after ``s:``)."""
        n = self.uint()
        self.expect(b':"')
        start = self.pos
        end = start + n
        if end + 1 > len(self.data):
            raise self.fail(f"string length {n} exceeds remaining data", start)
        if self.data[end:end + 1] != b'"':
            raise self.fail("string length mismatch (missing closing quote)", end)
        self.pos = end + 1
        return self.data[start:end]

    def count(self) -> int:
        at = self.pos
        n = self.uint()
        remaining = len(self.data) - self.pos
        if n * _MIN_ENTRY > remaining:
            raise self.fail(f"element count {n} exceeds remaining data", at)
        if n > self.items_left:
            raise self.fail("too many elements", at)
        self.items_left -= n
        return n

    def key(self) -> int | str | bytes:
        d = self.data
        t = d[self.pos:self.pos + 2]
        if t == b"i:":
            self.pos += 2
            v = self.int_()
            self.expect(b";")
            return v
        if t == b"s:":
            self.pos += 2
            b = self.raw_string()
            self.expect(b";")
            return php_array_key(_text(b))
        if self.pos >= len(d):
            raise self.fail("unexpected end of data, expected array key")
        raise self.fail("invalid array key (expected i: or s:)")

    def prop_name(self) -> tuple[Any, str]:
        d = self.data
        t = d[self.pos:self.pos + 2]
        if t == b"i:":
            self.pos += 2
            v = self.int_()
            self.expect(b";")
            return v, PUBLIC
        if t != b"s:":
            if self.pos >= len(d):
                raise self.fail("unexpected end of data, expected property name")
            raise self.fail("invalid property name (expected s: or i:)")
        self.pos += 2
        at = self.pos
        b = self.raw_string()
        self.expect(b";")
        if b[:1] == b"\0":
            second = b.find(b"\0", 1)
            if second < 0:
                raise self.fail("malformed mangled property name", at)
            scope = b[1:second]
            name = _text(b[second + 1:])
            if not isinstance(name, str):
                return _text(b), PUBLIC
            if scope == b"*":
                return name, PROTECTED
            sc = _text(scope)
            if not isinstance(sc, str) or not sc:
                raise self.fail("malformed private property scope", at)
            return name, "private:" + sc
        return _text(b), PUBLIC

    def value(self, depth: int) -> Any:
        d = self.data
        p = self.pos
        if p >= len(d):
            raise self.fail("unexpected end of data, expected a value")
        t = d[p:p + 1]
        if t == b"N":
            self.pos += 1
            self.expect(b";")
            self.slots.append(None)
            return None
        if d[p + 1:p + 2] != b":":
            raise self.fail(f"unknown or malformed type {t.decode('latin-1')!r}")
        self.pos = p + 2
        if t == b"b":
            c = d[self.pos:self.pos + 2]
            if c == b"0;":
                v = False
            elif c == b"1;":
                v = True
            else:
                raise self.fail("invalid boolean")
            self.pos += 2
            self.slots.append(v)
            return v
        if t == b"i":
            v = self.int_()
            self.expect(b";")
            self.slots.append(v)
            return v
        if t == b"d":
            m = _FLOAT_RE.match(d, self.pos)
            if not m:
                raise self.fail("invalid float")
            txt = m.group().decode("ascii")
            self.pos = m.end()
            self.expect(b";")
            up = txt.lstrip("+")
            v = float("nan") if "NAN" in up else float(up.replace("INF", "inf"))
            self.slots.append(v)
            return v
        if t == b"s":
            v = _text(self.raw_string())
            self.expect(b";")
            self.slots.append(v)
            return v
        if t == b"S":
            raise self.fail("escaped string type 'S' not supported", p)
        if t == b"a":
            if depth >= self.max_depth:
                raise self.fail("maximum nesting depth exceeded", p)
            n = self.count()
            self.expect(b":{")
            out: dict[Any, Any] = {}
            self.slots.append(out)
            slot = len(self.slots) - 1
            for _ in range(n):
                k = self.key()
                out[k] = self.value(depth + 1)
            self.expect(b"}")
            if all(isinstance(k, int) for k in out) and list(out) == list(range(len(out))):
                lst = list(out.values())
                self.slots[slot] = lst
                return lst
            return out
        if t == b"O":
            if depth >= self.max_depth:
                raise self.fail("maximum nesting depth exceeded", p)
            at = self.pos
            cls = _text(self.raw_string())
            if not isinstance(cls, str) or not cls:
                raise self.fail("invalid class name", at)
            self.expect(b":")
            n = self.count()
            self.expect(b":{")
            obj = PhpObject(cls)
            self.slots.append(obj)
            for _ in range(n):
                kat = self.pos
                name, vis = self.prop_name()
                val = self.value(depth + 1)
                if name in obj.props:
                    # two properties with the same plain name (e.g. a parent's private one):
                    # keep the second one under its raw mangled name so bytes survive.
                    raw = PhpObject(cls, {name: None}, {name: vis}).mangled_name(name) if vis != PUBLIC else name
                    if raw in obj.props:
                        raise self.fail("duplicate property name", kat)
                    obj.props[raw] = val
                else:
                    obj.props[name] = val
                    if vis != PUBLIC:
                        obj.visibility[name] = vis
            self.expect(b"}")
            return obj
        if t == b"E":
            at = self.pos
            raw = _text(self.raw_string())
            self.expect(b";")
            if not isinstance(raw, str) or raw.count(":") != 1 or raw.startswith(":") or raw.endswith(":"):
                raise self.fail("invalid enum", at)
            cls, case = raw.split(":")
            v = PhpEnum(cls, case)
            self.slots.append(v)
            return v
        if t in (b"r", b"R"):
            at = self.pos
            n = self.int_()
            self.expect(b";")
            if n < 1 or n > len(self.slots):
                raise self.fail(f"invalid back-reference {n}", at)
            ref = PhpRef(t.decode(), n, self.slots[n - 1])
            if t == b"r":
                self.slots.append(ref)
            return ref
        if t == b"C":
            raise self.fail("custom-serialized object (C:, legacy Serializable) not supported", p)
        raise self.fail(f"unknown type {t.decode('latin-1')!r}", p)


def loads(
    data: bytes | str,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_items: int = DEFAULT_MAX_ITEMS,
    max_length: int = DEFAULT_MAX_LENGTH,
) -> Any:
    """Parse one serialized PHP value. Trailing bytes are an error."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PhpSerializeError(f"expected bytes or str, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_length:
        raise PhpSerializeError(f"input longer than {max_length} bytes", 0)
    p = _Parser(data, max_depth, max_items)
    try:
        v = p.value(0)
    except RecursionError:  # pragma: no cover - depth limit should prevent this
        raise PhpSerializeError("nesting too deep", p.pos) from None
    if p.pos != len(data):
        raise PhpSerializeError("trailing data after value", p.pos)
    return v


# --------------------------------------------------------------------------------------------
# serialize


def _s(b: bytes) -> bytes:
    return b"s:%d:\"%s\";" % (len(b), b)


def _enc(v: str | bytes) -> bytes:
    if isinstance(v, bytes):
        return v
    return v.encode("utf-8", "surrogateescape")


def _key(k: Any) -> bytes:
    k = php_array_key(k)
    if isinstance(k, int):
        return b"i:%d;" % k
    return _s(_enc(k))


def _dump(v: Any, out: list[bytes], depth: int, max_depth: int) -> None:
    if depth > max_depth:
        raise PhpSerializeError("maximum nesting depth exceeded while serializing")
    if v is None:
        out.append(b"N;")
    elif v is True:
        out.append(b"b:1;")
    elif v is False:
        out.append(b"b:0;")
    elif isinstance(v, int):
        if not INT64_MIN <= v <= INT64_MAX:
            raise PhpSerializeError(f"integer {v} out of 64-bit range")
        out.append(b"i:%d;" % v)
    elif isinstance(v, float):
        out.append(b"d:" + format_php_float(v).encode() + b";")
    elif isinstance(v, (str, bytes)):
        out.append(_s(_enc(v)))
    elif isinstance(v, (list, tuple)):
        out.append(b"a:%d:{" % len(v))
        for i, item in enumerate(v):
            out.append(b"i:%d;" % i)
            _dump(item, out, depth + 1, max_depth)
        out.append(b"}")
    elif isinstance(v, dict):
        norm: dict[Any, Any] = {}
        for k, item in v.items():
            norm[php_array_key(k)] = item
        out.append(b"a:%d:{" % len(norm))
        for k, item in norm.items():
            out.append(_key(k))
            _dump(item, out, depth + 1, max_depth)
        out.append(b"}")
    elif isinstance(v, PhpObject):
        cls = _enc(v.class_name)
        out.append(b'O:%d:"%s":%d:{' % (len(cls), cls, len(v.props)))
        for name, item in v.props.items():
            raw = v.mangled_name(name)
            out.append(b"i:%d;" % raw if isinstance(raw, int) else _s(_enc(raw)))
            _dump(item, out, depth + 1, max_depth)
        out.append(b"}")
    elif isinstance(v, PhpEnum):
        out.append(b"E" + _s(_enc(f"{v.class_name}:{v.case}"))[1:])
    elif isinstance(v, PhpRef):
        out.append(b"%s:%d;" % (v.kind.encode(), v.index))
    else:
        raise PhpSerializeError(f"cannot serialize {type(v).__name__}")


def dumps(value: Any, *, max_depth: int = DEFAULT_MAX_DEPTH) -> bytes:
    """Serialize like PHP's ``serialize()``; returns raw bytes."""
    out: list[bytes] = []
    _dump(value, out, 0, max_depth)
    return b"".join(out)
