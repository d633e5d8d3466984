"""Command-line options shared by every mTLS client command (`pdp call`, `pdp replay --target`).

Kept free of grpc imports so that building the CLI parser stays cheap.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

DEFAULT_TARGET = "127.0.0.1:8443"


@dataclass(frozen=True)
class ClientOptions:
    """Where a client connects and how it proves who it is (see the flags below)."""

    target: str = DEFAULT_TARGET
    dev: bool = False
    state_dir: str | None = None
    cert: str | None = None
    key: str | None = None
    bundle: str | None = None
    workload_api: str | None = None  # "" reads $SPIFFE_ENDPOINT_SOCKET
    server_id: str | None = None
    server_name: str | None = None
    timeout: float = 10.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ClientOptions:
        """From a parser with ``--target``, ``--timeout`` and the identity options."""
        return cls(
            target=args.target,
            dev=args.dev,
            state_dir=args.state_dir,
            cert=args.cert,
            key=args.key,
            bundle=args.bundle,
            workload_api=args.workload_api,
            server_id=args.server_id,
            server_name=args.server_name,
            timeout=args.timeout,
        )


def add_client_identity_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """How a client proves who it is and checks who the server is."""
    parser.add_argument("--dev", action="store_true", help="use the dev gateway SVID and dev CA")
    parser.add_argument("--state-dir", metavar="DIR", help="dev CA state (default: .pdp-state)")
    parser.add_argument("--cert", metavar="FILE", help="client SVID certificate chain (PEM)")
    parser.add_argument("--key", metavar="FILE", help="client SVID private key (PEM)")
    parser.add_argument(
        "--bundle", metavar="FILE", help="trust bundle of the server's trust domain"
    )
    parser.add_argument(
        "--workload-api",
        nargs="?",
        const="",
        metavar="SOCKET",
        help="take the client SVID from the SPIFFE Workload API (default: $SPIFFE_ENDPOINT_SOCKET)",
    )
    parser.add_argument(
        "--server-id", metavar="SPIFFE_ID", help="the SPIFFE ID the server must have"
    )
    parser.add_argument(
        "--server-name",
        metavar="NAME",
        help="TLS server name (SNI) to send; the server's SPIFFE ID is what is checked",
    )
