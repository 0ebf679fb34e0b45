"""Bounded decoding of JSON and msgpack: depth and size are checked before msgspec parses.

Every payload or record an agent controls is parsed through here. msgspec (like
the standard library's ``json``) descends nested arrays and maps recursively,
so a one-kilobyte body nested a thousand deep raises ``RecursionError`` from
the middle of whatever was parsing it. This module measures the nesting first
with a linear scan that never recurses — for JSON, of the brackets outside
strings; for msgpack, of the type headers — and refuses a body over a bound
with :class:`MalformedPayload` (reason ``malformed``, the detail naming the
bound), before handing it to msgspec.

Depth counts open containers: ``1`` and ``"a"`` are depth 0, ``[]`` and
``{}`` depth 1, ``[[1]]`` depth 2.
"""

from __future__ import annotations

import itertools
import re
import sys
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import msgspec

from trustbus.bus._errors import Malformed

T = TypeVar("T")

DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_BYTES = 1024 * 1024


class MalformedPayload(Malformed, ValueError):
    """A JSON or msgpack body that is too deep, too large, or does not parse as its type.

    Its reason code is ``malformed``; ``detail`` says which bound it broke or
    what did not parse. It is also a ``ValueError``, like msgspec's own
    ``DecodeError``, so code that handled a failed decode before handles this.
    """


@dataclass(frozen=True, slots=True)
class Bounds:
    """How deep and how large a body may be.

    Attributes:
        max_depth: most containers open at once.
        max_bytes: largest body.
    """

    max_depth: int = DEFAULT_MAX_DEPTH
    max_bytes: int = DEFAULT_MAX_BYTES


DEFAULT_BOUNDS = Bounds()

# A JSON string with its escapes. The closing quote is optional so that a match, once started,
# never fails: an unterminated string cannot make the search quadratic.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
# Openers step the depth by +1, closers by -1 (0xff read as a signed byte); other bytes are dropped.
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# Bytes that can start a msgpack array or map: fixmap, fixarray, array 16/32, map 16/32.
_CONTAINER_BYTES = bytes(range(0x80, 0xA0)) + b"\xdc\xdd\xde\xdf"


def _json_too_deep(data: bytes, limit: int) -> bool:
    """Whether a JSON text nests more than ``limit`` containers; brackets in strings do not count.

    Strings are cut out and every other byte but brackets dropped (in C, by
    ``re`` and ``bytes.translate``); the running sum of the brackets left is
    the depth, summed a chunk at a time so a deep body is refused early.
    Linear in the length of ``data``, never recursive. For text that is not
    JSON the answer is only an estimate: the parser refuses such text anyway.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False  # fewer containers than the limit: no need to look closer
    steps = memoryview(_JSON_STRING.sub(b"", data).translate(_BRACKET_STEPS, _NOT_BRACKETS)).cast("b")
    depth = 0
    for start in range(0, len(steps), _CHUNK):
        running = list(itertools.accumulate(steps[start : start + _CHUNK], initial=depth))
        if max(running) > limit:
            return True
        depth = running[-1]
    return False


_CHUNK = 4096

# What each msgpack type byte is followed by, for the walk: (what, a, b).
_SCALAR, _SKIP, _SIZED, _FIXED_CONTAINER, _SIZED_CONTAINER, _INVALID = range(6)


def _type_table() -> list[tuple[int, int, int]]:
    table = [(_INVALID, 0, 0)] * 256
    for head in range(256):
        if head <= 0x7F or head >= 0xE0 or head in (0xC0, 0xC2, 0xC3):  # fixint, nil, bool
            table[head] = (_SCALAR, 0, 0)
        elif head <= 0x8F:  # fixmap: two objects per entry
            table[head] = (_FIXED_CONTAINER, 2 * (head & 0x0F), 0)
        elif head <= 0x9F:  # fixarray
            table[head] = (_FIXED_CONTAINER, head & 0x0F, 0)
        elif head <= 0xBF:  # fixstr
            table[head] = (_SKIP, head & 0x1F, 0)
    fixed = {0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
    fixed |= {0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17}  # fixext 1..16: a type byte and the data
    for head, size in fixed.items():
        table[head] = (_SKIP, size, 0)
    # bin, str (8/16/32): width of the length; ext (8/16/32): the same, then a type byte.
    for head, width, extra in ((0xC4, 1, 0), (0xC5, 2, 0), (0xC6, 4, 0), (0xD9, 1, 0), (0xDA, 2, 0), (0xDB, 4, 0),
                               (0xC7, 1, 1), (0xC8, 2, 1), (0xC9, 4, 1)):  # fmt: skip
        table[head] = (_SIZED, width, extra)
    # array 16/32, map 16/32: width of the count, objects per entry.
    for head, width, per_entry in ((0xDC, 2, 1), (0xDD, 4, 1), (0xDE, 2, 2), (0xDF, 4, 2)):
        table[head] = (_SIZED_CONTAINER, width, per_entry)
    return table  # 0xc1 stays _INVALID: never used


_TYPES = _type_table()


def _msgpack_too_deep(data: bytes, limit: int) -> bool:
    """Whether a msgpack object nests more than ``limit`` arrays and maps.

    Walks the type headers with an explicit stack, skipping the bodies of
    strings, binaries and extensions: linear in the number of objects, never
    recursive, and stops at the first container past the limit. A truncated
    or invalid body ends the walk (the parser refuses it anyway).
    """
    if len(data) - len(data.translate(None, _CONTAINER_BYTES)) <= limit:
        return False  # fewer bytes that could open a container than the limit
    size = len(data)
    pending = [1]  # objects still to read in each open container (the first entry: the top level)
    pos = 0
    while pos < size:
        while pending[-1] == 0:
            pending.pop()
            if not pending:
                return False
        pending[-1] -= 1
        what, a, b = _TYPES[data[pos]]
        pos += 1
        if what == _SCALAR:
            continue
        if what == _SKIP:
            pos += a
            continue
        if what == _SIZED:
            pos += a + b + int.from_bytes(data[pos : pos + a], "big")
            continue
        if what == _FIXED_CONTAINER:
            children = a
        elif what == _SIZED_CONTAINER:
            children = b * int.from_bytes(data[pos : pos + a], "big")
            pos += a
        else:
            return False
        if len(pending) > limit:  # this container opens at depth len(pending)
            return True
        pending.append(children)
    return False


def check_json(data: bytes | str, bounds: Bounds = DEFAULT_BOUNDS) -> bytes:
    """Raise :class:`MalformedPayload` if ``data`` is over ``bounds``; return it as bytes."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    _check_size(raw, bounds)
    if _json_too_deep(raw, bounds.max_depth):
        raise MalformedPayload(f"JSON nested deeper than {bounds.max_depth} levels")
    return raw


