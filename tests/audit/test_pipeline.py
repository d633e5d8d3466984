"""The pipeline end to end on real files: delivery modes, fail closed, recovery, listeners."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pdp.audit import (
    REASON_AUDIT_UNAVAILABLE,
    AuditPipeline,
    DeliveryMode,
    FileSink,
    FileSinkConfig,
    PipelineConfig,
    load_public_key,
    verify_files,
)
from pdp.audit.chain import list_log_files
from pdp.audit.keys import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE
from tests.audit.helpers import ALLOW, INSTANCE, log_lines, make_record, open_pipeline, record_ids


def verify(*dirs: Path, key_dir: Path | None = None) -> None:
    key = load_public_key((key_dir or dirs[0].parent) / PUBLIC_KEY_FILE)
    report = verify_files(list(dirs), key, require_genesis=True)
    assert report.ok, report.summary()


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


@pytest.mark.parametrize("mode", [DeliveryMode.SYNC, DeliveryMode.ASYNC])
def test_records_from_many_threads_are_written_once_in_order(
    tmp_path: Path, mode: DeliveryMode
) -> None:
    pipeline = open_pipeline(tmp_path, mode, sink={"checkpoint_every": 50})
    tickets: list[Any] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(100):
            ticket = pipeline.submit(make_record())
            assert ticket.accepted
            if mode is DeliveryMode.SYNC:
                assert ticket.wait(5), ticket.error
            with lock:
                tickets.append(ticket)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert pipeline.flush(5)
    assert all(t.wait(0) for t in tickets)
    stats = pipeline.stats()
    assert (stats.written, stats.failed, stats.rejected) == (800, 0, 0)
    assert pipeline.close()
    lines = log_lines(tmp_path)
    assert [line["seq"] for line in lines] == list(range(1, len(lines) + 1))
    ids = record_ids(tmp_path)
    assert sorted(ids) == sorted(t.decision_id for t in tickets)
    by_id = {line["decision_id"]: line["seq"] for line in lines if "decision_id" in line}
    assert all(by_id[t.decision_id] == t.seq for t in tickets)
    verify(tmp_path)


def test_sync_ticket_completes_only_when_the_record_is_in_the_file(tmp_path: Path) -> None:
    with open_pipeline(tmp_path) as pipeline:
        record = make_record()
        assert pipeline.submit(record).wait(5)
        assert record["decision_id"] in record_ids(tmp_path)


def test_sync_mode_lingers_so_calls_decided_a_moment_apart_share_one_commit(
    tmp_path: Path,
) -> None:
    # A long linger so that a loaded machine cannot split the group: records submitted
    # over ~100 ms share one write and one fdatasync, and none is answered before it.
    with open_pipeline(tmp_path, sync_linger_s=2.0) as pipeline:
        before = pipeline.stats().batches
        tickets = []
        for _ in range(5):
            tickets.append(pipeline.submit(make_record()))
            time.sleep(0.02)
        assert not any(t.wait(0) for t in tickets)  # still lingering: nothing written yet
        assert all(t.wait(10) for t in tickets)
        assert pipeline.stats().batches - before == 1
        assert {t.decision_id for t in tickets} <= set(record_ids(tmp_path))


def test_restart_continues_the_chain(tmp_path: Path) -> None:
    for _ in range(3):
        with open_pipeline(tmp_path) as pipeline:
            for _ in range(3):
                assert pipeline.submit(make_record()).wait(5)
    segments = [line for line in log_lines(tmp_path) if line["kind"] == "segment"]
    assert [s["reason"] for s in segments] == ["start", "restart", "restart"]
    assert segments[1]["prev_file"] == list_log_files(tmp_path)[0].name
    verify(tmp_path)


def test_second_pipeline_on_the_same_dir_is_refused(tmp_path: Path) -> None:
    with open_pipeline(tmp_path) as first:
        assert first.submit(make_record()).wait(5)
        second = open_pipeline(tmp_path)
        assert not second.healthy
        assert "locked by another audit pipeline" in second.last_error
        ticket = second.submit(make_record())
        assert not ticket.wait(5)
        assert "locked by another audit pipeline" in ticket.error
        assert not second.healthy
        second.close(1)


def test_size_and_time_rotation_and_checkpoint_interval(tmp_path: Path) -> None:
    now = [1_000_000.0]
    config = FileSinkConfig(
        tmp_path, max_bytes=10**9, max_age_s=3600, checkpoint_every=10**6, checkpoint_interval_s=60
    )
    sink = FileSink(config, INSTANCE, clock=lambda: now[0])
    pipeline = AuditPipeline(sink, PipelineConfig(tick_s=0.01))
    assert pipeline.submit(make_record()).wait(5)

    def kinds() -> list[str]:
        return [line["kind"] for line in log_lines(tmp_path)]

    assert kinds() == ["segment", "decision"]
    now[0] += 61
    assert wait_until(lambda: kinds()[-1] == "checkpoint")
    now[0] += 3600
    assert pipeline.submit(make_record()).wait(5)
    assert wait_until(lambda: len(list_log_files(tmp_path)) == 2)
    assert pipeline.close()
    assert kinds() == [
        "segment",
        "decision",
        "checkpoint",
        "decision",
        "checkpoint",
        "segment",
        "checkpoint",
    ]
    verify(tmp_path)


def test_queue_full_is_rejected_and_fails_closed(tmp_path: Path) -> None:
    pipeline = open_pipeline(tmp_path, DeliveryMode.ASYNC, queue_size=5)
    release = threading.Event()
    # A commit hook runs on the writer thread: blocking it stalls the writer for real.
    pipeline.add_commit_hook(lambda _position: release.wait(10))
    first = pipeline.submit(make_record())
    assert wait_until(lambda: pipeline.stats().written == 1)
    tickets = [pipeline.submit(make_record()) for _ in range(10)]
    accepted = [t for t in tickets if t.accepted]
    rejected = [t for t in tickets if not t.accepted]
    assert (len(accepted), len(rejected)) == (5, 5)
    assert rejected[0].error == "audit queue full"
    denied = pipeline.guard(ALLOW, rejected[0])
    assert not denied.allowed
    assert denied.reasons[0].policy == REASON_AUDIT_UNAVAILABLE
    assert pipeline.guard(ALLOW, accepted[0]) is ALLOW  # async: accepted is enough
    release.set()
    assert pipeline.flush(5)
    assert all(t.wait(1) for t in [first, *accepted])
    assert pipeline.stats().rejected == 5
    assert pipeline.close()
    ids = set(record_ids(tmp_path))
    assert {t.decision_id for t in [first, *accepted]} <= ids
    assert not ids & {t.decision_id for t in rejected}


def test_fail_open_keeps_the_decision(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    pipeline = open_pipeline(blocker, fail_open=True, sync_timeout_s=2)
    ticket = pipeline.submit(make_record())
    assert pipeline.guard(ALLOW, ticket) is ALLOW
    assert pipeline.stats().failed == 1
    pipeline.close(1)


def test_log_dir_path_taken_by_a_file_then_freed(tmp_path: Path) -> None:
    log_dir = tmp_path / "audit"
    log_dir.write_text("a file where the log dir should be")
    pipeline = open_pipeline(log_dir)
    assert not pipeline.healthy  # known at start, before any request
    ticket = pipeline.submit(make_record())
    assert not ticket.wait(5)
    assert "FileExistsError" in ticket.error or "NotADirectory" in ticket.error
    assert not pipeline.healthy
    decision = pipeline.guard(ALLOW, pipeline.submit(make_record()))
    assert decision.reasons[0].policy == REASON_AUDIT_UNAVAILABLE
    log_dir.unlink()
    # No traffic needed: the writer probes, so a health check sees the recovery.
    assert wait_until(lambda: pipeline.healthy)
    ok = pipeline.submit(make_record())
    assert ok.wait(5), ok.error
    assert pipeline.close()
    assert record_ids(log_dir) == [ok.decision_id]
    assert pipeline.stats().failed == 2
    verify(log_dir)


def test_log_dir_replaced_by_a_file_while_running(tmp_path: Path) -> None:
    log_dir, moved = tmp_path / "audit", tmp_path / "audit.moved"
    key_dir = tmp_path / "keys"
    # Rotate after every batch so that every write needs a new file in the dir.
    pipeline = open_pipeline(log_dir, sink={"max_bytes": 1, "key_file": key_dir / PRIVATE_KEY_FILE})
    assert pipeline.submit(make_record()).wait(5)
    log_dir.rename(moved)
    log_dir.write_text("")
    # The open file (already in the moved dir) takes one more batch; the next file cannot be made.
    written_to_moved = pipeline.submit(make_record())
    assert written_to_moved.wait(5)
    failed = pipeline.submit(make_record())
    assert not failed.wait(5)
    assert not pipeline.healthy
    log_dir.unlink()
    log_dir.mkdir()
    recovered = pipeline.submit(make_record())
    assert recovered.wait(5), recovered.error
    assert pipeline.healthy
    assert pipeline.close()
    assert failed.decision_id not in record_ids(moved) + record_ids(log_dir)
    assert recovered.decision_id in record_ids(log_dir)
    verify(moved, log_dir, key_dir=key_dir)


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str = "96k") -> Iterator[Path]:
    path.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to simulate ENOSPC: {result.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> None:
    """Fills the file system of ``path`` completely."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
    finally:
        os.close(fd)


