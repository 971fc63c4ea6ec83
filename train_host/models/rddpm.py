"""rddpm: few-step robust diffusion — reconstruct a normal version of the image, compare.

Training is DDPM noise prediction (T = 1000, linear β from 1e-4 to 0.02) on the station's
good images, with the regression made robust (robust_losses.py: Huber, least trimmed
squares, Tukey; MSE is the baseline), so defects hidden among the "good" images pull the
model less. Inference noises the input part-way, to step t0, with noise fixed in the graph
(one draw per seed), runs K deterministic DDIM steps back to a clean image, and compares
input and reconstruction: the smoothed pixel residual plus a feature-level term (the distance
between random-init ResNet-18 features of the two, each channel in units of its spread on good
images), each standardised per pixel by the median and MAD of the training images' maps, with
the image score the max or top-k mean of the map. The K steps are a Python loop over constant
timesteps, so ONNX export unrolls them into one graph that takes only ``image``. t0 and K are
chosen after training on the shared validation set (`train_host.validation`: held-out good images, synthetic
anomalies made from them, real defects from --val-defects; rddpm_select.py), unless given.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edge_infer.errors import LinesideError
from edge_infer.preprocess import InputSpec

from ..backbones import feature_extractor
from .layers import GaussianBlur, ImageScore, seeded
from .robust_losses import LOSSES, RobustLoss
from .unet import UNet, UNetConfig

FAMILY = "rddpm"
T = 1000
DEFAULT_T0, DEFAULT_STEPS = 250, 4  # used until validation (or the user) sets them


@dataclass
class RDDPMConfig:
    unet: str = "nano"  # UNet preset (unet.PRESETS); "nano" fits a Jetson Orin Nano
    loss: str = "huber"  # mse | huber | lts | tukey
    delta: float = 0.2  # Huber's δ on the noise residual
    keep: float = 0.8  # LTS: share of per-image losses kept in each batch
    t0: int | None = None  # noising depth; None: chosen on validation
    steps: int | None = None  # DDIM steps K; None: chosen on validation
    seeds: int = 1  # fixed noise draws whose reconstructions are averaged
    train_t_max: int = 500  # training timesteps drawn from [0, train_t_max]: inference never goes deeper
    epochs: int = 200
    max_minutes: float | None = None  # wall-clock budget, whichever comes first (on a CPU, `train` asks for one)
    lr: float = 1e-3
    ema: float = 0.995  # decay of the weight average used for inference
    crop: int = 0  # 0: whole images (the layout of the part is context); N: random N×N crops, ~4× cheaper per step
    feature_weight: float = 1.0  # feature-level term (random-init ResNet-18, stages 1-2) beside the pixel residual; 0: off
    feature_size: int = 128  # the features see the image scaled up until its shorter side is at least this
    normalize: bool = True  # standardise the feature channels (RMS) and each map pixel (median/MAD) on training images
    norm_images: int = 256  # training images those statistics are taken from
    sigma: float = 2.0  # smoothing of the anomaly map, in pixels
    score: str = "topk:0.01"
    t0_grid: tuple[int, ...] = (50, 100, 175, 250, 350)  # candidates when t0 is None
    steps_grid: tuple[int, ...] = (2, 4, 8)  # candidates when steps is None
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "RDDPMConfig":
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("t0_grid", "steps_grid"):
            if key in d:
                d[key] = tuple(int(v) for v in d[key])
        return cls(**d)


def linear_alphas_cumprod(timesteps: int = T) -> list[float]:
    betas = torch.linspace(1e-4, 0.02, timesteps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).tolist()


def ddim_timesteps(t0: int, steps: int) -> list[int]:
    """t0 > … > t0/K, evenly spaced; the last step lands on the clean image."""
    return [max(1, round(t0 * (steps - i) / steps)) for i in range(steps)]


class RDDPMDetector(nn.Module):
    def __init__(self, config: RDDPMConfig, spec: InputSpec):
        super().__init__()
        check_config(config, spec)
        self.config, self.spec = config, spec
        # Named `backbone`: the precision machinery lowers the nodes using backbone.* weights to FP16/INT8 (the
        # K unrolled UNet calls and the DDIM updates between them); the map and the score stay FP32.
        self.backbone = UNet(UNetConfig.preset(config.unet, spec.channels))
        if spec.height % self.backbone.multiple or spec.width % self.backbone.multiple:
            raise LinesideError(f"rddpm's {config.unet} UNet needs --size a multiple of {self.backbone.multiple}, "
                                f"got {spec.height}x{spec.width}: e.g. --size 64")
        self.alphas_cumprod = linear_alphas_cumprod()
        generator = torch.Generator().manual_seed(config.seed)
        noise = torch.randn(config.seeds, spec.channels, spec.height, spec.width, generator=generator)
        self.register_buffer("noise", noise, persistent=False)  # regenerated from the seed: fixed in the graph
        self.smooth = GaussianBlur(config.sigma)
        self.image_score = ImageScore(config.score, spec.height * spec.width)
        parts = spec.channels + (1 if config.feature_weight else 0)
        if config.feature_weight:
            with seeded(config.seed):  # random but fixed: saved with the weights, no pretrained file needed
                self.features = feature_extractor("resnet18", (1, 2))
            scale = max(1.0, config.feature_size / min(spec.height, spec.width))
            self.feature_input = (round(spec.height * scale), round(spec.width * scale))
            self.register_buffer("feature_scale", torch.ones(1, sum(self.features.feature_info.channels()), 1, 1))
        self.register_buffer("map_center", torch.zeros(1, parts, spec.height, spec.width))
        self.register_buffer("map_scale", torch.ones(1, parts, spec.height, spec.width))
        self.set_inference(config.t0 or DEFAULT_T0, config.steps or DEFAULT_STEPS)

    def set_inference(self, t0: int, steps: int) -> None:
        self.t0, self.steps = int(t0), int(steps)
        self.timesteps = ddim_timesteps(self.t0, self.steps)

    @staticmethod
    def to_unit(image: torch.Tensor) -> torch.Tensor:
        return image.float() / 127.5 - 1.0  # uint8 → [-1, 1]

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Noise x to t0 with each fixed draw, K DDIM steps back, average over the draws."""
        c, h, w = x.shape[1:]
        ab = self.alphas_cumprod
        seeds = self.noise.shape[0]
        xt = math.sqrt(ab[self.t0]) * x.unsqueeze(1) + math.sqrt(1 - ab[self.t0]) * self.noise.unsqueeze(0)
        xt = xt.reshape(-1, c, h, w)  # (N·seeds)×C×H×W
        for i, t in enumerate(self.timesteps):
            a_t = ab[t]
            a_prev = ab[self.timesteps[i + 1]] if i + 1 < len(self.timesteps) else 1.0
            eps = self.backbone(xt, torch.tensor([float(t)], device=xt.device))
            x0 = ((xt - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)).clamp(-1.0, 1.0)
            xt = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
        return xt.reshape(-1, seeds, c, h, w).mean(1)

    def feature_distance(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """RMS over channels of the difference between the two images' ResNet features, each channel in units of
        its own spread on good images (``feature_scale``), at the input's size."""
        residual = (self.feature_stack(x) - self.feature_stack(recon)) / self.feature_scale
        dist = residual.pow(2).mean(1, keepdim=True).sqrt()
        return F.interpolate(dist, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def feature_stack(self, x: torch.Tensor) -> torch.Tensor:
        """Stages 1 and 2 of the ResNet on the first stage's grid, channels stacked."""
        if x.shape[1] != 3:
            x = x.mean(1, keepdim=True).expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != self.feature_input:
            x = F.interpolate(x, size=self.feature_input, mode="bilinear", align_corners=False)
        first, *rest = self.features(x)
        grid = first.shape[-2:]
        return torch.cat([first] + [F.interpolate(f, size=grid, mode="bilinear", align_corners=False) for f in rest], 1)

    def map_parts(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """N×(C+1)×H×W: the smoothed signed residual per channel, then the smoothed feature distance."""
        n, c, h, w = x.shape
        parts = [self.smooth((x - recon).reshape(n * c, 1, h, w)).reshape(n, c, h, w)]
        if self.config.feature_weight:
            parts.append(self.smooth(self.feature_distance(x, recon)))
        return torch.cat(parts, 1)

    def anomaly_map(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """|z| of the residual (darker and brighter both count) + w·z of the feature distance (only larger counts)."""
        z = (self.map_parts(x, recon) - self.map_center) / self.map_scale
        c = x.shape[1]
        amap = z[:, :c].abs().mean(1, keepdim=True)
        if self.config.feature_weight:
            amap = amap + self.config.feature_weight * z[:, c:].clamp(min=0)
        return amap

    @torch.no_grad()
    def fit_map_statistics(self, images: torch.Tensor, batch_size: int = 16) -> None:
        """Per-pixel median and MAD of the map parts over good images, at the current t0 and K.

        Busbars, borders and textured areas reconstruct worse than flat ones on every image;
        standardising each pixel by its own spread over good images keeps them from dominating
        the map. Median and MAD rather than mean and std: defects hidden among the training
        images do not move them.

        Before that, each channel of the feature residual is scaled by its RMS over the same images
        (a diagonal Mahalanobis distance): in a random ResNet a few channels happen to be large
        and dominate a plain RMS, so which defects the feature term sees depended on the random
        seed. Per channel, the seed matters less and the term is better on average.
        """
        if not self.config.normalize or not len(images):
            return
        pairs = []
        for i in range(0, len(images), batch_size):
            x = self.to_unit(images[i:i + batch_size])
            pairs.append((x, self.reconstruct(x)))
        if self.config.feature_weight:
            square = sum((self.feature_stack(x) - self.feature_stack(r)).pow(2).mean((2, 3)).sum(0) for x, r in pairs)
            rms = (square / len(images)).sqrt()
            self.feature_scale.copy_(torch.maximum(rms, 0.1 * rms.mean() + 1e-6).view(1, -1, 1, 1))
        parts = torch.cat([self.map_parts(x, r) for x, r in pairs])
        center = parts.median(0, keepdim=True).values
        mad = 1.4826 * (parts - center).abs().median(0, keepdim=True).values
        floor = 0.1 * mad.mean((2, 3), keepdim=True) + 1e-6  # a pixel that never varies must not explode
        self.map_center.copy_(center)
        self.map_scale.copy_(torch.maximum(mad, floor))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.to_unit(image)
        amap = self.anomaly_map(x, self.reconstruct(x))
        return amap, self.image_score(amap)


def check_config(config: RDDPMConfig, spec: InputSpec) -> None:
    problems = []
    if config.loss not in LOSSES:
        problems.append(f"--loss {config.loss!r}: choose one of {', '.join(LOSSES)}")
    if config.t0 is not None and not 1 <= config.t0 < T:
        problems.append(f"--t0 {config.t0}: use a step in 1..{T - 1}, e.g. 250")
    if config.steps is not None and not 1 <= config.steps <= (config.t0 or DEFAULT_T0):
        problems.append(f"--steps {config.steps}: use 1..t0 DDIM steps, e.g. 4")
    if config.seeds < 1:
        problems.append(f"--seeds {config.seeds}: use at least 1")
    if not 0 < config.keep <= 1:
        problems.append(f"--keep {config.keep}: LTS keeps a share in (0, 1], e.g. 0.8")
    if config.crop and (config.crop > min(spec.height, spec.width) or config.crop % 4):
        problems.append(f"--crop {config.crop}: use a multiple of 4 up to the input size, or 0 for whole images")
    if problems:
        raise LinesideError("rddpm: " + "; ".join(problems))


def build(config: dict, spec: InputSpec) -> RDDPMDetector:
    return RDDPMDetector(RDDPMConfig.from_dict(config), spec).eval()


def load_images(context, samples, what: str) -> torch.Tensor:
    """All of a sample list as one uint8 tensor: small images, read once instead of every epoch."""
    batches = [b["image"] for b in context.loader(samples, progress=f"rddpm: reading {what}")]
    if not batches:
        raise LinesideError(f"rddpm: no readable {what} images")
    return torch.cat(batches)


def random_crop(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    if not size or size >= min(x.shape[-2:]):
        return x
    top = int(torch.randint(0, x.shape[-2] - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, x.shape[-1] - size + 1, (1,), generator=generator))
    return x[..., top:top + size, left:left + size]


def fit(model: RDDPMDetector, context) -> dict:
    """Train the denoiser with the configured loss, then choose t0 and K on validation.

    Random draws (order, timesteps, noise) come from one seeded CPU generator, whatever the
    device, so a run is the same on any hardware up to arithmetic; under torchrun every rank
    draws the whole global batch and trains on its slice (DDP averages the slices' gradients)."""
    from ..device import step

    cfg, device = model.config, context.device
    images = load_images(context, context.split.train, "train")
    batch_size = int(context.options.get("batch_size") or 16)
    generator = torch.Generator().manual_seed(cfg.seed)
    ab = torch.tensor(model.alphas_cumprod, dtype=torch.float32)
    loss_fn = RobustLoss(cfg.loss, delta=cfg.delta, keep=cfg.keep, timesteps=cfg.train_t_max + 1)
    unet = model.backbone.train()
    net = context.wrap(unet)
    scaler = context.hardware.scaler()
    ema = [p.detach().clone() for p in unet.parameters()]
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    started, steps, losses, epoch = time.perf_counter(), 0, [], 0
    budget = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            x0 = random_crop(model.to_unit(images[order[start:start + batch_size].to(images.device)]), cfg.crop,
                             generator)
            t = torch.randint(0, cfg.train_t_max + 1, (len(x0),), generator=generator)
            noise = torch.randn(x0.shape, generator=generator).to(device)
            a = ab[t].view(-1, 1, 1, 1).to(device)
            x0, t, noise, a = (context.local(v) for v in (x0, t, noise, a))
            with context.autocast():
                residual = net(a.sqrt() * x0 + (1 - a).sqrt() * noise, t.to(device)) - noise
            loss = loss_fn(residual.float(), t)
            step(loss, optimizer, scaler)
            with torch.no_grad():
                for e, p in zip(ema, unet.parameters()):
                    e.lerp_(p, 1 - min(cfg.ema, (1 + steps) / (10 + steps)))  # warm-up: early EMA tracks fast
            steps += 1
            losses.append(context.global_mean(loss.item()))  # the global batch's loss under torchrun
            if context.agree(time.perf_counter() - started > budget):
                break
        context.log(f"rddpm: epoch {epoch} ({steps} steps): {cfg.loss} loss {sum(losses[-20:]) / len(losses[-20:]):.4f}")
        if context.agree(time.perf_counter() - started > budget):
            context.log(f"rddpm: stopped at the {cfg.max_minutes:g}-minute budget")
            break
    seconds = time.perf_counter() - started
    with torch.no_grad():
        for e, p in zip(ema, unet.parameters()):
            p.copy_(e)
    model.eval()
    selection = finish(model, context, images)
    kept = selection.pop("kept", None)  # the shared validation of the setting kept: what `train auto` compares
    return {**({**kept, "validation_used_for": "choosing t0 and K"} if kept else {}),"images": len(images), "contaminated": sum(s.label == 1 for s in context.split.train),
            "epochs": epoch, "steps": steps, "train_seconds": round(seconds, 1),
            "final_loss": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 5),
            "selection": selection, "config": asdict(cfg)}


def finish(model: RDDPMDetector, context, train_images: torch.Tensor) -> dict:
    """After the denoiser is trained: choose t0 and K on the shared validation set and take the map statistics
    from a seeded subset of the training images; both go into the model's config. Returns what was tried."""
    from ..validation import build_validation
    from .rddpm_select import choose_inference

    cfg = model.config
    validation = None
    if cfg.t0 is None or cfg.steps is None:
        try:
            validation = build_validation(context, trains_on(cfg), cfg.seed)
        except LinesideError as exc:  # too few good images to validate on: the defaults, said so
            context.log(f"rddpm: {exc}")
    pick = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.norm_images]
    selection = choose_inference(model, validation, train_images[pick.sort().values], context.log)
    cfg.t0, cfg.steps = model.t0, model.steps
    if "kept" in selection:  # the validation record of the setting kept
        selection["kept"] = validation.record(selection["kept"])
    return selection


def trains_on(config: RDDPMConfig) -> tuple[str, ...]:
    """rddpm trains on good images only: every synthetic kind is held out for validation."""
    return ()
