"""Data parallelism with PyTorch DDP, launched by ``torchrun`` (one node) or the Kubeflow Trainer (several).

``transferops pretrain|finetune`` run unchanged under ``torchrun --nproc_per_node=N``: the process group
comes from the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...), with
NCCL on GPUs and gloo on CPUs. Each rank draws its own slice of the global batch (the global batch at step
``s`` is still a pure function of (seed, stream, s)), the model's backbone and head and the strategy's extra
modules are wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`, and only rank 0 writes
checkpoints, outputs and MLflow. All ranks resume from the same saved state.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in the job (a single process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


SINGLE = Distributed()


def setup(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun describes (no-op for a single process); returns this rank and its
    device (``cuda:<local rank>`` on GPUs)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE, device
    info = Distributed(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        log.info("rank %d/%d joined the process group (%s)", info.rank, info.world, dist.get_backend())
    return info, device


def barrier(info: Distributed) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def cleanup(info: Distributed) -> None:
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DDP when it has parameters to train (else as is)."""
    if not any(p.requires_grad for p in module.parameters()):
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=True)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm over the global batch (SyncBatchNorm) on GPUs; PyTorch has no CPU implementation, so on CPU
    each rank normalises with its own slice's statistics (say so once)."""
    if device.type != "cuda":
        log.warning("train.sync_bn: SyncBatchNorm needs GPUs; on CPU each rank uses its own batch statistics")
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
