"""Device, DDP and mixed precision, set up once.

One code path for 1..N processes: launched by ``torchrun`` (``WORLD_SIZE`` > 1) the
process group is initialised (NCCL on CUDA, gloo on CPU); otherwise everything works
as a single process. ``unwrap`` is the only place that looks through a DDP wrapper.
"""
from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from common.errors import UserError
from data.tensors import normalise


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(flag: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cuda`` without a GPU is a UserError."""
    if flag == "cuda" or (flag == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was requested but no CUDA device is available; use --device cpu")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(device_flag: str = "auto") -> DistEnv:
    """Initialise the process group when launched by torchrun and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_flag, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank, world_size, local_rank, device)


def cleanup() -> None:
    """Tear the process group down once every rank got here (no rank exits mid-collective).

    Collects garbage first: a DistributedDataParallel model no longer used still holds the group
    through reference cycles, and a gloo group destroyed only at interpreter exit can abort the
    process (SIGABRT, "terminate called without an active exception"; seen in 6 of 128
    two-process runs of ``tests/helper/test_distributed.py``, in none of 320 with the collection).
    Callers drop their model before calling this."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def wrap_model(model: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    """Move to the device and wrap in DDP when several processes run."""
    model = model.to(env.device)
    if env.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if env.distributed:
        if env.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.local_rank] if env.device.type == "cuda" else None)
    return model


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient and returns this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` (equal sizes) along dim 0 in rank order, with gradients.

    Every rank computes the loss of the same global batch; the backward pass sums the
    ranks' gradients into each rank's slice, so after DDP's gradient averaging the update
    equals one process on the global batch.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def gather_by_index(values: torch.Tensor, index: torch.Tensor, total: int) -> torch.Tensor:
    """Assemble per-rank rows into a ``total x ...`` tensor placed by sample index.

    Rows whose index was seen on several ranks (padding of a distributed sampler) are
    written once with the same value, so padding cannot corrupt the result.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        sizes = [torch.zeros(1, dtype=torch.long, device=values.device) for _ in range(dist.get_world_size())]
        dist.all_gather(sizes, torch.tensor([values.shape[0]], device=values.device))
        longest = int(max(s.item() for s in sizes))
        padded_values = values.new_zeros((longest,) + tuple(values.shape[1:]))
        padded_values[: values.shape[0]] = values
        padded_index = index.new_full((longest,), -1)
        padded_index[: index.shape[0]] = index
        all_values = [torch.empty_like(padded_values) for _ in sizes]
        all_index = [torch.empty_like(padded_index) for _ in sizes]
        dist.all_gather(all_values, padded_values)
        dist.all_gather(all_index, padded_index)
        values = torch.cat(all_values)
        index = torch.cat(all_index)
        keep = index >= 0
        values, index = values[keep], index[keep]
    out = values.new_zeros((total,) + tuple(values.shape[1:]))
    seen = torch.zeros(total, dtype=torch.bool, device=values.device)
    out[index] = values
    seen[index] = True
    if not bool(seen.all()):
        missing = int((~seen).sum())
        raise RuntimeError(f"descriptor gathering lost {missing} of {total} samples")
    return out


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """Send a picklable object from rank ``src`` to every rank (identity in one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def autocast(device: torch.device, amp: str):
    """The autocast context for ``--amp`` (none/bf16/fp16); a no-op on CPU or with none."""
    if amp == "none" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def move_images(batch: dict, key: str, device: torch.device) -> Optional[torch.Tensor]:
    """``batch[key]`` on ``device``, normalised there when it arrived as uint8, channels_last on CUDA."""
    tensor = batch.get(key)
    if tensor is None:
        return None
    tensor = tensor.to(device, non_blocking=True)
    if tensor.dtype == torch.uint8:
        tensor = normalise(tensor)
    return tensor.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else tensor


def all_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank (all ranks must skip a step together)."""
    bad = (~torch.isfinite(loss)).float().reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return not bool(bad.item())
