"""TLS 1.2 cipher suites for grpc: ECDHE key exchange with AEAD ciphers only.

grpcio's Python API cannot require TLS 1.3 (no minimum-version setting: grpc/grpc#37305;
#43074 and #43080 would add it, not in 1.85). TLS 1.3 suites are fixed by BoringSSL
and all AEAD. What remains configurable is the TLS 1.2 suite list, through the
``GRPC_SSL_CIPHER_SUITES`` environment variable, and grpc core reads it ONCE, when the
``grpc`` module is first imported (measured with grpcio 1.85.1: a value set after the
import has no effect). Hence this module, imported first by ``pdp.service``:

* unset -> set to :data:`AEAD_TLS12_CIPHER_SUITES` (grpc's own default is AES-GCM only;
  this adds ChaCha20-Poly1305 and makes the choice explicit);
* set by the operator -> kept, and :func:`check_cipher_suites` makes the server refuse to
  start if it names anything but ECDHE with AES-GCM or ChaCha20-Poly1305.

For TLS 1.3 only, terminate mTLS in a proxy that can enforce it (e.g. Envoy with
``tls_minimum_protocol_version: TLSv1_3``). tests/service/test_tls.py checks what a
``pdp serve`` process actually negotiates.
"""

from __future__ import annotations

import os
import sys

CIPHER_SUITES_ENV = "GRPC_SSL_CIPHER_SUITES"
AEAD_TLS12_CIPHER_SUITES = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
_AEAD_MARKERS = ("-GCM-", "-CHACHA20-POLY1305")

# Whether grpc was imported before this module could set the variable (then grpc uses
# whatever the environment held at that time, or its AES-GCM-only default).
GRPC_IMPORTED_FIRST = "grpc" in sys.modules


def check_cipher_suites(value: str) -> list[str]:
    """The suites in ``value`` that are not ECDHE with an AEAD cipher."""
    return [
        suite
        for suite in value.split(":")
        if not (suite.startswith("ECDHE-") and any(m in suite for m in _AEAD_MARKERS))
    ]


def effective_cipher_suites() -> str:
    return os.environ.get(CIPHER_SUITES_ENV, "")


if not GRPC_IMPORTED_FIRST and CIPHER_SUITES_ENV not in os.environ:
    os.environ[CIPHER_SUITES_ENV] = AEAD_TLS12_CIPHER_SUITES
