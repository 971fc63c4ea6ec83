"""The runtime without OpenCV (a line PC's `pip install lineside[cpu]`): edge_infer/imaging.py's
NumPy + Pillow paths against OpenCV, within the bounds docs/runtime.md states, and the whole
scoring path in a process where `import cv2` fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_infer import imaging
from runtime_helpers import without_opencv
from tiny_bundle import make_tiny_bundle

ROOT = Path(__file__).resolve().parents[2]


def random_image(rng, h, w, c, smooth):
    image = rng.integers(0, 256, (h, w, c) if c == 3 else (h, w), dtype=np.uint8)
    return cv2.GaussianBlur(image, (0, 0), 2.5) if smooth else image


def test_resize_is_within_one_grey_level_of_opencv():
    rng = np.random.default_rng(7)
    differing = []
    for case in range(120):
        h, w = (int(v) for v in rng.integers(8, 300, 2))
        if case % 3 == 0:  # integer factors: OpenCV's fast area path
            H, W = max(8, h // int(rng.integers(1, 5))), max(8, w // int(rng.integers(1, 5)))
        else:
            H, W = (int(v) for v in rng.integers(8, 260, 2))
        image = random_image(rng, h, w, int(rng.choice([1, 3])), case % 2)
        for area in (True, False):
            want = cv2.resize(image, (W, H), interpolation=cv2.INTER_AREA if area else cv2.INTER_LINEAR)
            got = imaging.resize_numpy(image, W, H, area)
            assert got.shape == want.shape and got.dtype == np.uint8
            assert np.abs(got.astype(int) - want).max() <= 1, ((h, w), (H, W), area)
            differing.append(np.mean(got != want))
    assert np.mean(differing) < 0.15  # off-by-one rounding, not a shifted grid


def test_colour_conversions_are_bit_exact():
    image = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    assert np.array_equal(imaging.bgr_to_gray_numpy(image), cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    assert np.array_equal(imaging.bgr_to_rgb_numpy(image), cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    assert np.array_equal(imaging.gray_to_bgr_numpy(image[..., 0]), cv2.cvtColor(image[..., 0], cv2.COLOR_GRAY2BGR))
    crop = image[3:30, 5:41]  # a ROI: a view with row strides, as preprocess hands it over
    for name in ("bgr_to_gray", "bgr_to_rgb"):
        with_opencv = getattr(imaging, name)(crop)
        with without_opencv():
            assert np.array_equal(getattr(imaging, name)(crop), with_opencv), name


def test_connected_components_match_opencv():
    rng = np.random.default_rng(3)
    for _ in range(150):
        h, w = (int(v) for v in rng.integers(1, 70, 2))
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        count, want_labels, want_stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        labels, stats = imaging.connected_components_numpy(mask)
        assert len(stats) == count
        if want_stats[0, 4]:  # OpenCV leaves sentinels in the background's box when there is none
            assert np.array_equal(stats[0], want_stats[0])
        assert sorted(map(tuple, stats[1:].tolist())) == sorted(map(tuple, want_stats[1:].tolist()))
        # the same partition of the pixels, whatever the label numbers
        pairs = set(zip(labels.ravel().tolist(), want_labels.ravel().tolist()))
        assert len(pairs) == len(np.unique(want_labels)) == len(np.unique(labels))


def pillow_bytes(bgr, mode, fmt, **options):
    """An image written by Pillow in ``mode`` (gray, palette, CMYK, ...) as ``fmt``."""
    import io

    from PIL import Image

    image = Image.fromarray(bgr if bgr.ndim == 2 else np.ascontiguousarray(bgr[..., ::-1]))
    if mode == "LA":
        image = Image.merge("LA", (image, image))
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    else:
        image = image.convert(mode)
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return np.frombuffer(out.getvalue(), np.uint8)


def test_decoding_without_opencv_matches_it():
    rng = np.random.default_rng(5)
    colour = random_image(rng, 60, 80, 3, True)
    cases = {
        "png colour": cv2.imencode(".png", colour)[1],
        "png gray": cv2.imencode(".png", colour[..., 1])[1],
        "png 16-bit": cv2.imencode(".png", colour.astype(np.uint16) * 257)[1],
        "png alpha": cv2.imencode(".png", np.dstack([colour, colour[..., :1]]))[1],
        "jpeg colour": cv2.imencode(".jpg", colour, [cv2.IMWRITE_JPEG_QUALITY, 90])[1],
        "jpeg gray": cv2.imencode(".jpg", colour[..., 2])[1],
        "bmp": cv2.imencode(".bmp", colour)[1],
        "png gray+alpha": pillow_bytes(colour[..., 0], "LA", "PNG"),
        "png palette": pillow_bytes(colour, "P", "PNG"),
        "tiff": pillow_bytes(colour, "RGB", "TIFF"),
        "webp lossless": pillow_bytes(colour, "RGB", "WEBP", lossless=True),
        "jpeg cmyk": pillow_bytes(colour, "CMYK", "JPEG"),
    }
    from edge_infer.imageio import decode_image

    want = {name: decode_image(data.tobytes()) for name, data in cases.items()}
    with without_opencv():
        got = {name: decode_image(data.tobytes()) for name, data in cases.items()}
    for name in cases:
        assert got[name].shape == want[name].shape, name
        bound = 1 if name.startswith("jpeg") else 0  # PNG/BMP/TIFF/WebP lossless: identical
        assert np.abs(got[name].astype(int) - want[name]).max() <= bound, name


def test_undecodable_payload_is_refused_without_opencv():
    from edge_infer.errors import ImageReadError
    from edge_infer.imageio import decode_image

    with without_opencv(), pytest.raises(ImageReadError, match="not a decodable image"):
        decode_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "frame 3")


def test_encoding_without_opencv_round_trips():
    image = random_image(np.random.default_rng(2), 40, 50, 3, True)
    with without_opencv():
        png = imaging.encode(image, "png")
        jpeg = imaging.encode(image, "jpeg", 95)
    assert np.array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED), image)
    assert np.abs(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED).astype(int) - image).mean() < 3


def test_camera_sources_other_than_folders_say_opencv_is_needed(tmp_path):
    from edge_infer.camera import open_source
    from edge_infer.errors import LinesideError

    (tmp_path / "a.png").write_bytes(cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes())
    with without_opencv():
        assert open_source(str(tmp_path)).read() is not None  # a folder of images needs no OpenCV
        with pytest.raises(LinesideError, match=r"needs OpenCV.*lineside\[opencv\]"):
            open_source("0")


SCORE_WITHOUT_CV2 = """
import json, sys
sys.modules["cv2"] = None  # as on a device without OpenCV
from edge_infer.score import Scorer
from edge_infer.imageio import list_images
scorer = Scorer(sys.argv[1], backend="ort-cpu")
print(json.dumps([[s.verdict.status, s.verdict.score, len(s.verdict.regions)]
                  for s in scorer.score_paths(list_images(sys.argv[2]))]))
