"""The floor under pdp's Check throughput: grpc.aio over the same mutual TLS, answering
a canned CheckResponse (no authentication, no decision, no audit).

    .venv/bin/python bench/grpc_floor.py CONFIG.yaml

Started by bench/compare.py: whatever pdp adds per call sits on top of this, so
pdp / floor is what pdp's own code leaves of the transport's speed, and floor / Cerbos
what one Python process can reach at all.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# First pdp.service: it sets grpc's TLS 1.2 cipher list before grpc loads.
import pdp.service  # noqa: F401

# isort: split
import grpc

from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.service import load_config, open_identity
from pdp.service.tls import RotatingServerCredentials

CANNED = pb.CheckResponse(
    decision=pb.DECISION_ALLOW,
    reasons=[pb.Reason(policy="grant", message="canned")],
    decision_id="0" * 36,
    policy_version="0" * 16,
).SerializeToString()


async def answer(_request: bytes, _context: Any) -> bytes:
    return CANNED


async def main(config_file: str) -> None:
    config = load_config(config_file)
    credentials = RotatingServerCredentials(open_identity(config.identity))
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "pdp.v1.DecisionService", {"Check": grpc.unary_unary_rpc_method_handler(answer)}
            ),
        )
    )
    port = server.add_secure_port(config.listen, credentials.server_credentials())
    await server.start()
    print(f"floor: listening on {port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
