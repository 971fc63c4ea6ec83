"""Raw frames through shared memory (issue 23): a camera on the same host writes the pixels into
a /dev/shm ring and sends only the header; the server reads them in place, checks every read
against the slot's seqlock, and gives every frame exactly one verdict."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq
from runtime_helpers import make_tiny_bundle, station, wait_for_rows

from edge_infer.camera import Publisher
from edge_infer.pipeline import Item, Model
from edge_infer.preprocess import preprocess
from edge_infer.shm import SHM_DIR, Ring, segment_name
from edge_infer.wire import Limits, encode_frame, encode_shm_frame, frame_header, parse_frame

pytestmark = pytest.mark.skipif(not SHM_DIR.is_dir(), reason="needs /dev/shm (Linux)")
OVERWRITTEN = "overwritten before it was read"


def textured(seed: int, size=(120, 160)) -> np.ndarray:
    """A BGR frame whose tiny-bundle score depends on every pixel the model sees."""
    return np.random.default_rng(seed).integers(0, 200, (*size, 3), dtype=np.uint8)


@pytest.fixture
def station_name(request):
    """A station name of this test's own, so its segments never meet another session's."""
    return f"shm{os.getpid()}{abs(hash(request.node.name)) % 10**6}"


def _scores(rows, camera):
    return {r["frame_id"]: (r["status"], r["score"], r["reason"]) for r in rows if r["camera"] == camera}


def test_camera_process_over_shm_scores_exactly_like_raw_over_the_socket(serve, tmp_path, station_name):
    """`lineside camera --shm-slots` (its own process) replays four frames in a loop; every frame it
    sent gets one verdict with the score the same frame gets when its pixels travel over the socket."""
    folder = tmp_path / "frames"
    folder.mkdir()
    frames = [textured(i) for i in range(4)]
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{i}.png"), frame)
    server = serve(name=station_name, shm=True, queue={"capacity": 64})
    journal = server.cfg.journal.path
    with Publisher(server.cfg.sockets.frames, station_name, "sock", "raw") as publisher:
        for frame in frames:
            publisher.publish(frame, block=True)
        want = {fid: score for fid, (_, score, _) in _scores(wait_for_rows(journal, 4), "sock").items()}
    assert len(want) == 4 and len(set(want.values())) == 4  # four frames, four different scores

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cam = subprocess.Popen([sys.executable, "-m", "lineside", "camera", str(folder), "--connect",
                            server.cfg.sockets.frames, "--station", station_name, "--name", "cam0", "--loop",
                            "--fps", "20", "--shm-slots", "8"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(_scores(wait_for_rows(journal, 1, 0.1), "cam0")) < 12:
            time.sleep(0.1)
        assert list(SHM_DIR.glob(segment_name(station_name, "cam0") + ".*"))
    finally:
        cam.send_signal(signal.SIGTERM)
        log = cam.communicate(timeout=60)[0]
    stopped = [json.loads(line) for line in log.splitlines() if '"camera_stopped"' in line]
    assert stopped, log[-3000:]
    sent = stopped[-1]["sent"]
    assert sent >= 12
    assert not list(SHM_DIR.glob(segment_name(station_name, "cam0") + ".*"))  # the camera removed its ring
    rows = [r for r in wait_for_rows(journal, 4 + sent) if r["camera"] == "cam0"]
    ids = sorted(r["frame_id"] for r in rows)
    # every frame sent: exactly one verdict (one more if the signal came between a send and its count)
    assert ids == list(range(len(ids))) and len(ids) in (sent, sent + 1)
    got = _scores(rows, "cam0")
    for fid, (status, score, reason) in got.items():
        assert status in ("OK", "NG"), reason
        assert score == want[fid % 4]


def test_model_input_from_shared_memory_is_bit_identical_and_an_ng_frame_keeps_a_copy(tmp_path, station_name):
    cfg, _ = station(tmp_path, name=station_name, shm=True, thresholds={"image": 0.0})
    model = Model(cfg)
    ring = Ring(station_name, "cam0", 2)
    try:
        frame = textured(7, (1080, 1920))
        shm_item = _item(parse_frame(encode_shm_frame(frame, ring, station_name, "cam0", 0), Limits(shm=True)))
        raw_item = _item(parse_frame(encode_frame(frame, station_name, "cam0", 0, "raw"), Limits()))
        for item in (shm_item, raw_item):
            model.decode(item)
        assert np.array_equal(preprocess(shm_item.image, model.spec, shm_item.plan),
                              preprocess(raw_item.image, model.spec, raw_item.plan))
        model.score([shm_item, raw_item])
        assert shm_item.verdict.status == raw_item.verdict.status == "NG"
        assert shm_item.verdict.score == raw_item.verdict.score
        encode_shm_frame(textured(8, (1080, 1920)), ring, station_name, "cam0", 1)
        encode_shm_frame(textured(9, (1080, 1920)), ring, station_name, "cam0", 2)  # slot 0 written over
        assert np.array_equal(shm_item.image, frame)  # the alert's image was copied out before that
    finally:
        ring.close()
        model.close()


def _item(frame) -> Item:
    h = frame.header
    return Item(h.station, h.camera, h.frame_id, h.captured_at, time.time(), time.perf_counter(), frame=frame)


def test_a_queued_frame_after_a_reload_to_another_input_size_ends_in_a_verdict(tmp_path, station_name):
    """A reload brings a model that plans differently: queued frames are decoded again from their
    slot. A slot the camera has written over gives ERROR (never the later frame's pixels); a slot
    still intact is scored, even after the camera closed and removed its segment."""
    cfg, _ = station(tmp_path, name=station_name, shm=True)
    old = Model(cfg)
    new = Model(cfg.model_copy(update={"bundle": make_tiny_bundle(tmp_path / "b2", 16, 24)}))
    ring = Ring(station_name, "cam0", 2)
    try:
        frames = [textured(i) for i in range(3)]
        items = [_item(parse_frame(encode_shm_frame(f, ring, station_name, "cam0", i), Limits(shm=True)))
                 for i, f in enumerate(frames[:2])]
        for item in items:
            old.decode(item)  # decoded at receipt by the model then loaded
        encode_shm_frame(frames[2], ring, station_name, "cam0", 2)  # the ring goes round: slot 0 again
        ring.close()  # and the camera stops
        new.score(items)
        assert items[0].verdict.status == "ERROR" and OVERWRITTEN in items[0].verdict.reason
        assert "--shm-slots" in items[0].verdict.reason
        raw = _item(parse_frame(encode_frame(frames[1], station_name, "cam0", 1, "raw"), Limits()))
        new.decode(raw)
        new.score([raw])
        assert items[1].verdict.status in ("OK", "NG") and items[1].verdict.score == raw.verdict.score
    finally:
        ring.close()
        old.close()
        new.close()


def test_a_frame_overwritten_while_it_waited_in_the_queue_is_an_error_not_a_score(tmp_path, station_name):
    """Decoded at receipt (a view of the slot), then the camera goes round the ring before a worker
    reads it: the read is caught by the seqlock, the frame is an ERROR naming the fix."""
    cfg, _ = station(tmp_path, name=station_name, shm=True)
    model = Model(cfg)
    ring = Ring(station_name, "cam0", 1)
    try:
        item = _item(parse_frame(encode_shm_frame(textured(0), ring, station_name, "cam0", 0), Limits(shm=True)))
        model.decode(item)
        encode_shm_frame(textured(1), ring, station_name, "cam0", 1)
        model.score([item])
    finally:
        ring.close()
        model.close()
    assert item.verdict.status == "ERROR" and OVERWRITTEN in item.verdict.reason and item.image is None


def test_a_camera_starting_removes_the_ring_a_crashed_run_left(station_name):
    crashed = Ring(station_name, "cam0", 2)
    crashed.write(textured(0))
    left = SHM_DIR / crashed.name
    assert left.exists()
    fresh = Ring(station_name, "cam0", 2)  # the same camera started again: the old ring is nobody's
    assert not left.exists()
    fresh.write(textured(1))
    mine = SHM_DIR / fresh.name
    assert mine.exists() and mine != left
    crashed.close()
    fresh.close()
    assert not mine.exists()


def test_a_ring_the_camera_lapped_before_the_server_read_gives_error_verdicts(tmp_path, station_name):
    """Five frames through a ring of two slots reach the server only after the camera wrote them
    all (it connected before the server was up): the three overwritten get ERROR, never the pixels
    of a later frame; the two still in the ring are scored."""
    from benchmarks.load import free_ports

    port = free_ports(1)[0]
    cfg, _ = station(tmp_path, name=station_name, shm=True)
    frames_address = f"tcp://127.0.0.1:{port}"
    cfg.sockets.frames = frames_address
    publisher = Publisher(frames_address, station_name, "cam0", "raw", shm_slots=2)
    from edge_infer.server import Server

    try:
        for i in range(5):
            publisher.publish(textured(i), block=True)  # queued by ZeroMQ until the server binds
        server = Server(cfg).start()
        try:
            rows = wait_for_rows(cfg.journal.path, 5)
        finally:
            server.close()
    finally:
        publisher.close()
    got = _scores(rows, "cam0")
    assert sorted(got) == [0, 1, 2, 3, 4]
    for fid in (0, 1, 2):
        status, _, reason = got[fid]
        assert status == "ERROR" and OVERWRITTEN in reason and "--shm-slots" in reason
    assert all(got[fid][0] in ("OK", "NG") for fid in (3, 4))


def test_malformed_shm_messages_get_error_verdicts_and_the_server_keeps_scoring(serve, station_name):
    server = serve(name=station_name, shm=True)
    ring = Ring(station_name, "cam0", 2)
    other = Ring(station_name, "cam9", 2)
    stranger = SHM_DIR / f"lineside-{station_name}+junk"
    link = SHM_DIR / f"lineside-{station_name}+link"
    stranger.write_bytes(b"not a ring" * 100)
    os.symlink("/etc/passwd", link)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.linger = 2000
    push.connect(server.cfg.sockets.frames)
    try:
        good = encode_shm_frame(textured(1), ring, station_name, "cam0", 0)
        ref = json.loads(good[0])["shm"]
        other_ref = json.loads(encode_shm_frame(textured(2), other, station_name, "cam9", 0)[0])["shm"]
        shape = [120, 160, 3]
        cases = {  # frame id: (the "shm" field, shape, a word of the reason)
            1: ({**ref, "segment": "../../etc/passwd"}, shape, "segment"),
            2: ({**ref, "segment": "lineside-x/../../etc/passwd"}, shape, "segment"),
            3: ({**ref, "segment": f"lineside-{station_name}+gone"}, shape, "does not exist"),
            4: ({**ref, "segment": stranger.name}, shape, "not a lineside frame ring"),
            5: ({**ref, "segment": link.name}, shape, "symlink"),
            6: (ref, [1080, 1920, 3], "does not fit"),
            7: ({**ref, "slot": 5}, shape, "outside"),
            8: ({**ref, "seq": 3}, shape, "odd"),
            9: (other_ref, shape, "cam9"),  # another camera's ring
            10: ({**ref, "token": ref["token"] + 2}, shape, "camera restarted"),
            11: (ref, [5000, 5000, 3], "4096"),  # beyond limits.max_side before anything is mapped
        }
        for fid, (shm, shp, _) in cases.items():
            push.send_multipart([frame_header(station_name, "cam0", fid, "shm", shp, shm=shm), b""])
        push.send_multipart([frame_header(station_name, "cam0", 12, "raw", shape, shm=ref), bytes(57600)])
        push.send_multipart([frame_header(station_name, "cam0", 13, "shm", shape, shm=ref), b"xx"])
        push.send_multipart([good[0].replace(b'"frame_id":0', b'"frame_id":14'), b""])  # still intact: scored
        rows = _scores(wait_for_rows(server.cfg.journal.path, 14), "cam0")
    finally:
        push.close()
        ctx.term()
        ring.close()
        other.close()
        stranger.unlink()
        link.unlink()
    assert sorted(rows) == list(range(1, 15))
    for fid, (_, _, word) in cases.items():
        status, _, reason = rows[fid]
        assert status == "ERROR" and word in reason, (fid, reason)
    assert rows[12][0] == rows[13][0] == "ERROR" and "shm" in rows[12][2] and "empty" in rows[13][2]
    assert rows[14][0] in ("OK", "NG")  # the server kept scoring


def test_shm_frames_are_refused_with_the_fix_when_the_station_does_not_enable_them(serve, station_name):
    server = serve(name=station_name)  # shm not set: off by default
    with Publisher(server.cfg.sockets.frames, station_name, "cam0", "raw", shm_slots=2) as publisher:
        publisher.publish(textured(0), block=True)
        rows = wait_for_rows(server.cfg.journal.path, 1)
    assert len(rows) == 1 and rows[0]["status"] == "ERROR"
    assert "shm: true" in rows[0]["reason"] and "--shm-slots" in rows[0]["reason"]


def test_shm_slots_take_raw_frames_only(station_name):
    from edge_infer.errors import LinesideError

    with pytest.raises(LinesideError, match="--shm-slots sends raw pixels"):
        Publisher("tcp://127.0.0.1:1", station_name, "cam0", "jpeg", shm_slots=2)
    with pytest.raises(LinesideError, match="give 1..64 slots"):
        Publisher("tcp://127.0.0.1:1", station_name, "cam0", "raw", shm_slots=65)


def test_a_restarted_camera_is_read_from_its_new_ring(serve, station_name):
    server = serve(name=station_name, shm=True)
    first = textured(3)
    with Publisher(server.cfg.sockets.frames, station_name, "cam0", "raw", shm_slots=2) as publisher:
        publisher.publish(first, block=True)
        wait_for_rows(server.cfg.journal.path, 1)
    with Publisher(server.cfg.sockets.frames, station_name, "cam0", "raw", shm_slots=3, start_id=1) as publisher:
        publisher.publish(first, block=True)  # same name, new segment and token
        publisher.publish(textured(4, (240, 320)), block=True)  # and a larger frame: a new ring again
        rows = _scores(wait_for_rows(server.cfg.journal.path, 3), "cam0")
    assert sorted(rows) == [0, 1, 2] and all(r[0] in ("OK", "NG") for r in rows.values()), rows
    assert rows[0][1] == rows[1][1]
    assert not any(p.name.startswith(f"lineside-{station_name}") for p in SHM_DIR.iterdir())


def test_shm_module_lives_without_torch():
    code = "import sys, edge_infer.shm, edge_infer.wire; assert 'torch' not in sys.modules"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_station_config_documents_shm_off_by_default(tmp_path):
    cfg, _ = station(tmp_path)
    assert cfg.shm is False and cfg.limits.limits(shm=cfg.shm).shm is False
    assert "shm" in Path("docs/station-config.md").read_text()
