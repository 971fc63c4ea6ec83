"""LoRA on dinov2-lora's ViT backbone: the presets, the adapters (peft) and their merge back.

Its own module because both the family (`dinov2_lora`: presets in its config) and its
training (`dinov2_training`: injects, trains and merges the adapters) use it, and the
family calls the training.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import seeded

# Which linear layers get adapters, by preset. Regexes over module names (peft fullmatch), so
# the patch embedding's "proj" is never caught by the attention's "proj".
PRESETS = {
    "default": {"rank": 16, "alpha": 32, "targets": r".*blocks\.\d+\.attn\.qkv"},  # field setting, MVTec AD 2
    "anomalyvfm": {"rank": 64, "alpha": 64, "targets": r".*blocks\.\d+\.attn\.(qkv\.query|qkv\.value|proj)"},
}


class SplitQKV(nn.Module):
    """timm's fused qkv as three linears, so adapters can target query and value alone."""

    def __init__(self, qkv: nn.Linear):
        super().__init__()
        d, o = qkv.in_features, qkv.out_features // 3
        bias = qkv.bias is not None
        self.query, self.key, self.value = (nn.Linear(d, o, bias=bias, device=qkv.weight.device) for _ in range(3))
        with torch.no_grad():
            for i, part in enumerate((self.query, self.key, self.value)):
                part.weight.copy_(qkv.weight[i * o:(i + 1) * o])
                if bias:
                    part.bias.copy_(qkv.bias[i * o:(i + 1) * o])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.query(x), self.key(x), self.value(x)], dim=-1)

    def fused(self) -> nn.Linear:
        parts = (self.query, self.key, self.value)
        linear = nn.Linear(self.query.in_features, 3 * self.query.out_features, bias=self.query.bias is not None,
                           device=self.query.weight.device)
        with torch.no_grad():
            linear.weight.copy_(torch.cat([p.weight for p in parts]))
            if linear.bias is not None:
                linear.bias.copy_(torch.cat([p.bias for p in parts]))
        return linear


class LoRAAdapter:
    """Adapters injected into a detector's backbone (in place), and their merge back into it.

    ``model``: a `dinov2_lora.DinoSegDetector` (anything with a timm ViT as ``backbone``).
    """

    def __init__(self, model: nn.Module, rank: int, alpha: float, targets: str, seed: int = 0):
        from peft import LoraConfig
        from peft.tuners.lora import LoraModel

        self.model = model
        self.base_params = sum(p.numel() for p in model.backbone.parameters())
        if "qkv\\." in targets:
            for block in model.backbone.blocks:
                block.attn.qkv = SplitQKV(block.attn.qkv)
        with seeded(seed):  # reproducible random init, global generator untouched
            self.lora = LoraModel(model.backbone, LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets,
                                                             lora_dropout=0.0), "default")
        self.rank, self.alpha = rank, alpha

    def parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.model.backbone.named_parameters() if "lora_" in n]

    def report(self) -> dict:
        trainable = sum(p.numel() for p in self.parameters())
        return {"rank": self.rank, "alpha": self.alpha, "lora_parameters": trainable,
                "backbone_parameters": self.base_params,
                "share_of_backbone": round(trainable / self.base_params, 5)}

    def merge(self) -> None:
        """Fold the adapters into the weights; the backbone is a plain timm ViT again."""
        self.lora.merge_and_unload()
        for block in self.model.backbone.blocks:
            if isinstance(block.attn.qkv, SplitQKV):
                block.attn.qkv = block.attn.qkv.fused()


def lora_settings(config, rank: int | None = None) -> tuple[int, float, str]:
    """(rank, alpha, target regex) for a `dinov2_lora.DinoLoRAConfig`; ``rank`` overrides the configured one."""
    preset = PRESETS[config.preset]
    if rank is None:
        rank = int(config.rank) if config.rank not in ("", "auto") else preset["rank"]
    alpha = config.alpha if config.alpha is not None else preset["alpha"] * rank / preset["rank"]
    return rank, float(alpha), preset["targets"]
