"""Strict JSON for MCP bodies and headers: what a gateway must read the same way as the server.

``json.loads`` keeps the *last* of two equal keys, accepts ``NaN``/``Infinity`` and lone
UTF-16 surrogates. Another parser (the MCP server's, a logging pipeline's) may keep the
*first* key or refuse the text, so a body the PDP reads as ``{"name": "read"}`` could
reach the server as ``{"name": "delete"}``. Anything two reasonable parsers could read
differently is refused here (I-JSON, RFC 7493): duplicate keys, non-finite numbers,
invalid UTF-8, lone surrogates, nesting beyond a bound.
"""

from __future__ import annotations

import json
from typing import Any

from pdp.model import JsonValue, RequestError

# Deep enough for any MCP message (arguments are bounded again by pdp.model.Limits);
# shallow enough that Python's recursive parser never hits its recursion limit.
DEFAULT_MAX_DEPTH = 64


class _Duplicate(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _depth_exceeds(text: str, max_depth: int) -> bool:
    """True when brackets outside strings nest deeper than ``max_depth`` (checked before
    parsing, so a hostile 100,000-level body costs one linear scan, not a RecursionError)."""
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _check_strings(value: JsonValue, field: str) -> None:
    """Refuses lone surrogates (``"\\ud800"``) in any key or string value."""
    stack: list[JsonValue] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            texts: list[str] = [item]
        elif isinstance(item, dict):
            texts = list(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            texts = []
            stack.extend(item)
        else:
            continue
        for text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise RequestError(
                    field, "surrogate", "holds a lone UTF-16 surrogate escape (not valid Unicode)"
                ) from None


def loads_strict(
    data: bytes | str, *, field: str = "body", max_depth: int = DEFAULT_MAX_DEPTH
) -> JsonValue:
    """Parses ``data`` as strict JSON or raises :class:`RequestError` naming ``field``."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError(
                field, "encoding", f"is not UTF-8 (invalid byte at offset {exc.start})"
            ) from None
    else:
        text = data
    if text.startswith("\ufeff"):
        raise RequestError(field, "encoding", "starts with a byte order mark")
    if _depth_exceeds(text, max_depth):
        raise RequestError(field, "depth", f"nesting is deeper than {max_depth}")
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except _Duplicate as exc:
        raise RequestError(
            field, "duplicate_key", f"has the key {exc.key[:64]!r} twice in one object"
        ) from None
    except RecursionError:
        raise RequestError(field, "depth", f"nesting is deeper than {max_depth}") from None
    except ValueError as exc:
        # JSONDecodeError: "Expecting value: line 1 column 1 (char 0)" is spec-level enough.
        raise RequestError(field, "not_json", f"is not valid JSON: {exc}") from None
    _check_strings(value, field)
    return value
