"""Verification keys: JWK Set files re-read when they change, like trust bundle files.

A :class:`JwksFile` holds the last good keys of one file. The file is looked at (one
``stat``) at most every ``check_interval_s`` when keys are asked for, and re-read only
when its size, mtime or inode changed. A file that turns unreadable or invalid keeps
the last good keys, and says why in the log, exactly as a bad bundle update does: a
half-written file must never empty the key set. At start an unusable file is an error.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

from pdp.proof.jose import PublicKey, parse_jwks

log = logging.getLogger(__name__)

Keys = Mapping[str, PublicKey]


class KeyFileError(ValueError):
    """A JWK Set file cannot be used; the message names the file and the rule."""


def load_jwks_file(path: Path, *, use: str | None = None) -> Keys:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise KeyFileError(f"{path}: not JSON: {exc}") from None
    try:
        return MappingProxyType(parse_jwks(document, str(path), use=use))
    except ValueError as exc:
        raise KeyFileError(str(exc)) from None


class JwksFile:
    """The keys of one JWK Set file, reloaded on change; thread-safe."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        use: str | None = None,
        check_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self._use = use
        self._interval = check_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._keys = load_jwks_file(self.path, use=use)
        self._checked = clock()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def keys(self) -> Keys:
        now = self._clock()
        if now - self._checked < self._interval:
            return self._keys
        with self._lock:
            if now - self._checked >= self._interval:
                self._checked = now
                self._reload_if_changed()
            return self._keys

    def reload(self) -> bool:
        """Re-reads the file now; True when the keys changed. Raises KeyFileError."""
        with self._lock:
            stamp = self._stat()
            keys = load_jwks_file(self.path, use=self._use)
            changed = set(keys) != set(self._keys)
            self._keys, self._stamp = keys, stamp
            return changed

    def _reload_if_changed(self) -> None:
        stamp = self._stat()
        if stamp == self._stamp:
            return
        try:
            keys = load_jwks_file(self.path, use=self._use)
        except KeyFileError as exc:
            log.error("%s; keeping the %d key(s) loaded before", exc, len(self._keys))
            return
        self._stamp = stamp
        if set(keys) != set(self._keys):
            log.info("%s: now %d key(s): %s", self.path, len(keys), ", ".join(sorted(keys)))
        self._keys = keys


class KeyFiles:
    """One :class:`JwksFile` per name: intent issuers by ``iss``, or JWT bundles by
    trust domain (``use="jwt-svid"``: a SPIFFE bundle's other keys are not JWT keys)."""

    def __init__(
        self,
        files: Mapping[str, str | os.PathLike[str]],
        *,
        use: str | None = None,
        check_interval_s: float = 5.0,
    ) -> None:
        self.files = {
            name: JwksFile(path, use=use, check_interval_s=check_interval_s)
            for name, path in files.items()
        }

    def keys_for(self, name: str) -> Keys | None:
        file = self.files.get(name)
        return None if file is None else file.keys()
