"""`lineside train FAMILY`: fit a detector on a station's good images and save the run."""

from __future__ import annotations

import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

import numpy as np

from edge_infer.errors import LinesideError
from edge_infer.preprocess import InputSpec
from edge_infer.tiling import Tiling

from .context import TrainContext
from .data import load_split
from .families import load_family
from .infer import predict
from .run import save_run

COMMON = {"data", "out", "size", "roi", "tiles", "channels", "weights", "batch_size", "seed", "val_share", "limit",
          "contamination", "val_defects", "threads", "family", "command", "handler", "device", "amp", "workers",
          "yes"}
# Families built on convolutions: channels_last memory layout on an accelerator (cuDNN's fast path).
CNN_FAMILIES = {"rx", "rx-mix", "adtr", "rddpm", "cutpaste"}


def main(args) -> int:
    from . import distributed
    from .device import hardware_from_args

    set_threads(args.threads)
    hardware = hardware_from_args(args, channels_last=args.family in CNN_FAMILIES)
    distributed.start(hardware.device)
    log = print if hardware.rank == 0 else (lambda *_: None)  # one voice under torchrun
    spec = input_spec(args)
    split = training_split(args)
    out = Path(args.out)
    held = f" (+{len(split.val_defects)} defect)" if split.val_defects else ""
    log(f"data: {split.name}: {len(split.train)} train, {len(split.val)} validation{held}, "
        f"{len(split.test)} test images")
    log(f"device: {hardware.describe()}")
    config = {"seed": args.seed, **family_config(args)}  # one --seed for the split and the model's init
    try:
        train_run(args.family, config, spec, split, out, options=vars(args), log=log, hardware=hardware)
    finally:
        distributed.stop()
    log(f"saved the run to {out}; next: `lineside evaluate {out}` and `lineside export {out} --out BUNDLE`")
    return 0


def train_run(family: str, config: dict, spec: InputSpec, split, out: Path, options: dict | None = None,
              log=print, hardware=None) -> dict:
    """Build, fit, score the validation images and save (rank 0); returns the run record's training part."""
    import torch

    from .context import cpu_hardware
    from .schedule import check_schedule

    options = {"batch_size": 16, "seed": 0, **(options or {})}
    hardware = hardware or cpu_hardware()
    torch.manual_seed(options["seed"])
    module = load_family(family)
    model = module.build(config, spec)
    weights_info = load_weights(module, model, family, options, log)
    model.to(hardware.device)
    if hardware.channels_last:
        model.to(memory_format=torch.channels_last)
    context = TrainContext(split, spec, options, log, hardware=hardware)
    check_schedule(module, model, context)
    started = time.perf_counter()
    training = module.fit(model, context)
    model.eval()
    training.update(seconds=round(time.perf_counter() - started, 1), backbone_weights=weights_info,
                    hardware=hardware.record())
    if hardware.rank != 0:
        return training
    from .validation import validate_fitted

    training = validate_fitted(module, model, context, training)
    config_used = asdict(model.config) if is_dataclass(getattr(model, "config", None)) else config
    save_fitted(out, family, config_used, spec, model, split, training, options["batch_size"], log, context.skipped)
    return training


def load_weights(module, model, family: str, options: dict, log=print) -> dict:
    """``--weights``: a local file, or a name (imagenet, dinov2) resolved through the hub cache; none: loud."""
    weights = options.get("weights")
    if not weights:
        from .pretrained import random_backbone_note

        note = random_backbone_note(family, model)
        if note:
            log(note)
        return {"weights": None, "note": "random initialisation: no --weights given"}
    from .backbones import load_backbone_weights
    from .pretrained import resolve_named

    # A family whose checkpoints need key mapping (DINOv2's official layouts) brings its own loader.
    loader = getattr(module, "load_weights", None)
    if loader is None and not hasattr(model, "backbone"):
        raise LinesideError(f"the {family} family trains from scratch and has no backbone: drop --weights")
    path, provenance = resolve_named(weights, family, model, log)
    info = loader(model, path) if loader else load_backbone_weights(model.backbone, path)
    return {**info, **provenance}


def save_fitted(out: Path, family: str, config: dict, spec: InputSpec, model, split, training: dict,
                batch_size: int, log=print, skipped: list | None = None) -> None:
    """Score the validation images into the record (the provisional threshold's evidence), report the
    unreadable images, save the run."""
    val = predict(model, split.val, spec, batch_size, progress="validation") if split.val else None
    model.cpu()  # safetensors writes from host memory; the record and weights do not depend on the device
    if val is not None and len(val.scores):
        training["validation_good_scores"] = summarise(val.scores)
    skipped = (skipped or []) + (val.skipped if val else [])
    if skipped:
        log(f"skipped {len(skipped)} unreadable image(s): " + "; ".join(f"{p} ({r})" for p, r in skipped[:10]))
        training["skipped_images"] = [p for p, _ in skipped]
    save_run(out, family, config, spec, model, split.info, training)


def training_split(args):
    """One station's split; or, for --zero-shot, the union of several stations' (--data repeated)."""
    datas = args.data if isinstance(args.data, list) else [args.data]
    options = {"val_share": args.val_share, "seed": args.seed, "contamination": args.contamination,
               "limit": args.limit}
    if getattr(args, "zero_shot", None):
        from .data.stations import load_stations

        if args.val_defects:
            raise LinesideError("--val-defects holds out labelled defects of the station being trained; a "
                                "--zero-shot run has no station of its own: drop --val-defects")
        return load_stations(datas, **options)
    if len(datas) > 1:
        raise LinesideError(f"--data was given {len(datas)} times ({' '.join(datas)}): one station per run, or add "
                            "--zero-shot to train once across all of them")
    return load_split(datas[0], **options, val_defects=args.val_defects)


def summarise(scores: np.ndarray) -> dict:
    """Quantiles of good scores: the run's own scale, used for a provisional threshold."""
    qs = [0.5, 0.9, 0.95, 0.99, 1.0]
    return {"n": int(len(scores)), **{f"q{int(q * 100)}": float(np.quantile(scores, q)) for q in qs},
            "mean": float(scores.mean()), "std": float(scores.std())}


def input_spec(args) -> InputSpec:
    try:
        h, w = (int(v) for v in args.size.lower().split("x")) if "x" in args.size.lower() else (int(args.size),) * 2
        roi = tuple(int(v) for v in args.roi.split(",")) if args.roi else None
    except ValueError:
        raise LinesideError(f"--size {args.size!r} / --roi {args.roi!r}: use --size 224 or 256x320, "
                            "and --roi x,y,width,height") from None
    tiles = Tiling.parse(args.tiles) if getattr(args, "tiles", None) else None
    return InputSpec(h, w, args.channels, roi, tiles=tiles)


def family_config(args) -> dict:
    """The family's own options (everything not common to all families), unset ones left to defaults."""
    return {k: v for k, v in vars(args).items() if k not in COMMON and v is not None}


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)
