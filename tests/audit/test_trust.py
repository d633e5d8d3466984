"""An audit log its writer cannot quietly rewrite: each test is what an attacker who can
write the log directory would try, and what `pdp audit verify` says with which flags."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pdp.audit import Audit, AuditConfig, FileSinkConfig
from pdp.audit.chain import GENESIS_HASH, checkpoint_message, encode_body, list_log_files, seal
from pdp.audit.keys import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    CheckpointSigner,
    SigningKeyError,
    load_or_create_signer,
)
from pdp.audit.verify import main
from tests.audit.helpers import make_record, open_pipeline

WITNESS = "witness.json"


def write_log(root: Path, runs: int = 1, records: int = 30, **sink: Any) -> Path:
    """``runs`` clean starts and stops of a pipeline on ``root/log`` (key and witness in
    ``root``), ``records`` records each, a checkpoint every 10."""
    log_dir = root / "log"
    for run in range(runs):
        settings = {"checkpoint_every": 10, "witness_file": root / WITNESS, **sink}
        pipeline = open_pipeline(log_dir, sink=settings)
        for i in range(records):
            assert pipeline.submit(make_record({"path": f"/r{run}/{i}"})).wait(5)
        assert pipeline.close()
    return log_dir


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return write_log(tmp_path, runs=2)


def fingerprint_of(log_dir: Path) -> str:
    return str(
        json.loads(list_log_files(log_dir)[0].read_bytes().split(b"\n")[0])["key_fingerprint"]
    )


def verify(log_dir: Path, *flags: str) -> int:
    return main([str(log_dir), *flags])


def lines_of(log_dir: Path) -> list[tuple[Path, list[dict[str, Any]]]]:
    return [
        (path, [json.loads(raw) for raw in path.read_bytes().splitlines()])
        for path in list_log_files(log_dir)
    ]


def rewrite(
    log_dir: Path, signer: CheckpointSigner, edit: Callable[[dict[str, Any]], None]
) -> None:
    """What whoever can write the log (and holds ``signer``) does: edit records, then
    re-chain every line and re-sign every checkpoint, segment lines naming the key."""
    head, seq = GENESIS_HASH, 0
    for path, lines in lines_of(log_dir):
        out: list[bytes] = []
        for data in lines:
            for member in ("seq", "prev_hash", "hash"):
                data.pop(member)
            seq += 1
            if data["kind"] == "segment":
                data.update(
                    key_id=signer.key_id,
                    key_fingerprint=signer.fingerprint,
                    public_key=signer.public_key_b64,
                )
            elif data["kind"] == "checkpoint":
                data["key_id"] = signer.key_id
                message = checkpoint_message(
                    data["instance_id"], seq, head, data["time"], signer.key_id, data["reason"]
                )
                data["sig"] = signer.sign(message)
            else:
                edit(data)
            line, head = seal(encode_body(data), seq, head)
            out.append(line)
        path.write_bytes(b"".join(out))


def deny_everything(data: dict[str, Any]) -> None:
    data["decision"] = "deny"


# -- the key lives apart from the logs ------------------------------------------------


def test_the_key_is_kept_apart_from_the_logs_and_owner_only(tmp_path: Path) -> None:
    log_dir = write_log(tmp_path)
    assert not list(log_dir.glob("*.key")) and not list(log_dir.glob("*.pub"))
    key = tmp_path / PRIVATE_KEY_FILE
    assert (key.stat().st_mode & 0o777) == 0o600
    segments = [lines[0] for _, lines in lines_of(log_dir)]
    signer = load_or_create_signer(key)
    assert all(s["key_fingerprint"] == signer.fingerprint for s in segments)
    assert all(s["public_key"] == signer.public_key_b64 for s in segments)


def test_a_key_inside_the_log_directory_is_refused(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    with pytest.raises(SigningKeyError, match="must not live in the audit log directory"):
        Audit(AuditConfig(FileSinkConfig(log_dir, key_file=log_dir / "k.key")))


def test_a_key_others_may_read_is_refused(tmp_path: Path) -> None:
    load_or_create_signer(tmp_path / PRIVATE_KEY_FILE)
    os.chmod(tmp_path / PRIVATE_KEY_FILE, 0o644)
    with pytest.raises(SigningKeyError, match="chmod 600"):
        Audit(AuditConfig(FileSinkConfig(tmp_path / "log")))


def test_a_key_left_in_the_log_directory_by_an_older_pdp_is_named_not_used(
    tmp_path: Path,
) -> None:
    """Upgrade: the old layout kept the key beside the logs. pdp neither moves it nor
    quietly makes a new one: it says what to do."""
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    load_or_create_signer(log_dir / PRIVATE_KEY_FILE)
    with pytest.raises(SigningKeyError, match=r"layout before pdp kept the key apart.*mv "):
        Audit(AuditConfig(FileSinkConfig(log_dir)))
    assert not (tmp_path / PRIVATE_KEY_FILE).exists()


def test_a_replaced_key_is_refused_when_pinned(tmp_path: Path) -> None:
    pinned = load_or_create_signer(tmp_path / "other.key").fingerprint
    with pytest.raises(SigningKeyError, match="not the pinned"):
        Audit(AuditConfig(FileSinkConfig(tmp_path / "log"), key_fingerprint=pinned))


# -- verify trusts only a key it is given ---------------------------------------------


def test_a_log_re_signed_with_the_attackers_key_fails_once_the_key_is_pinned(
    log_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = fingerprint_of(log_dir)
    attacker = CheckpointSigner(Ed25519PrivateKey.generate())
    rewrite(log_dir, attacker, deny_everything)
    (log_dir / PUBLIC_KEY_FILE).write_bytes(b"")  # nothing beside the logs is trusted
    # Unpinned, the forgery is internally consistent: verify says it proves nothing.
    assert verify(log_dir) == 0
    assert "UNPINNED" in capsys.readouterr().out
    assert verify(log_dir, "--require-pinned") == 1
    assert verify(log_dir, "--key-fingerprint", real) == 1
    assert "not the pinned" in capsys.readouterr().out
    assert verify(log_dir, "--public-key", str(tmp_path / PUBLIC_KEY_FILE)) == 1


def test_the_real_key_pinned_verifies_the_real_log(log_dir: Path, tmp_path: Path) -> None:
    real = fingerprint_of(log_dir)
    for flags in (
        ("--key-fingerprint", real),
        ("--public-key", str(tmp_path / PUBLIC_KEY_FILE)),
    ):
        assert verify(log_dir, "--require-pinned", "--require-sealed", *flags) == 0


def test_verify_reads_the_pin_from_pdp_serves_config(
    log_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pdp.cli import main as pdp

    config = tmp_path / "pdp.yaml"
    config.write_text(f"audit:\n  key_fingerprint: {fingerprint_of(log_dir)}\n")
    assert pdp(["audit", "verify", "--config", str(config), "--require-pinned", str(log_dir)]) == 0
    rewrite(log_dir, CheckpointSigner(Ed25519PrivateKey.generate()), deny_everything)
    assert pdp(["audit", "verify", "--config", str(config), str(log_dir)]) == 1


# -- sealed means: a closing checkpoint, nothing after it ------------------------------


def test_a_log_cut_back_to_a_periodic_checkpoint_is_not_sealed(log_dir: Path) -> None:
    last = list_log_files(log_dir)[-1]
    lines = last.read_bytes().splitlines(keepends=True)
    periodic = max(i for i, raw in enumerate(lines) if b'"reason":"periodic"' in raw)
    last.write_bytes(b"".join(lines[: periodic + 1]))
    assert verify(log_dir) == 0  # a valid prefix...
    assert verify(log_dir, "--require-sealed") == 1  # ...but not a log closed cleanly


def test_bytes_after_the_closing_checkpoint_are_not_sealed(log_dir: Path) -> None:
    with list_log_files(log_dir)[-1].open("ab") as handle:
        handle.write(b'{"v":"pdp.audit/v1","kind":"decision","decision":"al')
    assert verify(log_dir, "--require-sealed") == 1


def test_a_periodic_checkpoint_relabelled_close_fails_its_signature(log_dir: Path) -> None:
    last = list_log_files(log_dir)[-1]
    lines = last.read_bytes().splitlines(keepends=True)
    periodic = max(i for i, raw in enumerate(lines) if b'"reason":"periodic"' in raw)
    data = json.loads(lines[periodic])
    seq, prev = data.pop("seq"), data.pop("prev_hash")
    data.pop("hash")
    data["reason"] = "close"
    line, _ = seal(encode_body(data), seq, prev)
    last.write_bytes(b"".join([*lines[:periodic], line]))
    assert verify(log_dir) == 1


# -- crash markers cannot hide complete lines ------------------------------------------


def test_a_forged_crash_marker_cannot_discard_complete_signed_lines(
    log_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new file whose segment claims the last file crashed early on, to make verify
    drop the lines (and checkpoints) after that offset."""
    last = list_log_files(log_dir)[-1]
    lines = last.read_bytes().splitlines(keepends=True)
    keep = 3
    offset = sum(len(raw) for raw in lines[:keep])
    kept = json.loads(lines[keep - 1])
    segment = dict(json.loads(lines[0]))
    for member in ("seq", "prev_hash", "hash"):
        segment.pop(member)
    name = f"audit-{kept['seq'] + 1:020d}.jsonl"
    segment.update(
        file=name,
        reason="recover",
        prev_file=last.name,
        crash={"file": last.name, "offset": offset, "torn_bytes": len(last.read_bytes()) - offset},
    )
    line, _ = seal(encode_body(segment), kept["seq"] + 1, kept["hash"])
    (log_dir / name).write_bytes(line)
    assert verify(log_dir) == 1
    assert "bad_crash_marker" in capsys.readouterr().out


