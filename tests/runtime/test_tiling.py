"""Tiling (edge_infer/tiling.py): the grid, the canvas the plan brings a ROI to, stitching, and the
small defect that only tiles see; scored through the real ONNX Runtime backend."""

import time

import cv2
import numpy as np
import pytest
import yaml

from edge_infer.alerts.disk import heatmap
from edge_infer.bundle import Bundle
from edge_infer.camera import Publisher
from edge_infer.errors import LinesideError
from edge_infer.preprocess import InputSpec, plan, preprocess, tile_inputs
from edge_infer.score import Scorer
from edge_infer.server import Server
from edge_infer.station import load_station
from edge_infer.tiling import Tiling, grid
from lineside.cli import main
from runtime_helpers import cleanup, make_tiny_bundle, short_dir, wait_for_rows


@pytest.mark.parametrize("length, tile, overlap", [
    (96, 32, 0),  # divisible: tiles side by side
    (100, 32, 0),  # not divisible: the overlap grows a little, the last tile ends at the edge
    (100, 32, 8),
    (33, 32, 0),  # one pixel more than a tile: two tiles overlapping by 31
    (32, 32, 8),  # exactly one tile
    (1000, 224, 32),
])
def test_grid_covers_the_length_edge_to_edge_with_the_fewest_tiles(length, tile, overlap):
    starts = grid(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == length  # edge to edge, nothing past the edge
    assert starts == sorted(set(starts))
    overlaps = [a + tile - b for a, b in zip(starts, starts[1:])]
    assert all(o >= overlap for o in overlaps)  # neighbours overlap at least as asked
    assert max(overlaps, default=0) - min(overlaps, default=0) <= 1  # spread evenly
    n = len(starts)
    assert n == 1 or (n - 1) * tile - (n - 2) * overlap < length  # one tile fewer could not cover it


def test_grid_examples():
    assert grid(96, 32, 0) == [0, 32, 64]
    assert grid(100, 32, 8) == [0, 23, 45, 68]
    assert grid(32, 32, 0) == [0]


def test_bad_tiles_are_refused_with_the_fix():
    with pytest.raises(LinesideError, match="does not fit"):
        grid(20, 32, 0)
    with pytest.raises(LinesideError, match="less than the tile size"):
        Tiling(32, 32)
    with pytest.raises(LinesideError, match="at least 8"):
        Tiling(4)
    with pytest.raises(LinesideError, match="SIZE,OVERLAP"):
        Tiling.parse("big")
    assert Tiling.parse("256,32") == Tiling(256, 32) and Tiling.parse("64") == Tiling(64, 0)
    with pytest.raises(LinesideError, match="square"):
        InputSpec(32, 48, 3, tiles=Tiling(64))
    with pytest.raises(LinesideError, match="native"):
        InputSpec(32, 32, 3, native=(64, 64), tiles=Tiling(64))
    spec = InputSpec(32, 32, 1, roi=(0, 0, 50, 200), tiles=Tiling(64, 8))
    with pytest.raises(LinesideError, match="do not fit in the 50x200 ROI"):
        plan(300, 300, spec)


def test_the_plan_brings_the_roi_to_the_tiles_canvas():
    """Tiles of 64 source px for a 32 px model: the canvas is the ROI at half scale, reached by the
    same plan as an untiled input (a JPEG decoded at 1/2 in its DCT domain, exact box shrinks)."""
    spec = InputSpec(32, 32, 1, tiles=Tiling(64, 16))
    how = plan(200, 300, spec)
    assert how.size == (100, 150) and how.area == 2
    assert plan(200, 300, spec, jpeg=True).reduce == 2  # 100x150 decoded keeps the canvas's pixels
    image = np.random.default_rng(0).integers(0, 256, (200, 300), np.uint8)
    canvas = preprocess(image, spec)
    assert canvas.shape == (1, 100, 150)
    tiles, places = tile_inputs(canvas, spec)
    assert tiles.shape == (len(places), 1, 32, 32)
    assert {y for y, _ in places} == set(grid(100, 32, 8)) and {x for _, x in places} == set(grid(150, 32, 8))
    y, x = places[-1]
    assert np.array_equal(tiles[-1], canvas[:, y:, x:])  # the last tile is the bottom-right corner
    # untiled, the same spec without tiles is the whole ROI squashed to the model's size
    assert preprocess(image, InputSpec(32, 32, 1)).shape == (1, 32, 32)


def test_stitched_map_equals_scoring_the_tiles_one_by_one(tmp_path):
    """N frames × T tiles go to the graph in batches of max_batch (3 here, fewer than the tiles); the
    stitched map is, pixel by pixel, the max over the tiles covering it, each scored alone."""
    bundle = make_tiny_bundle(tmp_path / "b", height=32, width=32, max_batch=3, tiles={"size": 32, "overlap": 8},
                              ramp=True)
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (70, 90, 3), np.uint8), rng.integers(0, 256, (70, 90, 3), np.uint8)]
    scorer = Scorer(bundle, backend="ort-cpu")
    try:
        out = scorer.run(frames)
        for frame, stitched, score in zip(frames, out.anomaly_map, out.score):
            canvas = preprocess(frame, scorer.spec)
            tiles, places = tile_inputs(canvas, scorer.spec)
            assert len(tiles) == 12  # 3 rows × 4 columns: more than one graph batch
            alone = [scorer.backend.run(t[None]) for t in tiles]
            expect = np.full(canvas.shape[1:], -np.inf, np.float32)
            for (y, x), one in zip(places, alone):
                for i in range(32):
                    for j in range(32):
                        expect[y + i, x + j] = max(expect[y + i, x + j], one.anomaly_map[0, 0, i, j])
            assert stitched.shape == (1, 70, 90)
            np.testing.assert_array_equal(stitched[0], expect)
            assert score == max(float(one.score[0]) for one in alone)
    finally:
        scorer.close()


