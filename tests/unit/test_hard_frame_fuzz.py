"""Hypothesis fuzz of the host-side frame decoder (backends/guest/protocol.py).

Whatever bytes a guest sends, in whatever chunks, FrameReader.read returns a frame
object (string ``t``, integer ``id`` >= 0), None at a clean end, or raises
ProtocolError: never any other exception (a hostile guest must not crash the host's
read loop with e.g. RecursionError or the 4300-digit int limit's ValueError)."""

from __future__ import annotations

import contextlib
import json
import struct
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mvm.backends.guest.protocol import MAX_FRAME, FrameReader, ProtocolError, encode_frame

CASES = {"n": 0}


@pytest.fixture(autouse=True, scope="module")
def _log_case_count() -> Iterator[None]:
    """Logs how many generated cases ran (on the real stderr, past capture)."""
    yield
    print(f"\nframe fuzz: {CASES['n']} generated cases", file=sys.__stderr__)


class Chunks:
    def __init__(self, data: bytes, cuts: list[int]) -> None:
        self._parts: list[bytes] = []
        last = 0
        for c in sorted({min(c, len(data)) for c in cuts}):
            self._parts.append(data[last:c])
            last = c
        self._parts.append(data[last:])
        self._parts = [p for p in self._parts if p]

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await anyio.lowlevel.checkpoint()
        if not self._parts:
            raise anyio.EndOfStream
        part = self._parts.pop(0)
        if len(part) > max_bytes:
            self._parts.insert(0, part[max_bytes:])
            part = part[:max_bytes]
        return part


def _read_all(data: bytes, cuts: list[int]) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        reader = FrameReader(Chunks(data, cuts))  # type: ignore[arg-type]
        out = []
        while (msg := await reader.read()) is not None:
            assert isinstance(msg["t"], str)
            assert isinstance(msg["id"], int) and msg["id"] >= 0
            out.append(msg)
        return out

    return anyio.run(go)


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["t", "id", "data", "x"]), json_values, max_size=4).map(
        lambda d: json.dumps(d).encode()
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=st.lists(bodies, max_size=5),
    junk=st.binary(max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
)
def test_arbitrary_frames_decode_or_raise_protocol_error(
    frames: list[bytes], junk: bytes, cuts: list[int]
) -> None:
    CASES["n"] += 1
    data = b"".join(_frame(b) for b in frames) + junk
    with contextlib.suppress(ProtocolError):
        _read_all(data, cuts)


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(
        st.fixed_dictionaries(
            {"t": st.text(max_size=10), "id": st.integers(min_value=0, max_value=2**53)},
            optional={"data": json_values},
        ),
        max_size=5,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=6),
)
def test_encoded_frames_round_trip_in_any_chunking(
    messages: list[dict[str, Any]], cuts: list[int]
) -> None:
    CASES["n"] += 1
    data = b"".join(encode_frame(m) for m in messages)
    assert _read_all(data, cuts) == messages


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b'{"t":"x","id":' + b"1" * 5000 + b"}",
        b'{"t":"x","id":-1}',
        b'{"t":"x","id":true}',
        b'{"t":5,"id":1}',
        b"\xff\xfe",
    ],
)
def test_hostile_bodies_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        _read_all(_frame(body), [])


@pytest.mark.parametrize("length", [0, MAX_FRAME + 1, 2**32 - 1])
def test_bad_lengths_are_protocol_errors(length: int) -> None:
    with pytest.raises(ProtocolError):
        _read_all(struct.pack(">I", length) + b"{}", [])
