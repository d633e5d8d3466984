"""verify_files finds tampering at the first bad file:line, and tells crashes from tampering."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pdp.audit import load_public_key, verify_files
from pdp.audit.chain import checkpoint_message, encode_body, list_log_files, seal
from pdp.audit.keys import PUBLIC_KEY_FILE, CheckpointSigner
from pdp.audit.verify import main
from tests.audit.helpers import make_record, open_pipeline

RECORDS = 60


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed log of 60 records over several rotated files, a checkpoint every 10."""
    log_dir = tmp_path_factory.mktemp("pristine") / "log"  # the key goes beside it
    pipeline = open_pipeline(log_dir, sink={"max_bytes": 6000, "checkpoint_every": 10})
    for i in range(RECORDS):
        assert pipeline.submit(make_record({"path": f"/srv/{i}.txt"})).wait(5)
    assert pipeline.close()
    return log_dir


@pytest.fixture
def log_dir(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(pristine.parent, copy)
    return copy / "log"


def key(log_dir: Path) -> Ed25519PublicKey:
    return load_public_key(log_dir.parent / PUBLIC_KEY_FILE)


def files(log_dir: Path) -> list[Path]:
    return list_log_files(log_dir)


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def reseal(raw: bytes, seq: int | None = None, prev_hash: str | None = None) -> tuple[bytes, str]:
    """What an attacker without the key can do: recompute a line's own hash."""
    data: dict[str, Any] = json.loads(raw)
    old_seq, old_prev = data.pop("seq"), data.pop("prev_hash")
    data.pop("hash")
    return seal(encode_body(data), old_seq if seq is None else seq, prev_hash or old_prev)


def first_record_line(path: Path) -> int:
    """0-based index of the first decision line of a file."""
    return next(i for i, raw in enumerate(read_lines(path)) if b'"kind":"decision"' in raw)


def problem_at(log_dir: Path) -> tuple[str, int, str]:
    report = verify_files([log_dir], key(log_dir))
    assert not report.ok
    assert report.problem is not None
    return Path(report.problem.file).name, report.problem.line, report.problem.code


def test_clean_log_verifies(log_dir: Path) -> None:
    report = verify_files([log_dir], key(log_dir), require_genesis=True)
    assert report.ok, report.summary()
    assert report.files >= 3
    assert report.records == RECORDS
    assert report.first_seq == 1 and report.last_seq == report.lines
    assert report.checkpoints >= RECORDS // 10
    assert report.sealed and report.unsigned_tail == 0
    assert report.crash_points == ()


def test_modified_record(log_dir: Path) -> None:
    path = files(log_dir)[0]
    lines = read_lines(path)
    i = first_record_line(path)
    lines[i] = lines[i].replace(b'"decision":"allow"', b'"decision":"deny"')
    write_lines(path, lines)
    assert problem_at(log_dir) == (path.name, i + 1, "hash_mismatch")


def test_modified_record_with_recomputed_hash(log_dir: Path) -> None:
    path = files(log_dir)[0]
    lines = read_lines(path)
    i = first_record_line(path)
    lines[i], _ = reseal(lines[i].replace(b'"decision":"allow"', b'"decision":"deny"'))
    write_lines(path, lines)
    assert problem_at(log_dir) == (path.name, i + 2, "chain_broken")


def test_deleted_record(log_dir: Path) -> None:
    path = files(log_dir)[1]
    lines = read_lines(path)
    del lines[2]
    write_lines(path, lines)
    assert problem_at(log_dir) == (path.name, 3, "missing")


def test_reordered_records(log_dir: Path) -> None:
    path = files(log_dir)[0]
    lines = read_lines(path)
    lines[2], lines[3] = lines[3], lines[2]
    write_lines(path, lines)
    assert problem_at(log_dir)[:2] == (path.name, 3)


def test_inserted_copy_of_a_record(log_dir: Path) -> None:
    path = files(log_dir)[0]
    lines = read_lines(path)
    lines.insert(5, lines[2])
    write_lines(path, lines)
    assert problem_at(log_dir) == (path.name, 6, "out_of_order")


def test_inserted_record_with_the_whole_tail_rechained(log_dir: Path) -> None:
    """Renumbering and rehashing everything after an insertion is caught by the next
    checkpoint: its signature covers the original chain head."""
    all_files = files(log_dir)
    path = all_files[0]
    lines = read_lines(path)
    forged = json.loads(lines[2])
    forged["decision_id"] = "01900000-0000-7000-8000-00000000beef"
    for field in ("seq", "prev_hash", "hash"):
        forged.pop(field)
    prev = json.loads(lines[2])
    new_line, head = seal(encode_body(forged), prev["seq"] + 1, prev["hash"])
    seq = prev["seq"] + 1
    out = [*lines[:3], new_line]
    rewritten: dict[Path, list[bytes]] = {path: out}
    first_checkpoint: tuple[str, int] | None = None
    for other in all_files:
        tail = lines[3:] if other == path else read_lines(other)
        target = rewritten.setdefault(other, [])
        for raw in tail:
            seq += 1
            line, head = reseal(raw, seq, head)
            target.append(line)
            if first_checkpoint is None and b'"kind":"checkpoint"' in raw:
                first_checkpoint = (other.name, len(target))
    for other, new_lines in rewritten.items():
        write_lines(other, new_lines)
    assert first_checkpoint is not None
    assert problem_at(log_dir) == (*first_checkpoint, "bad_signature")


def test_file_truncated_across_rotation(log_dir: Path) -> None:
    first, second = files(log_dir)[:2]
    write_lines(first, read_lines(first)[:-2])
    assert problem_at(log_dir) == (second.name, 1, "missing")


def test_deleted_file(log_dir: Path) -> None:
    all_files = files(log_dir)
    all_files[1].unlink()
    assert problem_at(log_dir) == (all_files[2].name, 1, "missing")


def _checkpoint_index(path: Path) -> int:
    return next(i for i, raw in enumerate(read_lines(path)) if b'"kind":"checkpoint"' in raw)


def test_forged_checkpoint_signature(log_dir: Path) -> None:
    path = files(log_dir)[0]
    lines = read_lines(path)
    i = _checkpoint_index(path)
    data = json.loads(lines[i])
    attacker = CheckpointSigner(Ed25519PrivateKey.generate())
    message = checkpoint_message(
        data["instance_id"], data["seq"], data["prev_hash"], data["time"], data["key_id"]
    )
    forged = lines[i].replace(data["sig"].encode(), attacker.sign(message).encode())
    lines[i], _ = reseal(forged)
    write_lines(path, lines)
    assert problem_at(log_dir) == (path.name, i + 1, "bad_signature")


def test_checkpoint_signed_with_another_key(log_dir: Path) -> None:
    path = files(log_dir)[0]
    lines = read_lines(path)
    i = _checkpoint_index(path)
    data = json.loads(lines[i])
    attacker = CheckpointSigner(Ed25519PrivateKey.generate())
    message = checkpoint_message(
        data["instance_id"], data["seq"], data["prev_hash"], data["time"], attacker.key_id
    )
    forged = lines[i].replace(data["sig"].encode(), attacker.sign(message).encode())
    forged = forged.replace(data["key_id"].encode(), attacker.key_id.encode())
    lines[i], _ = reseal(forged)
    write_lines(path, lines)
    assert problem_at(log_dir) == (path.name, i + 1, "bad_signature")


def test_torn_last_line_is_a_crash_point_not_tampering(log_dir: Path) -> None:
    last = files(log_dir)[-1]
    count = len(read_lines(last))
    with last.open("ab") as handle:
        handle.write(b'{"v":"pdp.audit/v1","kind":"decision","decision_id":"0190')
    report = verify_files([log_dir], key(log_dir))
    assert report.ok, report.summary()
    assert report.records == RECORDS
    (crash,) = report.crash_points
    assert (Path(crash.file).name, crash.line, crash.recovered) == (last.name, count + 1, False)
    assert "crash point" in report.summary()


def test_torn_line_in_the_middle_is_a_problem(log_dir: Path) -> None:
    first = files(log_dir)[0]
    count = len(read_lines(first))
    with first.open("ab") as handle:
        handle.write(b'{"v":"pdp.au')
    assert problem_at(log_dir) == (first.name, count + 1, "torn_line")


def test_restart_after_torn_line_continues_the_chain(log_dir: Path) -> None:
    last = files(log_dir)[-1]
    count = len(read_lines(last))
    with last.open("ab") as handle:
        handle.write(b'{"v":"pdp.audit/v1","kind":"dec')
    pipeline = open_pipeline(log_dir)
    for _ in range(5):
        assert pipeline.submit(make_record()).wait(5)
    assert pipeline.close()
    new_file = files(log_dir)[-1]
    segment = json.loads(read_lines(new_file)[0])
    assert segment["reason"] == "recover"
    assert segment["crash"]["file"] == last.name
    report = verify_files([log_dir], key(log_dir), require_genesis=True)
    assert report.ok, report.summary()
    assert report.records == RECORDS + 5
    assert report.sealed
    (crash,) = report.crash_points
    assert (Path(crash.file).name, crash.line, crash.recovered) == (last.name, count + 1, True)


def test_cut_tail_of_the_last_file_is_reported_unsigned(log_dir: Path) -> None:
    """Whole lines cut from the very end leave a valid chain: only the missing final
    checkpoint shows it, which the report and --require-sealed surface."""
    last = files(log_dir)[-1]
    write_lines(last, read_lines(last)[:-2])
    report = verify_files([log_dir], key(log_dir))
    assert report.ok and not report.sealed and report.unsigned_tail > 0
    assert "not covered by a checkpoint" in report.summary()
    assert main([str(log_dir), "--require-sealed"]) == 1


def test_cli_exit_codes(log_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main([str(log_dir)]) == 0
    assert "OK:" in capsys.readouterr().out
    path = files(log_dir)[0]
    lines = read_lines(path)
    lines[1] = lines[1].replace(b'"instance_id":"pdp-test"', b'"instance_id":"pdp-evil"')
    write_lines(path, lines)
    assert main([*map(str, files(log_dir)), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["problem"]["line"] == 2 and out["problem"]["code"] == "hash_mismatch"
    assert main([str(log_dir), "--public-key", str(tmp_path / "absent.pub")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 1  # an empty log proves nothing
    assert "no audit log files" in capsys.readouterr().out
    assert main([str(tmp_path / "missing")]) == 1