def small_defect_frame(spot_at=(430, 310), size=(600, 800)) -> np.ndarray:
    """A dark 800x600 frame with one bright 6x6 spot: 0.008 % of the frame."""
    frame = np.full((*size, 3), 20, np.uint8)
    x, y = spot_at
    frame[y : y + 6, x : x + 6] = 255
    return frame


def test_a_small_defect_is_found_with_tiles_and_vanishes_without(tmp_path):
    frame = small_defect_frame()
    roi = (100, 50, 600, 500)  # the station's crop: tiles cover the ROI, the map is placed under it
    whole = Scorer(make_tiny_bundle(tmp_path / "whole", height=32, width=32), backend="ort-cpu", roi=roi)
    tiled = Scorer(make_tiny_bundle(tmp_path / "tiled", height=32, width=32, tiles={"size": 32, "overlap": 4}),
                   backend="ort-cpu", roi=roi)
    try:
        squashed = whole.judge([preprocess(frame, whole.spec)])[1][0]
        assert squashed.status == "OK" and squashed.score < 0.2  # 600x500 → 32x32 averages the spot away
        out, (verdict,) = tiled.judge([preprocess(frame, tiled.spec)])
    finally:
        whole.close()
        tiled.close()
    assert verdict.status == "NG" and verdict.score == pytest.approx(1.0)
    (region,) = verdict.regions  # in the stitched map's pixels: the ROI at full resolution here
    assert (region.x, region.y, region.width, region.height) == (430 - 100, 310 - 50, 6, 6)
    hot = heatmap(frame, out.anomaly_map[0], roi)  # the map placed under the ROI in the frame
    red = hot[..., 2].astype(int) - hot[..., 0]
    y, x = np.unravel_index(np.argmax(red), red.shape)
    assert 430 <= x < 436 and 310 <= y < 316


def test_tiling_follows_the_manifest_and_a_disagreeing_station_is_refused(tmp_path):
    tiled = make_tiny_bundle(tmp_path / "tiled", tiles={"size": 64, "overlap": 8})
    assert Bundle.load(tiled).input_spec.tiles == Tiling(64, 8)
    Scorer(tiled, backend="ort-cpu", tiles={"size": 64, "overlap": 8}).close()  # agreeing: fine
    with pytest.raises(LinesideError, match=r"declares tiles \{'size': 64, 'overlap': 0\}.*tiles \{'size': 64, "
                                            r"'overlap': 8\}"):
        Scorer(tiled, backend="ort-cpu", tiles={"size": 64, "overlap": 0})
    with pytest.raises(LinesideError, match="trained and exported with no tiles"):
        Scorer(make_tiny_bundle(tmp_path / "plain"), backend="ort-cpu", tiles={"size": 64, "overlap": 0})


