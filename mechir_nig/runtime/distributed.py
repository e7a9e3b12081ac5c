"""torch.distributed for mechir_nig: launch detection, the process group, sharding by cost, Context.map.

A run started by ``torchrun`` (any launcher that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; multi-node through torchrun's rendezvous) is a distributed run; the
same program without those variables is the single-process run: rank 0 of 1, no process group, every
collective the identity.

- :func:`launch_info`: the launch described by the environment (``None`` without one).
- :func:`context`: what an experiment needs: ``"auto"`` joins a launch of more than one process
  (initialising the default process group if nobody has: ``nccl`` when the model is on CUDA, else
  ``gloo``), ``True`` joins any launch (even of one process), ``False`` ignores it. The returned
  :class:`Context` has ``rank``, ``world_size`` and the collectives (``barrier``, ``broadcast``,
  ``all_gather``, :meth:`Context.collective`) and :meth:`Context.map`, the one way the experiments
  distribute work: agree on it, shard it by cost, run each share under a collective, gather the
  results in input order.
- :func:`shard_by_cost`: greedy longest-processing-time sharding: items by decreasing cost (ties: lower
  index first) each go to the rank with the smallest load so far (ties: lower rank). It is
  deterministic, so every rank computes the same assignment without communicating, and the heaviest
  rank's load is within ``4/3`` of the best possible (Graham, 1969). Collection attribution uses the
  token count of each pair as its cost.
- :func:`rank`, :func:`world_size`, :func:`is_main`, :func:`local_device`: for scripts and the CLI (load
  the model on ``local_device()``; print and save on ``is_main()`` only).

Example:
    >>> shard_by_cost([5, 1, 4, 2, 3], 2)  # costs of 5 items over 2 ranks: loads 8 and 7
    [[0, 3, 1], [2, 4]]
    >>> context(distributed="auto").world_size  # no launch here: the single-process run
    1
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import heapq
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from mechir_nig._validate import check_int, check_number
from mechir_nig.errors import DistributedError, InputError

T = TypeVar("T")
R = TypeVar("R")

__all__ = [
    "Context",
    "Launch",
    "SINGLE",
    "context",
    "init_process_group",
    "is_main",
    "launch_info",
    "local_device",
    "rank",
    "shard_by_cost",
    "split_rows",
    "stack_rows",
    "world_size",
]


@dataclass(frozen=True)
class Launch:
    """The ranks a launcher (``torchrun``) started, read from the environment.

    Example:
        >>> launch_info({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
        Launch(rank=1, world_size=2, local_rank=1, local_world_size=2, master='?:?')
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master: str


def _env_int(env: Mapping[str, str], key: str, default: int | None = None) -> int:
    raw = env.get(key)
    if raw is None:
        if default is None:
            raise DistributedError(f"{key} is not set")
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"{key}={raw!r} is not an integer; launch with torchrun") from None


def launch_info(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launch described by ``environ`` (default ``os.environ``), or ``None`` when there is none.

    Raises:
        DistributedError: ``RANK`` without ``WORLD_SIZE`` (or the reverse), or values out of range.

    Example:
        >>> launch_info({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}).rank
        1
        >>> launch_info({}) is None
        True
    """
    env = os.environ if environ is None else environ
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return None
    missing = [k for k in ("RANK", "WORLD_SIZE") if k not in env]
    if missing:
        raise DistributedError(
            f"a partial torch.distributed launch: {', '.join(missing)} not set (RANK, WORLD_SIZE, "
            "MASTER_ADDR and MASTER_PORT go together); start with torchrun, or unset RANK/WORLD_SIZE"
        )
    r, w = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
    if w < 1 or not 0 <= r < w:
        raise DistributedError(f"RANK={r} and WORLD_SIZE={w} are inconsistent (need 0 <= RANK < WORLD_SIZE)")
    return Launch(
        rank=r,
        world_size=w,
        local_rank=_env_int(env, "LOCAL_RANK", r),
        local_world_size=_env_int(env, "LOCAL_WORLD_SIZE", w),
        master=f"{env.get('MASTER_ADDR', '?')}:{env.get('MASTER_PORT', '?')}",
    )


def _grouped() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default process group (0 without one).

    Example:
        >>> rank()  # no process group here
        0
    """
    return dist.get_rank() if _grouped() else 0


def world_size() -> int:
    """The number of processes in the default process group (1 without one).

    Example:
        >>> world_size()  # no process group here
        1
    """
    return dist.get_world_size() if _grouped() else 1


def is_main() -> bool:
    """Whether this process is rank 0 (the one that prints and writes results).

    Example:
        >>> if is_main():
        ...     print("only rank 0 prints this")
        only rank 0 prints this
    """
    if _grouped():
        return dist.get_rank() == 0
    launch = launch_info()
    return launch is None or launch.rank == 0


def local_device() -> torch.device:
    """The device this rank should load its model on: ``cuda:LOCAL_RANK`` when CUDA is available (modulo
    the visible devices), else the CPU.

    Example:
        >>> local_device().type in ("cuda", "cpu")
        True
        >>> import tempfile
        >>> from mechir_nig.models import HookedCrossEncoder
        >>> from mechir_nig.testing import minilm_cross_encoder
        >>> path = minilm_cross_encoder(tempfile.mkdtemp())
        >>> ce = HookedCrossEncoder.from_pretrained(path, device=local_device())
        >>> ce.device == local_device()
        True
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    launch = launch_info()
    return torch.device("cuda", (launch.local_rank if launch else 0) % torch.cuda.device_count())


_OWNED = False  # whether this module initialised the default process group (then it destroys it at exit)


def _shutdown() -> None:
    if _OWNED and _grouped():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def init_process_group(
    device: torch.device | str | None = None, *, backend: str | None = None, timeout_s: float = 1800.0
) -> None:
    """Initialise the default process group from a launch's environment (``env://``), unless it is.

    Args:
        device: where the model runs: CUDA gives ``nccl`` (and ``torch.cuda.set_device``), anything
            else ``gloo``.
        backend: force a backend (``"gloo"``, ``"nccl"``).
        timeout_s: how long a collective waits for the other ranks.

    Raises:
        DistributedError: no launch in the environment, or a CUDA model on another rank's GPU.

    Example:
        >>> # under `torchrun --nproc_per_node 2 script.py`:
        >>> init_process_group(local_device())  # doctest: +SKIP
        >>> world_size()  # doctest: +SKIP
        2
    """
    global _OWNED
    if _grouped():
        return
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed; run in a single process")
    launch = launch_info()
    if launch is None:
        raise DistributedError(
            "no torch.distributed launch in the environment (RANK, WORLD_SIZE...): start with "
            "`torchrun --nproc-per-node N ...`, or run without distributed=True"
        )
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if backend is None:
        backend = "nccl" if dev.type == "cuda" and dist.is_nccl_available() else "gloo"
    if backend == "nccl":
        index = dev.index if dev.index is not None else launch.local_rank % max(1, torch.cuda.device_count())
        if (
            launch.local_world_size > 1
            and index != launch.local_rank
            and torch.cuda.device_count() > launch.local_rank
        ):
            raise DistributedError(
                f"rank {launch.rank} (LOCAL_RANK={launch.local_rank}) has its model on cuda:{index}, another "
                "rank's GPU; load it on mechir_nig.runtime.distributed.local_device()"
            )
        torch.cuda.set_device(index)
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    _OWNED = True
    atexit.register(_shutdown)


@dataclass(frozen=True)
class Context:
    """The ranks an experiment runs on; every collective is the identity when ``grouped`` is false.

    Example:
        >>> ctx = context(distributed=False)  # a single-process run: ``SINGLE``
        >>> ctx.rank, ctx.world_size, ctx.is_main
        (0, 1, True)
        >>> ctx.all_gather({"pairs": 3})  # every rank's object, in rank order
        [{'pairs': 3}]
    """

    rank: int = 0
    world_size: int = 1
    grouped: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _device(self) -> torch.device:
        if self.grouped and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.grouped:
            dist.barrier()

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """``obj`` of rank ``src`` on every rank (pickled)."""
        if not self.grouped:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (pickled)."""
        if not self.grouped:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def agree(self, what: str, *inputs: Any) -> None:
        """Check that every rank was given the same ``inputs`` (tensors, compared by their bytes, or
        objects, by their ``repr``) before sharding them: a sharded call fills each rank's result with
        the other ranks' parts by position, so different inputs would mix silently. Raises
        ``DistributedError`` on every rank when they differ (a call made inside each rank's own share of
        some work must pass ``distributed=False``).

        Example:
            >>> SINGLE.agree("patch", torch.tensor([[101, 2054, 102]]))  # one process: nothing to compare
        """
        if not self.grouped:
            return
        from mechir_nig._io import tensor_bytes

        digest = hashlib.sha1()
        for x in inputs:
            if isinstance(x, torch.Tensor):
                t = x.detach().cpu().contiguous()
                digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
                digest.update(tensor_bytes(t))
            else:
                digest.update(repr(x).encode())
        prints = self.all_gather(digest.hexdigest())
        differ = [r for r, fp in enumerate(prints) if fp != prints[0]]
        if differ:
            raise DistributedError(
                f"{what}: ranks {differ} were given other inputs than rank 0; a sharded call needs the same "
                "inputs on every rank (it splits them and gathers the parts). Inside your own per-rank share "
                "of the work, pass distributed=False"
            )

    @contextlib.contextmanager
    def collective(self, what: str) -> Iterator[None]:
        """A block every rank runs; when it raises on any rank it raises on every rank (the others get
        the same mechir_nig error class, or ``DistributedError``, naming the rank), so no rank is left
        waiting in a later collective.

        Example:
            >>> with SINGLE.collective("reading the checkpoint"):
            ...     pass
        """
        if not self.grouped:
            yield
            return
        error: Exception | None = None
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - reported to the other ranks, then re-raised
            error = exc
        reports = self.all_gather(
            None if error is None else (type(error).__module__, type(error).__name__, str(error))
        )
        if error is not None:
            raise error
        for r, report in enumerate(reports):
            if report is not None:
                raise _peer_error(r, what, *report)

    def map(
        self,
        items: Sequence[T],
        fn: Callable[[list[T]], Sequence[R]],
        *,
        cost: Sequence[int | float] | None = None,
        what: str,
        fingerprint: Sequence[Any] | None = None,
    ) -> list[R]:
        """``fn`` over ``items`` split across the ranks; every rank returns every item's result, in the
        order of ``items``.

        The one way an experiment distributes work: (1) the ranks check they were given the same work
        (:meth:`agree` on ``fingerprint``, default the items); (2) the items are split by ``cost``
        (:func:`shard_by_cost`; default: equal costs); (3) each rank calls ``fn`` once on its share (the
        items in their input order; not called for an empty share) inside :meth:`collective`, so a rank
        that fails fails every rank; (4) the results are gathered and put back in input order. In a
        single process it is ``list(fn(list(items)))``.

        Args:
            items: the work, the same on every rank.
            fn: takes a share of the items, returns one result per item of the share, in its order.
            cost: each item's cost (e.g. its token count), balancing the shares.
            what: what the work is, for the error messages ("patching").
            fingerprint: what the ranks must agree on when the items alone do not say it (e.g. the
                token ids when the items are pair indices).

        Raises:
            DistributedError: the ranks were given different work, or another rank failed (with that
                rank's mechir_nig error class when it had one).
            InputError: ``cost`` of another length than ``items``, or ``fn`` returned another number of
                results than it was given items.

        Example:
            >>> SINGLE.map(["a", "bb", "ccc"], lambda share: [len(x) for x in share], cost=[1, 2, 3], what="sizing")
            [1, 2, 3]
        """
        work = list(items)
        costs = [1] * len(work) if cost is None else list(cost)
        if len(costs) != len(work):
            raise InputError(f"{what}: {len(costs)} costs for {len(work)} items; give one cost per item")
        if self.grouped:
            self.agree(what, *(work if fingerprint is None else fingerprint))
        mine = sorted(shard_by_cost(costs, self.world_size)[self.rank])
        got: list[R] = []
        with self.collective(what):
            if mine:
                got = list(fn([work[i] for i in mine]))
                if len(got) != len(mine):
                    raise InputError(f"{what}: fn returned {len(got)} results for {len(mine)} items")
        if not self.grouped:
            return got
        out: list[Any] = [None] * len(work)
        for rows, results in self.all_gather((mine, got)):
            for i, result in zip(rows, results, strict=True):
                out[i] = result
        return out


SINGLE = Context()
"""The single-process context: rank 0 of 1, no process group."""


def _peer_error(r: int, what: str, module: str, name: str, message: str) -> Exception:
    from mechir_nig import errors

    cls = getattr(errors, name, None) if module == errors.__name__ else None
    if isinstance(cls, type) and issubclass(cls, errors.MechirNigError):
        return cls(f"rank {r} failed while {what}: {message}")
    return DistributedError(f"rank {r} failed while {what} ({name}: {message}); every rank stops")


def context(distributed: bool | str = "auto", device: torch.device | str | None = None) -> Context:
    """The ranks to run on (see the module docstring for ``distributed``); initialises the default
    process group when a launch asks for one and none exists (``device`` chooses the backend).

    Raises:
        InputError: ``distributed`` is not ``"auto"``, ``True`` or ``False``.
        DistributedError: ``distributed=True`` without a launch.

    Example:
        >>> ctx = context("auto")  # no torchrun launch here: rank 0 of 1
        >>> ctx.world_size, ctx.grouped
        (1, False)
        >>> part = shard_by_cost([5, 1, 4, 2, 3], ctx.world_size)[ctx.rank]  # this rank's items
        >>> part
        [0, 2, 4, 3, 1]
    """
    if not (distributed is True or distributed is False or distributed == "auto"):
        raise InputError(f"distributed must be 'auto', True or False, got {distributed!r}")
    if distributed is False:
        return SINGLE
    if not _grouped():
        launch = launch_info()
        if launch is None:
            if distributed is True:
                raise DistributedError(
                    "distributed=True but this process was not started by a torch.distributed launcher; "
                    "run it with `torchrun --nproc-per-node N ...`, or pass distributed='auto'"
                )
            return SINGLE
        if launch.world_size == 1 and distributed == "auto":
            return SINGLE
        init_process_group(device)
    w = dist.get_world_size()
    if w == 1 and distributed == "auto":
        return SINGLE
    return Context(rank=dist.get_rank(), world_size=w, grouped=True)


def shard_by_cost(costs: Sequence[int | float], world_size: int) -> list[list[int]]:
    """Indices of ``costs`` per rank, balanced by total cost (see the module docstring); each rank's list
    is in decreasing cost order (ties: lower index first).

    Example:
        >>> shard_by_cost([1, 1, 1, 1, 1], 2)  # equal costs: round robin
        [[0, 2, 4], [1, 3]]
    """
    check_int(world_size, "world_size", minimum=1)
    for i, c in enumerate(costs):
        check_number(c, f"costs[{i}]", minimum=0, noun="a finite number")
    heap = [(0.0, r) for r in range(world_size)]
    out: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, r = heapq.heappop(heap)
        out[r].append(i)
        heapq.heappush(heap, (load + costs[i], r))
    return out


def split_rows(tensors: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """One dict per item from tensors batched along dimension 0: what a :meth:`Context.map` ``fn`` of
    batched work returns (each row is a copy, so gathering it sends only that row).

    Example:
        >>> [row["x"].tolist() for row in split_rows({"x": torch.tensor([[1, 2], [3, 4]])})]
        [[1, 2], [3, 4]]
    """
    n = {len(t) for t in tensors.values()}
    if len(n) > 1:
        raise InputError(f"split_rows needs tensors of one batch size, got sizes {sorted(n)}")
    return [{k: t[i].clone() for k, t in tensors.items()} for i in range(n.pop() if n else 0)]


def stack_rows(rows: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`split_rows`: the rows stacked along a new dimension 0.

    Example:
        >>> stack_rows([{"x": torch.tensor([1, 2])}, {"x": torch.tensor([3, 4])}])["x"].tolist()
        [[1, 2], [3, 4]]
    """
    if not rows:
        return {}
    return {k: torch.stack([row[k] for row in rows]) for k in rows[0]}
