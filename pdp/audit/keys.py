"""The Ed25519 key that signs checkpoints: created on first use, kept apart from the logs.

The private key (PKCS#8 PEM, mode 0600, by default ``audit-signing.key`` in pdp's state
directory, never in the audit log directory) and its public half (SPKI PEM, same name
with ``.pub``) sit side by side. Whoever can write the logs must not be able to read the
key: a key in the log directory is refused at start, and so is a key file that others
may read (anything but 0600). The key's fingerprint (SHA-256 of the raw public key, 64
hex digits) is printed at start and recorded, with the public key, in every segment
line; verifiers pin it (``pdp audit verify --key-fingerprint``). The key id in every
checkpoint is its first 16 hex digits, so a rotated key is named.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PRIVATE_KEY_FILE = "audit-signing.key"
PUBLIC_KEY_FILE = "audit-signing.pub"


class SigningKeyError(Exception):
    """The checkpoint key cannot be loaded or created; the message says which file and why."""


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw public key, 64 lowercase hex digits."""
    return hashlib.sha256(raw_public_key(public_key)).hexdigest()


def key_id(public_key: Ed25519PublicKey) -> str:
    return fingerprint(public_key)[:16]


def public_key_from_base64(text: str) -> Ed25519PublicKey:
    """The public key as recorded in a segment line (base64 of the 32 raw bytes)."""
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error):
        raise SigningKeyError("not a base64 Ed25519 public key") from None


class CheckpointSigner:
    """Signs checkpoint messages with an Ed25519 private key."""

    def __init__(self, private_key: Ed25519PrivateKey, path: Path | None = None) -> None:
        self._key = private_key
        self.path = path
        self.public_key = private_key.public_key()
        self.fingerprint = fingerprint(self.public_key)
        self.key_id = self.fingerprint[:16]
        self.public_key_b64 = base64.b64encode(raw_public_key(self.public_key)).decode("ascii")

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self._key.sign(message)).decode("ascii")


def verify_signature(public_key: Ed25519PublicKey, message: bytes, signature: str) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
        public_key.verify(raw, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _write_new(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _create_exclusive(path: Path, data: bytes) -> bool:
    """Writes ``path`` (0600, durably) only if it does not exist; False if it did."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # atomic, and fails if the name exists
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    return True


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_path(private_path: Path) -> Path:
    """Where the public half of ``private_path`` is kept: same name, ``.pub``."""
    return private_path.with_name(private_path.stem + ".pub")


def check_key_apart(private_path: Path, log_dir: Path) -> None:
    """Refuses a key inside the log directory, and an old layout's key left there (before
    pdp kept the key apart): whoever can write the logs could re-sign them."""
    log_dir = log_dir.resolve()
    if private_path.resolve().is_relative_to(log_dir):
        raise SigningKeyError(
            f"{private_path}: the checkpoint signing key must not live in the audit log "
            f"directory {log_dir} (whoever can write the logs could re-sign them); "
            "put it in the state directory or give another path"
        )
    legacy = log_dir / PRIVATE_KEY_FILE
    if legacy.exists():
        raise SigningKeyError(
            f"{legacy}: a checkpoint signing key in the audit log directory (the layout "
            "before pdp kept the key apart). Move it where pdp now looks for it, with its "
            f".pub: `mv {legacy} {public_key_path(legacy)} {private_path.parent}/` (rename "
            f"them to {private_path.name} and {public_key_path(private_path).name} if "
            "those differ), then pin its fingerprint for `pdp audit verify`. pdp does not "
            "move or ignore it by itself."
        )


def _check_mode(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SigningKeyError(
            f"{path}: the checkpoint signing key is readable or writable by others (mode "
            f"{mode:04o}); allow its owner only: chmod 600 {path}"
        )


def load_or_create_signer(private_path: Path, *, log_dir: Path | None = None) -> CheckpointSigner:
    """Loads the key at ``private_path``, creating it (and its .pub) if absent.

    With ``log_dir``: refuses a key kept in (or left behind in) the log directory."""
    if log_dir is not None:
        check_key_apart(private_path, log_dir)
    public_path = public_key_path(private_path)
    if private_path.exists():
        _check_mode(private_path)
        try:
            key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
        except ValueError as exc:
            raise SigningKeyError(f"{private_path}: not a PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError(f"{private_path}: expected an Ed25519 key")
    else:
        if public_path.exists():
            raise SigningKeyError(
                f"{private_path} is missing but {public_path} exists: restore the private key, "
                "or move the public key away to start a new key (old checkpoints then need it)"
            )
        private_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        if not _create_exclusive(private_path, pem):
            # Another process made it first (servers starting together): use theirs.
            return load_or_create_signer(private_path)
    signer = CheckpointSigner(key, private_path)
    expected = public_key_pem(signer.public_key)
    if not public_path.exists() or public_path.read_bytes() != expected:
        _write_new(public_path, expected, 0o644)
    return signer


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except ValueError as exc:
        raise SigningKeyError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path}: expected an Ed25519 public key")
    return key
