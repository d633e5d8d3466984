"""The Ed25519 key that signs checkpoints: created on first use, kept in the state dir.

``audit-signing.key`` (PKCS#8 PEM, mode 0600) and ``audit-signing.pub`` (SPKI PEM) sit
side by side; verifiers need only the public file. A key id (first 16 hex digits of the
SHA-256 of the raw public key) is written into every checkpoint so a rotated key is named.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PRIVATE_KEY_FILE = "audit-signing.key"
PUBLIC_KEY_FILE = "audit-signing.pub"


class SigningKeyError(Exception):
    """The checkpoint key cannot be loaded or created; the message says which file and why."""


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class CheckpointSigner:
    """Signs checkpoint messages with an Ed25519 private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

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


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_or_create_signer(state_dir: Path) -> CheckpointSigner:
    """Loads ``state_dir/audit-signing.key``, creating it (and the .pub) if absent."""
    private_path = state_dir / PRIVATE_KEY_FILE
    public_path = state_dir / PUBLIC_KEY_FILE
    if private_path.exists():
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
        state_dir.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_new(private_path, pem, 0o600)
    signer = CheckpointSigner(key)
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
