"""The reduced decode does not move image AUROC on real data: ELPV solar cells (CC BY-NC-SA 4.0,
non-commercial use only) shown to the line as a 1080p JPEG camera would see them.

A small rx (64×64, like the calibration test's) is trained on ELPV; test cells are
upscaled to 1080×1080 inside a 1920×1080 frame, JPEG-encoded, and scored through the
bundle twice: decoded at full size and resized once (the path before issue 23), and by
``edge_infer.preprocess``'s plan (1/8-scale DCT decode of the ROI). The AUROCs must agree
within 0.002. Measured: 0.7195 today, 0.7198 by the plan (Δ +0.0003; bootstrap sd of Δ 0.0018),
input |diff| mean 1.19 grey levels.
"""

import cv2
import numpy as np
import pytest

pytest.importorskip("elpv_dataset", reason="needs the ELPV data: pip install elpv-dataset")
pytest.importorskip("torch", reason="training the detector needs torch (the train extra)")

from test_frame_path import todays_path

from edge_infer.imageio import read_image
from edge_infer.preprocess import decode_input
from edge_infer.score import Scorer
from lineside.cli import main as cli

pytestmark = pytest.mark.slow
STRIDE = 2  # every other test cell: 637 cells. With 240 the AUROC's own sampling noise between two
# near-identical inputs (bootstrap sd of the difference ~0.003) was above the 0.002 bound
ROI = (420, 0, 1080, 1080)


def camera_frame(cell: np.ndarray) -> bytes:
    cell = cv2.cvtColor(cell, cv2.COLOR_GRAY2BGR) if cell.ndim == 2 else cell
    frame = np.full((1080, 1920, 3), 90, np.uint8)
    frame[:, ROI[0] : ROI[0] + ROI[2]] = cv2.resize(cell, (1080, 1080), interpolation=cv2.INTER_CUBIC)
    return cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def test_reduced_decode_keeps_elpv_auroc(tmp_path):
    from dataclasses import replace

    from train_host.data import load_split
    from train_host.metrics import image_auroc

    run, bundle = tmp_path / "run", tmp_path / "bundle"
    assert cli(["train", "rx", "--data", "elpv", "--out", str(run), "--size", "64", "--feature-dim", "24",
                "--sigma", "1", "--limit", "40", "--threads", "2"]) == 0
    assert cli(["export", str(run), "--out", str(bundle), "--parity-images", "2", "--threads", "2"]) == 0
    picked = load_split("elpv").test[::STRIDE]
    scorer = Scorer(bundle, backend="ort-cpu", threads=2)
    spec = replace(scorer.spec, roi=ROI)
    before, after = [], []
    for sample in picked:
        payload = camera_frame(read_image(sample.path))
        full = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_UNCHANGED)
        before.append(todays_path(full, spec))
        after.append(decode_input(payload, spec))
    labels = [s.label for s in picked]
    s_before = scorer.backend.run_all(np.stack(before)).score
    s_after = scorer.backend.run_all(np.stack(after)).score
    scorer.close()
    a_before, a_after = image_auroc(labels, s_before), image_auroc(labels, s_after)
    diff = np.abs(np.stack(after).astype(int) - np.stack(before))
    print(f"\nELPV {len(picked)} cells at 1080p JPEG: AUROC today {a_before:.4f}, reduced decode {a_after:.4f} "
          f"(Δ {a_after - a_before:+.4f}); input |diff| mean {diff.mean():.3f} max {diff.max()}")
    assert abs(a_after - a_before) <= 0.002
