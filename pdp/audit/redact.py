"""Redaction: no credential an agent passes in tool arguments may reach an audit sink.

Three rules, applied before a record is encoded (so every sink sees the same bytes):

1. **Secret keys.** A value whose object key names a secret is replaced whole. A key
   matches when the words of a configured name occur, in order and adjacent, among the
   words of the key: ``password`` matches ``db_password`` and ``passwordHash``; ``api_key``
   matches ``X-Api-Key`` and ``apiKey``; ``token`` matches ``access_token`` but not
   ``max_tokens`` (``tokens`` is another word), so a policy on ``max_tokens`` still
   replays. Case-insensitive; camelCase, ``-``, ``_``, ``.`` and spaces split words.
2. **Credential-shaped values.** Bearer tokens, JWTs (``eyJ…`` three base64url parts),
   PEM private keys, AWS access key ids (AKIA/ASIA…), well-known API key prefixes,
   passwords in URLs, ``Authorization:`` header text and ``password=…`` pairs inside any
   string are replaced in place, keeping the surrounding text.
3. **Per-tool paths.** ``RedactionConfig.tool_paths`` masks named argument paths of a
   tool, e.g. ``{"db/query": ("sql",), "http/*": ("headers.*", "body")}``.

Generic high-entropy strings are not detected (too many false positives on ids and hashes):
use rule 3 for tools known to carry them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

REDACTED = "[REDACTED]"

DEFAULT_SECRET_KEYS: tuple[str, ...] = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "secrets",
    "token",
    "authorization",
    "api_key",
    "apikey",
    "private_key",
    "privatekey",
    "access_key",
    "accesskey",
    "cookie",
    "cookies",
    "credential",
    "credentials",
    "bearer",
    "jwt",
)

_MAX_DEPTH = 64  # deeper than any validated request (model.Limits.max_depth is 16)
# Strings found to hold nothing to mask are remembered (tool names, intent purposes,
# policy reasons repeat in every record): up to this many, each up to this long.
_CLEAN_CACHE_SIZE = 8192
_CLEAN_CACHE_MAX_LEN = 256
_SCALARS = frozenset({int, float, bool, type(None)})  # exact types: returned as they are


@dataclass(frozen=True, slots=True)
class RedactionConfig:
    """What to mask. Defaults are on; extend rather than replace ``secret_keys``."""

    secret_keys: tuple[str, ...] = DEFAULT_SECRET_KEYS
    # Extra regular expressions; every match inside any string becomes "[REDACTED]".
    extra_value_patterns: tuple[str, ...] = ()
    # "server/tool", "server/*" or "*" -> argument paths: "a.b", "items[*].card", "headers.*".
    tool_paths: Mapping[str, Sequence[str]] = field(default_factory=dict)
    detect_values: bool = True


def _split_words(text: str) -> tuple[str, ...]:
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", text)
    text = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", text)
    return tuple(word for word in re.split(r"[^a-z0-9]+", text.lower()) if word)


def _contains_run(words: tuple[str, ...], run: tuple[str, ...]) -> bool:
    size = len(run)
    return any(words[i : i + size] == run for i in range(len(words) - size + 1))


# A run of token characters as used by bearer tokens (RFC 6750 b64token).
_B64TOKEN = r"[A-Za-z0-9\-._~+/]{8,}=*"

_FIXED_PATTERNS: tuple[str, ...] = (
    # PEM private keys (RSA, EC, OPENSSH, ENCRYPTED, plain PKCS#8), also when cut off.
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY-----|.*\Z)",
    # JSON Web Tokens / JWS (and the first three parts of a JWE).
    r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*){1,3}",
    # "Bearer <token>" anywhere in text.
    r"(?i:\bbearer)\s+" + _B64TOKEN,
    # AWS access key ids (long-term AKIA, temporary ASIA, ...).
    r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b",
    # Provider API keys with documented prefixes.
    r"\bgh[pousr]_[A-Za-z0-9]{30,}",
    r"\bgithub_pat_[A-Za-z0-9_]{20,}",
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
    r"\bsk-[A-Za-z0-9_-]{20,}",
    r"\bAIza[0-9A-Za-z_-]{35}",
    r"\b[rs]k_(?:live|test)_[0-9A-Za-z]{16,}",
)
# Patterns whose group "keep" survives (names stay readable, the secret goes).
_KEEP_PATTERNS: tuple[str, ...] = (
    # scheme://user:password@host
    r"(?P<keep>\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+:)[^@\s/]+(?=@)",
    # Authorization: Basic xxx / Authorization=Digest ... in header dumps
    r"(?P<keep>(?i:\b(?:proxy-)?authorization)[\"']?\s*[:=]\s*)"
    r"(?:\"[^\"]*\"|'[^']*'|[^\s,;\"']+(?:[ \t]+[^\s,;\"']+)?)",
)


def _key_value_pattern(secret_keys: Sequence[str]) -> str:
    alternatives = sorted(
        {r"[_\-. ]?".join(re.escape(w) for w in _split_words(k)) for k in secret_keys if k},
        key=len,
        reverse=True,
    )
    names = "|".join(a for a in alternatives if a)
    # password=..., "api_key": "...", --token=..., Password=...; (connection strings)
    return (
        r"(?P<keep>(?<![A-Za-z0-9])(?i:(?:[A-Za-z0-9]+[_\-.])*(?:" + names + r"))"
        r"(?![A-Za-z0-9])[\"']?\s*[:=]\s*)(?:\"[^\"]*\"|'[^']*'|[^\s&;,\"'}]+)"
    )


def _keep_prefix(match: re.Match[str]) -> str:
    keep = match.group("keep")
    quote = match.group(0)[len(keep) : len(keep) + 1]
    if quote in ("'", '"'):  # keep quoted JSON / shell text well-formed
        return f"{keep}{quote}{REDACTED}{quote}"
    return keep + REDACTED


class Redactor:
    """Masks secrets in tool arguments and in free text. Thread-safe and reusable."""

    def __init__(self, config: RedactionConfig | None = None) -> None:
        self.config = config or RedactionConfig()
        self._key_runs = tuple(
            run for run in (_split_words(k) for k in self.config.secret_keys) if run
        )
        patterns = [*_FIXED_PATTERNS, *self.config.extra_value_patterns]
        self._value_res = tuple(re.compile(p, re.DOTALL) for p in patterns)
        keep = list(_KEEP_PATTERNS)
        if self._key_runs:
            keep.append(_key_value_pattern(self.config.secret_keys))
        self._keep_res = tuple(re.compile(p, re.DOTALL) for p in keep)
        # One pass to tell that a string holds nothing to mask (the common case).
        self._any = re.compile(
            "|".join(f"(?:{p.replace('(?P<keep>', '(?:')})" for p in [*patterns, *keep]),
            re.DOTALL,
        )
        self._tool_paths: dict[str, tuple[tuple[str, ...], ...]] = {
            tool: tuple(_parse_path(p) for p in paths)
            for tool, paths in self.config.tool_paths.items()
        }
        self.is_secret_key: Callable[[str], bool] = functools.lru_cache(maxsize=4096)(
            self._is_secret_key
        )
        # Only strings with nothing to mask, which the record shows as they are anyway.
        self._clean: set[str] = set()

    def _is_secret_key(self, key: str) -> bool:
        words = _split_words(key)
        return any(_contains_run(words, run) for run in self._key_runs)

    def text(self, value: str) -> str:
        """``value`` with every credential-shaped substring replaced by ``[REDACTED]``."""
        if not self.config.detect_values or value in self._clean:
            return value
        if not self._any.search(value):
            if len(value) <= _CLEAN_CACHE_MAX_LEN:
                clean = self._clean
                if len(clean) >= _CLEAN_CACHE_SIZE:
                    clean.clear()  # a crude bound; refilled from the strings seen next
                clean.add(value)
            return value
        for pattern in self._value_res:
            value = pattern.sub(REDACTED, value)
        for pattern in self._keep_res:
            value = pattern.sub(_keep_prefix, value)
        return value

    def arguments(
        self, server: str, tool: str, arguments: Mapping[str, Any]
    ) -> tuple[dict[str, Any], tuple[str, ...]]:
        """A redacted deep copy of ``arguments`` and the paths that were masked."""
        masked: list[str] = []
        copy = self._walk(arguments, "arguments", masked, 0)
        assert isinstance(copy, dict)
        for path in self._paths_for(server, tool):
            _mask_path(copy, path, "arguments", masked)
        return copy, tuple(masked)

    def value(self, value: Any, path: str) -> tuple[Any, tuple[str, ...]]:
        """Redacts any JSON value (used for intents, reasons and error texts)."""
        masked: list[str] = []
        return self._walk(value, path, masked, 0), tuple(masked)

    def excerpt(self, server: str, tool: str, field: str, text: str) -> tuple[str, bool]:
        """The first characters of a value at ``field`` (a path such as
        ``arguments.db.password``), for the record of a request that broke a limit; True
        when masked. Masked whole when a key on the path names a secret or the tool has
        masked paths (the value is cut, so a path rule cannot be applied to it)."""
        if not text:
            return text, False
        keys = [k for k in re.split(r"[.\[\]]", field) if k and not k.isdigit()]
        if any(self.is_secret_key(k) for k in keys) or (
            field.startswith("arguments") and self._paths_for(server, tool)
        ):
            return REDACTED, True
        cleaned = self.text(text)
        return cleaned, cleaned != text

    def _paths_for(self, server: str, tool: str) -> tuple[tuple[str, ...], ...]:
        found: list[tuple[str, ...]] = []
        for key in (f"{server}/{tool}", f"{server}/*", "*"):
            found.extend(self._tool_paths.get(key, ()))
        return tuple(found)

    def _walk(self, value: Any, path: str, masked: list[str], depth: int) -> Any:
        # Exact-type tests first: isinstance against the Mapping ABC is slow, and most
        # values are plain str, int, dict and list. Scalar and string members are handled
        # in the loops, so that their paths are only formatted when something is masked.
        kind = type(value)
        if kind in _SCALARS:
            return value
        if kind is str or isinstance(value, str):
            cleaned = self.text(value)
            if cleaned != value:
                masked.append(path)
            return cleaned
        mapping = kind is dict or isinstance(value, Mapping)
        if not mapping and kind is not list and not isinstance(value, list | tuple):
            return value
        if depth >= _MAX_DEPTH:
            masked.append(path)
            return REDACTED
        if mapping:
            out: dict[str, Any] = {}
            for key, item in value.items():
                is_str = isinstance(key, str)
                name = self.text(key) if is_str else str(key)
                if name != key:
                    masked.append(f"{path}.{REDACTED}")
                    base, n = name, 2
                    while name in out or name in value:
                        name, n = f"{base}#{n}", n + 1
                if is_str and self.is_secret_key(key):
                    masked.append(f"{path}.{name}")
                    out[name] = REDACTED
                    continue
                kind = type(item)
                if kind in _SCALARS:
                    out[name] = item
                elif kind is str:
                    cleaned = self.text(item)
                    if cleaned != item:
                        masked.append(f"{path}.{name}")
                    out[name] = cleaned
                else:
                    out[name] = self._walk(item, f"{path}.{name}", masked, depth + 1)
            return out
        items: list[Any] = []
        for index, item in enumerate(value):
            kind = type(item)
            if kind in _SCALARS:
                items.append(item)
            elif kind is str:
                cleaned = self.text(item)
                if cleaned != item:
                    masked.append(f"{path}[{index}]")
                items.append(cleaned)
            else:
                items.append(self._walk(item, f"{path}[{index}]", masked, depth + 1))
        return items


_PATH_TOKEN = re.compile(r"([^.\[\]]+)|\[(\*|\d+)\]")


def _parse_path(path: str) -> tuple[str, ...]:
    text = path[2:] if path.startswith("$.") else path
    parts: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos] == ".":
            pos += 1
            continue
        match = _PATH_TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"redaction path {path!r}: cannot parse at offset {pos}")
        parts.append(match.group(1) if match.group(1) is not None else match.group(2))
        pos = match.end()
    if not parts:
        raise ValueError(f"redaction path {path!r} is empty")
    return tuple(parts)


def _mask_path(node: Any, path: tuple[str, ...], prefix: str, masked: list[str]) -> None:
    head, rest = path[0], path[1:]
    keys: list[Any]
    if isinstance(node, dict):
        keys = list(node) if head == "*" else [head] if head in node else []
        labels = [f"{prefix}.{key}" for key in keys]
    elif isinstance(node, list):
        if head == "*":
            keys = list(range(len(node)))
        elif head.isdigit() and int(head) < len(node):
            keys = [int(head)]
        else:
            keys = []
        labels = [f"{prefix}[{index}]" for index in keys]
    else:
        return
    for key, here in zip(keys, labels, strict=True):
        if rest:
            _mask_path(node[key], rest, here, masked)
        elif node[key] != REDACTED:
            node[key] = REDACTED
            masked.append(here)
