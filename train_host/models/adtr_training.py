"""Training ADTR on cached features: normal-only (L_norm), then anomaly-available (L_px).

The backbone is frozen, so each image's features are extracted once and kept in memory
(float16: 905 ELPV images × 720×16×16 is about 330 MB); the transformer then trains on
the cache, which is what makes hundreds of epochs affordable. For L_px, confetti noise is
pasted onto the training images to make a pool with exact masks; its features are
extracted the same way, and the pool is regenerated every ``pool_refresh`` epochs (so a
run sees fresh anomalies without paying the backbone on every step).

Schedules are the paper's (AdamW, lr 1e-4, weight decay 1e-4; the lr drops ×0.1 at 80%
of the normal-only run and for the last third of the L_px run). ``max_minutes`` scales
them: after the first epoch the run knows an epoch's cost, plans as many epochs as fit
and keeps the drop at the same share of the planned run.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from edge_infer.errors import LinesideError

from .adtr_losses import grid_share, l_norm, l_px


@dataclass
class Cache:
    feats: torch.Tensor  # N×C×h×w float16
    images: torch.Tensor | None = None  # N×C×H×W uint8, kept when a confetti pool will be made
    y: torch.Tensor | None = None  # N×h×w anomaly share, for labelled defects and the pool


@torch.inference_mode()
def extract(model, images: torch.Tensor) -> torch.Tensor:
    """Backbone features for the cache, on the model's device (the cache stays there: float16)."""
    return model.features(images).half()


def cache_samples(model, context, samples, keep_images: bool, masks: bool, desc: str,
                  features: bool = True) -> Cache:
    feats, images, ys = [], [], []
    for batch in context.loader(samples, progress=desc):
        feats.append(extract(model, batch["image"]) if features else batch["image"][:, :0, 0, 0])
        if keep_images:
            images.append(batch["image"])
        if masks:
            ys.append(grid_share(batch["mask"], model.grid))
    if not feats:
        raise LinesideError(f"{desc}: no readable image to train on; check the data folder")
    return Cache(torch.cat(feats), torch.cat(images) if images else None, torch.cat(ys) if ys else None)


def confetti_pool(model, images: torch.Tensor, seed: int, round_: int, batch_size: int) -> Cache:
    """One confetti variant of every training image, its features and grid anomaly shares."""
    from ..synth.confetti import confetti

    feats, ys = [], []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size].cpu().numpy()
        made = [confetti(im, np.random.default_rng([seed, round_, start + i])) for i, im in enumerate(chunk)]
        synth = torch.from_numpy(np.stack([m[0] for m in made])).to(images.device)
        mask = torch.from_numpy(np.stack([m[1] for m in made]))[:, None].to(images.device)
        feats.append(extract(model, synth))
        ys.append(grid_share(mask, model.grid))
    return Cache(torch.cat(feats), None, torch.cat(ys))


class Schedule:
    """Epochs and learning rate of one phase, scaled to a wall-clock deadline when there is one."""

    def __init__(self, epochs: int, lr: float, drop_at: float, deadline: float | None):
        self.epochs, self.lr, self.drop_at, self.deadline = epochs, lr, drop_at, deadline
        self.planned = epochs

    def plan(self, epoch_seconds: float) -> None:
        """After the first epoch: as many epochs as fit before the deadline (at least one)."""
        if self.deadline is None:
            return
        left = self.deadline - time.monotonic()
        self.planned = max(1, min(self.epochs, 1 + math.floor(left / max(epoch_seconds, 1e-6))))

    def lr_at(self, epoch: int) -> float:
        drop = round(self.drop_at * self.planned)
        return self.lr * (0.1 if epoch >= drop and self.planned > 1 else 1.0)

    def info(self) -> dict:
        return {"epochs_planned": self.planned, "epochs_full": self.epochs,
                "lr_drop_epoch": round(self.drop_at * self.planned), "shortened": self.planned < self.epochs}


