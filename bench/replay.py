"""Replay throughput and memory against the bare engine, on synthesized audit logs.

    .venv/bin/python bench/replay.py [--sizes 20000,100000]

For each size N it writes an audit log of N decision records (the replay tests'
templates, written by the real file sink: chain fields, checkpoints, rotation), then:

- engine:  Engine.decide_batch on the same requests, already parsed (the floor)
- replay:  replay_with_engine over the files (read, classify, parse, decide, compare, tally)
- peak:    the largest Python heap in use during the replay (tracemalloc, separate run)

and prints records/s, the ratio replay/engine, and peak MiB. The peak should not grow
with N: replay keeps counters and a bounded number of examples, not records.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pdp.audit import FileSink, FileSinkConfig  # noqa: E402
from pdp.audit.chain import encode_body  # noqa: E402
from pdp.audit.record import build_decision_record  # noqa: E402
from pdp.engine import Engine, load_policies  # noqa: E402
from pdp.model import Request, parse_request  # noqa: E402
from pdp.replay import open_sources, replay_with_engine  # noqa: E402
from tests.replay.helpers import (  # noqa: E402
    BASE_TIME,
    CALLER,
    INSTANCE,
    POLICIES,
    REDACTOR,
    TEMPLATES,
    decision_id,
    request_data,
)


def write_log(engine: Engine, log_dir: Path, count: int) -> list[Request]:
    """Writes ``count`` decision records; returns the parsed requests (for the floor)."""
    sink = FileSink(
        FileSinkConfig(log_dir, max_bytes=8 * 1024 * 1024, checkpoint_every=1000), INSTANCE
    )
    requests: list[Request] = []
    batch: list[bytes] = []
    for index in range(count):
        template = TEMPLATES[index % len(TEMPLATES)]
        at = BASE_TIME + timedelta(seconds=index)
        request = parse_request(request_data(template, at), now=at)
        requests.append(request)
        record = build_decision_record(
            decision_id(index, at),
            request,
            engine.decide(request),
            CALLER,
            100,
            INSTANCE,
            REDACTOR,
            time=at,
        )
        batch.append(encode_body(record))
        if len(batch) == 1000:
            sink.append(batch, durable=False)
            batch = []
    if batch:
        sink.append(batch, durable=False)
    sink.close()
    return requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,100000")
    args = parser.parse_args()
    engine = Engine(load_policies(POLICIES))
    print(f"{'records':>8}  {'engine/s':>10}  {'replay/s':>10}  {'ratio':>6}  {'peak MiB':>8}")
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            log_dir = Path(tmp) / "log"
            requests = write_log(engine, log_dir, size)
            started = time.perf_counter()
            for start in range(0, len(requests), 256):
                engine.decide_batch(requests[start : start + 256])
            engine_rate = size / (time.perf_counter() - started)
            del requests

            started = time.perf_counter()
            tally = replay_with_engine(open_sources([str(log_dir)]), engine)
            replay_rate = size / (time.perf_counter() - started)
            assert tally.records == size, tally.records

            tracemalloc.start()
            replay_with_engine(open_sources([str(log_dir)]), engine)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        print(
            f"{size:>8}  {engine_rate:>10.0f}  {replay_rate:>10.0f}"
            f"  {replay_rate / engine_rate:>6.2f}  {peak / 2**20:>8.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