def test_disk_full_in_sync_mode_fails_closed_then_recovers(tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "mnt") as mnt:
        log_dir, key_dir = mnt / "log", tmp_path / "keys"
        pipeline = open_pipeline(
            log_dir, sink={"key_file": key_dir / PRIVATE_KEY_FILE, "checkpoint_every": 5}
        )
        good = [pipeline.submit(make_record()) for _ in range(3)]
        assert all(t.wait(5) for t in good)
        fill(mnt / "filler")
        ticket = pipeline.submit(make_record({"blob": "x" * 2000}))
        assert not ticket.wait(5)
        assert "No space left" in ticket.error
        assert not pipeline.healthy
        decision = pipeline.guard(ALLOW, pipeline.submit(make_record({"blob": "y" * 2000})))
        assert decision.reasons[0].policy == REASON_AUDIT_UNAVAILABLE
        (mnt / "filler").unlink()
        assert wait_until(lambda: pipeline.healthy)
        later = [pipeline.submit(make_record()) for _ in range(10)]
        assert all(t.wait(5) for t in later), [t.error for t in later]
        assert pipeline.healthy
        assert pipeline.close()
        stats = pipeline.stats()
        assert (stats.written, stats.failed) == (13, 2)
        ids = record_ids(log_dir)
        assert ids == [t.decision_id for t in good + later]
        verify(log_dir, key_dir=key_dir)  # no torn or orphan line was left behind


