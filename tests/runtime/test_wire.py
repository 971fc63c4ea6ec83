"""The wire protocol's parser: valid frames pass, every kind of bad message fails with a
clear WireError (carrying the frame id when the header got that far), never anything else."""

import json

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_infer.wire import (MAX_HEADER_BYTES, Frame, Limits, WireError, decode_frame, encode_frame,
                             encoded_dimensions, parse_frame)


def header(**changes) -> bytes:
    h = {"v": 1, "station": "st1", "camera": "cam0", "frame_id": 7, "captured_at": 1.5, "encoding": "raw",
         "dtype": "uint8", "shape": [4, 6]}
    h.update(changes)
    return json.dumps({k: v for k, v in h.items() if v is not ...}).encode()


@pytest.mark.parametrize("encoding", ["raw", "jpeg", "png"])
def test_roundtrip_each_encoding(encoding):
    image = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    frame = parse_frame(encode_frame(image, "st1", "cam0", 3, encoding, tags={"serial": "A-1"}))
    assert frame.header.frame_id == 3 and frame.header.tags == {"serial": "A-1"}
    decoded = decode_frame(frame)
    assert decoded.shape == (24, 32, 3)
    if encoding != "jpeg":
        assert (decoded == image).all()


def test_gray_raw_frame_roundtrip():
    image = np.arange(20, dtype=np.uint8).reshape(4, 5)
    assert (decode_frame(parse_frame(encode_frame(image, "st1", "cam0", 0))) == image).all()


@pytest.mark.parametrize("parts, reason", [
    ([header()], "exactly 2"),
    ([header(), b"x" * 24, b"extra"], "exactly 2"),
    ([b"\xff\xfe", b""], "not UTF-8 JSON"),
    ([b"[1, 2]", b""], "not an object"),
    ([b"[" * 1000 + b"]" * 1000, b""], "not an object|not UTF-8 JSON"),
    ([b" " * (MAX_HEADER_BYTES + 1), b""], "exceeds the limit"),
    ([header(v=2), b"x" * 24], "bad header field v"),
    ([header(frame_id=-1), b"x" * 24], "frame_id"),
    ([header(frame_id=1.5), b"x" * 24], "frame_id"),
    ([header(frame_id=True), b"x" * 24], "frame_id"),
    ([header(camera="../etc"), b"x" * 24], "camera"),
    ([header(encoding="bmp"), b"x" * 24], "encoding"),
    ([header(dtype="float32"), b"x" * 24], "dtype"),
    ([header(shape=[4]), b"x" * 4], "shape"),
    ([header(extra=1), b"x" * 24], "extra"),
    ([header(station=...), b"x" * 24], "station"),
    ([header(tags={str(i): "x" for i in range(9)}), b"x" * 24], "tags"),
])
def test_bad_messages_are_refused_with_the_reason(parts, reason):
    with pytest.raises(WireError, match=reason):
        parse_frame(parts)


def test_errors_after_the_header_carry_the_frame_id():
    with pytest.raises(WireError, match="does not match shape") as caught:
        parse_frame([header(frame_id=41), b"x" * 23])  # truncated raw payload
    assert (caught.value.camera, caught.value.frame_id) == ("cam0", 41)
    with pytest.raises(WireError, match="station's limit") as caught:
        parse_frame([header(shape=[2000, 2000]), b"x" * 4_000_000], Limits(max_payload_bytes=1 << 20))
    assert caught.value.frame_id == 7
    with pytest.raises(WireError, match="outside 2..4096"):
        parse_frame([header(shape=[5000, 10]), b""])
    with pytest.raises(WireError, match="channels"):
        parse_frame([header(shape=[4, 6, 2]), b"x" * 48])


def test_encoded_payload_dimensions_are_checked_before_decoding():
    ok, png = cv2.imencode(".png", np.zeros((10, 12), np.uint8))
    assert encoded_dimensions(png.tobytes(), "png") == (10, 12)
    ok, jpg = cv2.imencode(".jpg", np.zeros((10, 12, 3), np.uint8))
    assert encoded_dimensions(jpg.tobytes(), "jpeg") == (10, 12)
    # a small PNG that claims a huge image (decompression bomb) never reaches the decoder
    with pytest.raises(WireError, match="header says shape"):
        parse_frame([header(encoding="png", shape=[4, 6]), png.tobytes()])
    with pytest.raises(WireError, match="not a JPEG"):
        parse_frame([header(encoding="jpeg", shape=[10, 12]), png.tobytes()])
    truncated = Frame(parse_frame([header(encoding="png", shape=[10, 12]), png.tobytes()]).header,
                      png.tobytes()[:40])
    with pytest.raises(WireError, match="decodable"):
        decode_frame(truncated)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    head=st.one_of(
        st.binary(max_size=300),
        st.dictionaries(st.sampled_from(["v", "station", "camera", "frame_id", "captured_at", "encoding", "dtype",
                                         "shape", "tags", "other"]),
                        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                                  st.lists(st.integers(-5, 10_000), max_size=4),
                                  st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)),
                        max_size=10).map(lambda d: json.dumps(d).encode()),
    ),
    payload=st.one_of(st.binary(max_size=2048), st.sampled_from([b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x08\0\0\0\x08",
                                                                  b"\xff\xd8\xff\xc0\0\x11\x08\0\x08\0\x08"])),
    extra=st.lists(st.binary(max_size=8), max_size=2),
)
def test_parser_never_crashes_on_random_messages(head, payload, extra):
    try:
        frame = parse_frame([head, payload, *extra], Limits(max_payload_bytes=4096, max_side=64))
    except WireError as exc:
        assert exc.reason  # a clear reason, never a stray exception
        return
    # whatever passes is a fully valid frame: decoding either works or says why
    assert frame.header.v == 1 and len(frame.payload) <= 4096
    try:
        image = decode_frame(frame)
    except WireError as exc:
        assert exc.reason
    else:
        assert image.dtype == np.uint8 and image.shape[:2] == tuple(frame.header.shape[:2])


@settings(max_examples=200, deadline=None)
@given(shape=st.lists(st.integers(-1, 70), min_size=1, max_size=4), delta=st.integers(-3, 3),
       encoding=st.sampled_from(["raw", "jpeg", "png"]), frame_id=st.integers(-2, 2**64),
       seed=st.integers(0, 2**16))
def test_parser_on_near_valid_frames(shape, delta, encoding, frame_id, seed):
    """Headers that are almost right, payloads of almost the right size: valid ones decode to
    exactly the declared shape, the rest fail with a reason."""
    size = max(0, int(np.prod(shape)) + delta)
    payload = np.random.default_rng(seed).integers(0, 255, size, dtype=np.uint8).tobytes()
    parts = [header(shape=shape, encoding=encoding, frame_id=frame_id), payload]
    try:
        image = decode_frame(parse_frame(parts, Limits(max_payload_bytes=1 << 16, max_side=64)))
    except WireError as exc:
        assert exc.reason
        return
    assert encoding == "raw" and delta == 0 and 0 <= frame_id < 2**63
    assert image.shape[:2] == tuple(shape[:2])
