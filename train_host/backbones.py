"""Backbones through timm, and loading their weights from a local checkpoint.

Nothing is downloaded: without ``weights`` a backbone is randomly initialised (and the run
records that), with ``weights`` it loads a local file in timm's or torchvision's layout.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edge_infer.errors import LinesideError

# Classifier heads that a feature extractor does not have; their keys are expected leftovers.
HEAD_PREFIXES = ("fc.", "head.", "classifier.", "head_dist.", "last_linear.")


def feature_extractor(name: str, out_indices: tuple[int, ...]) -> nn.Module:
    import timm

    try:
        kwargs = {"zero_init_last": False} if name.startswith(("resnet", "wide_resnet", "resnext")) else {}
        # zero_init_last would make a randomly initialised ResNet's blocks the identity.
        return timm.create_model(name, pretrained=False, features_only=True, out_indices=out_indices, **kwargs)
    except RuntimeError as exc:
        raise LinesideError(f"timm cannot build backbone {name!r} with out_indices {out_indices}: {exc}") from None


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from .pth/.pt/.bin without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise LinesideError(f"weights file {path} does not exist: give the path of a local checkpoint")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise LinesideError(f"cannot load {path} as plain tensors ({exc}); convert it to .safetensors") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise LinesideError(f"{path} holds no state dict of tensors")
    return {_strip(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_backbone_weights(model: nn.Module, path: str | Path) -> dict:
    """Load a checkpoint into a backbone; report keys missing and left over (heads aside)."""
    state = read_checkpoint(path)
    if not set(state) & set(model.state_dict()):
        raise LinesideError(f"no key of {path} matches the backbone: is it a checkpoint of this architecture?")
    result = model.load_state_dict(state, strict=False)
    unexpected = [k for k in result.unexpected_keys if not k.startswith(HEAD_PREFIXES)]
    if result.missing_keys:
        raise LinesideError(
            f"{path} lacks {len(result.missing_keys)} backbone weights (e.g. {result.missing_keys[:3]}): "
            "give a checkpoint of the same architecture"
        )
    return {"weights": str(path), "unexpected_keys_ignored": unexpected}


def _strip(key: str) -> str:
    for prefix in ("module.", "model.", "backbone."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key
