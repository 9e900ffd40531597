"""Process-group set-up and the few collectives training needs, for one process or many.

Everything here is a no-op (or the identity) when ``world_size == 1``, so the training
engine has one code path. Under ``torchrun`` the environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) defines the group; multi-node runs use torchrun's own flags.
"""
from __future__ import annotations

import gc
import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Sequence

import torch
import torch.distributed as dist

from utils.runtime import pick_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed_mode(device_flag: str = "auto", log=print, cuda: bool = False) -> DistInfo:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on the CPU), or run alone, on the
    device ``--device`` (and the reference's ``--cuda``) choose: :func:`utils.runtime.pick_device`."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_flag, cuda=cuda, local_rank=local_rank, log=log if rank == 0 else None,
                         gpus_flag=True)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        store = elastic_store(world_size)
        if store is not None:
            kwargs.update(store=store, rank=rank, world_size=world_size)
        dist.init_process_group(backend=backend, **kwargs)
        if rank == 0 and log is not None:
            log(f"=> distributed: {world_size} processes, backend {backend}")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def elastic_store(world_size: int) -> dist.Store | None:
    """Under torchrun, the elastic agent's store seen through a prefix of this restart attempt; None
    elsewhere (``init_process_group`` then reads MASTER_ADDR/MASTER_PORT itself).

    torchrun's agent keeps one store server across restarts (the c10d rendezvous shares its TCPStore),
    and the default process group's keys are the same in every attempt, so a restarted group can meet
    what the dead attempt left there. With the store as is, the restarted ranks of this project's
    elastic test sometimes never trained or failed in gloo's ``connectFullMesh`` ("Connection
    refused"), the two failures the robustness audit saw; with a prefix per attempt
    (``TORCHELASTIC_RESTART_COUNT``, which all agents advance together) they always resumed.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False,
                          timeout=timedelta(minutes=15))
    return dist.PrefixStore(f"baryir/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def cleanup(info: DistInfo) -> None:
    """Leave the process group. Collected first: a DDP wrapper still alive in a reference cycle keeps the
    group's threads alive, and their destruction while the interpreter exits aborts the process
    ("terminate called without an active exception")."""
    if info.distributed and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_int(value: int, info: DistInfo) -> int:
    """Rank 0's ``value`` on every rank (the seed, so all ranks draw the same data and init)."""
    if not info.distributed:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.long, device=info.device)
    dist.broadcast(t, src=0)
    return int(t.item())


def broadcast_text(text: str, info: DistInfo) -> str:
    """Rank 0's ``text`` on every rank (the checkpoint it resumes, so that all ranks start from one state)."""
    if not info.distributed:
        return text
    box = [text if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return str(box[0])


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of ``t`` (any shape) over ranks, elementwise, in place; returns it."""
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_module(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not info.distributed:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def average_gradients(params: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    """Average ``.grad`` over ranks, one flat all-reduce per dtype.

    The Potentials are synchronised this way rather than by DDP: they are frozen during the map
    update and evaluated through ``Potentials.all`` (not ``forward``) in the congruence update,
    which DDP's forward hooks would not see.
    """
    if not info.distributed:
        return
    grads = [p.grad for p in params if p.grad is not None]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    for group in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(info.world_size)
        offset = 0
        for g in group:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n


def weights_digest(*modules: torch.nn.Module | None) -> int:
    """A 63-bit digest of the exact bytes of every parameter and buffer (order-sensitive)."""
    h = hashlib.sha256()
    for m in modules:
        if m is None:
            continue
        for name, t in list(m.named_parameters()) + list(m.named_buffers()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "little") >> 1


def gather_ints(value: int, info: DistInfo) -> list[int]:
    """Every rank's ``value``, in rank order."""
    return [row[0] for row in gather_int_rows([value], info)]


def gather_int_rows(values: Sequence[int], info: DistInfo) -> list[list[int]]:
    """Every rank's ``values`` (the same count on every rank), in rank order, in one collective."""
    if not info.distributed:
        return [[int(v) for v in values]]
    t = torch.tensor([int(v) for v in values], dtype=torch.long, device=info.device)
    out = [torch.zeros_like(t) for _ in range(info.world_size)]
    dist.all_gather(out, t)
    return [x.tolist() for x in out]
