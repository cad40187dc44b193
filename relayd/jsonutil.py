"""
Strict JSON for everything that comes off the wire.

Python's json accepts what browsers cannot send back (NaN, Infinity, 1e400 as inf) and raises odd
errors on hostile input (deep nesting, 5000-digit integers); here every such input is one
BadJSON, and every output is JSON a browser can parse.

orjson does the work at a fraction of the standard library's cost. It differs from the rules
above in a few places (it refuses escaped lone surrogates, reads integers beyond 64 bits as
floats), so what it refuses, and any text with a run of 19 or more digits, goes to the standard
library under the rules above: orjson only makes the common case fast, it never decides what is
valid or what a number is. Likewise for output, which orjson cannot write for a few values
(big integers, non-string keys, lone surrogates).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson


class BadJSON(ValueError):
    pass


# Deepest nesting of objects and arrays accepted from a client. Far above what any protocol here
# uses (its deepest documents are a few levels), and below orjson's encoding limit (254), so
# everything relayd accepted can be written out again by the fast path, never by a recursive one.
MAX_DEPTH = 64


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadJSON(f"number {text[:20]} is out of range")
    return value


def _reject_constant(name: str) -> Any:
    raise BadJSON(f"{name} is not JSON")


_decoder = json.JSONDecoder(parse_float=_finite, parse_constant=_reject_constant)
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_ascii_encoder = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)


_LONG_DIGITS = re.compile(rb"[0-9]{19}")
_LONG_DIGITS_TEXT = re.compile(r"[0-9]{19}")


def loads(data: bytes | str) -> Any:
    """A client's JSON: finite numbers, exact integers, at most MAX_DEPTH levels deep; else BadJSON."""
    value = _loads(data)
    # counting brackets runs at memchr speed; only a document with that many is walked
    if _brackets(data) > MAX_DEPTH and _depth_over(value, MAX_DEPTH):
        raise BadJSON(f"nested deeper than {MAX_DEPTH} levels")
    return value


def _brackets(data: bytes | str) -> int:
    if isinstance(data, bytes):
        return data.count(b"[") + data.count(b"{")
    return data.count("[") + data.count("{")


def _depth_over(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _loads(data: bytes | str) -> Any:
    long_digits = _LONG_DIGITS if isinstance(data, bytes) else _LONG_DIGITS_TEXT
    if long_digits.search(data) is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    try:
        if isinstance(data, bytes):
            data = data.decode("utf-8")
        return _decoder.decode(data)
    except BadJSON:
        raise
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise BadJSON(str(e).split("\n")[0][:200]) from None


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON; a string holding a lone surrogate is written escaped rather than failing."""
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        pass
    text = _encoder.encode(value)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _ascii_encoder.encode(value).encode("ascii")


def loads_typed(data: bytes | str, key: str = "type") -> dict:
    """A JSON object whose `key` is a string: the message shape of every JSON protocol relayd speaks."""
    try:
        value = loads(data)
    except BadJSON as e:
        raise BadJSON(f"not JSON: {e}") from None
    if not isinstance(value, dict) or not isinstance(value.get(key), str):
        raise BadJSON(f"a message is a JSON object with a string {key}")
    return value
