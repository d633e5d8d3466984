"""A bounded pass over the protobuf wire bytes of a request, before it is decoded.

Decoding is not free: a ``CheckRequest`` whose ``arguments`` hold 150,000 small keys is
3 MB, under ``limits.max_message_bytes``, and takes protobuf (upb) over a second to
parse, since every key becomes a map entry. This pass reads only the outermost fields
(tag, length, skip), so it costs microseconds whatever the body holds, and refuses a
request whose ``arguments`` are larger on the wire than any valid ``arguments`` can be
(``WIRE_TO_JSON_FACTOR`` times ``max_arguments_bytes``) before protobuf sees it. A
``CheckBatchRequest`` is split the same way into the bytes of its requests, each then
checked and decoded on its own, so one oversized request is refused alone.

Bytes that are not well-formed are left to protobuf, which names the problem.
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf import struct_pb2

from pdp._proto.pdp.v1 import decision_pb2 as pb
from pdp.model import Limits
from pdp.service.convert import WIRE_TO_JSON_FACTOR, OversizeRequest, struct_excerpt

_ARGUMENTS = pb.CheckRequest.DESCRIPTOR.fields_by_name["arguments"].number
_REQUESTS = pb.CheckBatchRequest.DESCRIPTOR.fields_by_name["requests"].number
_LENGTH_DELIMITED = 2
# How much of an oversized Struct is decoded to show its first keys in the record.
_EXCERPT_BYTES = 512


class Malformed(ValueError):
    """The bytes are not a well-formed protobuf message (protobuf will say why)."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise Malformed("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def fields(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each outermost field; for a
    length-delimited one, start:end is its payload. Raises Malformed."""
    pos = 0
    size = len(data)
    while pos < size:
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            start = pos
            _, pos = _varint(data, pos)
        elif wire_type == 1:
            start, pos = pos, pos + 8
        elif wire_type == _LENGTH_DELIMITED:
            length, start = _varint(data, pos)
            pos = start + length
        elif wire_type == 5:
            start, pos = pos, pos + 4
        else:
            raise Malformed(f"wire type {wire_type}")
        if pos > size:
            raise Malformed("truncated field")
        yield number, wire_type, start, pos


def check_request_bytes(data: bytes, limits: Limits) -> None:
    """Refuses (:class:`OversizeRequest`) a ``CheckRequest`` whose ``arguments`` cannot
    be within ``limits`` by their size on the wire; malformed bytes pass (protobuf
    reports them when decoding)."""
    bound = WIRE_TO_JSON_FACTOR * limits.max_arguments_bytes + 64
    try:
        for number, wire_type, start, end in fields(data):
            if number == _ARGUMENTS and wire_type == _LENGTH_DELIMITED and end - start > bound:
                raise OversizeRequest(
                    "arguments",
                    "too_large",
                    f"{end - start} bytes on the wire cannot be within the encoded size"
                    f" limit of {limits.max_arguments_bytes} bytes",
                    _first_keys(data, start, end),
                )
    except Malformed:
        return


def _first_keys(data: bytes, start: int, end: int) -> str:
    """The first keys of the Struct at data[start:end], from its first few entries."""
    window = data[start : min(end, start + _EXCERPT_BYTES)]
    cut = 0
    try:
        for _, _, _, entry_end in fields(window):
            cut = entry_end
    except Malformed:
        pass  # the window ends inside an entry: keep the complete ones
    prefix = struct_pb2.Struct()
    try:
        prefix.ParseFromString(window[:cut])
    except Exception:  # only an excerpt: never a reason to fail
        return ""
    return struct_excerpt(prefix.fields)


def batch_requests(data: bytes) -> list[bytes]:
    """The bytes of each request of a ``CheckBatchRequest``, in order; raises Malformed
    (unknown fields are skipped, as protobuf does)."""
    return [
        data[start:end]
        for number, wire_type, start, end in fields(data)
        if number == _REQUESTS and wire_type == _LENGTH_DELIMITED
    ]
