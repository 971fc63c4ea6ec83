"""The wire protocol: frames from cameras to the server, verdicts from the server out.

A frame is a two-part ZeroMQ message ``[header, payload]`` (PUSH → PULL). The header is
UTF-8 JSON, at most ``MAX_HEADER_BYTES``::

    {"v": 1, "station": "weld-3", "camera": "top", "frame_id": 41, "captured_at": 1732380000.25,
     "encoding": "raw" | "jpeg" | "png" | "shm", "dtype": "uint8", "shape": [H, W] or [H, W, 3],
     "tags": {"serial": "A-17"}}            # tags optional: at most 8 short strings

The payload is the image: for ``raw`` exactly H*W*C bytes, row-major, colour in BGR order
(OpenCV's); for ``jpeg``/``png`` the encoded file, whose own width and height must match
``shape``; for ``shm`` empty: the raw pixels are in a shared-memory slot the header's
``"shm": {"segment", "token", "slot", "seq"}`` names (a camera on the same host, accepted only
when the station config sets ``shm: true``; edge_infer/shm.py). Everything is checked against
hard limits *before* anything is allocated or decoded; a message that fails gets a
``WireError`` naming the problem (and carries the frame id when the header got that far),
which the server turns into an ERROR verdict.

Verdicts and alerts go out on a PUB socket as ``[topic, json]`` with topics
``verdict.<station>`` and ``alert.<station>``. Nothing on the wire is ever unpickled.
The exact schema is written down in docs/wire-protocol.md.
"""

from __future__ import annotations

import json
import math
import re
import struct
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from .errors import ImageReadError, LinesideError
from .imageio import decode_image, jpeg_dimensions, normalise_layout
from .shm import NAME_PATTERN as SHM_NAME_PATTERN
from .shm import SEGMENTS, ShmError, Slot

SCHEMA_VERSION = 1
MAX_HEADER_BYTES = 2048
MAX_SIDE = 8192  # pixels, either side; the station config may only lower it
HARD_MAX_PAYLOAD = 64 << 20  # bytes; also the PULL socket's ZMQ_MAXMSGSIZE (bigger: peer disconnected)
MAX_TAGS = 8
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
ENCODINGS = ("raw", "jpeg", "png", "shm")
RAW_ENCODINGS = ("raw", "shm")  # uncompressed pixels: in the payload, or in a shared-memory slot


