"""Hot reload: atomic swaps, broken or failing sets never replace a good one, shadow sets."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pdp.engine.runtime import PolicyRuntime, ReloadEvent, ReloadRejected, build_engine
from pdp.model import Effect, parse_request
from tests.conftest import READ_POLICY, PolicyDirFactory

NOW = datetime(2026, 11, 23, 10, tzinfo=UTC)
REQUEST = parse_request(
    {
        "agent": "spiffe://acme.test/agent/bot",
        "server": "crm",
        "tool": "get_ticket",
        "arguments": {"ticket_id": "T"},
        "intent": {"purpose": "p", "tools": ["crm/*"]},
    },
    now=NOW,
)
DENY_READS = (
    '@id("no.reads")\n@reason("reads are closed")\n'
    'forbid (principal, action in Action::"read", resource);'
)
SUITE_EXPECTS_ALLOW = """
cases:
  - request: {agent: "spiffe://acme.test/agent/bot", server: crm, tool: get_ticket,
              arguments: {ticket_id: T}, intent: {purpose: p, tools: ["crm/*"]}}
    expect: allow
"""


def test_reload_swaps_to_the_new_version(make_policy_dir: PolicyDirFactory) -> None:
    root = make_policy_dir()
    events: list[ReloadEvent] = []
    runtime = PolicyRuntime(root, listener=events.append)
    old = runtime.version
    assert runtime.engine.decide(REQUEST).allowed
    (root / "deny.cedar").write_text(DENY_READS)
    event = runtime.reload()
    assert event.ok and event.version != old and runtime.version == event.version
    decision = runtime.engine.decide(REQUEST)
    assert decision.effect is Effect.DENY and decision.policy_version == event.version
    assert events == [event]
    assert runtime.status()["last_reload"]["ok"] is True  # type: ignore[index]


@pytest.mark.parametrize(
    "breakage",
    [
        ("read.cedar", READ_POLICY[: len(READ_POLICY) // 2]),  # truncated mid-write
        ("read.cedar", "\x00\x01garbage"),
        ("schema.cedarschema", "entity ;"),
        ("entities.json", '{"agents": '),
        ("new.cedar", '@id("x")\n@reason("r")\npermit (principal == User::"u", action, resource);'),
    ],
)
def test_a_broken_set_never_replaces_a_good_one(
    make_policy_dir: PolicyDirFactory, breakage: tuple[str, str]
) -> None:
    root = make_policy_dir()
    runtime = PolicyRuntime(root)
    good = runtime.version
    name, text = breakage
    (root / name).write_text(text)
    event = runtime.reload()
    assert not event.ok and event.version == good and runtime.version == good
    assert event.detail.startswith("invalid policies: ")
    assert runtime.engine.decide(REQUEST).allowed  # still serving the old set
    assert runtime.status()["last_reload"]["ok"] is False  # type: ignore[index]


def test_a_set_whose_own_tests_fail_is_rejected(make_policy_dir: PolicyDirFactory) -> None:
    root = make_policy_dir({"read.cedar": READ_POLICY, "read.test.yaml": SUITE_EXPECTS_ALLOW})
    runtime = PolicyRuntime(root)
    (root / "deny.cedar").write_text(DENY_READS)
    event = runtime.reload()
    assert not event.ok and event.candidate_version and "1 policy test(s) failed" in event.detail
    assert runtime.engine.decide(REQUEST).allowed


def test_the_first_load_must_succeed(make_policy_dir: PolicyDirFactory) -> None:
    root = make_policy_dir({"read.cedar": "permit (principal, action, resource);"})
    with pytest.raises(ReloadRejected, match="has no @id"):
        PolicyRuntime(root)


def test_watch_picks_up_a_change(make_policy_dir: PolicyDirFactory) -> None:
    root = make_policy_dir()
    applied = threading.Event()
    runtime = PolicyRuntime(root, listener=lambda e: applied.set() if e.ok else None)
    runtime.watch(interval=0.05, settle=0.05)
    try:
        (root / "deny.cedar").write_text(DENY_READS)
        assert applied.wait(10)
        assert not runtime.engine.decide(REQUEST).allowed
    finally:
        runtime.close()


def test_shadow_decides_beside_the_active_set(
    make_policy_dir: PolicyDirFactory, tmp_path: Path
) -> None:
    active = make_policy_dir()
    shadow_dir = tmp_path / "candidate"
    import shutil

    shutil.copytree(active, shadow_dir)
    (shadow_dir / "deny.cedar").write_text(DENY_READS)
    runtime = PolicyRuntime(active, shadow_directory=shadow_dir)
    assert runtime.shadow is not None
    assert runtime.engine.decide(REQUEST).allowed
    shadow = runtime.shadow.decide(REQUEST)
    assert shadow.effect is Effect.DENY and shadow.reasons[0].policy == "no.reads"
    assert runtime.status()["shadow_version"] == runtime.shadow.version
    assert runtime.set_shadow(None) is None and runtime.shadow is None


def write_grants(root: Path, count: int, allow: bool) -> None:
    effect = "permit"
    lines = [
        f'@id("g{i}")\n@reason("r")\n{effect} (principal == Agent::"spiffe://acme.test/agent/a{i}",'
        " action, resource);"
        for i in range(count)
    ]
    if allow:
        lines.append(
            '@id("bot.read")\n@reason("r")\npermit (principal == '
            'Agent::"spiffe://acme.test/agent/bot", action in Action::"read", resource);'
        )
    (root / "grants.cedar").write_text("\n".join(lines))


def test_swapping_10000_policies_under_load(make_policy_dir: PolicyDirFactory) -> None:
    """Clients call continuously while 10,000-policy sets swap: no failure, and every
    answer is the one its named version gives."""
    root = make_policy_dir({})
    write_grants(root, 10_000, allow=True)
    runtime = PolicyRuntime(root)
    expected = {runtime.version: Effect.ALLOW}
    stop = threading.Event()
    seen: list[tuple[str, Effect]] = []
    failures: list[BaseException] = []

    def client() -> None:
        while not stop.is_set():
            try:
                engine = runtime.engine  # one read: the call finishes on this version
                decision = engine.decide(REQUEST)
                seen.append((decision.policy_version, decision.effect))
            except BaseException as exc:
                failures.append(exc)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for flip in range(4):
            allow = flip % 2 == 1
            write_grants(root, 10_000, allow=allow)
            started = time.perf_counter()
            event = runtime.reload()
            assert event.ok, event.detail
            assert time.perf_counter() - started < 10
            expected[event.version] = Effect.ALLOW if allow else Effect.DENY
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures
    assert len({v for v, _ in seen}) >= 2
    assert all(expected[version] is effect for version, effect in seen)


def test_build_engine_reports_the_first_problems(make_policy_dir: PolicyDirFactory) -> None:
    files = {f"f{i}.cedar": "permit (principal, action, resource);" for i in range(7)}
    with pytest.raises(ReloadRejected, match=r"\(\+2 more\)"):
        build_engine(
            make_policy_dir(files),
            limits=PolicyRuntime.__init__.__kwdefaults__["limits"],
            run_tests=False,
        )


_OUT_OF_DESCRIPTORS = """
import json, os, resource, sys
from pdp.engine.runtime import PolicyRuntime
runtime = PolicyRuntime(sys.argv[1])
before = runtime.version
held = []
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
starved = runtime.reload()
for fd in held:
    os.close(fd)
