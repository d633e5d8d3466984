"""pdp.client against real servers over real mTLS: answers, fail-closed denies with
their codes, bounded retries, and the server's SPIFFE ID checked on the connection
that carries the calls."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pdp.client import (
    FAILURE_BAD_ANSWER,
    FAILURE_TIMEOUT,
    FAILURE_UNREACHABLE,
    FAILURE_WRONG_SERVER,
    AsyncClient,
    Client,
    ClientConfigError,
    ClientIdentity,
    DecisionUnavailable,
    Intent,
    InvalidRequestError,
    ToolCall,
)
from pdp.engine import Engine
from pdp.identity.sources import StaticFileSource
from pdp.service import DecisionServer
from tests.service.conftest import TD, Pki, example_request, service_config

from .conftest import SERVER_ID, FakeServer, slow, write_identity

AGENT = "spiffe://acme.test/agent/support-bot"
GET_TICKET = ToolCall(
    AGENT, "tickets", "get_ticket", {"ticket_id": "T-1"},
    Intent("support.triage", ("tickets/*",), datetime.now(UTC) + timedelta(hours=1)),
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_check_and_batch_answer_like_the_server(
    server: DecisionServer, gateway_identity: ClientIdentity
) -> None:
    with Client(server.address, gateway_identity) as pdp:
        allowed = pdp.check(example_request("support-get-ticket"))
        assert allowed.allowed and allowed.failure is None
        assert allowed.decision_id and allowed.policy_version
        denied = pdp.check(example_request("support-delete-ticket"))
        assert not denied.allowed and denied.reasons[0].policy == "support.never_delete"
        batch = pdp.check_batch(
            [example_request("support-get-ticket"), example_request("support-delete-ticket")]
        )
        assert [r.allowed for r in batch] == [True, False]
        assert pdp.check_batch([]) == []


def test_typed_tool_call(server: DecisionServer, gateway_identity: ClientIdentity) -> None:
    data = example_request("support-get-ticket")
    call = ToolCall(
        data["agent"], data["server"], data["tool"], data["arguments"],
        Intent(data["intent"]["purpose"], tuple(data["intent"]["tools"])),
        session="s-1",
    )  # fmt: skip
    with Client(server.address, gateway_identity) as pdp:
        assert pdp.check(call).allowed


def test_async_client(server: DecisionServer, gateway_identity: ClientIdentity) -> None:
    async def run() -> tuple[bool, list[bool]]:
        async with AsyncClient(server.address, gateway_identity) as pdp:
            one = await pdp.check(example_request("support-get-ticket"))
            many = await pdp.check_batch(
                [example_request("support-delete-ticket"), example_request("support-get-ticket")]
            )
            return one.allowed, [r.allowed for r in many]

    assert asyncio.run(run()) == (True, [False, True])


def test_an_impostor_with_another_svid_of_the_trust_domain_is_not_believed(
    pki: Pki, gateway_identity: ClientIdentity, fake_server: Callable[..., FakeServer]
) -> None:
    """The attacker holds a valid SVID of pdp's own trust domain, naming the very
    address the client dials (IP SAN 127.0.0.1, DNS localhost): chain and TLS name
    both check out. Only the SPIFFE ID differs, and the request never reaches it."""
    impostor_svid = pki.svid(
        f"spiffe://{TD}/batch/impostor", dns_names=("localhost",), ip_addresses=("127.0.0.1",)
    )
    impostor = fake_server(impostor_svid)
    with Client(impostor.address, gateway_identity) as pdp:
        result = pdp.check(example_request("support-get-ticket"))
    assert not result.allowed
    assert result.failure == FAILURE_WRONG_SERVER
    assert "spiffe://pdp.test/batch/impostor" in result.reasons[0].message
    assert impostor.calls == 0  # not one byte of the request was sent to it
    with (
        Client(impostor.address, gateway_identity, on_failure="raise") as pdp,
        pytest.raises(DecisionUnavailable) as raised,
    ):
        pdp.check(example_request("support-get-ticket"))
    assert raised.value.code == FAILURE_WRONG_SERVER
    assert impostor.calls == 0


def test_pdp_call_does_not_print_an_impostors_allow(
    pki: Pki, fake_server: Callable[..., FakeServer], tmp_path: Path
) -> None:
    impostor = fake_server(pki.svid(f"spiffe://{TD}/pdp-impostor", ip_addresses=("127.0.0.1",)))
    files = write_identity(tmp_path / "gw", pki.gateway, pki.ca.bundle_pem)
    request = tmp_path / "request.json"
    request.write_text(json.dumps(example_request("support-get-ticket")))
    called = subprocess.run(
        [sys.executable, "-m", "pdp.cli", "call", str(request), "--target", impostor.address,
         "--server-id", SERVER_ID, "--cert", str(files["cert"]), "--key", str(files["key"]),
         "--bundle", str(files["bundle"]), "--server-name", "127.0.0.1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert called.returncode == 2, called.stdout
    assert called.stdout == ""
    assert "pdp_wrong_server" in called.stderr and "pdp-impostor" in called.stderr
    assert impostor.calls == 0


def test_a_server_svid_with_only_a_uri_san_works_without_server_name(
    pki: Pki, engine: Engine, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A SPIRE-style server SVID names no DNS name or IP address. Its SPIFFE ID is what
    the client checks, so `pdp call` needs no --server-name, and the server logs no
    failed handshake."""
    spire_like = pki.svid(SERVER_ID)  # URI SAN only
    server_files = write_identity(tmp_path / "server", spire_like, pki.ca.bundle_pem)
    source = StaticFileSource(
        server_files["cert"], server_files["key"], {TD: server_files["bundle"]}
    )
    files = write_identity(tmp_path / "gw", pki.gateway, pki.ca.bundle_pem)
    request = tmp_path / "request.json"
    request.write_text(json.dumps(example_request("support-get-ticket")))
    with source:
        server = DecisionServer(service_config(), engine, source).start()
        try:
            capfd.readouterr()
            called = subprocess.run(
                [sys.executable, "-m", "pdp.cli", "call", str(request), "--target",
                 server.address, "--server-id", SERVER_ID, "--cert", str(files["cert"]),
                 "--key", str(files["key"]), "--bundle", str(files["bundle"])],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            time.sleep(0.5)  # let the server log what it would about the connection
        finally:
            server.stop(0)
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["decision"] == "allow"
    logged = capfd.readouterr().err
    assert "Handshake failed" not in logged
    assert not [line for line in logged.splitlines() if line[:1] == "E" and line[1:5].isdigit()]


def test_unreachable_pdp_is_a_deny_with_a_code_in_bounded_time(
    gateway_identity: ClientIdentity,
) -> None:
    port = free_port()  # nothing listens here
    with Client(f"127.0.0.1:{port}", gateway_identity, timeout=5, attempts=3) as pdp:
        started = time.monotonic()
        result = pdp.check(GET_TICKET)
        elapsed = time.monotonic() - started
    assert not result.allowed and result.failure == FAILURE_UNREACHABLE
    assert result.decision_id == ""
    assert (
        "Connection refused" in result.reasons[0].message or "connect" in result.reasons[0].message
    )
    assert elapsed < 5  # three attempts, 0.1 s and 0.2 s apart, not the whole deadline


def test_pdp_stopped_between_calls_gives_denials_and_back_gives_answers(
    make_server: Callable[..., DecisionServer], gateway_identity: ClientIdentity
) -> None:
    port = free_port()
    first = make_server(listen=f"127.0.0.1:{port}")
    with Client(first.address, gateway_identity, timeout=3) as pdp:
        assert pdp.check(example_request("support-get-ticket")).allowed
        first.stop(0)
        down = [pdp.check(example_request("support-get-ticket")) for _ in range(3)]
        assert all(not r.allowed and r.failure == FAILURE_UNREACHABLE for r in down)
        make_server(listen=f"127.0.0.1:{port}")
        deadline = time.monotonic() + 20
        while not (answer := pdp.check(example_request("support-get-ticket"))).allowed:
            assert time.monotonic() < deadline, answer
            time.sleep(0.1)
        assert answer.failure is None


def test_deadline_passed_is_a_deny(
    gateway_identity: ClientIdentity, fake_server: Callable[..., FakeServer]
) -> None:
    stuck = fake_server(answer=slow(3))
    with Client(stuck.address, gateway_identity) as pdp:
        result = pdp.check(GET_TICKET, timeout=0.5)
    assert not result.allowed and result.failure == FAILURE_TIMEOUT
    assert stuck.calls == 1  # a timeout is not retried


def test_unreadable_answer_is_a_deny(
    gateway_identity: ClientIdentity, fake_server: Callable[..., FakeServer]
) -> None:
    garbage = fake_server(answer=lambda _request: b"\xff\xff\xff not protobuf")
    with Client(garbage.address, gateway_identity) as pdp:
        result = pdp.check(GET_TICKET)
        batch = pdp.check_batch([GET_TICKET, GET_TICKET])
    assert not result.allowed and result.failure == FAILURE_BAD_ANSWER
    assert [r.failure for r in batch] == [FAILURE_BAD_ANSWER] * 2
    assert garbage.calls == 2  # answers, even unreadable ones, are not retried


def test_a_batch_answer_of_the_wrong_length_is_a_deny(
    gateway_identity: ClientIdentity, fake_server: Callable[..., FakeServer]
) -> None:
    from pdp._proto.pdp.v1 import decision_pb2 as pb

    one = pb.CheckBatchResponse(responses=[pb.CheckResponse(decision=pb.DECISION_ALLOW)])
    short = fake_server(answer=lambda _request: one.SerializeToString())
    with Client(short.address, gateway_identity) as pdp:
        results = pdp.check_batch([GET_TICKET, GET_TICKET])
    assert [r.allowed for r in results] == [False, False]
    assert {r.failure for r in results} == {FAILURE_BAD_ANSWER}


def test_an_unknown_decision_value_is_a_deny(
    gateway_identity: ClientIdentity, fake_server: Callable[..., FakeServer]
) -> None:
    from pdp._proto.pdp.v1 import decision_pb2 as pb

    strange = fake_server(answer=lambda _r: pb.CheckResponse(decision=7).SerializeToString())
    with Client(strange.address, gateway_identity) as pdp:
        assert not pdp.check(GET_TICKET).allowed


def test_invalid_requests_raise_before_sending(gateway_identity: ClientIdentity) -> None:
    with Client(f"127.0.0.1:{free_port()}", gateway_identity) as pdp:
        with pytest.raises(InvalidRequestError, match=r"not a pdp\.v1\.CheckRequest"):
            pdp.check({"agent": 1, "color": "blue"})
        with pytest.raises(InvalidRequestError, match="arguments are not JSON"):
            pdp.check(ToolCall(AGENT, "s", "t", {"x": object()}))


def test_configuration_errors(pki: Pki, tmp_path: Path) -> None:
    files = write_identity(tmp_path / "gw", pki.gateway, pki.ca.bundle_pem)
    with pytest.raises(ClientConfigError, match="server ID"):
        ClientIdentity.files(files["cert"], files["key"], files["bundle"], "not-spiffe")
    with pytest.raises(ClientConfigError, match="cannot read identity files"):
        ClientIdentity.files(tmp_path / "none.pem", files["key"], files["bundle"], SERVER_ID)
    identity = ClientIdentity.files(files["cert"], files["key"], files["bundle"], SERVER_ID)
    with identity_closed(identity):
        with pytest.raises(ClientConfigError, match="HOST:PORT"):
            Client("no-port", identity)
        with pytest.raises(ClientConfigError, match="attempts"):
            Client("127.0.0.1:1", identity, attempts=0)
        with pytest.raises(ClientConfigError, match="on_failure"):
            Client("127.0.0.1:1", identity, on_failure="allow")  # type: ignore[arg-type]


class identity_closed:
    def __init__(self, identity: ClientIdentity) -> None:
        self.identity = identity

    def __enter__(self) -> ClientIdentity:
        return self.identity

    def __exit__(self, *exc: object) -> None:
        self.identity.close()


def test_the_relay_socket_serves_only_this_process(
    server: DecisionServer, gateway_identity: ClientIdentity
) -> None:
    """Another local process must not borrow the client's mTLS identity through the
    plain-text side of the relay."""
    with Client(server.address, gateway_identity) as pdp:
        assert pdp.check(example_request("support-get-ticket")).allowed
        relay = pdp._connection.relay
        directory = os.path.dirname(relay.path)
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        before = relay.verified_connections
        probe = subprocess.run(
            [sys.executable, "-c",
             "import socket,sys\n"
             "s=socket.socket(socket.AF_UNIX)\n"
             f"s.connect({relay.path!r})\n"
             "s.settimeout(10)\n"
             "try:\n"
             "    s.sendall(b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n')\n"
             "    print(len(s.recv(100)))\n"
             "except OSError:\n"
             "    print(0)\n"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert probe.stdout.strip() == "0", probe  # closed at once, nothing relayed
        assert relay.verified_connections == before
    assert not os.path.exists(directory)  # removed on close


def test_a_server_outside_the_bundle_is_not_trusted(
    pki: Pki, server: DecisionServer, tmp_path: Path
) -> None:
    """The bundle given for the server's trust domain is the only set of roots: a
    server SVID from another CA (here the real pdp's) fails the chain check."""
    files = write_identity(tmp_path / "gw", pki.gateway, pki.evil.bundle_pem)
    identity = ClientIdentity.files(files["cert"], files["key"], files["bundle"], SERVER_ID)
    with identity_closed(identity), Client(server.address, identity) as pdp:
        result = pdp.check(example_request("support-get-ticket"))
    assert result.failure == FAILURE_UNREACHABLE
    assert "certificate verify failed" in result.reasons[0].message


def test_files_are_reread_for_new_connections(
    pki: Pki, server: DecisionServer, tmp_path: Path
) -> None:
    """A rotated SVID file is used by the next connection without a new client."""
    files = write_identity(tmp_path / "gw", pki.gateway, pki.ca.bundle_pem)
    identity = ClientIdentity.files(files["cert"], files["key"], files["bundle"], SERVER_ID)
    with identity_closed(identity):
        first = identity.tls_context()
        assert identity.tls_context() is first  # unchanged files: the same context
        rotated = pki.svid("spiffe://pdp.test/gateway/edge")
        files["key"].write_bytes(rotated.key_pem)
        files["cert"].write_bytes(rotated.chain_pem)
        assert identity.tls_context() is not first
        with Client(server.address, identity) as pdp:
            assert pdp.check(example_request("support-get-ticket")).allowed


def test_a_tool_call_with_a_signed_intent_and_the_agents_jwt_svid(
    make_server: Callable[..., DecisionServer], gateway_identity: ClientIdentity, tmp_path: Path
) -> None:
    from joserfc.jwk import ECKey

    from pdp.client import InvalidRequestError
    from pdp.proof import IntentIssuer, ProofConfig
    from pdp.proof.sign import intent_claims, sign_token

    issuer_key = ECKey.generate_key("P-256", parameters={"kid": "i-1"})
    agent_key = ECKey.generate_key("P-256", parameters={"kid": "a-1"})
    (tmp_path / "issuer.json").write_text(json.dumps({"keys": [issuer_key.as_dict(private=False)]}))
    (tmp_path / "acme.json").write_text(
        json.dumps({"keys": [{**agent_key.as_dict(private=False), "use": "jwt-svid"}]})
    )
    server = make_server(
        proof=ProofConfig(
            intent_issuers=(IntentIssuer("https://approvals.acme.test", tmp_path / "issuer.json"),),
            jwt_bundles={"acme.test": tmp_path / "acme.json"},
        )
    )
    now = datetime.now(UTC)
    token = sign_token(
        intent_claims(
            issuer="https://approvals.acme.test", agent=AGENT, audience=SERVER_ID,
            purpose="support.triage", tools=["crm/get_ticket"], now=now,
        ),
        issuer_key,
    )  # fmt: skip
    svid = sign_token(
        {"sub": AGENT, "aud": SERVER_ID, "exp": int(now.timestamp()) + 300}, agent_key
    )
    call = ToolCall(AGENT, "crm", "get_ticket", {"ticket_id": "T-1"}, intent_token=token,
                    agent_svid=svid)  # fmt: skip
    assert token not in repr(call) and svid not in repr(call)
    with Client(server.address, gateway_identity) as pdp:
        assert pdp.check(call).allowed
        replayed = pdp.check(call)
        assert [r.policy for r in replayed.reasons] == ["intent_replayed"]
        with pytest.raises(InvalidRequestError):
            pdp.check(
                ToolCall(AGENT, "crm", "get_ticket", {}, GET_TICKET.intent, intent_token=token)
            )
