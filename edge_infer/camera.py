"""`lineside camera`: capture frames from a source and PUSH them to a server.

Sources (``open_source``): a folder of images (replayed, optionally looped), a video
file, a V4L2/USB device index, an RTSP/HTTP URL, a GStreamer pipeline string, or a
ready-made pipeline ``gst:csi`` / ``gst:usb`` / ``gst:usb-mjpeg`` / ``gst:rtsp`` (Jetson
hardware capture and decode). Live sources that fail are reopened with exponential
backoff and the gap is logged; file sources end (or loop).

Frame ids increase by one per captured frame per camera run, and an id is used even when
the frame cannot be sent, so the server sees (and counts) the gap.

With ``--shm-slots N`` (a server on the same host whose station sets ``shm: true``) raw
frames do not travel over the socket: each frame's pixels go into the next of N slots of a
ring in /dev/shm and the message names the slot (edge_infer/shm.py). N must exceed the
frames the server may hold unread (its socket buffer and queue) or it gets ERROR verdicts
"overwritten before it was read".
"""

from __future__ import annotations

import signal
from abc import ABC, abstractmethod
import time
from pathlib import Path

import numpy as np

from .errors import ImageReadError, LinesideError
from .imageio import list_images, read_image
from .imaging import opencv_builds_with, require_opencv
from .logs import log_event
from .wire import encode_frame, encode_shm_frame

GST_TEMPLATES = {
    "csi": ("nvarguscamerasrc sensor-id={sensor_id} ! video/x-raw(memory:NVMM),width={width},height={height},"
            "framerate={fps}/1,format=NV12 ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! "
            "video/x-raw,format=BGR ! appsink drop=true max-buffers=1"),
    "usb": ("v4l2src device={device} ! video/x-raw,width={width},height={height},framerate={fps}/1 ! "
            "videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1"),
    "usb-mjpeg": ("v4l2src device={device} ! image/jpeg,width={width},height={height},framerate={fps}/1 ! "
                  "nvv4l2decoder mjpeg=1 ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! "
                  "video/x-raw,format=BGR ! appsink drop=true max-buffers=1"),
    "rtsp": ("rtspsrc location={url} latency={latency} ! rtph264depay ! h264parse ! nvv4l2decoder ! nvvidconv ! "
             "video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1"),
}
GST_DEFAULTS = {"sensor_id": 0, "width": 1920, "height": 1080, "fps": 30, "device": "/dev/video0", "url": "",
                "latency": 200}
URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://")


class Source(ABC):
    """Something frames come from. ``read`` returns an image, or None when none came."""

    live = False  # live sources are reopened on failure; file sources end
    describe = "source"

    @abstractmethod
    def read(self) -> np.ndarray | None:
        """The next image, or None when none came."""

    def reopen(self) -> bool:
        return False

    def close(self) -> None:
        """Release the device or file; folders hold nothing open."""


class FolderSource(Source):
    def __init__(self, folder: Path, loop: bool = False, cache_bytes: int = 256 << 20):
        self.paths = list_images(folder)
        if not self.paths:
            raise LinesideError(f"folder {folder} holds no images to replay")
        self.loop, self.index, self.describe = loop, 0, f"folder {folder} ({len(self.paths)} images)"
        self.cache: dict[int, np.ndarray] = {}
        self.cache_left = cache_bytes  # replaying at full speed must not be limited by the disk

    def read(self) -> np.ndarray | None:
        while True:
            if self.index >= len(self.paths):
                if not self.loop:
                    return None
                self.index = 0
            i, self.index = self.index, self.index + 1
            if i in self.cache:
                return self.cache[i]
            try:
                image = read_image(self.paths[i])
            except ImageReadError as exc:
                log_event("camera_skipped_file", path=exc.path, reason=exc.reason)
                continue
            if image.nbytes <= self.cache_left:
                self.cache[i], self.cache_left = image, self.cache_left - image.nbytes
            return image