fed = runtime.reload()
print(json.dumps({
    "starved": [starved.ok, starved.detail], "rejected": runtime.last_rejected is not None,
    "deferred": runtime.deferred, "fed": [fed.ok, fed.version == before],
}))
"""


def test_a_reload_without_file_descriptors_is_deferred_not_rejected(
    make_policy_dir: PolicyDirFactory,
) -> None:
    # In a child process: it exhausts its own descriptors (EMFILE, as during a flood).
    import json
    import subprocess
    import sys

    directory = make_policy_dir()
    result = subprocess.run(
        [sys.executable, "-c", _OUT_OF_DESCRIPTORS, str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["starved"][0] is False
    assert outcome["starved"][1].startswith("deferred: the process is out of file descriptors")
    assert outcome["rejected"] is False  # no rejected-reload event, no record
    assert outcome["deferred"] == 1
    assert outcome["fed"] == [True, True]  # with descriptors back, the reload goes through


def test_a_reload_that_removes_every_author_policy_must_be_explicit(
    make_policy_dir: PolicyDirFactory, tmp_path: Path
) -> None:
    from pdp.audit import Audit, AuditConfig, FileSinkConfig
    from pdp.engine.runtime import ALLOW_EMPTY_MARKER
    from pdp.service.operations import reload_recorder
    from tests.audit.helpers import log_lines

    root = make_policy_dir({"read.cedar": READ_POLICY, "read.test.yaml": SUITE_EXPECTS_ALLOW})
    runtime = PolicyRuntime(root)
    audit = Audit(AuditConfig(FileSinkConfig(tmp_path / "audit"), instance_id="empty-test"))
    runtime.add_listener(reload_recorder(audit))
    before = runtime.version
    assert runtime.engine.decide(REQUEST).effect is Effect.ALLOW
    # Every policy and test removed (a half-synced volume, a wrong mount).
    (root / "read.cedar").unlink()
    (root / "read.test.yaml").unlink()
    event = runtime.reload()
    assert not event.ok and runtime.version == before
    assert "no author policies" in event.detail and ALLOW_EMPTY_MARKER in event.detail
    assert runtime.engine.decide(REQUEST).effect is Effect.ALLOW
    assert runtime.last_rejected == event
    # Said on purpose: applied.
    (root / ALLOW_EMPTY_MARKER).write_text("")
    event = runtime.reload()
    assert event.ok and runtime.version != before
    assert runtime.engine.decide(REQUEST).effect is Effect.DENY
    assert audit.close()
    reloads = [r for r in log_lines(tmp_path / "audit") if r["kind"] == "policy_reload"]
    assert [r["ok"] for r in reloads] == [False, True]
    assert "no author policies" in str(reloads[0])