class WireError(Exception):
    """A message that breaks the protocol. Carries whatever identity the header gave."""

    def __init__(self, reason: str, station: str | None = None, camera: str | None = None,
                 frame_id: int | None = None, captured_at: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.station, self.camera, self.frame_id, self.captured_at = station, camera, frame_id, captured_at


@dataclass(frozen=True)
class Limits:
    max_payload_bytes: int = 16 << 20
    max_side: int = 4096
    shm: bool = False  # frames in shared memory accepted (the station config's `shm`)


class ShmRef(BaseModel):
    """Where a ``shm`` frame's pixels are: a slot of a camera's ring (edge_infer/shm.py)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    segment: str = Field(pattern=SHM_NAME_PATTERN)
    token: StrictInt = Field(ge=0, le=2**63 - 1)
    slot: StrictInt = Field(ge=0, lt=1024)
    seq: StrictInt = Field(ge=0, le=2**63 - 1)


class FrameHeader(BaseModel):
    # strict: JSON types as documented, no coercion (`"captured_at": "123"` and `"v": true` are
    # refused, not read as 123.0 and 1); an int is still a number where a number is asked for
    model_config = ConfigDict(extra="forbid", strict=True)

    v: StrictInt  # Literal[1] would take `true`, since True == 1 in Python
    station: str = Field(pattern=NAME_PATTERN)
    camera: str = Field(pattern=NAME_PATTERN)
    frame_id: StrictInt = Field(ge=0, le=2**63 - 1)
    captured_at: float = Field(ge=0)
    encoding: Literal["raw", "jpeg", "png", "shm"]
    dtype: Literal["uint8"] = "uint8"
    shape: list[StrictInt] = Field(min_length=2, max_length=3)
    tags: dict[str, str] = Field(default_factory=dict)
    shm: ShmRef | None = None  # with encoding "shm" only

    @field_validator("v")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"schema version {v} is not {SCHEMA_VERSION}, the one this server reads")
        return v

    @field_validator("captured_at")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite unix time in seconds")
        return v

    @field_validator("tags")
    @classmethod
    def _small_tags(cls, tags: dict[str, str]) -> dict[str, str]:
        if len(tags) > MAX_TAGS or any(len(k) > 64 or len(v) > 64 for k, v in tags.items()):
            raise ValueError(f"at most {MAX_TAGS} tags, keys and values of at most 64 characters")
        return tags


@dataclass
class Frame:
    """A frame that passed every check that needs no decoding."""

    header: FrameHeader
    payload: bytes | memoryview  # the received buffer itself (a ZeroMQ frame's memory), never copied
    received_at: float = field(default_factory=time.time)
    shm: Slot | None = None  # encoding "shm": the slot ``payload`` views, valid while its seq holds

    def settle(self, result: np.ndarray) -> np.ndarray:
        """``result``, read from this frame's pixels, made safe to keep: for a shared-memory frame,
        copied if it still views the slot and checked that the camera did not write over the frame
        while it was read (shm.Overwritten, a LinesideError, if it did)."""
        return result if self.shm is None else self.shm.settle(result)


def parse_frame(parts: list[bytes], limits: Limits = Limits()) -> Frame:
    """Validate a received message; raise WireError with the reason, never anything else."""
    if len(parts) != 2:
        raise WireError(f"message has {len(parts)} parts; a frame is exactly 2: [header, payload]")
    # parts may be bytes or zero-copy zmq.Frame objects; the payload stays a view of their memory
    raw_header, payload = bytes(parts[0]), memoryview(parts[1]).cast("B")
    if len(raw_header) > MAX_HEADER_BYTES:
        raise WireError(f"header of {len(raw_header)} bytes exceeds the limit of {MAX_HEADER_BYTES}")
    try:
        data = json.loads(raw_header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise WireError(f"header is not UTF-8 JSON ({type(exc).__name__}): send the JSON header first") from None
    if not isinstance(data, dict):
        raise WireError(f"header is JSON {type(data).__name__}, not an object")
    ident = _identity(data)
    try:
        header = FrameHeader.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "header"
        raise WireError(f"bad header field {where}: {first['msg']} (schema: docs/wire-protocol.md)", **ident) from None
    _check_shape(header, limits, ident)
    if header.encoding == "shm" or header.shm is not None:
        return _shm_frame(header, payload, limits, ident)
    size = len(payload)
    if size > limits.max_payload_bytes:
        raise WireError(f"payload of {size} bytes exceeds the station's limit of {limits.max_payload_bytes}", **ident)
    if header.encoding == "raw":
        want = math.prod(header.shape)
        if size != want:
            raise WireError(f"raw payload of {size} bytes does not match shape {header.shape} ({want} bytes)", **ident)
    else:
        dims = encoded_dimensions(payload, header.encoding)
        if dims is None:
            raise WireError(f"payload is not a {header.encoding.upper()} stream (no readable header)", **ident)
        if dims != tuple(header.shape[:2]):
            raise WireError(f"{header.encoding} payload is {dims[1]}x{dims[0]} but the header says shape "
                            f"{header.shape}", **ident)
    return Frame(header, payload)


def _shm_frame(header: FrameHeader, payload: memoryview, limits: Limits, ident: dict) -> Frame:
    """A frame whose pixels are in shared memory: the slot mapped and checked, nothing read yet."""
    if header.encoding != "shm" or header.shm is None:
        raise WireError("a header with an \"shm\" field must have encoding \"shm\", and encoding \"shm\" needs "
                        "the \"shm\" field (schema: docs/wire-protocol.md)", **ident)
    if not limits.shm:
        raise WireError("frame sent through shared memory, which this station does not accept: set `shm: true` "
                        "in the station config (camera on the same host), or run the camera without "
                        "--shm-slots", **ident)
    if len(payload):
        raise WireError(f"a shm frame's payload must be empty (the pixels are in the slot), got {len(payload)} "
                        "bytes", **ident)
    want = math.prod(header.shape)
    if want > limits.max_payload_bytes:
        raise WireError(f"shm frame of shape {header.shape} ({want} bytes) exceeds the station's limit of "
                        f"{limits.max_payload_bytes}", **ident)
    try:
        slot = SEGMENTS.attach(header.shm, header.station, header.camera, header.shape, limits.max_payload_bytes)
    except ShmError as exc:
        raise WireError(str(exc), **ident) from None
    return Frame(header, slot.pixels, shm=slot)


def _identity(data: dict) -> dict:
    """The fields an ERROR verdict can still carry from a header that fails validation."""
    def name(v):
        return v if isinstance(v, str) and _NAME.match(v) else None

    fid = data.get("frame_id")
    cap = data.get("captured_at")
    return {
        "station": name(data.get("station")),
        "camera": name(data.get("camera")),
        "frame_id": fid if type(fid) is int and 0 <= fid < 2**63 else None,
        "captured_at": float(cap) if type(cap) in (int, float) and math.isfinite(cap) else None,
    }


def _check_shape(header: FrameHeader, limits: Limits, ident: dict) -> None:
    h, w, *rest = header.shape
    if not (2 <= h <= limits.max_side and 2 <= w <= limits.max_side):
        raise WireError(f"shape {header.shape} is outside 2..{limits.max_side} pixels a side", **ident)
    if rest and rest[0] not in (1, 3):
        raise WireError(f"shape {header.shape} has {rest[0]} channels; send 1 (gray) or 3 (BGR)", **ident)


def encoded_dimensions(data: bytes, encoding: str) -> tuple[int, int] | None:
    """(height, width) as a PNG or JPEG stream declares it, read without decoding."""
    if encoding == "png":
        if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
            return None
        w, h = struct.unpack(">II", data[16:24])
        return h, w
    return jpeg_dimensions(data)


def decode_frame(frame: Frame) -> np.ndarray:
    """The frame's image as OpenCV holds it (HxW gray or HxWx3 BGR), checked against its header."""
    h = frame.header
    source = f"{h.camera}#{h.frame_id}"
    try:
        if h.encoding in RAW_ENCODINGS:
            image = normalise_layout(np.frombuffer(frame.payload, np.uint8).reshape(h.shape), source)
        else:
            image = decode_image(frame.payload, source)
    except ImageReadError as exc:
        raise WireError(exc.reason) from None
    want_c = h.shape[2] if len(h.shape) == 3 else 1
    got_c = image.shape[2] if image.ndim == 3 else 1
    if image.shape[:2] != tuple(h.shape[:2]) or (got_c != want_c and h.encoding in RAW_ENCODINGS):
        raise WireError(f"decoded image of shape {list(image.shape)} does not match the header's {h.shape}")
    return image


def encode_frame(image: np.ndarray, station: str, camera: str, frame_id: int, encoding: str = "raw",
                 captured_at: float | None = None, quality: int = 90, tags: dict | None = None) -> list[bytes]:
    """Build a frame message from a uint8 HxW or HxWx3 (BGR) image."""
    from .imaging import encode

    if encoding == "raw":
        payload = np.ascontiguousarray(image).tobytes()
    else:
        try:
            payload = encode(image, encoding, quality)
        except LinesideError as exc:
            raise WireError(str(exc)) from None
    return [frame_header(station, camera, frame_id, encoding, image.shape, captured_at, tags), payload]


def encode_shm_frame(image: np.ndarray, ring, station: str, camera: str, frame_id: int,
                     captured_at: float | None = None, tags: dict | None = None) -> list[bytes]:
    """Write the frame's pixels into the next slot of ``ring`` (a shm.Ring) and build the message that
    names it: the header (encoding "shm") and an empty payload. ``captured_at`` defaults to before
    the copy, so a receiver's transport time includes it."""
    captured_at = time.time() if captured_at is None else captured_at
    ref = ring.write(image)
    return [frame_header(station, camera, frame_id, "shm", image.shape, captured_at, tags, shm=ref), b""]


def frame_header(station: str, camera: str, frame_id: int, encoding: str, shape, captured_at: float | None = None,
                 tags: dict | None = None, shm: dict | None = None) -> bytes:
    header = {"v": SCHEMA_VERSION, "station": station, "camera": camera, "frame_id": int(frame_id),
              "captured_at": time.time() if captured_at is None else captured_at, "encoding": encoding,
              "dtype": "uint8", "shape": list(shape)}
    if tags:
        header["tags"] = tags
    if shm:
        header["shm"] = shm
    return json.dumps(header, separators=(",", ":")).encode()


def verdict_topic(station: str, alert: bool = False) -> bytes:
    return f"{'alert' if alert else 'verdict'}.{station}".encode()


def verdict_message(event: dict, alert: bool = False) -> list[bytes]:
    return [verdict_topic(event["station"], alert), json.dumps(event, separators=(",", ":")).encode()]


def parse_verdict_message(parts: list[bytes]) -> tuple[str, dict]:
    if len(parts) != 2:
        raise WireError(f"verdict message has {len(parts)} parts, expected [topic, json]")
    return parts[0].decode(), json.loads(parts[1])
