"""A random-init DINOv2 ViT made to behave like a trained one for parity, merge and quantization tests."""

import torch


def nontrivial(vit, seed=0):
    """LayerScale gammas of a trained model's size (0.3–1.0 instead of timm's 1e-5), so every block
    really transforms its input and a test on the ViT can fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if name.endswith("gamma"):
                p.copy_(0.3 + 0.7 * torch.rand(p.shape, generator=g))
    return vit
