"""Raw frames through shared memory, for a camera on the same host as the server.

A raw 1080p BGR frame is 6 MiB; over a ZeroMQ socket that costs milliseconds of copying
even on loopback. A camera started with ``lineside camera --shm-slots N`` writes each raw
frame's pixels into the next slot of a ring in a file under /dev/shm that it creates (and
removes when it closes), and sends over the usual frames socket only the header: encoding
``shm`` and ``"shm": {"segment", "token", "slot", "seq"}`` (docs/wire-protocol.md). The
server maps each camera's segment once, read-only, and decode reads the pixels in place:
the preprocessing's shrink writes the model-size input straight from the mapping.

Segment layout (little-endian)::

    0    magic       8s   b"LSHMRNG1"
    8    slots       u32
    12   (reserved)  u32
    16   slot_bytes  u64  a multiple of the page size
    24   token       u64  random per segment: a restarted camera's ring has a new one
    32   station     64s  UTF-8, NUL-padded: the server checks them against the message
    96   camera      64s
    160  seq         u64 × slots
    data_offset = 160 + 8 × slots rounded up to a page; slot i at data_offset + i × slot_bytes

No back channel tells the camera what the server has read, so each slot is a seqlock: the
camera sets the slot's sequence number odd before it writes and to the next even value
after, and the message names that even value. The server checks the number before it reads
(when it takes the message) and again after the read; if it moved, the camera lapped the
ring (the server fell behind) and the frame gets an ERROR verdict instead of a torn image.
Memory fences order those accesses (a Jetson's ARM cores reorder stores): C11's
``atomic_thread_fence`` from libatomic, through ctypes.

Why os.open + mmap and not ``multiprocessing.shared_memory``: on Python < 3.13 attaching a
segment registers it with the resource tracker, which unlinks it (and warns) when the
attaching process exits; and the server must open with O_NOFOLLOW, check the owner and the
size before mapping, which that API does not let it do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import mmap
import os
import platform
import re
import secrets
import stat
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import LinesideError

SHM_DIR = Path("/dev/shm")
PREFIX = "lineside-"
NAME_PATTERN = r"^lineside-[A-Za-z0-9_.+-]{1,200}$"  # one file name in SHM_DIR: no "/", so no traversal
_NAME = re.compile(NAME_PATTERN)
MAGIC = b"LSHMRNG1"
_HEAD = struct.Struct("<8sIIQQ64s64s")
SEQ_OFFSET = _HEAD.size  # 160
MAX_SLOTS = 64
PAGE = mmap.PAGESIZE
MAX_SEGMENTS = 64  # mappings a server keeps at most (the least recently used is let go)
OVERWRITTEN = ("overwritten before it was read: the camera's shared-memory ring went round while the server "
               "was behind; raise the camera's --shm-slots (or lower its fps)")


class ShmError(LinesideError):
    """A shared-memory frame that cannot be read; the message names why and the fix."""


class Overwritten(ShmError):
    """The camera lapped the ring: the slot holds a later frame than the message names."""

    def __init__(self):
        super().__init__(OVERWRITTEN)


def segment_name(station: str, camera: str) -> str:
    """The base of a camera's segment names ("+" never appears in station or camera names, so no
    two cameras share one); each ring is ``<base>.<token in hex>``."""
    return f"{PREFIX}{station}+{camera}"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ShmError(f"shared-memory segment name {name!r} is not a lineside segment: it must match "
                       f"{NAME_PATTERN} (one file in {SHM_DIR}, made by `lineside camera --shm-slots`)")
    return name


@lru_cache(maxsize=1)
def _fence_fn():
    lib = ctypes.util.find_library("atomic")
    if lib:
        try:
            fn = ctypes.CDLL(lib).atomic_thread_fence
            fn.argtypes, fn.restype = [ctypes.c_int], None
            return fn
        except (OSError, AttributeError):
            pass
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        return None  # x86 keeps stores in order and loads in order: a seqlock needs no more
    raise ShmError(f"shared-memory frames need memory fences on this {platform.machine()} CPU, from libatomic, "
                   "which is not installed: apt install libatomic1 (or send frames over the socket)")


def fence() -> None:
    """A full memory fence (C11 atomic_thread_fence(memory_order_seq_cst))."""
    fn = _fence_fn()
    if fn is not None:
        fn(5)


def _page_up(n: int) -> int:
    return -(-n // PAGE) * PAGE


def _data_offset(slots: int) -> int:
    return _page_up(SEQ_OFFSET + 8 * slots)


# ---- the camera's side -------------------------------------------------------------------
class Ring:
    """The camera's ring of frame slots in /dev/shm. Made at the first frame (its size sets the
    slots'); a larger frame later makes a new ring. Each ring is its own segment, named
    ``<base>.<token>``: the previous one stays until the next change or ``close``, so frames
    still in flight from it can be read. A camera starting removes what a crashed run of the
    same camera left behind; ``close`` removes its own."""

    def __init__(self, station: str, camera: str, slots: int, name: str | None = None):
        if not 1 <= slots <= MAX_SLOTS:
            raise ShmError(f"--shm-slots {slots}: give 1..{MAX_SLOTS} slots")
        self.base = check_name(name or segment_name(station, camera))
        self.station, self.camera, self.slots = station, camera, slots
        self.current: _Mapped | None = None
        self.previous: _Mapped | None = None
        self.next = 0
        self._remove_stale()

    @property
    def name(self) -> str | None:
        return self.current.name if self.current else None

    def write(self, image: np.ndarray) -> dict:
        """Copy the frame into the next slot (the seqlock around it); returns the message's "shm" field."""
        image = np.ascontiguousarray(image)
        ring = self.current
        if ring is None or image.nbytes > ring.slot_bytes:
            ring = self._create(image.nbytes)
        slot, self.next = self.next % self.slots, self.next + 1
        seq = int(ring.seqs[slot])
        ring.seqs[slot] = seq + 1  # odd: being written
        fence()
        offset = _data_offset(self.slots) + slot * ring.slot_bytes
        np.frombuffer(ring.mm, np.uint8, image.nbytes, offset)[:] = image.reshape(-1)
        fence()
        ring.seqs[slot] = seq + 2
        return {"segment": ring.name, "token": ring.token, "slot": slot, "seq": seq + 2}

    def _create(self, frame_bytes: int) -> _Mapped:
        slot_bytes = _page_up(max(1, frame_bytes))
        size = _data_offset(self.slots) + self.slots * slot_bytes
        token = secrets.randbits(63) | 1
        name = check_name(f"{self.base}.{token:x}")
        path = SHM_DIR / name
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ShmError(f"cannot create {path}: {exc.strerror}; is {SHM_DIR} there and writable?") from None
        try:
            try:
                os.posix_fallocate(fd, 0, size)  # reserve now: a full tmpfs would SIGBUS a write later
            except OSError as exc:
                os.unlink(path)
                raise ShmError(f"no room in {SHM_DIR} for {self.slots} slots of {slot_bytes >> 20} MiB "
                               f"({exc.strerror}): lower --shm-slots or enlarge {SHM_DIR} "
                               "(docker: --shm-size)") from None
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        # the header last but the magic: a server reading the file early finds no ring, not half of one
        _HEAD.pack_into(mm, 0, b"\0" * 8, self.slots, 0, slot_bytes, token, self.station.encode(),
                        self.camera.encode())
        fence()
        mm[:8] = MAGIC
        if self.previous is not None:
            self.previous.close()
        self.previous, self.current, self.next = self.current, _Mapped(name, token, slot_bytes, mm, self.slots), 0
        return self.current

    def _remove_stale(self) -> None:
        """Rings an earlier run of this camera left (it crashed): nobody will write them again."""
        for path in SHM_DIR.glob(f"{self.base}.*"):
            try:
                st = os.stat(path, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
                    os.unlink(path)
            except FileNotFoundError:
                pass

    def close(self) -> None:
        """Unmap and remove this camera's segments."""
        for ring in (self.previous, self.current):
            if ring is not None:
                ring.close()
        self.previous = self.current = None


class _Mapped:
    """One ring segment as the camera holds it (read-write)."""

    def __init__(self, name: str, token: int, slot_bytes: int, mm: mmap.mmap, slots: int):
        self.name, self.token, self.slot_bytes, self.mm = name, token, slot_bytes, mm
        self.seqs = np.frombuffer(mm, np.uint64, slots, SEQ_OFFSET)

    def close(self) -> None:
        self.seqs = None  # the mapping cannot close while a view of it exists
        self.mm.close()
        try:
            os.unlink(SHM_DIR / self.name)
        except FileNotFoundError:
            pass


# ---- the server's side -------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Segment:
    """One camera's ring, mapped read-only."""

    name: str
    token: int
    slots: int
    slot_bytes: int
    station: str
    camera: str
    mm: mmap.mmap
    seqs: np.ndarray

    def seq(self, slot: int) -> int:
        return int(self.seqs[slot])


def open_segment(name: str, max_slot_bytes: int) -> Segment:
    """Map a segment read-only after checking it is a lineside ring this server may read: a regular
    file (no symlink) in /dev/shm owned by this user, whose size matches its header."""
    check_name(name)
    dir_fd = os.open(SHM_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        raise ShmError(f"shared-memory segment {name} does not exist: the camera is not running (or closed "
                       "it); start `lineside camera --shm-slots N` on this host") from None
    except OSError as exc:
        raise ShmError(f"cannot open shared-memory segment {name}: {exc.strerror} (a symlink is refused; "
                       "run the camera as the server's user)") from None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ShmError(f"shared-memory segment {name} is not a regular file")
        if st.st_uid != os.geteuid():
            raise ShmError(f"shared-memory segment {name} belongs to uid {st.st_uid}, not this server's "
                           f"{os.geteuid()}: run the camera as the server's user")
        head = os.pread(fd, _HEAD.size, 0)
        if len(head) < _HEAD.size or head[:8] != MAGIC:
            raise ShmError(f"shared-memory segment {name} is not a lineside frame ring (no header): "
                           "it is made by `lineside camera --shm-slots`")
        magic, slots, _, slot_bytes, token, station, camera = _HEAD.unpack(head)
        if not 1 <= slots <= MAX_SLOTS or slot_bytes % PAGE or not 0 < slot_bytes <= _page_up(max_slot_bytes):
            raise ShmError(f"shared-memory segment {name} declares {slots} slots of {slot_bytes} bytes: at "
                           f"most {MAX_SLOTS} slots of the station's limits.max_payload_bytes "
                           f"({max_slot_bytes}) are read")
        size = _data_offset(slots) + slots * slot_bytes
        if st.st_size != size:
            raise ShmError(f"shared-memory segment {name} is {st.st_size} bytes but its header says {size}: "
                           "it is damaged; restart the camera")
        mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    return Segment(name, token, slots, slot_bytes, station.rstrip(b"\0").decode(errors="replace"),
                   camera.rstrip(b"\0").decode(errors="replace"), mm, np.frombuffer(mm, np.uint64, slots, SEQ_OFFSET))


@dataclass
class Slot:
    """A frame's pixels in a mapped slot, valid while the slot still holds sequence number ``seq``."""

    segment: Segment
    slot: int
    seq: int
    pixels: memoryview

    def check(self) -> None:
        """Raise Overwritten if the camera has begun writing over this frame (call after reading it)."""
        fence()
        if self.segment.seq(self.slot) != self.seq:
            raise Overwritten()

    def settle(self, result: np.ndarray) -> np.ndarray:
        """``result`` read from these pixels, made safe to keep: copied if it still views the slot,
        then checked (an ERROR if the camera wrote over the frame while it was read)."""
        if np.may_share_memory(result, np.frombuffer(self.pixels, np.uint8)):
            result = result.copy()
        self.check()
        return result


class Segments:
    """The segments this process has mapped, by name (each mapped once; a new token reopens it)."""

    def __init__(self, capacity: int = MAX_SEGMENTS):
        self.capacity, self.lock = capacity, threading.Lock()
        self.mapped: OrderedDict[str, Segment] = OrderedDict()

    def attach(self, ref, station: str, camera: str, shape, max_slot_bytes: int) -> Slot:
        """The frame ``ref`` (the header's "shm" field) names, checked against the ring before any read."""
        nbytes = math.prod(shape)
        seg = self._segment(ref.segment, ref.token, max_slot_bytes)
        if (seg.station, seg.camera) != (station, camera):
            raise ShmError(f"shared-memory segment {seg.name} is camera {seg.camera!r} of station {seg.station!r}, "
                           f"not {camera!r} of {station!r}: a camera sends only its own ring")
        if ref.slot >= seg.slots:
            raise ShmError(f"slot {ref.slot} is outside segment {seg.name}'s {seg.slots} slots")
        if nbytes > seg.slot_bytes:
            raise ShmError(f"shape {list(shape)} ({nbytes} bytes) does not fit segment {seg.name}'s slots of "
                           f"{seg.slot_bytes} bytes")
        if ref.seq % 2:
            raise ShmError(f"sequence number {ref.seq} is odd (a slot being written): the camera sends even ones")
        fence()
        now = seg.seq(ref.slot)
        if now != ref.seq:
            if now < ref.seq:
                raise ShmError(f"slot {ref.slot} of {seg.name} holds sequence {now}, behind the message's "
                               f"{ref.seq}: not this camera's frame")
            raise Overwritten()
        offset = _data_offset(seg.slots) + ref.slot * seg.slot_bytes
        return Slot(seg, ref.slot, ref.seq, memoryview(seg.mm)[offset:offset + nbytes])

    def _segment(self, name: str, token: int, max_slot_bytes: int) -> Segment:
        with self.lock:
            seg = self.mapped.get(name)
            if seg is not None and seg.token == token:
                self.mapped.move_to_end(name)
                return seg
            seg = open_segment(name, max_slot_bytes)
            self.mapped[name] = seg
            self.mapped.move_to_end(name)
            # A camera has its current ring and the one before (frames in flight from it); older ones
            # of the same camera are let go (their mapping ends with the last frame still reading it).
            same = [n for n, s in self.mapped.items() if (s.station, s.camera) == (seg.station, seg.camera)]
            for n in same[:-2]:
                del self.mapped[n]
            while len(self.mapped) > self.capacity:
                self.mapped.popitem(last=False)
        if seg.token != token:
            raise ShmError(f"frame names token {token} but segment {name} holds {seg.token}: not the ring this "
                           "frame was written to (the camera restarted after sending it)")
        return seg


SEGMENTS = Segments()  # process-wide: a mapping, like a file descriptor, belongs to the process
