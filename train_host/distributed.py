"""Training across processes started by torchrun: no home-made process management.

``torchrun --nproc-per-node N -m train_host train FAMILY ...`` sets RANK, WORLD_SIZE and
LOCAL_RANK; `train` then joins the process group (NCCL on GPUs, gloo on the CPU) and:

- closed-form families shard the training images (contiguous slices, in order) and combine
  what each rank accumulated: rx sums its moments (all_reduce), dinov2-knn gathers its patch
  features (all_gather, in rank order, so the bank is the one a single process builds);
- gradient families wrap their network in DistributedDataParallel; every rank walks the same
  seeded global batches and takes its slice, so N processes at ``--batch-size B`` train as one
  process at B (DDP averages the gradients of the slices);
- wall-clock decisions (``--max-minutes``) are taken by rank 0 and broadcast, so every rank
  runs the same number of steps;
- rank 0 alone scores validation and writes the run.
"""

from __future__ import annotations

import os


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) for a plain process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0"))


def start(device) -> None:
    """Join torchrun's process group (once): NCCL when this rank has a CUDA device, else gloo."""
    import torch.distributed as dist

    if world()[1] > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def stop() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shard_range(count: int, rank: int, size: int) -> slice:
    """This rank's contiguous share of ``count`` items; concatenated in rank order they are all of them, in order."""
    return slice(count * rank // size, count * (rank + 1) // size)


def local_part(tensor, rank: int, size: int):
    """This rank's slice of a global batch (dim 0)."""
    return tensor[shard_range(len(tensor), rank, size)]


def sum_all(tensor):
    """Sum over ranks, in place (a no-op in one process). gloo and NCCL both reduce float64."""
    import torch.distributed as dist

    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_rows(tensor):
    """Every rank's N_r×… rows, concatenated in rank order (ranks may hold different counts)."""
    import torch
    import torch.distributed as dist

    if not active():
        return tensor
    size = dist.get_world_size()
    count = torch.tensor([len(tensor)], device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(size)]
    dist.all_gather(counts, count)
    most = int(max(c.item() for c in counts))
    padded = torch.zeros((most, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: len(tensor)] = tensor
    parts = [torch.zeros_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(c.item())] for part, c in zip(parts, counts)])


def agree(value: float, device=None) -> float:
    """Rank 0's ``value`` on every rank: time-based decisions must not differ between ranks."""
    import torch
    import torch.distributed as dist

    if not active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


def sum_values(values: list[float], device=None) -> list[float]:
    """Python numbers summed over ranks (logged losses: the global batch's, not one rank's slice)."""
    import torch

    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    sum_all(t)
    return t.tolist()


def wrap(module, device):
    """DistributedDataParallel around ``module`` when running under torchrun, else ``module`` itself."""
    if not active():
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)