def check_msgpack(data: bytes, bounds: Bounds = DEFAULT_BOUNDS) -> None:
    """Raise :class:`MalformedPayload` if ``data`` is over ``bounds``."""
    _check_size(data, bounds)
    if _msgpack_too_deep(data, bounds.max_depth):
        raise MalformedPayload(f"msgpack nested deeper than {bounds.max_depth} levels")


def _check_size(data: bytes, bounds: Bounds) -> None:
    if len(data) > bounds.max_bytes:
        raise MalformedPayload(f"{len(data)} bytes, limit {bounds.max_bytes}")


@overload
def decode_json(data: bytes | str, *, bounds: Bounds = ...) -> Any: ...
@overload
def decode_json(data: bytes | str, *, type: type[T], bounds: Bounds = ...) -> T: ...
def decode_json(data: bytes | str, *, type: Any = Any, bounds: Bounds = DEFAULT_BOUNDS) -> Any:
    """Parse JSON within ``bounds`` (as ``type``, default any JSON value).

    Raises:
        MalformedPayload: too deep, too large, not JSON, or not a ``type``.
    """
    raw = check_json(data, bounds)
    try:
        return _json_decoder(type).decode(raw)
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:
        raise MalformedPayload(f"not {_name(type)} JSON: {exc}") from exc


@overload
def decode_msgpack(data: bytes, *, bounds: Bounds = ...) -> Any: ...
@overload
def decode_msgpack(data: bytes, *, type: type[T], bounds: Bounds = ...) -> T: ...
def decode_msgpack(data: bytes, *, type: Any = Any, bounds: Bounds = DEFAULT_BOUNDS) -> Any:
    """Parse msgpack within ``bounds`` (as ``type``, default any msgpack value).

    Raises:
        MalformedPayload: too deep, too large, not msgpack, or not a ``type``.
    """
    check_msgpack(data, bounds)
    try:
        return _msgpack_decoder(type).decode(data)
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:
        raise MalformedPayload(f"not {_name(type)} msgpack: {exc}") from exc


def _name(type: Any) -> str:
    return "valid" if type is Any else f"a valid {getattr(type, '__name__', type)}"


_json_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
_msgpack_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


def _json_decoder(type: Any) -> msgspec.json.Decoder[Any]:
    decoder = _json_decoders.get(type)
    if decoder is None:
        decoder = _json_decoders[type] = msgspec.json.Decoder(type)
    return decoder


def _msgpack_decoder(type: Any) -> msgspec.msgpack.Decoder[Any]:
    decoder = _msgpack_decoders.get(type)
    if decoder is None:
        decoder = _msgpack_decoders[type] = msgspec.msgpack.Decoder(type)
    return decoder


# An envelope's size is the receiver's limit (bus.Limits); only the depth of its payload is bounded here.
PAYLOAD_BOUNDS = Bounds(max_bytes=sys.maxsize)


def check_payload(content_type: str, payload: bytes, bounds: Bounds = PAYLOAD_BOUNDS) -> None:
    """Raise :class:`MalformedPayload` if a JSON or msgpack payload nests deeper than ``bounds`` allow.

    Part of opening an envelope: every reader refuses the same bodies, before
    any of them parses one. It does not check that the payload parses.
    """
    # What check_json and check_msgpack check, in their order and words, without their three calls per
    # envelope: this runs on every envelope opened.
    if content_type == "application/msgpack":
        data, what, too_deep = payload, "msgpack", _msgpack_too_deep
    elif content_type == "application/json":
        data, what, too_deep = payload.encode() if isinstance(payload, str) else bytes(payload), "JSON", _json_too_deep
    else:
        return
    if len(data) > bounds.max_bytes:
        raise MalformedPayload(f"{content_type} payload: {len(data)} bytes, limit {bounds.max_bytes}")
    if too_deep(data, bounds.max_depth):
        raise MalformedPayload(f"{content_type} payload: {what} nested deeper than {bounds.max_depth} levels")