def test_disk_full_in_async_mode_retries_and_rejects_new_records(tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "mnt") as mnt:
        log_dir, key_dir = mnt / "log", tmp_path / "keys"
        pipeline = open_pipeline(
            log_dir,
            DeliveryMode.ASYNC,
            sink={"key_file": key_dir / PRIVATE_KEY_FILE},
            retry_max_s=0.05,
        )
        assert pipeline.submit(make_record()).wait(5)
        fill(mnt / "filler")
        held = pipeline.submit(make_record({"blob": "x" * 3000}))
        assert held.accepted
        assert wait_until(lambda: not pipeline.healthy)
        refused = pipeline.submit(make_record())
        assert not refused.accepted and "failing" in refused.error
        assert pipeline.guard(ALLOW, refused).reasons[0].policy == REASON_AUDIT_UNAVAILABLE
        assert wait_until(lambda: pipeline.stats().retried >= 2)
        assert not held.done
        (mnt / "filler").unlink()
        assert held.wait(5), held.error
        assert wait_until(lambda: pipeline.healthy)
        assert pipeline.submit(make_record()).accepted
        assert pipeline.close()
        stats = pipeline.stats()
        assert (stats.written, stats.failed, stats.rejected) == (3, 0, 1)
        assert held.decision_id in record_ids(log_dir)
        assert refused.decision_id not in record_ids(log_dir)
        verify(log_dir, key_dir=key_dir)


def test_listeners_get_records_and_a_slow_one_is_dropped(tmp_path: Path) -> None:
    pipeline = open_pipeline(tmp_path, listener_queue_size=5)
    seen: list[dict[str, Any]] = []
    pipeline.add_listener(seen.append, max_pending=1000)
    slow = pipeline.add_listener(lambda _record: time.sleep(0.5))
    started = time.monotonic()
    tickets = [pipeline.submit(make_record()) for _ in range(50)]
    assert all(t.wait(5) for t in tickets)
    assert time.monotonic() - started < 2.0  # the slow listener did not slow decisions
    assert wait_until(lambda: len(seen) == 50)
    assert [r["decision_id"] for r in seen] == [t.decision_id for t in tickets]
    assert all(r["kind"] == "decision" and "hash" in r for r in seen)
    assert not slow.connected and slow.dropped
    assert pipeline.stats().listeners_dropped == 1
    pipeline.close()


def test_unencodable_record_is_rejected_not_raised(tmp_path: Path) -> None:
    with open_pipeline(tmp_path) as pipeline:
        record = make_record()
        record["latency_us"] = float("nan")
        ticket = pipeline.submit(record)
        assert not ticket.accepted and "cannot be encoded" in ticket.error
        clash = make_record()
        clash["seq"] = 5
        assert not pipeline.submit(clash).accepted


def test_close_flushes_async_records(tmp_path: Path) -> None:
    pipeline = open_pipeline(tmp_path, DeliveryMode.ASYNC, async_flush_interval_s=30)
    tickets = [pipeline.submit(make_record()) for _ in range(200)]
    assert pipeline.close()
    assert record_ids(tmp_path) == [t.decision_id for t in tickets]
    assert not pipeline.submit(make_record()).accepted
    last = json.loads(list_log_files(tmp_path)[-1].read_bytes().splitlines()[-1])
    assert last["kind"] == "checkpoint"