# -- a witness outside the log ---------------------------------------------------------


def test_truncation_to_an_older_closed_run_fails_against_the_witness(
    log_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = list_log_files(log_dir)
    assert len(files) == 2  # one file per run
    files[-1].unlink()  # the second run, gone: what is left ends sealed
    assert verify(log_dir, "--require-sealed") == 0
    assert verify(log_dir, "--require-sealed", "--witness", str(tmp_path / WITNESS)) == 1
    assert "truncated" in capsys.readouterr().out


def test_a_rewrite_re_signed_with_the_real_key_fails_against_the_witness(
    log_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = load_or_create_signer(tmp_path / PRIVATE_KEY_FILE)
    rewrite(log_dir, real, deny_everything)  # the key's holder rewrites history
    flags = ("--require-pinned", "--key-fingerprint", real.fingerprint, "--require-sealed")
    assert verify(log_dir, *flags) == 0  # the key alone cannot tell
    assert verify(log_dir, *flags, "--witness", str(tmp_path / WITNESS)) == 1
    assert "rewritten" in capsys.readouterr().out


def test_the_witness_holds_the_latest_checkpoint(log_dir: Path, tmp_path: Path) -> None:
    witness = json.loads((tmp_path / WITNESS).read_bytes())
    last = lines_of(log_dir)[-1][1][-1]
    assert (witness["seq"], witness["hash"], witness["reason"]) == (
        last["seq"],
        last["hash"],
        "close",
    )
    assert verify(log_dir, "--witness", str(tmp_path / WITNESS), "--require-sealed") == 0


def test_a_forged_witness_is_refused(log_dir: Path, tmp_path: Path) -> None:
    witness = json.loads((tmp_path / WITNESS).read_bytes())
    witness["seq"] += 100
    (tmp_path / WITNESS).write_text(json.dumps(witness))
    assert verify(log_dir, "--witness", str(tmp_path / WITNESS)) == 1


# -- nothing is not OK; say what was seen ----------------------------------------------


def test_an_empty_or_missing_log_fails(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert verify(tmp_path / "empty", "--require-genesis") == 1
    assert verify(tmp_path / "missing") == 1


def test_a_workers_base_directory_verifies_every_worker_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "audit"
    key = tmp_path / PRIVATE_KEY_FILE
    for worker in ("worker-0", "worker-1"):
        with open_pipeline(base / worker, sink={"key_file": key}) as pipeline:
            assert pipeline.submit(make_record()).wait(5)
    public = str(tmp_path / PUBLIC_KEY_FILE)
    assert verify(base, "--public-key", public, "--require-sealed") == 0
    out = capsys.readouterr().out
    assert "== worker-0" in out and "== worker-1" in out and "0 files" not in out
    lines = list_log_files(base / "worker-1")[0].read_bytes().splitlines(keepends=True)
    list_log_files(base / "worker-1")[0].write_bytes(b"".join(lines[:-1]))  # cut its seal
    assert verify(base, "--public-key", public, "--require-sealed") == 1


def test_swapped_lines_are_reported_as_reordered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_dir = write_log(tmp_path, records=5)
    path = list_log_files(log_dir)[0]
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2], lines[3] = lines[3], lines[2]
    path.write_bytes(b"".join(lines))
    assert verify(log_dir) == 1
    out = capsys.readouterr().out
    assert "reordered" in out and "deleted" not in out


def test_the_writer_names_checkpoints_by_why_they_were_made(tmp_path: Path) -> None:
    log_dir = write_log(tmp_path, records=40, max_bytes=12000)
    reasons = [
        line["reason"]
        for _, lines in lines_of(log_dir)
        for line in lines
        if line["kind"] == "checkpoint"
    ]
    assert reasons[-1] == "close" and "periodic" in reasons and "rotate" in reasons
    assert set(reasons) <= {"close", "rotate", "periodic"}


def test_a_log_ending_at_a_periodic_checkpoint_is_recovered_not_restarted(
    tmp_path: Path,
) -> None:
    """A kill right after a periodic checkpoint leaves no torn bytes; the next start still
    records a crash point (only a closing checkpoint is a clean end)."""
    log_dir = write_log(tmp_path)
    last = list_log_files(log_dir)[-1]
    lines = last.read_bytes().splitlines(keepends=True)
    periodic = max(i for i, raw in enumerate(lines) if b'"reason":"periodic"' in raw)
    last.write_bytes(b"".join(lines[: periodic + 1]))
    with open_pipeline(log_dir, sink={"witness_file": tmp_path / WITNESS}) as pipeline:
        assert pipeline.submit(make_record()).wait(5)
    segment = json.loads(list_log_files(log_dir)[-1].read_bytes().split(b"\n")[0])
    assert segment["reason"] == "recover" and segment["crash"]["file"] == last.name
    assert verify(log_dir, "--require-sealed") == 0
