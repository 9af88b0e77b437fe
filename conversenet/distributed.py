"""Running the batch commands as several processes under ``torchrun``: ranks, shares, gathers.

``torchrun --nproc_per_node=N [--nnodes=M ...] -m conversenet denoise|sr|deblur|eval ...``
starts N x M copies of the command with ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``/
``LOCAL_WORLD_SIZE`` in their environment. :func:`setup` reads them and, only when
``WORLD_SIZE`` > 1, joins the process group (``gloo``: what travels between ranks is a few
Python objects, never tensors), puts each rank on GPU ``LOCAL_RANK`` (one GPU per rank;
ranks beyond the GPU count share them round-robin) or, on CPU, gives each rank
its part of the machine's cores (``cores // LOCAL_WORLD_SIZE`` torch threads) unless the
user set ``--threads``. A plain ``conversenet ...`` is a world of one: nothing is initialised.

Work is shared by index: item ``i`` of the deterministic input order belongs to rank
``i % world`` (:func:`shard`), so every rank can walk the same lazy listing and keep its own
items without anything being sent around, and each output is written by exactly one rank.

Results travel back with :func:`gather` (``all_gather_object``; works across machines, no
shared file system needed). The whole job's progress is counted in the rendezvous' key-value
store (:class:`JobCounter`): each rank adds to one counter after every image, without
waiting for the others, and rank 0 shows the sum.

Example (a world of one, as in a plain process):
    >>> ctx = Context()
    >>> ctx.rank, ctx.world, ctx.is_main
    (0, 1, True)
    >>> list(shard(range(7), rank=1, world=3))
    [1, 4]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, List, Optional, Tuple, TypeVar

T = TypeVar("T")

__all__ = ["Context", "env_world", "setup", "shard", "gather", "barrier", "JobCounter", "cpu_count"]


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, e.g. a container's or taskset's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def env_world() -> Tuple[int, int, int, int]:
    """``(rank, world, local_rank, local_world)`` from torchrun's environment (0, 1, 0, 1 without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1, 0, 1
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return rank, world, local_rank, local_world


@dataclass
class Context:
    """Where this process stands in the job (a world of one by default)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    initialized: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def shard(self, items: Iterable[T]) -> Iterator[T]:
        return shard(items, self.rank, self.world)

    def close(self) -> None:
        """Leaves the process group (if this context joined one)."""
        if self.initialized:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.initialized = False


def setup(device: str = "auto", threads: Optional[int] = None) -> Context:
    """Joins the torchrun job when there is one and splits the machine between its ranks.

    Args:
        device: the command's ``--device`` ("auto", "cpu", "cuda").
        threads: the command's ``--threads`` (None: the share of the cores, see the module doc).

    Returns:
        the :class:`Context`; ``initialized`` is True when a process group was created here.
    """
    import torch

    rank, world, local_rank, local_world = env_world()
    ctx = Context(rank, world, local_rank, local_world)
    if world <= 1:
        return ctx
    gpu = device != "cpu" and torch.cuda.is_available()
    if gpu:
        # one GPU per rank: "cuda" (no index) then means this rank's GPU everywhere
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    elif threads is None:
        torch.set_num_threads(max(1, cpu_count() // max(1, local_world)))
    import torch.distributed as dist

    if not dist.is_initialized():
        # gloo also when the ranks compute on GPUs: only small Python objects travel between
        # ranks (rows, counts), and gloo, unlike nccl, allows several ranks per GPU
        dist.init_process_group(backend="gloo")
        ctx.initialized = True
    return ctx


def shard(items: Iterable[T], rank: int, world: int) -> Iterator[T]:
    """The items of index ``i`` with ``i % world == rank`` (lazy; the order is kept)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
    for i, x in enumerate(items):
        if i % world == rank:
            yield x


def gather(ctx: Context, obj: Any) -> List[Any]:
    """Every rank's ``obj`` in rank order (on every rank); ``[obj]`` in a world of one."""
    if not ctx.distributed:
        return [obj]
    import torch.distributed as dist

    out: List[Any] = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()


class JobCounter:
    """A counter of finished items shared by all ranks, kept in the process group's store.

    :meth:`add` costs one small request to the store (no collective: ranks never wait for
    each other); :meth:`total` reads the sum. In a world of one it is a plain integer.
    Falls back to counting this rank only when the store cannot be reached
    (:attr:`shared` is then False).
    """

    def __init__(self, ctx: Context, name: str) -> None:
        self.ctx = ctx
        self.key = f"conversenet/progress/{name}"
        self.local = 0
        self.store = None
        if ctx.distributed:
            try:
                from torch.distributed import distributed_c10d as c10d

                self.store = c10d._get_default_store()
            except Exception:  # a torch without the (private) accessor: per-rank counts
                self.store = None

    @property
    def shared(self) -> bool:
        return self.store is not None or not self.ctx.distributed

    def add(self, n: int = 1) -> None:
        self.local += n
        if self.store is not None and n:
            self.store.add(self.key, n)

    def total(self) -> int:
        if self.store is not None:
            return int(self.store.add(self.key, 0))
        return self.local