print(json.dumps(sorted(m for m, mod in sys.modules.items() if m.split(".")[0] == "cv2" and mod is not None)))
"""


def test_a_bundle_scores_the_same_without_opencv(tmp_path):
    """The same images through the same bundle: scores within the resize bound (1 grey level of
    255 on this brightness model), in a process where OpenCV cannot be imported at all."""
    from edge_infer.imageio import list_images
    from edge_infer.score import Scorer

    bundle = make_tiny_bundle(tmp_path / "bundle", height=24, width=24)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(11)
    for i in range(6):
        image = random_image(rng, int(rng.integers(30, 90)), int(rng.integers(30, 90)), 3, True)
        image = np.clip(image.astype(int) + (90 if i % 3 == 0 else -60), 0, 255).astype(np.uint8)
        cv2.imwrite(str(images / f"{i}.{'png' if i % 2 else 'jpg'}"), image)
    scorer = Scorer(bundle, backend="ort-cpu")
    want = [[s.verdict.status, s.verdict.score, len(s.verdict.regions)] for s in scorer.score_paths(list_images(images))]
    assert {status for status, _, _ in want} == {"OK", "NG"}  # both verdicts, and regions, are exercised
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", SCORE_WITHOUT_CV2, str(bundle), str(images)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    scores, cv2_modules = (json.loads(line) for line in out.stdout.splitlines()[-2:])
    assert cv2_modules == []
    assert [s[0] for s in scores] == [w[0] for w in want]
    assert np.allclose([s[1] for s in scores], [w[1] for w in want], rtol=0, atol=1 / 255 + 1e-6)
    assert [s[2] for s in scores] == [w[2] for w in want]
