"""`python -m train_host.device_check` (also `lineside bench device-check`): every GPU path in one call.

Each family trains a few steps on a small generated dataset twice, on the CPU and on the
accelerator (same seed, the accelerator with its default mixed precision), and then:

- the accelerator's run is exported (its parity check runs PyTorch on the accelerator against
  onnxruntime on the CPU, so the exported graph is proven against the GPU-trained weights);
- the accelerator's model scores the test images on the accelerator and on the CPU (the same
  weights on both: the inference path must agree);
- per family: training seconds per step on each device, the score agreement, and both runs'
  image AUROC (different arithmetic, same data: they should be close, not equal).

Sized for under 10 minutes on one GPU (most of it the CPU runs). Without an accelerator it says
why and exits 0 with status "skipped".
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Tiny settings per family: a few steps each, small inputs, the real code paths.
FAMILIES = {
    "rx": {"size": 64, "config": {"feature_dim": 32, "sigma": 1.0}},
    "rx-mix": {"size": 64, "config": {"feature_dim": 32, "sigma": 1.0}},
    "adtr": {"size": 64, "config": {"backbone": "efficientnet_b0", "epochs": 3, "hidden_dim": 64, "encoder_layers": 1,
                                    "decoder_layers": 1, "heads": 4, "ff_dim": 128, "score_pool": 4}},
    "rddpm": {"size": 32, "config": {"unet": "tiny", "epochs": 3, "t0": 100, "steps": 2, "max_minutes": 5}},
    "cutpaste": {"size": 64, "config": {"base_channels": 8}, "options": {"epochs": 2}},
    "dinov2-lora": {"size": 56, "config": {"backbone": "vits14", "depth": 2, "epochs": 2, "per_kind": 4}},
    "dinov2-knn": {"size": 56, "config": {"backbone": "vits14", "depth": 2, "bank_size": 64}},
}


def make_dataset(root: Path, n_train: int = 24, n_test: int = 8, seed: int = 0) -> Path:
    """An MVTec-layout category of smooth random textures, with bright bars as defects (and masks)."""
    import cv2

    rng = np.random.default_rng(seed)
    for sub in ("train/good", "test/good", "test/bar", "ground_truth/bar"):
        (root / sub).mkdir(parents=True, exist_ok=True)

    def texture():
        base = cv2.GaussianBlur(rng.normal(128, 40, (72, 72)).astype(np.float32), (0, 0), 2)
        return np.clip(base, 0, 255).astype(np.uint8)

    for i in range(n_train):
        cv2.imwrite(str(root / f"train/good/{i:03d}.png"), texture())
    for i in range(n_test):
        cv2.imwrite(str(root / f"test/good/{i:03d}.png"), texture())
        image, mask = texture(), np.zeros((72, 72), np.uint8)
        x, y = (int(v) for v in rng.integers(8, 44, 2))
        cv2.rectangle(image, (x, y), (x + 18, y + 6), 255, -1)
        cv2.rectangle(mask, (x, y), (x + 18, y + 6), 255, -1)
        cv2.imwrite(str(root / f"test/bar/{i:03d}.png"), image)
        cv2.imwrite(str(root / f"ground_truth/bar/{i:03d}_mask.png"), mask)
    return root


def check_family(family: str, data: Path, work: Path, device, log) -> dict:
    import torch

    from edge_infer.preprocess import InputSpec

    from .data import load_split
    from .device import Hardware, resolve_amp
    from .evaluate import evaluate_model
    from .export import export_bundle
    from .infer import predict
    from .run import load_run
    from .train import CNN_FAMILIES, train_run

    setting = FAMILIES[family]
    spec = InputSpec(setting["size"], setting["size"], 3)
    split = load_split(str(data), seed=0)
    options = {"data": str(data), "batch_size": 8, "seed": 0, "yes": True, **setting.get("options", {})}
    config = {"seed": 0, **setting["config"]}
    runs, seconds = {}, {}
    for name, hw in (("cpu", Hardware(torch.device("cpu"))),
                     ("accelerator", Hardware(device, resolve_amp("auto", device),
                                              channels_last=family in CNN_FAMILIES))):
        out = work / f"{family}-{name}"
        started = time.perf_counter()
        training = train_run(family, dict(config), spec, split, out, options=dict(options), log=lambda *_: None,
                             hardware=hw)
        seconds[name] = round(time.perf_counter() - started, 2)
        runs[name] = (out, training)
    gpu_run = runs["accelerator"][0]
    bundle = export_bundle(gpu_run, work / f"{family}-bundle", max_batch=4, parity_images=8, device=device)
    parity = bundle.manifest.files["model.onnx"].checks["parity"]
    model, record = load_run(gpu_run, device=device)
    on_gpu = predict(model, split.test, spec, 8).scores
    model.cpu()
    on_cpu = predict(model, split.test, spec, 8).scores
    agreement = float(np.max(np.abs(on_gpu - on_cpu)) / max(1e-12, float(np.max(np.abs(on_cpu)))))
    aurocs = {}
    for name, (out, _) in runs.items():
        m, r = load_run(out)
        aurocs[name] = round(evaluate_model(m, r, split, batch_size=8)["image_auroc"], 4)
    result = {"family": family, "fit_seconds": seconds, "precision": record["training"]["hardware"]["precision"],
              "scores_max_rel_diff_gpu_vs_cpu_same_weights": agreement,
              "export_parity": {k: parity[k] for k in ("score_rel_err", "map_rel_err", "torch_device")},
              "image_auroc": aurocs}
    log(json.dumps(result))
    return result


def run_check(device_name: str = "auto", families=None, out: Path | None = None, log=print) -> dict:
    import torch

    from .device import resolve_device

    device = resolve_device(device_name)
    if device.type == "cpu":
        reason = (f"no accelerator: torch {torch.__version__} sees no CUDA GPU"
                  f" (CUDA build {torch.version.cuda}) and no MPS device")
        log(f"device check skipped: {reason}")
        return {"status": "skipped", "reason": reason}
    families = families or list(FAMILIES)
    log(f"device check on {torch.cuda.get_device_name(device) if device.type == 'cuda' else device}: "
        f"{', '.join(families)}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(out) if out else Path(tmp)
        data = make_dataset(work / "data")
        results, failed = [], []
        for family in families:
            try:
                results.append(check_family(family, data, work, device, log))
            except Exception as exc:  # one family failing must not hide the others' results
                failed.append({"family": family, "error": f"{type(exc).__name__}: {exc}"})
                log(f"{family}: FAILED: {exc}")
    return {"status": "failed" if failed else "ok", "device": str(device), "results": results, "failed": failed}


def main(args=None) -> int:
    if args is None or isinstance(args, list):
        parser = argparse.ArgumentParser(prog="python -m train_host.device_check", description=__doc__.split("\n")[0])
        parser.add_argument("--device", default="auto")
        parser.add_argument("--families")
        parser.add_argument("--out")
        parser.add_argument("--json")
        args = parser.parse_args(args)
    families = args.families.split(",") if args.families else None
    report = run_check(args.device, families, Path(args.out) if args.out else None)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if report["status"] == "failed" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