def run_phase(model, name: str, schedule: Schedule, batches, loss_fn, log, refresh=None, every: int = 1,
              context=None, checkpoints: Checkpoints | None = None) -> dict:
    """Train the reconstructor for ``schedule`` epochs; ``batches(epoch)`` yields loss inputs (global
    batches: under torchrun each rank trains on its slice, DDP averaging the gradients). ``checkpoints``
    scores the reconstructor on validation about ten times a phase, and at its last epoch."""
    from ..context import TrainContext
    from ..device import step

    context = context or TrainContext(None, model.spec, log=log)
    params = [p for p in model.reconstructor.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=schedule.lr, weight_decay=model.config.weight_decay)
    net, scaler = context.wrap(model.reconstructor), context.hardware.scaler()
    model.train()
    started, losses, epoch = time.monotonic(), [], 0
    while epoch < schedule.planned:
        tick = time.monotonic()
        if refresh is not None:
            refresh(epoch)
        refresh_seconds = time.monotonic() - tick
        for group in opt.param_groups:
            group["lr"] = schedule.lr_at(epoch)
        total, count = 0.0, 0
        for inputs in batches(epoch):
            inputs = [context.local(t) for t in inputs]
            feats = inputs[0].float()
            with context.autocast():
                recon = net(feats)
            loss = loss_fn(feats, recon.float(), *inputs[1:])
            step(loss, opt, scaler)
            total, count = total + loss.item() * len(feats), count + len(feats)
        total, count = context.sum_over_ranks([total, count])  # every rank's slices: the epoch's loss
        losses.append(total / count)
        if epoch == 0:  # a pool refresh is paid once every `every` epochs
            schedule.plan(time.monotonic() - tick - refresh_seconds + refresh_seconds / every)
            schedule.planned = int(context.agree(schedule.planned))  # rank 0's clock decides for every rank
        log(f"adtr {name}: epoch {epoch + 1}/{schedule.planned} loss {losses[-1]:.5f} "
            f"lr {opt.param_groups[0]['lr']:.1e}")
        epoch += 1
        if checkpoints is not None and (epoch % max(1, schedule.planned // 10) == 0 or epoch == schedule.planned):
            checkpoints.score(model, f"{name} epoch {epoch}", log)
            model.train()
    model.eval()
    return {**schedule.info(), "epochs_run": epoch, "seconds": round(time.monotonic() - started, 1),
            "loss_first": round(losses[0], 6), "loss_last": round(losses[-1], 6)}


class Checkpoints:
    """The reconstructor scored on the shared validation set (`train_host.validation`) during training. The
    backbone is frozen, so the validation images' features are extracted once and each checkpoint costs only
    the reconstructor. The last checkpoint (what the schedule ends with) is the default: an earlier one is kept
    only if it beats it by more than ``validation.TOLERANCE`` and in most paired bootstrap resamples
    (``validation.choose_on``)."""

    def __init__(self, model, validation, batch_size: int):
        from ..device import model_device

        self.validation = validation
        device = model_device(model)
        with torch.inference_mode():  # float32, as the exported graph computes them
            self.feats = [model.features(validation.images[i:i + batch_size].to(device))
                          for i in range(0, len(validation.images), batch_size)]
        self.results: dict = {}
        self.scores: dict = {}
        self.states: dict = {}

    @torch.no_grad()
    def score(self, model, name: str, log) -> None:
        import copy

        model.eval()
        scores = [model.anomaly_map(f, model.reconstructor(f))[1].float().cpu() for f in self.feats]
        self.scores[name] = torch.cat(scores).numpy()
        self.results[name] = self.validation.summarise(self.scores[name])
        self.states[name] = copy.deepcopy(model.reconstructor.state_dict())
        log(f"adtr: validation at {name}: validation AUROC {self.results[name]['validation_auroc']:.4f}")

    def keep_best(self, model, log, seed: int = 0) -> dict:
        """Load the kept checkpoint into ``model``; the run record's part."""
        from ..validation import choose_on

        last = list(self.results)[-1]
        kept, _, checked = choose_on(self.validation, self.scores, last, seed)
        model.reconstructor.load_state_dict(self.states[kept])
        self.states.clear()
        log(f"adtr: kept the reconstructor of {kept} (validation AUROC {self.results[kept]['validation_auroc']:.4f}; "
            f"the last, {last}: {self.results[last]['validation_auroc']:.4f})")
        return {"checkpoint_kept": kept, "validation_signal": self.validation.signal,
                "bootstrap_wins": {k: round(v, 3) for k, v in checked.items()},
                "validation_used_for": "choosing the checkpoint kept (validation image AUROC; the last unless an "
                                       "earlier one beats it clearly: validation.choose_on)",
                "validation_per_checkpoint": [{"checkpoint": k, **{n: v for n, v in r.items() if n != "per_kind"}}
                                              for k, r in self.results.items()],
                **self.validation.record(self.results[kept])}


def shuffled(tensors: tuple[torch.Tensor, ...], batch_size: int, seed: int):
    def batches(epoch: int):
        order = torch.randperm(len(tensors[0]), generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield tuple(t[idx.to(t.device)] for t in tensors)
    return batches


def load_init(model, init: str, options: dict) -> dict:
    """Start from a saved adtr run: same architecture, input and backbone weights."""
    from ..run import load_run

    source, record = load_run(init)
    if record["family"] != "adtr":
        raise LinesideError(f"--init {init} is a {record['family']!r} run: give a run of `lineside train adtr`")
    if source.spec != model.spec or source.channels != model.channels or source.grid != model.grid:
        raise LinesideError(f"--init {init} was trained at {record['input']}; train this run with the same "
                            "--size, --roi and --channels")
    theirs = record["training"].get("backbone_weights", {}).get("weights")
    if theirs != options.get("weights"):
        raise LinesideError(f"--init {init} used backbone weights {theirs!r} but this run has "
                            f"{options.get('weights')!r}: pass the same --weights (features must match)")
    try:
        model.load_state_dict(source.state_dict())
    except RuntimeError as exc:
        raise LinesideError(f"--init {init} has another architecture ({exc}); use the same adtr options") from None
    return {"init": str(init), "init_weights_sha256": record["weights_sha256"]}


def fit(model, context, trained_on: tuple[str, ...]) -> dict:
    """``trained_on``: the synthetic kinds this config trains on (adtr.trains_on), left out of its validation."""
    config, options, log = model.config, context.options, context.log
    batch_size = options.get("batch_size", 16)
    started = time.monotonic()
    deadline = started + 60 * config.max_minutes if config.max_minutes else None
    result: dict = {"config": asdict(config), "backbone": "frozen", "feature_cache": "float16, in memory"}
    if config.init:
        result.update(load_init(model, config.init, options))
    real = [s for s in context.split.train if s.label == 1 and s.mask_path is not None] if config.real_defects else []
    if config.real_defects and not real:
        raise LinesideError("--real-defects: the training split has no labelled defective image with a mask; "
                            "drop the option, or bring defects into training (e.g. --contamination)")
    labelled = set(real)
    normal = [s for s in context.split.train if s not in labelled]
    need_normal_phase = not (config.anomaly_available and config.init)
    # from --init, only the images are needed (the confetti pool is made from them)
    cache = cache_samples(model, context, normal, keep_images=config.anomaly_available, masks=False,
                          desc="adtr: caching features", features=need_normal_phase)
    result["cached_images"] = len(cache.feats)
    result["cache_seconds"] = round(time.monotonic() - started, 1)
    log(f"adtr: cached {len(cache.feats)} images ({tuple(cache.feats.shape[1:])}) in {result['cache_seconds']} s")
    seed = config.seed
    checkpoints = make_checkpoints(model, context, batch_size, trained_on)

    if need_normal_phase:
        share = config.epochs / (config.epochs + (config.px_epochs if config.anomaly_available else 0))
        phase_deadline = None if deadline is None else time.monotonic() + share * (deadline - time.monotonic())
        schedule = Schedule(config.epochs, config.lr, config.drop_at, phase_deadline)
        result["normal"] = run_phase(model, "L_norm", schedule, shuffled((cache.feats,), batch_size, seed),
                                     l_norm, log, context=context, checkpoints=checkpoints)
    if config.anomaly_available:
        result["anomaly"] = train_anomaly_available(model, context, cache, real, deadline, batch_size, log,
                                                    checkpoints)
    if checkpoints is not None and checkpoints.results:
        result.update(checkpoints.keep_best(model, log, seed))
    return result


def make_checkpoints(model, context, batch_size: int, trained_on: tuple[str, ...]) -> Checkpoints | None:
    """Validation checkpoints, or None (said in the log) when the data has no held-out good image."""
    from ..validation import build_validation

    try:
        validation = build_validation(context, trained_on)
    except LinesideError as exc:
        context.log(f"adtr: the last epoch is kept: {exc}")
        return None
    context.log(f"adtr: validation: {validation.signal}")
    return Checkpoints(model, validation, batch_size)


def train_anomaly_available(model, context, cache: Cache, real, deadline, batch_size, log, checkpoints=None) -> dict:
    config = model.config
    fixed = cache_samples(model, context, real, keep_images=False, masks=True, desc="adtr: labelled defects") \
        if real else None
    state = {}

    def refresh(epoch: int) -> None:
        if epoch % max(1, config.pool_refresh) == 0:
            pool = confetti_pool(model, cache.images, config.seed, epoch // max(1, config.pool_refresh), batch_size)
            feats, y = pool.feats, pool.y
            if fixed is not None:
                feats, y = torch.cat([feats, fixed.feats]), torch.cat([y, fixed.y])
            state["tensors"] = (feats, y)

    def batches(epoch: int):
        return shuffled(state["tensors"], batch_size, config.seed + 1)(epoch)

    schedule = Schedule(config.px_epochs, config.lr, config.px_drop_at, deadline)
    info = run_phase(model, "L_px", schedule, batches, lambda f, r, y: l_px(f, r, y, config.alpha), log,
                     refresh, every=max(1, config.pool_refresh), context=context, checkpoints=checkpoints)
    info.update(pool=f"one confetti variant per training image, regenerated every {config.pool_refresh} epochs",
                labelled_defects=len(real))
    return info
