"""Selecting component sets: top-k / top-fraction by a score, rank fusion of several scores, random baselines.

The experiments of Vast et al., "Which Neurons Matter in IR? Applying Integrated Gradients-based Methods to
Understand Cross-Encoders" (ICTIR 2024, arXiv:2406.19309) pick the top-k or top-p% MLP neurons by their NIG
score, fuse the rankings of several labels or collections, and compare the sets with random sets of the
same size and layer profile. The same functions select attention heads from ``[n_layers, n_heads]`` scores
(``kind="head"``, e.g. ``attr.per_head().sum(0)``).

* ``select_top``: top-k / top-fraction among the candidate layers, deterministic ties; the set records the
  candidate layers as its pool;
* ``fuse_scores`` / ``rank_fusion``: reciprocal rank fusion (Cormack et al., SIGIR 2009) or Borda count;
* ``random_like``: the seeded random baseline, drawn independently for every (seed, size, profile).

Example:
    >>> scores = torch.randn(6, 1536, generator=torch.Generator().manual_seed(0))  # attr.per_neuron().mean(0)
    >>> top = select_top(scores, fraction=0.01, name="relevant")
    >>> len(top), len(random_like(top, seed=0))
    (92, 92)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechir_nig._validate import as_int, check_bool, check_fraction, check_layers, check_number
from mechir_nig.errors import InputError
from mechir_nig.sets.components import ComponentSet, Kind, check_kind, check_set, noun

FUSION_METHODS = ("rrf", "borda")
"""Rank-fusion methods of ``fuse_scores`` / ``rank_fusion``."""


def check_scores(scores: Any, what: str = "scores") -> Tensor:
    """A finite, real, non-empty 2-D ``[n_layers, width]`` tensor (detached)."""
    if not isinstance(scores, Tensor):
        raise InputError(
            f"{what} must be a torch.Tensor of shape [n_layers, d_mlp] (or [n_layers, n_heads]), got "
            f"{type(scores).__name__}; wrap it with torch.as_tensor"
        )
    if scores.ndim != 2 or scores.shape[0] < 1 or scores.shape[1] < 1:
        raise InputError(
            f"{what} must be a non-empty 2-D tensor [n_layers, d_mlp] (or [n_layers, n_heads]), got shape "
            f"{tuple(scores.shape)}; average over pairs first (e.g. attr.per_neuron().mean(0))"
        )
    if scores.dtype == torch.bool or scores.is_complex():
        raise InputError(f"{what} must be a real-valued tensor, got dtype {scores.dtype}")
    scores = scores.detach()
    if scores.is_floating_point():
        n_nan = int(torch.isnan(scores).sum())
        if n_nan:
            raise InputError(
                f"{what} has {n_nan} NaN value(s); fix or replace them (e.g. torch.nan_to_num) first"
            )
        n_inf = int(torch.isinf(scores).sum())
        if n_inf:
            raise InputError(f"{what} has {n_inf} infinite value(s); every score must be finite")
    return scores


def _check_size(k: Any, fraction: Any, n_candidates: int, kind: str) -> int:
    """The number of components to select from exactly one of ``k`` or ``fraction``."""
    if (k is None) == (fraction is None):
        raise InputError("give exactly one of k (a count) or fraction (a share in (0, 1])")
    if k is not None:
        k = as_int(k, "k")
        if not 1 <= k <= n_candidates:
            raise InputError(
                f"k must be between 1 and the number of candidate {noun(kind)} ({n_candidates}), got {k}; "
                "select fewer or widen layers="
            )
        return k
    share = check_fraction(fraction, "fraction", hint="e.g. 0.01 for the top 1%")
    return max(1, round(share * n_candidates))


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise InputError(f"name must be a str, got {type(name).__name__}")
    return name


def select_top(
    scores: Float[Tensor, "n_layers width"],
    *,
    k: int | None = None,
    fraction: float | int | None = None,
    largest: bool = True,
    layers: Iterable[int] | None = None,
    kind: Kind = "mlp",
    name: str = "",
) -> ComponentSet:
    """The ``k`` (or ``fraction`` of the) components with the largest (or smallest) scores.

    The candidates are every component of ``layers``; the returned set records them as its pool
    (``pool_layers``), so chance levels and random baselines are computed over the same candidates. Ties
    are broken deterministically in favour of the lower flat index ``layer * width + index``.

    Args:
        scores: one score per component, e.g. the mean NIG over relevant pairs (``[n_layers, d_mlp]``) or
            the summed head conductance (``[n_layers, n_heads]``, ``attr.per_head().sum(0)``).
        k: number of components to select, ``1 <= k <=`` the number of candidates.
        fraction: share of the candidates to select, ``0 < fraction <= 1``; the size is
            ``max(1, round(fraction * n_candidates))`` (Python's round: halves go to the even number).
        largest: select the highest scores (default) or the lowest.
        layers: restrict the candidates to these layers (default: all); the set's ``pool_layers``.
        kind: ``"mlp"`` (neurons; returns a ``NeuronSet``) or ``"head"`` (attention heads).
        name: name of the returned set.

    Returns:
        A ``ComponentSet`` (a ``NeuronSet`` for ``kind="mlp"``) whose ``scores`` hold the members' scores.

    Shapes:
        scores: ``[n_layers, width]`` with ``width`` = ``d_mlp`` or ``n_heads``.

    Example:
        >>> s = torch.tensor([[0.1, 0.9], [0.5, 0.9]])
        >>> list(select_top(s, k=2))
        [(0, 1), (1, 1)]
        >>> select_top(s, k=1, layers=[1], kind="head").to_hook_names()
        {'blocks.1.attn.hook_z': [1]}
    """
    scores = check_scores(scores)
    kind = check_kind(kind)
    check_bool(largest, "largest")
    name = _check_name(name)
    n_layers, width = scores.shape
    pool = tuple(check_layers(layers, n_layers))
    size = _check_size(k, fraction, len(pool) * width, kind)
    layer_idx = torch.tensor(pool, dtype=torch.long, device=scores.device)
    candidates = scores.index_select(0, layer_idx).flatten()  # ascending flat index order
    flat = (layer_idx[:, None] * width + torch.arange(width, device=scores.device)).flatten()
    order = torch.sort(candidates, descending=largest, stable=True).indices[:size]
    picked, values = flat[order], candidates[order]
    by_index = torch.argsort(picked)
    return ComponentSet._build(
        kind,
        n_layers,
        width,
        picked[by_index].cpu().numpy(),
        values=values[by_index].to(torch.float64).cpu().numpy(),
        name=name,
        pool=pool,
    )


def _derived_seed(*key: Any) -> int:
    """A 63-bit torch seed derived from ``key`` (blake2b of its repr): distinct keys, independent streams."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def random_like(components: ComponentSet, *, seed: int, same_layer_profile: bool = True) -> ComponentSet:
    """A uniformly random set of the same kind and size: the random baseline of pruning experiments.

    With ``same_layer_profile`` every layer gets as many random members as ``components`` has there;
    otherwise the members are drawn uniformly from the set's candidate pool (``pool_layers``: the layers
    it was selected from). The generator is derived from ``(seed, kind, universe, pool, size, layer
    profile, mode)``, so the same seed and set give the same random set, while two sizes (or profiles)
    drawn with one seed are independent (a smaller random set is not a subset of a larger one). Every
    layer is drawn in one vectorised pass (random keys ranked per layer).

    Args:
        components: the set to match (a ``NeuronSet`` or a ``ComponentSet`` of heads).
        seed: seed of the draw; the same seed gives the same set.
        same_layer_profile: draw the same number of members in each layer as ``components`` (default);
            otherwise draw uniformly from its pool.

    Returns:
        A set with the same kind, universe and pool, named ``random(<name>, seed=<seed>)``.

    Example:
        >>> top = select_top(torch.tensor([[0.1, 0.9, 0.3, 0.2], [0.5, 0.8, 0.7, 0.0]]), k=3)
        >>> r = random_like(top, seed=0)
        >>> len(r) == len(top) and r.layer_profile() == top.layer_profile() == [1, 2]
        True
    """
    components = check_set(components, "components")
    seed = as_int(seed, "seed")
    check_bool(same_layer_profile, "same_layer_profile")
    s = components
    profile = s.layer_profile()
    mode = "profile" if same_layer_profile else "pool"
    key = ("random_like", seed, s.kind, s.n_layers, s.width, s.pool_layers, len(s), tuple(profile), mode)
    gen = torch.Generator().manual_seed(_derived_seed(*key))
    keys = torch.rand(s.n_layers, s.width, generator=gen, dtype=torch.float64)  # iid: random order per row
    if same_layer_profile:
        ranks = keys.argsort(1).argsort(1)  # a uniformly random permutation of each layer
        mask = ranks < torch.tensor(profile, dtype=torch.long)[:, None]
    else:
        keys = keys.masked_fill(~s.pool_mask(), 2.0)  # outside the pool: after every candidate
        mask = torch.zeros(s.universe_size, dtype=torch.bool)
        mask[keys.flatten().argsort()[: len(s)]] = True
    flat = mask.flatten().nonzero().flatten().numpy()
    label = s.name or "set"
    return ComponentSet._build(
        s.kind, s.n_layers, s.width, flat, name=f"random({label}, seed={seed})", pool=s.pool_layers
    )


def _ranks(scores: Tensor) -> Tensor:
    """Competition ranks in float64, 1 = highest score; tied scores share the best rank of their group."""
    flat = scores.flatten().to(torch.float64)
    ascending = torch.sort(flat).values
    n_greater = flat.numel() - torch.searchsorted(ascending, flat, right=True)
    return (n_greater + 1).to(torch.float64).view(scores.shape)


def _check_fusion(score_tensors: Any, method: Any, rrf_k: Any) -> list[Tensor]:
    if isinstance(score_tensors, Tensor) or not isinstance(score_tensors, Sequence):
        raise InputError("score_tensors must be a list or tuple of [n_layers, width] tensors")
    if not score_tensors:
        raise InputError("score_tensors is empty; give at least one [n_layers, width] tensor")
    tensors = [check_scores(t, f"score_tensors[{i}]") for i, t in enumerate(score_tensors)]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise InputError(
            f"score_tensors have different shapes {[tuple(t.shape) for t in tensors]}; fuse scores of the same model"
        )
    if method not in FUSION_METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {FUSION_METHODS}")
    check_number(rrf_k, "rrf_k", minimum=0, hint="60 is the usual constant", noun="a finite number")
    if method == "borda" and rrf_k != 60:
        raise InputError("rrf_k only applies to method='rrf'; leave it at its default for 'borda'")
    return tensors


def _fuse(tensors: list[Tensor], method: str, rrf_k: float | int) -> Tensor:
    device = tensors[0].device
    ranks = torch.stack([_ranks(t.to(device)) for t in tensors])
    if method == "rrf":
        return (1.0 / (float(rrf_k) + ranks)).sum(0)
    return (tensors[0].numel() - ranks).sum(0)


def fuse_scores(
    score_tensors: Sequence[Float[Tensor, "n_layers width"]],
    *,
    method: str = "rrf",
    rrf_k: float | int = 60,
) -> Float[Tensor, "n_layers width"]:
    """Fuse several score tensors by the ranks of their components (higher fused score = better).

    ``rrf``: reciprocal rank fusion, ``Σ_i 1 / (rrf_k + rank_i)`` (Cormack, Clarke and Büttcher, SIGIR
    2009). ``borda``: Borda count, ``Σ_i (N − rank_i)`` with ``N = n_layers * width``. Rank 1 is the
    highest score of a tensor; tied scores share the best rank of their group.

    Shapes:
        score_tensors: each ``[n_layers, width]``; returns ``[n_layers, width]`` float64.

    Example:
        >>> x, y = torch.tensor([[0.9, 0.8, 0.7, 0.1]]), torch.tensor([[0.0, 0.5, 0.6, 0.2]])
        >>> fuse_scores([x, y], method="borda")
        tensor([[3., 4., 4., 1.]], dtype=torch.float64)
    """
    tensors = _check_fusion(score_tensors, method, rrf_k)
    return _fuse(tensors, method, rrf_k)


def rank_fusion(
    score_tensors: Sequence[Float[Tensor, "n_layers width"]],
    *,
    k: int | None = None,
    fraction: float | int | None = None,
    method: str = "rrf",
    rrf_k: float | int = 60,
    layers: Iterable[int] | None = None,
    kind: Kind = "mlp",
    name: str = "",
) -> ComponentSet:
    """Select the top components of several score tensors fused by rank (``fuse_scores``), e.g. the NIG
    of two collections or two labels.

    Args:
        score_tensors: the ``[n_layers, width]`` tensors to fuse (same shape).
        k: number of components to select (exactly one of ``k`` and ``fraction``; see ``select_top``).
        fraction: share of the candidates to select (exactly one of ``k`` and ``fraction``).
        method: ``"rrf"`` (reciprocal rank fusion) or ``"borda"``.
        rrf_k: the RRF constant (``method="rrf"`` only).
        layers: the candidate layers (default: all); ranks are taken among these layers' components only,
            and they become the set's pool.
        kind: ``"mlp"`` or ``"head"`` (see ``select_top``).
        name: name of the returned set.

    Returns:
        A ``ComponentSet`` (a ``NeuronSet`` for ``kind="mlp"``) whose ``scores`` are the fused scores of
        its members.

    Shapes:
        score_tensors: each ``[n_layers, width]``.

    Example:
        >>> x, y = torch.tensor([[0.9, 0.8, 0.7, 0.1]]), torch.tensor([[0.0, 0.5, 0.6, 0.2]])
        >>> list(rank_fusion([x, y], k=2, name="fused"))  # RRF: 1/61 + 1/63 > 2/62 > 1/61 + 1/64
        [(0, 1), (0, 2)]
    """
    tensors = _check_fusion(score_tensors, method, rrf_k)
    n_layers = tensors[0].shape[0]
    pool = tuple(check_layers(layers, n_layers))
    idx = torch.tensor(pool, dtype=torch.long, device=tensors[0].device)
    fused_pool = _fuse([t.index_select(0, idx.to(t.device)) for t in tensors], method, rrf_k)
    fused = torch.zeros(tensors[0].shape, dtype=torch.float64, device=fused_pool.device)
    fused[idx] = fused_pool  # rows outside the pool are never candidates
    return select_top(fused, k=k, fraction=fraction, largest=True, layers=pool, kind=kind, name=name)


__all__ = ["FUSION_METHODS", "fuse_scores", "random_like", "rank_fusion", "select_top"]
