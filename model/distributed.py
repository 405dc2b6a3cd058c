"""Process-group helpers for training under ``torchrun``: who this process is, starting and ending the
group, sums and gathers across processes, and batch norm over the global batch.

Without torchrun (no ``WORLD_SIZE`` above 1 in the environment) every helper is a no-op for one process,
so the training loop has a single code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "AllReduceBatchNorm",
    "Processes",
    "all_sum",
    "barrier",
    "batch_rows",
    "convert_sync_batchnorm",
    "gather_strided",
    "per_process_batch",
    "processes_from_env",
    "shutdown",
    "start",
]


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes (torchrun's RANK, LOCAL_RANK, WORLD_SIZE)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0 alone logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def processes_from_env(environ: dict[str, str] | None = None) -> Processes:
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1"))
    if world < 1:
        raise ValueError(f"WORLD_SIZE must be at least 1, got {world}")
    rank, local = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
    if not 0 <= rank < world:
        raise ValueError(f"RANK {rank} is outside 0..{world - 1} (WORLD_SIZE {world})")
    return Processes(rank=rank, local_rank=local, world_size=world)


def per_process_batch(global_batch: int, world_size: int, accumulate: int = 1) -> int:
    """Images each process puts through the network at once: the global batch is split over the
    processes and, within a process, over ``accumulate`` micro-steps. Uneven splits are refused, so the
    global batch (and with it the learning-rate recipe) means the same whatever the process count."""
    if accumulate < 1:
        raise ValueError(f"accumulate must be at least 1, got {accumulate}")
    if global_batch % (world_size * accumulate):
        raise ValueError(
            f"batch size {global_batch} is not divisible by {world_size} processes x {accumulate} "
            f"accumulation steps = {world_size * accumulate}; choose a batch size that is a multiple of it"
        )
    return global_batch // world_size


def batch_rows(global_batch: int, procs: Processes, accumulate: int = 1) -> Tensor:
    """The positions in each global batch this process trains on, in its micro-step order. Micro-step
    j of every process together covers the j-th 1/accumulate of the global batch, so (with batch norm
    over all processes) each micro-step sees the images one process would."""
    per = per_process_batch(global_batch, procs.world_size, accumulate)
    micro = per // accumulate
    grid = torch.arange(global_batch).view(accumulate, procs.world_size, micro)
    return grid[:, procs.rank, :].reshape(-1)


def start(procs: Processes, device_type: str) -> torch.device:
    """Joins the process group (NCCL between GPUs, gloo between CPU processes) and returns this
    process's device: with several GPUs on a machine, each process takes the one its LOCAL_RANK names."""
    device = torch.device("cuda", procs.local_rank) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if procs.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                **({"device_id": device} if device.type == "cuda" else {}))
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_sum(values: list[float | Tensor], device: torch.device) -> list[float]:
    """The sums over all processes of a few numbers (e.g. an epoch's loss sum and counts), as floats."""
    local = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(local)
    return local.tolist()


def gather_strided(local: Tensor, total: int, procs: Processes, device: torch.device) -> Tensor:
    """Reassembles a result computed in shards: process r holds the rows of items r, r + W, r + 2W, ...
    of ``total`` items (W processes). Every process gets all ``total`` rows, in item order, on the CPU."""
    if not procs.distributed:
        return local
    width = -(-total // procs.world_size)  # the largest shard; the others are padded to it for all_gather
    padded = torch.zeros((width, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: len(local)] = local.to(device)
    parts = [torch.empty_like(padded) for _ in range(procs.world_size)]
    dist.all_gather(parts, padded)
    out = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
    for r, part in enumerate(parts):
        rows = len(range(r, total, procs.world_size))
        out[r :: procs.world_size] = part[:rows].cpu()
    return out


class _SumOverProcesses(torch.autograd.Function):
    """All processes' sum of a tensor, differentiable: the gradient of a sum reaching every process is
    the sum of the gradients coming back from every process."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class AllReduceBatchNorm(_BatchNorm):
    """Batch norm whose training-mode statistics are those of the global batch, summed over processes
    with a differentiable all_reduce, so it works on every backend. ``torch.nn.SyncBatchNorm`` refuses
    CPU tensors (gloo); this is what CPU processes use instead, and it is what makes several processes
    compute exactly what one process computes on the whole batch.

    The sums are taken in float64: E[x^2] - E[x]^2 in float32 would lose digits the equivalence needs.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)  # eval mode (running statistics) or a single process
        self._check_input_dim(input)
        dims = [d for d in range(input.dim()) if d != 1]
        x = input.double()
        count = torch.tensor(float(input.numel() // input.shape[1]), dtype=torch.float64, device=input.device)
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), count.reshape(1)])
        stats = _SumOverProcesses.apply(stats)
        channels = input.shape[1]
        n = stats[-1]
        mean = stats[:channels] / n
        var = stats[channels : 2 * channels] / n - mean * mean  # biased, as batch norm normalises with
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * n / (n - 1).clamp(min=1)
                self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var.dtype))
        shape = [1, channels] + [1] * (input.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.double().view(shape) + self.bias.double().view(shape)
        return y.to(input.dtype).contiguous(memory_format=_memory_format(input))


def _memory_format(t: Tensor) -> torch.memory_format:
    return torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) else (
        torch.contiguous_format)


def convert_sync_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Every batch norm layer computes its statistics over the global batch: ``torch.nn.SyncBatchNorm``
    (fused kernels) between GPUs, ``AllReduceBatchNorm`` between CPU processes. Parameters, buffers and
    state-dict keys stay as they were, so checkpoints load into the plain network."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, _BatchNorm) and not isinstance(module, AllReduceBatchNorm):
        converted = AllReduceBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                       module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                converted.weight = module.weight
                converted.bias = module.bias
        converted.running_mean = module.running_mean
        converted.running_var = module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device_type))
    return module