def test_calibrate_then_serve_a_tiled_bundle_end_to_end(tmp_path):
    """The journey with tiles from the manifest: calibrate on good frames (ROI and tiles of the station
    config), then serve PNG frames: the small defect is NG with its region, its heatmap under the ROI
    in the frame, and a good frame is OK at the score calibration saw for it."""
    bundle = make_tiny_bundle(tmp_path / "bundle", image_threshold=None, tiles={"size": 32, "overlap": 8})
    rng = np.random.default_rng(2)
    roi = [20, 10, 160, 140]

    def good_frame():
        return (40 + rng.integers(0, 20, (160, 200))).astype(np.uint8)

    good = tmp_path / "good"
    good.mkdir()
    for i in range(40):
        cv2.imwrite(str(good / f"{i:03d}.png"), good_frame())
    config = tiling_station(tmp_path, bundle, roi=roi, tiles={"size": 32, "overlap": 8},
                            alerts={"disk": {"dir": str(tmp_path / "ng")}})
    assert main(["calibrate", str(bundle), "--station", "st1", "--good", str(good), "--allow-few",
                 "--station-config", str(config), "--out", str(tmp_path / "cal")]) == 0
    thresholds = Bundle.load(bundle).thresholds
    assert thresholds.provenance["tiles"] == {"size": 32, "overlap": 8} and thresholds.provenance["roi"] == roi
    assert thresholds.image < 0.5

    ok = good_frame()
    defect = good_frame()
    defect[100:108, 60:68] = 255  # 8x8 px inside the ROI: 0.2 % of the frame
    cfg = load_station(config)
    server = Server(cfg).start()
    try:
        with Publisher(cfg.sockets.frames, "st1", "cam0", "png") as camera:
            camera.publish(ok, block=True)
            camera.publish(defect, block=True)
        rows = {r["frame_id"]: r for r in wait_for_rows(cfg.journal.path, 2)}
        for _ in range(200):
            if list((tmp_path / "ng").glob("*_heatmap.png")):
                break
            time.sleep(0.05)
    finally:
        server.close()
        cleanup(cfg)
    assert rows[0]["status"] == "OK" and rows[1]["status"] == "NG"
    region = rows[1]["detail"]["regions"][0]  # in the stitched map: the ROI at full resolution here
    assert 60 - 20 - 1 <= region["x"] <= 60 - 20 + 1 and 100 - 10 - 1 <= region["y"] <= 100 - 10 + 1
    (shown,) = (tmp_path / "ng").glob("*_heatmap.png")
    hot = cv2.imread(str(shown)).astype(int)
    red = hot[..., 2] - hot[..., 0]
    y, x = np.unravel_index(np.argmax(red), red.shape)
    assert 58 <= x < 70 and 98 <= y < 110  # the hot spot is on the defect, in frame pixels


def test_a_station_config_that_disagrees_with_the_bundle_is_refused_by_calibrate_and_serve(tmp_path, capsys):
    bundle = make_tiny_bundle(tmp_path / "bundle", image_threshold=None, tiles={"size": 32, "overlap": 8})
    good = tmp_path / "good"
    good.mkdir()
    cv2.imwrite(str(good / "0.png"), np.full((64, 64), 40, np.uint8))
    config = tiling_station(tmp_path, bundle, tiles={"size": 48, "overlap": 8})
    assert main(["calibrate", str(bundle), "--station", "st1", "--good", str(good), "--allow-few",
                 "--station-config", str(config), "--out", str(tmp_path / "cal")]) != 0
    assert "declares tiles {'size': 48, 'overlap': 8}" in capsys.readouterr().err
    cfg = load_station(config)
    try:
        with pytest.raises(LinesideError, match="tiling follows the bundle's manifest"):
            Server(cfg).start()
    finally:
        cleanup(cfg)


def tiling_station(tmp_path, bundle, **settings):
    sock = short_dir()
    data = {"station": "st1", "bundle": str(bundle),
            "sockets": {k: f"ipc://{sock}/{k}" for k in ("frames", "verdicts", "control")},
            "journal": {"path": str(tmp_path / "journal.sqlite")}, **settings}
    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_merging_outputs_that_do_not_match_the_tiles_is_refused():
    from edge_infer.tiling import merge

    tiling, model = Tiling(32, 8), (32, 32)
    maps, scores = np.zeros((4, 1, 32, 32), np.float32), np.arange(4, dtype=np.float32)
    stitched, best = merge(maps, scores, [(32, 56), (32, 56)], tiling, model)  # two frames of two tiles
    assert [m.shape for m in stitched] == [(1, 32, 56)] * 2 and best.tolist() == [1.0, 3.0]
    with pytest.raises(LinesideError, match="4 tile outputs for canvases that hold 2 tiles"):
        merge(maps, scores, [(32, 56)], tiling, model)