class CaptureSource(Source):
    """Anything OpenCV's VideoCapture opens: a video file, a device, a URL, a GStreamer pipeline."""

    def __init__(self, target, api: int, live: bool, describe: str, loop: bool = False):
        self.target, self.api, self.live, self.describe, self.loop = target, api, live, describe, loop
        self.cv2 = require_opencv(f"reading {describe}")
        self.cap = None
        if not self.reopen():
            raise LinesideError(f"cannot open {describe}: {self.hint()}")

    def hint(self) -> str:
        if self.api == self.cv2.CAP_GSTREAMER:
            return "check the pipeline with gst-launch-1.0 (ending in fakesink) and that the camera is free"
        if isinstance(self.target, int):
            return f"is /dev/video{self.target} present and not in use by another program?"
        if isinstance(self.target, str) and self.target.startswith(URL_SCHEMES):
            return "is the URL right and the camera reachable from here?"
        return "is it a video OpenCV's FFmpeg can read?"

    def reopen(self) -> bool:
        if self.cap is not None:
            self.cap.release()
        self.cap = self.cv2.VideoCapture(self.target, self.api)
        return bool(self.cap.isOpened())

    def read(self) -> np.ndarray | None:
        ok, image = self.cap.read()
        if not ok and self.loop and not self.live:
            self.cap.set(self.cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self.cap.read()
        return image if ok else None

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()


def gstreamer_available() -> bool:
    return opencv_builds_with("GStreamer") is True


def gst_pipeline(name: str, **params) -> str:
    if name not in GST_TEMPLATES:
        raise LinesideError(f"no GStreamer template {name!r}: choose one of {', '.join(GST_TEMPLATES)}")
    values = {**GST_DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    if name == "rtsp" and not values["url"]:
        raise LinesideError("gst:rtsp needs the stream: --url rtsp://HOST/PATH")
    return GST_TEMPLATES[name].format(**values)


def open_source(spec: str, loop: bool = False, **gst_params) -> Source:
    """Turn the SOURCE argument into a Source (see the module docstring for the forms)."""
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path, loop)  # images decode without OpenCV; every other source needs it
    cv2 = require_opencv(f"camera source {spec!r}")
    if spec.startswith("gst:") or " ! " in spec:
        pipeline = gst_pipeline(spec[4:], **gst_params) if spec.startswith("gst:") else spec
        if not gstreamer_available():
            raise LinesideError(
                "this OpenCV is built without GStreamer (PyPI's opencv-python wheels are), so it cannot open "
                "a pipeline: on a Jetson use JetPack's OpenCV (`sudo apt install python3-opencv`, or the "
                "l4t-ml container) in a venv made with --system-site-packages, and uninstall opencv-python there"
            )
        return CaptureSource(pipeline, cv2.CAP_GSTREAMER, True, f"GStreamer pipeline {pipeline!r}")
    if spec.startswith(URL_SCHEMES):
        return CaptureSource(spec, cv2.CAP_FFMPEG, True, f"stream {spec}")
    if spec.isdigit():
        return CaptureSource(int(spec), cv2.CAP_ANY, True, f"camera device {spec}")
    if path.is_file():
        return CaptureSource(str(path), cv2.CAP_ANY, False, f"video file {path}", loop)
    raise LinesideError(f"camera source {spec!r} is none of: a folder of images, a video file, a device "
                        "index (0), an rtsp:// URL, a GStreamer pipeline, or gst:csi|usb|usb-mjpeg|rtsp")


class Publisher:
    """Numbers, stamps, encodes and PUSHes frames; paces them to ``fps`` when given."""

    def __init__(self, address: str, station: str, camera: str, encoding: str = "jpeg", quality: int = 90,
                 start_id: int = 0, hwm: int = 16, server_key=None, client_key=None, linger_ms: int = 2000,
                 shm_slots: int = 0):
        import zmq

        from .security import secure_client

        self.ring = None
        if shm_slots:  # raw pixels through a shared-memory ring; the socket carries the header only
            from .shm import Ring

            if encoding not in ("raw", "shm"):
                raise LinesideError(f"--shm-slots sends raw pixels through shared memory, not {encoding}: "
                                    "drop --encoding (or --shm-slots)")
            self.ring, encoding = Ring(station, camera, shm_slots), "shm"
        self.zmq = zmq
        # Its own context: terminating it is the one way ZeroMQ offers to wait (up to the
        # linger time) until the frames still queued have left.
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.sndhwm, self.sock.linger = hwm, linger_ms
        secure_client(self.sock, server_key, client_key)
        self.sock.connect(address)
        self.station, self.camera, self.encoding, self.quality = station, camera, encoding, quality
        self.next_id = start_id
        self.sent = self.unsent = 0
        self.tags: dict[str, str] = {}  # sent once with the next frame (e.g. the gap after a reopen)

    def publish(self, image: np.ndarray, block: bool) -> bool:
        """Send one frame (its id is used either way); False when the server was not taking frames."""
        frame_id, self.next_id = self.next_id, self.next_id + 1
        if self.ring is not None:
            parts = encode_shm_frame(image, self.ring, self.station, self.camera, frame_id, tags=self.tags)
        else:
            parts = encode_frame(image, self.station, self.camera, frame_id, self.encoding, quality=self.quality,
                                 tags=self.tags)
        self.tags = {}
        try:
            # Zero-copy: libzmq sends from the encoded payload itself (pyzmq still copies parts under
            # its 64 KiB copy_threshold). This once crashed at exit (e164900): the socket was then on
            # the process-wide context, which nobody terminated, so libzmq freed frames still queued
            # after the interpreter had shut down. close() now terminates this Publisher's own
            # context, which releases every queued frame while Python is still running.
            self.sock.send_multipart(parts, flags=0 if block else self.zmq.NOBLOCK, copy=False)
        except self.zmq.Again:  # a live camera does not wait: a fresh frame is worth more than an old one
            self.unsent += 1
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        """Close, waiting up to the linger time for queued frames to leave (a socket that is
        garbage-collected unclosed drops them); then remove the shared-memory ring, if any (a server
        that has mapped it keeps reading what it already holds)."""
        self.sock.close()
        self.ctx.term()
        if self.ring is not None:
            self.ring.close()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_camera(source: Source, publisher: Publisher, fps: float | None = None, count: int | None = None,
               max_backoff_s: float = 8.0) -> dict:
    """Capture and publish until the source ends or ``count`` frames; reopen live sources."""
    period = 1.0 / fps if fps else 0.0
    next_at, captured, reopens = time.monotonic(), 0, 0
    log_event("camera_started", source=source.describe, camera=publisher.camera, station=publisher.station)
    stopped_by = "end"
    try:
        while count is None or captured < count:
            image = source.read()
            if image is None:
                if not source.live:
                    break
                reopens += 1
                _reopen_with_backoff(source, publisher, max_backoff_s)
                continue
            captured += 1
            publisher.publish(image, block=not source.live)
            if period:
                next_at += period
                time.sleep(max(0.0, next_at - time.monotonic()))
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: what was sent is still logged
        stopped_by = "signal"
        raise
    finally:
        stats = {"captured": captured, "sent": publisher.sent, "unsent": publisher.unsent, "reopens": reopens,
                 "next_frame_id": publisher.next_id}
        log_event("camera_stopped", camera=publisher.camera, stopped_by=stopped_by, **stats)
    return stats


def _reopen_with_backoff(source: Source, publisher: Publisher, max_backoff_s: float) -> None:
    lost_at, delay = time.time(), 0.25
    log_event("camera_lost", camera=publisher.camera, source=source.describe, last_frame_id=publisher.next_id - 1)
    while not source.reopen():
        time.sleep(delay)
        delay = min(delay * 2, max_backoff_s)
    gap_s = round(time.time() - lost_at, 3)
    log_event("camera_reopened", camera=publisher.camera, gap_s=gap_s, next_frame_id=publisher.next_id)
    publisher.tags = {"gap_s": str(gap_s)}  # the server journals it with the first frame after the gap


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main(args) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    gst = {"sensor_id": args.sensor_id, "width": args.width, "height": args.height,
           "fps": int(args.fps) if args.fps else None, "device": args.device, "url": args.url}
    # SIGTERM (systemd stop) ends the loop like Ctrl-C, so the socket closes and queued frames leave
    signal.signal(signal.SIGTERM, _interrupt)
    source = open_source(args.source, loop=args.loop, **gst)
    start_id = int(time.time() * 1000) if args.start_id == "now" else int(args.start_id)
    encoding = args.encoding or ("raw" if args.shm_slots else "jpeg")
    publisher = Publisher(args.connect, args.station, args.name, encoding, args.quality, start_id,
                          args.hwm, args.server_key, args.client_key, shm_slots=args.shm_slots)
    try:
        run_camera(source, publisher, args.fps, args.count)
    finally:
        source.close()
        publisher.close()
    return 0
