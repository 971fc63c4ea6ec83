"""Parameterised Cut&Paste: defects cut from the station's own images, pasted where a learned map says.

Every sample is built from a batch of good images: the content is another image of the batch
(rolled by a random offset, rotated) or the target itself (a photometric defect: the region
dimmed, brightened or blurred in place), then scaled by a gain, brightness-shifted and
blurred; a footprint (an ellipse of random aspect, at a chosen scale and angle) is pasted
at a location sampled from a placement map. The mask is that footprint, exactly: pixels
outside it are untouched. Gains and shifts are symmetric (as many darkening options as
brightening ones, gains with mean 1): the fixed baseline has no polarity, and the learned
synthesis can find one from the validation signal.

What the upper level can learn (all relaxed with straight-through Gumbel-softmax, so the
forward pass is a hard, exact sample and the backward pass sees the soft probabilities):

- **placement**: a small U-Net maps each target image to logits over its pixels; the paste
  centre is a Gumbel-softmax sample over them. The mask is the footprint convolved with the
  (straight-through) one-hot centre, so gradients reach every pixel's logit.
- **importance weights** over discrete transforms and sources: source (another image, the
  target itself, or — with ``crops`` — a real defect crop: its own mask is the footprint and
  its pixels the content, turned and scaled like the ellipses), scale, rotation, gain, brightness shift, blur, blend mode (alpha, or OpenCV's Poisson seamlessClone — a constant for autograd; the blend
  logits still get the gradient of the difference between the two results) and strength.

With ``learned=False`` (the baseline) the same module samples uniformly and is not updated.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_infer.errors import LinesideError

from .cutpaste_crops import DefectCrops, crop_bank
from .layers import GaussianBlur

SCALES = (0.08, 0.14, 0.22, 0.32)  # footprint long side, as a share of the image's shorter side
ANGLES = (0, 45, 90, 135)  # footprint angle in degrees; the content turns by the matching quarter
SOURCES = ("other", "self")  # another image of the batch (rolled, turned), or the target in place
DEFECT = "defect"  # a real defect crop (--defect-crops): a third source, only when crops are given
GAINS = (0.5, 0.75, 1.0, 1.25, 1.5)  # multiplicative gain of the content: mean 1, dims as much as it brightens
BRIGHTNESS = (-60.0, -30.0, 0.0, 30.0, 60.0)  # shift of the pasted content, in 0-255 pixel units
BLURS = (0.0, 1.0, 2.0)  # Gaussian σ of the pasted content, pixels
BLENDS = ("alpha", "poisson")
STRENGTHS = (0.4, 0.7, 1.0)  # how far pasted pixels move towards the content
PLACEMENT_LIMIT = 3.0  # bound on placement logits (see PlacementNet.forward)
CHOICES = {"source": SOURCES, "scale": SCALES, "angle": ANGLES, "gain": GAINS, "brightness": BRIGHTNESS,
           "blur": BLURS, "blend": BLENDS, "strength": STRENGTHS}


class PlacementNet(nn.Module):
    """A two-level U-Net: image (0-255 floats) → placement logits, one per pixel."""

    def __init__(self, channels: int, width: int = 8):
        super().__init__()
        self.enc1 = conv_block(channels, width)
        self.enc2 = conv_block(width, 2 * width)
        self.dec1 = conv_block(3 * width, width)
        self.head = nn.Conv2d(width, 1, 1)
        # start (nearly) uniform, i.e. random pasting; not exactly zero, so gradients reach the U-Net
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image - 127.5) / 64.0
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        up = F.interpolate(e2, size=e1.shape[-2:], mode="nearest")
        # bounded logits: no pixel gets more than e^(2·LIMIT) times another's chance, so the upper
        # level cannot collapse all pastes onto one corner (it did, unbounded, on ELPV)
        return PLACEMENT_LIMIT * torch.tanh(self.head(self.dec1(torch.cat([e1, up], 1))) / PLACEMENT_LIMIT)


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))


class CutPasteSynthesis(nn.Module):
    def __init__(self, channels: int, defect_share: float = 0.5, tau: float = 1.0, seed: int = 0,
                 crops: DefectCrops | None = None):
        super().__init__()
        self.placement = PlacementNet(channels)
        # without crops exactly the two sources of before (same parameters, same draws)
        self.choices = dict(CHOICES, source=SOURCES + (DEFECT,)) if crops is not None else CHOICES
        self.logits = nn.ParameterDict({k: nn.Parameter(torch.zeros(len(v))) for k, v in self.choices.items()})
        self.crops = crops
        if crops is not None:  # every crop turned and scaled for every option once; plain tensors, not state
            h, w = crops.images.shape[-2:]
            self.crop_size = (h, w)
            self.crop_pixels, self.crop_masks = crop_bank(crops, SCALES, ANGLES, min(h, w), kernel_size(h, w))
        self.blurs = nn.ModuleList(GaussianBlur(s) for s in BLURS)
        self.defect_share = defect_share  # the rest of each batch stays good, as DRAEM trains
        self.tau = tau
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)

    def probabilities(self) -> dict[str, dict[str, float]]:
        """The learned importance weights, readable: {transform: {option: probability}}."""
        return {k: {str(o): round(float(p), 3) for o, p in zip(v, self.logits[k].detach().softmax(0))}
                for k, v in self.choices.items()}

    def pick(self, name: str, n: int) -> torch.Tensor:
        """N×K straight-through one-hot samples of one transform's options."""
        logits = self.logits[name].expand(n, -1)
        return F.gumbel_softmax(logits, tau=self.tau, hard=True)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (or 0-255 float) N×C×H×W good images → (defective float images 0-255, mask N×1×H×W 0/1)."""
        target = images.float()
        n, _, h, w = target.shape
        picks = {name: self.pick(name, n) for name in self.choices}  # one draw per transform and sample
        footprint = self.footprints(picks, h, w)  # N×K×K, differentiable in the scale/angle weights
        centre = self.place(target)  # N×1×H×W straight-through one-hot
        keep = torch.from_numpy(self.rng.random(n) < self.defect_share).float().view(n, 1, 1, 1)
        crop = self.crop_patches(picks, h, w) if self.crops is not None else None
        if crop is not None:  # a crop's own mask is its footprint
            source = picks["source"]
            footprint = footprint * (source[:, 0] + source[:, 1]).view(n, 1, 1) + crop[1] * source[:, 2].view(n, 1, 1)
        soft_mask = paste_footprint(centre, footprint) * keep
        mask = (soft_mask.detach() > 0.5).float()
        content = self.content(target, picks, centre, crop)
        strength = picks["strength"] @ torch.tensor(STRENGTHS)
        blend = picks["blend"]
        clone = poisson_clone(content.detach(), target, mask)
        # a gradient-domain blend of the region into itself would undo its gain and shift (an
        # invisible defect with a mask): pastes from the target itself blend by alpha only
        clone = torch.where(picks["source"][:, 1].view(n, 1, 1, 1).bool(), content, clone)
        alpha = strength.view(n, 1, 1, 1) * soft_mask
        out_alpha = target * (1 - alpha) + alpha * content
        out_poisson = target * (1 - alpha) + alpha * clone
        out = blend[:, 0].view(n, 1, 1, 1) * out_alpha + blend[:, 1].view(n, 1, 1, 1) * out_poisson
        return out.clamp(0, 255), mask

    def place(self, target: torch.Tensor) -> torch.Tensor:
        n, _, h, w = target.shape
        logits = self.placement(target).flatten(1)
        return F.gumbel_softmax(logits, tau=self.tau, hard=True).view(n, 1, h, w)

    def placement_map(self, images: torch.Tensor) -> torch.Tensor:
        """N×1×H×W probability of each pixel being a paste centre."""
        logits = self.placement(images.float())
        return logits.flatten(1).softmax(1).view_as(logits)

    def footprints(self, picks: dict, h: int, w: int) -> torch.Tensor:
        """Ellipses of random aspect for every (scale, angle) option, mixed by the sampled weights."""
        n, side = picks["scale"].shape[0], min(h, w)
        k = kernel_size(h, w)
        bank = np.zeros((n, len(SCALES), len(ANGLES), k, k), np.float32)
        aspects = self.rng.uniform(0.15, 1.0, n)
        for i in range(n):
            for s, scale in enumerate(SCALES):
                major = max(1.0, scale * side / 2)
                for a, angle in enumerate(ANGLES):
                    axes = (int(round(major)), max(1, int(round(major * aspects[i]))))
                    cv2.ellipse(bank[i, s, a], (k // 2, k // 2), axes, angle, 0, 360, 1.0, -1)
        return torch.einsum("nsakl,ns,na->nkl", torch.from_numpy(bank), picks["scale"], picks["angle"])

    def crop_patches(self, picks: dict, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One crop per sample: (pixels N×C×K×K, mask N×K×K) mixed by the scale/angle draws."""
        if (h, w) != self.crop_size:
            raise LinesideError(f"defect crops are {self.crop_size[0]}x{self.crop_size[1]} but the images are "
                                f"{h}x{w}: load the crops with the model's input spec")
        index = torch.from_numpy(self.rng.integers(0, len(self.crop_pixels), picks["scale"].shape[0]))
        pixels = torch.einsum("nsackl,ns,na->nckl", self.crop_pixels[index].float(), picks["scale"], picks["angle"])
        masks = torch.einsum("nsakl,ns,na->nkl", self.crop_masks[index].float(), picks["scale"], picks["angle"])
        return pixels, masks

    def content(self, target: torch.Tensor, picks: dict, centre: torch.Tensor,
                crop: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """What gets pasted: another image of the batch (shifted, turned), the target in place, or
        a defect crop moved to the paste centre; then gained, brightness-shifted and blurred."""
        n, c, h, w = target.shape
        other = target.roll(1, dims=0) if n > 1 else target
        dy, dx = (int(v) for v in self.rng.integers(0, [h, w]))
        other = other.roll((dy, dx), dims=(2, 3))
        if h == w:  # quarter turns only where the image is square
            turned = torch.stack([other.rot90(q, dims=(2, 3)) for q in range(len(ANGLES))], 1)
            other = torch.einsum("nqchw,nq->nchw", turned, picks["angle"])
        sources = [other, target]
        if crop is not None:  # the crop's pixels where its mask lands, the target around them
            pixels, masks = crop
            sources.append(target * (1 - paste_footprint(centre, masks)) + paste_patch(centre, pixels))
        source = torch.einsum("nschw,ns->nchw", torch.stack(sources, 1), picks["source"])
        gain = picks["gain"] @ torch.tensor(GAINS)
        shift = picks["brightness"] @ torch.tensor(BRIGHTNESS)
        source = source * gain.view(n, 1, 1, 1) + shift.view(n, 1, 1, 1)
        blurred = torch.stack([blur(source.reshape(n * c, 1, h, w)).view(n, c, h, w) for blur in self.blurs], 1)
        return torch.einsum("nbchw,nb->nchw", blurred, picks["blur"]).clamp(0, 255)


def kernel_size(h: int, w: int) -> int:
    """Side of the odd square patch the largest footprint fits in."""
    return 2 * math.ceil(max(SCALES) * min(h, w) / 2) + 1


def paste_footprint(centre: torch.Tensor, footprint: torch.Tensor) -> torch.Tensor:
    """Per-sample convolution of a one-hot centre map with its footprint → N×1×H×W mask."""
    return paste_patch(centre, footprint.unsqueeze(1))


def paste_patch(centre: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    """Per-sample convolution of a one-hot centre map with an N×C×K×K patch → N×C×H×W: the patch
    moved so its middle pixel sits on the centre (cut off at the image border)."""
    n, _, h, w = centre.shape
    c, k = patch.shape[1], patch.shape[-1]
    out = F.conv2d(centre.view(1, n, h, w), patch.flip(-1, -2).reshape(n * c, 1, k, k), padding=k // 2, groups=n)
    return out.view(n, c, h, w)


def poisson_clone(content: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """OpenCV's Poisson (gradient-domain) blend of content into target inside the mask; a constant."""
    out = target.detach().clone()
    pad = 8  # seamlessClone misbehaves where the mask touches the border
    for i in range(target.shape[0]):
        m = mask[i, 0].numpy().astype(np.uint8) * 255
        if not m.any():
            continue
        _, _, bw, bh = cv2.boundingRect(m)
        if min(bw, bh) < 3:  # OpenCV's solver rejects regions thinner than 3 px: paste the content as is
            out[i] = content[i]
            continue
        src, dst = to_bgr(content[i]), to_bgr(target[i].detach())
        src, dst = (cv2.copyMakeBorder(a, pad, pad, pad, pad, cv2.BORDER_REFLECT) for a in (src, dst))
        m = cv2.copyMakeBorder(m, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        x, y, bw, bh = cv2.boundingRect(m)
        blended = cv2.seamlessClone(src, dst, m, (x + bw // 2, y + bh // 2), cv2.NORMAL_CLONE)
        blended = blended[pad:-pad, pad:-pad]
        channels = blended[..., :1] if target.shape[1] == 1 else blended[..., ::-1]
        out[i] = torch.from_numpy(np.ascontiguousarray(channels.transpose(2, 0, 1))).float()
    return torch.where(mask.bool(), out, target.detach())


def to_bgr(image: torch.Tensor) -> np.ndarray:
    a = image.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()
    return np.ascontiguousarray(np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a[..., ::-1])
