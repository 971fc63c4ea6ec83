"""DINOv2 ViTs through timm, and loading Meta's and Hugging Face's checkpoints into them.

ViT-S/B/L with 14-pixel patches, with or without four register tokens. The model is built
at the station's input size (any multiple of 14): timm resamples the checkpoint's 37×37
position embeddings to that grid once, at load, so the exported graph holds no
interpolation; ``dynamic_img_size`` still lets the PyTorch model take other sizes.

Official checkpoints come from a local file, never a download:
- Meta's ``dinov2_vit*14[_reg4]_pretrain.pth`` (keys ``blocks.N.attn.qkv.weight``, ...),
- Hugging Face ``facebook/dinov2-*`` safetensors (``encoder.layer.N.attention.attention.query.weight``, ...),
both mapped to timm names; every key of the file is accounted for (loaded, or ignored
with its reason) and a key the model needs but the file lacks is an error.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from edge_infer.errors import LinesideError

from .layers import seeded

PATCH = 14
# ViT-B/14: the size the field tests used, and the smallest where the default LoRA (rank 16 on qkv)
# stays under 1% of the backbone (ViT-S: 1.36%).
DEFAULT_BACKBONE = "vitb14"
VARIANTS = {
    "vits14": "vit_small_patch14_dinov2",
    "vitb14": "vit_base_patch14_dinov2",
    "vitl14": "vit_large_patch14_dinov2",
    "vits14_reg4": "vit_small_patch14_reg4_dinov2",
    "vitb14_reg4": "vit_base_patch14_reg4_dinov2",
    "vitl14_reg4": "vit_large_patch14_reg4_dinov2",
}
# Keys an official checkpoint carries that inference has no use for, and why.
IGNORED = {"mask_token": "masked-image-modelling token, used only in pre-training"}


def timm_name(backbone: str) -> str:
    if backbone in VARIANTS.values():
        return backbone
    if backbone not in VARIANTS:
        raise LinesideError(f"unknown DINOv2 backbone {backbone!r}: choose one of {', '.join(VARIANTS)}")
    return VARIANTS[backbone]


def build_vit(backbone: str, height: int, width: int, depth: int | None = None, seed: int = 0) -> nn.Module:
    """A randomly initialised DINOv2 ViT at height×width (multiples of 14); ``depth`` trims blocks (tests)."""
    import timm

    if height % PATCH or width % PATCH:
        raise LinesideError(f"DINOv2 needs an input size that is a multiple of {PATCH}, got {width}x{height}: "
                            f"use e.g. --size 224 or --size 448")
    kwargs = {"depth": depth} if depth else {}
    with seeded(seed):  # reproducible random init, global generator untouched
        return timm.create_model(timm_name(backbone), pretrained=False, num_classes=0, img_size=(height, width),
                                 dynamic_img_size=True, **kwargs)


def prefix_tokens(vit: nn.Module) -> int:
    return int(vit.num_prefix_tokens)


def patch_tokens(vit: nn.Module, x: torch.Tensor, layers: tuple[int, ...]) -> list[torch.Tensor]:
    """Normalised patch tokens of the given blocks as N×D×h×w maps; blocks after the last are skipped."""
    n, _, height, width = x.shape
    grid = (height // PATCH, width // PATCH)
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    wanted, outs = set(layers), {}
    for i, block in enumerate(vit.blocks[: max(layers) + 1]):
        x = block(x)
        if i in wanted:
            tokens = vit.norm(x)[:, prefix_tokens(vit):]
            outs[i] = tokens.transpose(1, 2).reshape(n, -1, *grid)
    return [outs[i] for i in layers]


def check_layers(vit: nn.Module, layers: tuple[int, ...]) -> tuple[int, ...]:
    depth = len(vit.blocks)
    if not layers or any(not 0 <= i < depth for i in layers):
        raise LinesideError(f"layers {layers} must be block indices in 0..{depth - 1} of this backbone")
    return tuple(int(i) for i in layers)


def default_layers(depth: int, count: int) -> tuple[int, ...]:
    """``count`` blocks spread over the second half of the network, ending with the last one."""
    return tuple(sorted({depth - 1 - round(k * depth / (2 * count)) for k in range(count)}))


# ---------------------------------------------------------------- official checkpoints


def hf_to_meta(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face Dinov2Model names → Meta's (q, k, v fused into qkv, as Meta and timm keep them)."""
    state = {_strip_hf_prefix(k): v for k, v in state.items()}
    simple = [
        (r"^embeddings\.cls_token$", "cls_token"),
        (r"^embeddings\.mask_token$", "mask_token"),
        (r"^embeddings\.register_tokens$", "register_tokens"),
        (r"^embeddings\.position_embeddings$", "pos_embed"),
        (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
        (r"^encoder\.layer\.(\d+)\.norm([12])\.", r"blocks.\1.norm\2."),
        (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
        (r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
        (r"^encoder\.layer\.(\d+)\.mlp\.fc([12])\.", r"blocks.\1.mlp.fc\2."),
        (r"^layernorm\.", "norm."),
    ]
    out, qkv = {}, {}
    for key, value in state.items():
        m = re.match(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$", key)
        if m:
            qkv.setdefault((m[1], m[3]), {})[m[2]] = value
            continue
        for pattern, target in simple:
            if re.match(pattern, key):
                key = re.sub(pattern, target, key)
                break
        out[key] = value  # unmapped names stay as they are and are reported as unexpected
    for (block, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise LinesideError(f"block {block} of the checkpoint has only {sorted(parts)} of query/key/value {kind}")
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def _strip_hf_prefix(key: str) -> str:
    return key.removeprefix("dinov2.")


def is_hf_layout(state: dict) -> bool:
    return any(_strip_hf_prefix(k).startswith(("embeddings.", "encoder.layer.")) for k in state)


def to_timm(state: dict[str, torch.Tensor], vit: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """An official state dict (either layout) → timm names at the model's grid, and the keys ignored."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    fmt = "huggingface" if is_hf_layout(state) else "meta"
    if fmt == "huggingface":
        state = hf_to_meta(state)
    # Meta's block_chunks layout (blocks.CHUNK.N.) flattens to blocks.N.
    state = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k) if re.match(r"^blocks\.\d+\.\d+\.", k) else k: v
             for k, v in state.items()}
    ignored = {k: reason for k, reason in IGNORED.items() if k in state}
    if "mask_token" not in state:  # timm recognises the Meta layout by this key
        state["mask_token"] = torch.zeros(1)
    if "pos_embed" not in state:
        raise LinesideError("the checkpoint has no position embeddings (pos_embed / embeddings.position_embeddings):"
                            " is it a DINOv2 checkpoint?")
    return checkpoint_filter_fn(dict(state), vit), ignored


def load_dinov2_weights(vit: nn.Module, path: str | Path) -> dict:
    """Load a local official checkpoint into a timm DINOv2; returns what was loaded and ignored."""
    from ..backbones import read_checkpoint

    raw = read_checkpoint(path)
    fmt = "huggingface" if is_hf_layout(raw) else "meta"
    state, ignored = to_timm(raw, vit)
    own = vit.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise LinesideError(
            f"{path} ({fmt} layout) does not fit {type(vit).__name__} with {len(vit.blocks)} blocks of width "
            f"{vit.embed_dim}: missing {missing[:4]}{'...' if len(missing) > 4 else ''}, unexpected "
            f"{unexpected[:4]}{'...' if len(unexpected) > 4 else ''}. Give the checkpoint of the same variant "
            "(--backbone vits14 / vitb14 / vitl14, _reg4 for register checkpoints)")
    wrong = [k for k in own if own[k].shape != state[k].shape]
    if wrong:
        raise LinesideError(f"{path}: shapes differ for {wrong[:4]} (e.g. {tuple(state[wrong[0]].shape)} vs "
                            f"{tuple(own[wrong[0]].shape)}): give the checkpoint of the same variant")
    vit.load_state_dict(state, strict=True)
    return {"weights": str(path), "format": fmt, "keys_loaded": len(state), "keys_ignored": ignored,
            "missing_keys": [], "unexpected_keys": []}
