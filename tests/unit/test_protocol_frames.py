"""The spliced ``data`` frame encoder against the generic JSON one."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mvm.backends.guest.protocol import (
    CHUNK,
    MAX_FRAME,
    ProtocolError,
    decode_body,
    encode_data_frame,
    encode_frame,
)


@given(
    ident=st.integers(min_value=0, max_value=2**53),
    data=st.binary(max_size=4096),
    fd=st.one_of(st.none(), st.sampled_from([0, 1, 2])),
)
def test_data_frame_is_the_same_json_object(ident: int, data: bytes, fd: int | None) -> None:
    fast = encode_data_frame(ident, data, fd)
    message: dict[str, object] = {"t": "data", "id": ident, "data": base64.b64encode(data).decode()}
    if fd is not None:
        message["fd"] = fd
    generic = encode_frame(message)
    assert int.from_bytes(fast[:4], "big") == len(fast) - 4
    assert decode_body(fast[4:]) == decode_body(generic[4:])


def test_a_full_chunk_fits_and_an_oversized_payload_is_refused() -> None:
    assert len(encode_data_frame(1, b"\xff" * CHUNK)) <= MAX_FRAME + 4
    with pytest.raises(ProtocolError):
        encode_data_frame(1, b"\0" * MAX_FRAME)
