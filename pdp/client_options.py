"""Command-line options shared by every mTLS client command (`pdp call`, `pdp replay --target`).

Kept free of grpc imports so that building the CLI parser stays cheap.
"""

from __future__ import annotations

import argparse


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
        "--server-name", metavar="NAME", help="TLS name to check (default: the target's host)"
    )
