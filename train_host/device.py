"""Where torch runs and in what precision: ``--device``, ``--amp`` and the data loader's workers.

``auto`` picks the first CUDA device when there is one (the local rank's under torchrun), else
Apple's MPS, else the CPU. Mixed precision (``--amp``) is autocast around the training steps,
with a GradScaler for FP16 (BF16 needs none); ``auto`` is BF16 on a CUDA device that supports
it and off elsewhere, so a CPU run computes exactly what it did before these options existed.
The closed-form statistics (rx moments, kNN banks, rddpm's map statistics) stay in FP32/FP64.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from edge_infer.errors import LinesideError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
AMP_CHOICES = ("auto", "off", "bf16", "fp16")
# DataLoader workers start a process each; below this many images a pass is over before they pay off.
WORKER_MIN_IMAGES = 64


def add_device_options(p, amp: bool = True, workers: bool = True) -> None:
    """--device (and --amp, --workers) for a command that runs torch."""
    p.add_argument("--device", default="auto", help=f"where torch runs: {DEVICE_CHOICES} (default: auto, the first "
                   "CUDA GPU when there is one, else the CPU)")
    if amp:
        p.add_argument("--amp", default="auto", choices=AMP_CHOICES,
                       help="mixed precision of the training steps: bf16, fp16 (with a GradScaler) or off "
                       "(default: auto = bf16 on a CUDA GPU that supports it, off on the CPU)")
    if workers:
        p.add_argument("--workers", type=int, help="data-loader worker processes (default: on a GPU up to 4; on "
                       "the CPU half the cores for passes of 64 images or more, else 0 = read in the main process)")


def resolve_device(name: str | None = "auto", local_rank: int | None = None):
    """A torch.device for ``--device``; a clear error for one this machine does not have."""
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank or 0)
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LinesideError(f"--device {name!r}: use {DEVICE_CHOICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LinesideError(f"--device {name}: torch sees no CUDA GPU here (torch {torch.__version__}, "
                                f"built for CUDA {torch.version.cuda}); use --device cpu, or install the CUDA build "
                                "of torch that matches the driver")
        index = device.index if device.index is not None else (local_rank or 0)
        if index >= torch.cuda.device_count():
            raise LinesideError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                                f"numbered 0..{torch.cuda.device_count() - 1}")
        return torch.device("cuda", index)
    if device.type == "mps" and not _mps_available():
        raise LinesideError("--device mps: this torch has no usable Apple MPS backend; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise LinesideError(f"--device {name!r}: use {DEVICE_CHOICES}")
    return device


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def resolve_amp(amp: str | None, device):
    """The autocast dtype for ``--amp`` on ``device``, or None (full FP32)."""
    import torch

    amp = (amp or "auto").lower()
    if amp not in AMP_CHOICES:
        raise LinesideError(f"--amp {amp!r}: choose one of {', '.join(AMP_CHOICES)}")
    if amp == "off":
        return None
    if amp == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if device.type == "cpu" and amp == "fp16":
        raise LinesideError("--amp fp16 on the CPU: CPUs have no fast FP16 training path; use --amp bf16 or off")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def default_workers(device, images: int) -> int:
    """Workers for one pass over ``images``: a GPU is fed from several; a short CPU pass reads in-process."""
    cores = os.cpu_count() or 1
    if device.type != "cpu":
        return min(4, max(1, cores - 1))
    return min(4, cores // 2) if images >= WORKER_MIN_IMAGES else 0


@dataclass
class Hardware:
    """What a run ran on: resolved once per command, recorded with the run."""

    device: object  # torch.device
    amp: object = None  # torch dtype for autocast, or None
    workers: int | None = None  # None: default_workers per pass
    channels_last: bool = False
    rank: int = 0
    world_size: int = 1

    @property
    def precision(self) -> str:
        import torch

        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp]

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        """Autocast for a training step's forward and loss; a no-op in FP32."""
        import torch

        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def scaler(self):
        """A GradScaler for FP16 (BF16 and FP32 need none): ``step(loss, optimizer, scaler)`` uses it."""
        import torch

        if self.amp is not torch.float16:
            return None
        return torch.amp.GradScaler(self.device.type)

    def record(self) -> dict:
        import torch

        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        return {"device": str(self.device), "gpu": gpu, "precision": self.precision,
                "channels_last": self.channels_last, "world_size": self.world_size,
                "torch": torch.__version__}

    def describe(self) -> str:
        where = self.record()["gpu"] or str(self.device)
        ranks = f", {self.world_size} processes" if self.world_size > 1 else ""
        return f"{where} ({self.device}), {self.precision}{ranks}"


def hardware_from_args(args, channels_last: bool = False) -> Hardware:
    """The Hardware a command's ``--device/--amp/--workers`` ask for (under torchrun: this rank's GPU)."""
    from .distributed import world

    rank, world_size, local_rank = world()
    device = resolve_device(getattr(args, "device", "auto"), local_rank if world_size > 1 else None)
    if device.type == "cuda":
        import torch

        torch.cuda.set_device(device)
    amp = resolve_amp(getattr(args, "amp", "off"), device)
    return Hardware(device, amp, getattr(args, "workers", None), channels_last and device.type != "cpu",
                    rank, world_size)


def step(loss, optimizer, scaler=None) -> None:
    """zero_grad, backward, step; through the GradScaler when training in FP16."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def model_device(model):
    """The device a module's parameters (or buffers) live on."""
    import torch

    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")
