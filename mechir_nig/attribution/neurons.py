"""Neuron sets: select MLP neurons by score, combine and compare them, and measure overlap against chance.

Neuron Integrated Gradients gives one score per MLP neuron, a ``[n_layers, d_mlp]`` tensor (for example the
mean NIG over the relevant pairs of a collection). The experiments of Vast et al., "Which Neurons Matter in
IR? Applying Integrated Gradients-based Methods to Understand Cross-Encoders" (ICTIR 2024,
arXiv:2406.19309) pick the top-k or top-p% neurons by such a score, intersect and unite the sets found for
labels and collections, prune them, and compare them with random neuron sets of the same size and layer
profile. This module provides those pieces:

* ``NeuronSet``: an immutable set of ``(layer, neuron)`` pairs inside a ``n_layers x d_mlp`` universe, with
  set algebra, Jaccard, masks, hook names for ablation and JSON round trips;
* ``select_top``: top-k / top-fraction selection with deterministic ties;
* ``random_like``: the seeded random baseline (same size, optionally the same layer profile);
* ``intersection`` / ``union`` over many sets; ``fuse_scores`` / ``rank_fusion``: reciprocal rank fusion
  (Cormack et al., SIGIR 2009) or Borda count of several score tensors;
* ``expected_overlap`` / ``overlap_report``: the exact chance level of the intersection and of the
  Jaccard index of two independent uniformly random sets (hypergeometric), and the lift over it.

Example:
    >>> scores = attr.per_neuron().mean(0)                     # [n_layers, d_mlp]
    >>> top = select_top(scores, fraction=0.01, name="relevant")
    >>> overlap_report(top, random_like(top, seed=0))["lift"]  # about 1 for a random set
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, SupportsIndex

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mechir_nig.errors import InputError

FUSION_METHODS = ("rrf", "borda")
"""Rank-fusion methods of ``fuse_scores`` / ``rank_fusion``."""

_TAIL_D2 = 400.0
"""Hypergeometric terms further than ``d = sqrt(_TAIL_D2 * min(a, b))`` from the mean are skipped: by
Hoeffding's bound for sampling without replacement their total mass is below ``2 exp(-2 d² / min(a, b))
= 2 exp(-800)``, far below float64 resolution."""

Pair = tuple[int, int]


def _as_int(value: Any, what: str) -> int:
    """An integer (Python, numpy or 0-d torch), never a bool or a float."""
    if isinstance(value, bool):
        raise InputError(f"{what} must be an integer, got the bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise InputError(f"{what} must be an integer, got {value!r} ({type(value).__name__})") from None


def _universe(n_layers: Any, d_mlp: Any) -> tuple[int, int]:
    n_layers, d_mlp = _as_int(n_layers, "n_layers"), _as_int(d_mlp, "d_mlp")
    if n_layers < 1 or d_mlp < 1:
        raise InputError(f"n_layers and d_mlp must be >= 1, got n_layers={n_layers}, d_mlp={d_mlp}")
    return n_layers, d_mlp


class NeuronSet:
    """An immutable set of MLP neurons ``(layer, neuron)`` of a model with ``n_layers x d_mlp`` neurons.

    Sets combine with ``&``, ``|`` and ``-`` (both sets must share the universe); iteration is sorted by
    ``(layer, neuron)``. Two sets are equal when they have the same universe and the same neurons
    (``name`` and ``scores`` are metadata and do not take part in equality).

    Args:
        pairs: the ``(layer, neuron)`` pairs; duplicates are merged.
        n_layers: number of layers of the universe.
        d_mlp: number of MLP neurons per layer.
        scores: optional ``{(layer, neuron): score}`` of the score that selected the neurons; every key
            must be a member of the set.
        name: a label for reports and plots.

    Shapes:
        to_mask(): ``[n_layers, d_mlp]`` bool.

    Example:
        >>> a = NeuronSet([(0, 1), (2, 3)], n_layers=3, d_mlp=4, name="a")
        >>> b = NeuronSet([(0, 1), (1, 0)], n_layers=3, d_mlp=4)
        >>> len(a & b), a.jaccard(b), a.layer_profile()
        (1, 0.3333333333333333, [1, 0, 1])
    """

    __slots__ = ("_pairs", "_sorted", "n_layers", "d_mlp", "scores", "name")

    def __init__(
        self,
        pairs: Iterable[tuple[SupportsIndex, SupportsIndex]],
        *,
        n_layers: int,
        d_mlp: int,
        scores: Mapping[Pair, float] | None = None,
        name: str = "",
    ) -> None:
        n_layers, d_mlp = _universe(n_layers, d_mlp)
        if not isinstance(name, str):
            raise InputError(f"name must be a str, got {type(name).__name__}")
        if isinstance(pairs, (str, bytes, Tensor)):
            raise InputError(
                "pairs must be an iterable of (layer, neuron) tuples; use NeuronSet.from_mask for a tensor"
            )
        clean: set[Pair] = set()
        for p in pairs:
            try:
                layer, neuron = p
            except (TypeError, ValueError):
                raise InputError(f"each pair must be a (layer, neuron) tuple, got {p!r}") from None
            layer, neuron = _as_int(layer, "layer"), _as_int(neuron, "neuron")
            if not (0 <= layer < n_layers and 0 <= neuron < d_mlp):
                raise InputError(
                    f"neuron ({layer}, {neuron}) is outside the universe of {n_layers} layers x {d_mlp} "
                    "neurons; check n_layers and d_mlp"
                )
            clean.add((layer, neuron))
        frozen_scores: Mapping[Pair, float] | None = None
        if scores is not None:
            if not isinstance(scores, Mapping):
                raise InputError(
                    f"scores must be a mapping (layer, neuron) -> float, got {type(scores).__name__}"
                )
            sc: dict[Pair, float] = {}
            for key, value in scores.items():
                try:
                    layer, neuron = key
                    key = (_as_int(layer, "layer"), _as_int(neuron, "neuron"))
                except (TypeError, ValueError):
                    raise InputError(f"scores keys must be (layer, neuron) tuples, got {key!r}") from None
                if key not in clean:
                    raise InputError(f"scores has a key {key} that is not in the set; score only its members")
                if not isinstance(value, numbers.Real) or isinstance(value, bool):
                    raise InputError(f"scores[{key}] must be a real number, got {value!r}")
                sc[key] = float(value)
            frozen_scores = MappingProxyType(sc)
        object.__setattr__(self, "_pairs", frozenset(clean))
        object.__setattr__(self, "_sorted", tuple(sorted(clean)))
        object.__setattr__(self, "n_layers", n_layers)
        object.__setattr__(self, "d_mlp", d_mlp)
        object.__setattr__(self, "scores", frozen_scores)
        object.__setattr__(self, "name", name)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"NeuronSet is immutable: cannot set {key!r}; build a new NeuronSet instead")

    def __delattr__(self, key: str) -> None:
        raise AttributeError(f"NeuronSet is immutable: cannot delete {key!r}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickle / copy through the JSON form (the set is immutable)
        return (NeuronSet.from_json, (self.to_json(),))

    # -- container protocol -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._pairs)

    def __contains__(self, item: object) -> bool:
        try:
            layer, neuron = item  # type: ignore[misc]
            key = (operator.index(layer), operator.index(neuron))
        except (TypeError, ValueError):
            return False
        return key in self._pairs

    def __iter__(self) -> Iterator[Pair]:
        return iter(self._sorted)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NeuronSet):
            return NotImplemented
        return self.universe == other.universe and self._pairs == other._pairs

    def __hash__(self) -> int:
        return hash((self.n_layers, self.d_mlp, self._pairs))

    def __repr__(self) -> str:
        name = f"name={self.name!r}, " if self.name else ""
        return (
            f"NeuronSet({name}size={len(self)}, universe={self.n_layers}x{self.d_mlp}, "
            f"profile={self.layer_profile()})"
        )

    @property
    def universe(self) -> tuple[int, int]:
        """``(n_layers, d_mlp)``."""
        return (self.n_layers, self.d_mlp)

    @property
    def universe_size(self) -> int:
        """``n_layers * d_mlp``: the number of neurons a set could contain."""
        return self.n_layers * self.d_mlp

    # -- algebra ------------------------------------------------------------------------------------------
    def _check_same(self, other: NeuronSet, op: str) -> None:
        if self.universe != other.universe:
            raise InputError(
                f"cannot compute {op} of neuron sets from different universes "
                f"({self.n_layers}x{self.d_mlp} vs {other.n_layers}x{other.d_mlp}); "
                "combine only sets selected from the same model"
            )

    def _combine(self, other: object, op: str, pairs_fn: Any) -> NeuronSet:
        if not isinstance(other, NeuronSet):
            return NotImplemented
        self._check_same(other, repr(op))
        name = f"({self.name} {op} {other.name})" if self.name and other.name else ""
        return NeuronSet(
            pairs_fn(self._pairs, other._pairs), n_layers=self.n_layers, d_mlp=self.d_mlp, name=name
        )

    def __and__(self, other: NeuronSet) -> NeuronSet:
        return self._combine(other, "&", frozenset.__and__)

    def __or__(self, other: NeuronSet) -> NeuronSet:
        return self._combine(other, "|", frozenset.__or__)

    def __sub__(self, other: NeuronSet) -> NeuronSet:
        return self._combine(other, "-", frozenset.__sub__)

    def overlap(self, other: NeuronSet) -> int:
        """Size of the intersection ``|self ∩ other|`` (same universe required)."""
        self._check_same(_check_set(other, "other"), "the overlap")
        return len(self._pairs & other._pairs)

    def jaccard(self, other: NeuronSet) -> float:
        """Jaccard index ``|A ∩ B| / |A ∪ B|``; 0.0 when both sets are empty (same universe required)."""
        self._check_same(_check_set(other, "other"), "the Jaccard index")
        union = len(self._pairs | other._pairs)
        return len(self._pairs & other._pairs) / union if union else 0.0

    # -- views --------------------------------------------------------------------------------------------
    def to_mask(self) -> Bool[Tensor, "n_layers d_mlp"]:
        """Boolean mask, ``True`` at the members.

        Shapes:
            returns ``[n_layers, d_mlp]`` bool.
        """
        mask = torch.zeros(self.n_layers, self.d_mlp, dtype=torch.bool)
        if self._sorted:
            idx = torch.tensor(self._sorted, dtype=torch.long)
            mask[idx[:, 0], idx[:, 1]] = True
        return mask

    @classmethod
    def from_mask(cls, mask: Bool[Tensor, "n_layers d_mlp"], *, name: str = "") -> NeuronSet:
        """The set of ``True`` entries of a ``[n_layers, d_mlp]`` bool mask (the universe is its shape).

        Example:
            >>> NeuronSet.from_mask(torch.eye(2, dtype=torch.bool)).to_json()["neurons"]
            [[0, 0], [1, 1]]
        """
        if not isinstance(mask, Tensor):
            raise InputError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise InputError(
                f"mask must be a bool tensor, got dtype {mask.dtype}; convert it with mask.bool()"
            )
        if mask.ndim != 2:
            raise InputError(f"mask must be 2-D [n_layers, d_mlp], got shape {tuple(mask.shape)}")
        pairs = [tuple(p) for p in mask.detach().nonzero().cpu().tolist()]
        return cls(pairs, n_layers=mask.shape[0], d_mlp=mask.shape[1], name=name)

    def layer_profile(self) -> list[int]:
        """Number of member neurons in each layer (length ``n_layers``)."""
        counts = [0] * self.n_layers
        for layer, _ in self._pairs:
            counts[layer] += 1
        return counts

    def by_layer(self) -> dict[int, list[int]]:
        """``{layer: sorted neuron indices}`` for the layers that have members, in layer order."""
        out: dict[int, list[int]] = {}
        for layer, neuron in self._sorted:
            out.setdefault(layer, []).append(neuron)
        return out

    def to_hook_names(self) -> dict[str, list[int]]:
        """``{"blocks.{l}.mlp.hook_post": neuron indices}`` for ablating or patching the set through hooks."""
        return {f"blocks.{layer}.mlp.hook_post": neurons for layer, neurons in self.by_layer().items()}

    def to_json(self) -> dict[str, Any]:
        """A plain, JSON-serialisable dict (``json.dumps`` works on it); inverse of ``from_json``."""
        scores = None
        if self.scores is not None:
            scores = [[layer, neuron, self.scores[(layer, neuron)]] for layer, neuron in sorted(self.scores)]
        return {
            "name": self.name,
            "n_layers": self.n_layers,
            "d_mlp": self.d_mlp,
            "neurons": [[layer, neuron] for layer, neuron in self._sorted],
            "scores": scores,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NeuronSet:
        """Rebuild a set from the dict of ``to_json`` (e.g. after ``json.loads``)."""
        if not isinstance(data, Mapping):
            raise InputError(
                f"from_json expects the dict written by NeuronSet.to_json, got {type(data).__name__}"
            )
        required = {"n_layers", "d_mlp", "neurons"}
        allowed = required | {"name", "scores"}
        missing, unknown = required - set(data), set(data) - allowed
        if missing or unknown:
            raise InputError(
                f"not a NeuronSet.to_json dict: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}"
            )
        scores = None
        if data.get("scores") is not None:
            try:
                scores = {(layer, neuron): value for layer, neuron, value in data["scores"]}
            except (TypeError, ValueError):
                raise InputError("scores must be a list of [layer, neuron, score] triples") from None
        try:
            pairs = [tuple(p) for p in data["neurons"]]
        except TypeError:
            raise InputError("neurons must be a list of [layer, neuron] pairs") from None
        return cls(
            pairs,
            n_layers=data["n_layers"],
            d_mlp=data["d_mlp"],
            scores=scores,
            name=data.get("name", "") or "",
        )


def _check_set(value: Any, what: str) -> NeuronSet:
    if not isinstance(value, NeuronSet):
        raise InputError(f"{what} must be a NeuronSet, got {type(value).__name__}")
    return value


def _check_scores(scores: Any, what: str = "scores") -> Tensor:
    """A finite, real 2-D ``[n_layers, d_mlp]`` tensor (detached)."""
    if not isinstance(scores, Tensor):
        raise InputError(
            f"{what} must be a torch.Tensor of shape [n_layers, d_mlp], got {type(scores).__name__}; "
            "wrap it with torch.as_tensor"
        )
    if scores.ndim != 2 or scores.shape[0] < 1 or scores.shape[1] < 1:
        raise InputError(
            f"{what} must be a non-empty 2-D tensor [n_layers, d_mlp], got shape {tuple(scores.shape)}; "
            "average over pairs first (e.g. attr.per_neuron().mean(0))"
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


def _check_size(k: Any, fraction: Any, n_candidates: int) -> int:
    """The number of neurons to select from exactly one of ``k`` or ``fraction``."""
    if (k is None) == (fraction is None):
        raise InputError("give exactly one of k (a count) or fraction (a share in (0, 1])")
    if k is not None:
        k = _as_int(k, "k")
        if not 1 <= k <= n_candidates:
            raise InputError(
                f"k must be between 1 and the number of candidate neurons ({n_candidates}), got {k}"
            )
        return k
    if not isinstance(fraction, numbers.Real) or isinstance(fraction, bool):
        raise InputError(f"fraction must be a real number in (0, 1], got {fraction!r}")
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"fraction must be in (0, 1] (e.g. 0.01 for the top 1%), got {fraction}")
    return max(1, round(fraction * n_candidates))


def _check_layers(layers: Any, n_layers: int) -> list[int]:
    if layers is None:
        return list(range(n_layers))
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise InputError(f"layers must be an iterable of layer indices, got {type(layers).__name__}")
    out = [_as_int(layer, "each layer") for layer in layers]
    if not out:
        raise InputError("layers is empty; give at least one layer index or None for all layers")
    bad = [layer for layer in out if not 0 <= layer < n_layers]
    if bad:
        raise InputError(
            f"layers {bad} are out of range for a model with {n_layers} layers (0..{n_layers - 1})"
        )
    if len(set(out)) != len(out):
        raise InputError(f"layers has duplicates: {out}; list each layer once")
    return sorted(out)


def select_top(
    scores: Float[Tensor, "n_layers d_mlp"],
    *,
    k: int | None = None,
    fraction: float | int | None = None,
    largest: bool = True,
    layers: Iterable[int] | None = None,
    name: str = "",
) -> NeuronSet:
    """The ``k`` (or ``fraction`` of the) neurons with the largest (or smallest) scores.

    Ties are broken deterministically in favour of the lower flat index ``layer * d_mlp + neuron``.

    Args:
        scores: one score per neuron, e.g. the mean NIG over relevant pairs.
        k: number of neurons to select, ``1 <= k <=`` the number of candidates.
        fraction: share of the candidates to select, ``0 < fraction <= 1``; the size is
            ``max(1, round(fraction * n_candidates))`` (Python's round: halves go to the even number).
        largest: select the highest scores (default) or the lowest.
        layers: restrict the candidates to these layers (default: all).
        name: name of the returned set.

    Returns:
        A ``NeuronSet`` whose ``scores`` hold the selected neurons' scores.

    Shapes:
        scores: ``[n_layers, d_mlp]``.

    Example:
        >>> s = torch.tensor([[0.1, 0.9], [0.5, 0.9]])
        >>> list(select_top(s, k=2))
        [(0, 1), (1, 1)]
    """
    scores = _check_scores(scores)
    if not isinstance(largest, bool):
        raise InputError(f"largest must be a bool, got {largest!r}")
    n_layers, d_mlp = scores.shape
    chosen_layers = _check_layers(layers, n_layers)
    size = _check_size(k, fraction, len(chosen_layers) * d_mlp)
    layer_idx = torch.tensor(chosen_layers, dtype=torch.long, device=scores.device)
    candidates = scores.index_select(0, layer_idx).flatten()  # ascending flat index order
    flat = (layer_idx[:, None] * d_mlp + torch.arange(d_mlp, device=scores.device)).flatten()
    order = torch.sort(candidates, descending=largest, stable=True).indices[:size]
    picked = flat[order].cpu().tolist()
    values = candidates[order].cpu().tolist()
    pairs = [divmod(i, d_mlp) for i in picked]
    return NeuronSet(
        pairs, n_layers=n_layers, d_mlp=d_mlp, scores=dict(zip(pairs, values, strict=True)), name=name
    )


def random_like(neuron_set: NeuronSet, *, seed: int, same_layer_profile: bool = True) -> NeuronSet:
    """A uniformly random neuron set of the same size: the random baseline of pruning experiments.

    Args:
        neuron_set: the set to match.
        seed: seed of the ``torch.Generator``; the same seed gives the same set.
        same_layer_profile: draw the same number of neurons in each layer as ``neuron_set`` (default);
            otherwise draw uniformly from the whole universe.

    Example:
        >>> r = random_like(top, seed=0)
        >>> len(r) == len(top) and r.layer_profile() == top.layer_profile()
        True
    """
    neuron_set = _check_set(neuron_set, "neuron_set")
    seed = _as_int(seed, "seed")
    if not isinstance(same_layer_profile, bool):
        raise InputError(f"same_layer_profile must be a bool, got {same_layer_profile!r}")
    gen = torch.Generator().manual_seed(seed)
    d_mlp = neuron_set.d_mlp
    pairs: list[Pair] = []
    if same_layer_profile:
        for layer, count in enumerate(neuron_set.layer_profile()):
            if count:
                pairs.extend((layer, n) for n in torch.randperm(d_mlp, generator=gen)[:count].tolist())
    else:
        flat = torch.randperm(neuron_set.universe_size, generator=gen)[: len(neuron_set)].tolist()
        pairs = [divmod(i, d_mlp) for i in flat]
    label = neuron_set.name or "set"
    return NeuronSet(pairs, n_layers=neuron_set.n_layers, d_mlp=d_mlp, name=f"random({label}, seed={seed})")


def _check_sets(sets: Any) -> list[NeuronSet]:
    if isinstance(sets, NeuronSet) or not isinstance(sets, Iterable):
        raise InputError("sets must be an iterable of NeuronSets (e.g. a list), not a single set")
    out = [_check_set(s, "every element of sets") for s in sets]
    if not out:
        raise InputError("sets is empty; give at least one NeuronSet")
    universes = {s.universe for s in out}
    if len(universes) > 1:
        raise InputError(
            f"the sets come from different universes {sorted(universes)}; combine only sets of the same model"
        )
    return out


def intersection(sets: Iterable[NeuronSet], *, name: str = "") -> NeuronSet:
    """Neurons common to every set (e.g. to all labels or collections).

    Example:
        >>> intersection([top_msmarco, top_trec, top_vaswani], name="shared")
    """
    items = _check_sets(sets)
    pairs = frozenset.intersection(*(s._pairs for s in items))
    return NeuronSet(pairs, n_layers=items[0].n_layers, d_mlp=items[0].d_mlp, name=name)


def union(sets: Iterable[NeuronSet], *, name: str = "") -> NeuronSet:
    """Neurons in at least one set.

    Example:
        >>> union([top_relevant, top_non_relevant], name="any")
    """
    items = _check_sets(sets)
    pairs = frozenset.union(*(s._pairs for s in items))
    return NeuronSet(pairs, n_layers=items[0].n_layers, d_mlp=items[0].d_mlp, name=name)


def _ranks(scores: Tensor) -> Tensor:
    """Competition ranks in float64, 1 = highest score; tied scores share the best rank of their group."""
    flat = scores.flatten().to(torch.float64)
    ascending = torch.sort(flat).values
    n_greater = flat.numel() - torch.searchsorted(ascending, flat, right=True)
    return (n_greater + 1).to(torch.float64).view(scores.shape)


def fuse_scores(
    score_tensors: Sequence[Float[Tensor, "n_layers d_mlp"]],
    *,
    method: str = "rrf",
    rrf_k: float | int = 60,
) -> Float[Tensor, "n_layers d_mlp"]:
    """Fuse several score tensors by the ranks of their neurons (higher fused score = better).

    ``rrf``: reciprocal rank fusion, ``Σ_i 1 / (rrf_k + rank_i)`` (Cormack, Clarke and Büttcher, SIGIR
    2009). ``borda``: Borda count, ``Σ_i (N − rank_i)`` with ``N = n_layers * d_mlp``. Rank 1 is the
    highest score of a tensor; tied scores share the best rank of their group.

    Shapes:
        score_tensors: each ``[n_layers, d_mlp]``; returns ``[n_layers, d_mlp]`` float64.

    Example:
        >>> fuse_scores([nig_msmarco, nig_trec], method="rrf").shape
        torch.Size([6, 1536])
    """
    if isinstance(score_tensors, Tensor) or not isinstance(score_tensors, Sequence):
        raise InputError("score_tensors must be a list or tuple of [n_layers, d_mlp] tensors")
    if not score_tensors:
        raise InputError("score_tensors is empty; give at least one [n_layers, d_mlp] tensor")
    tensors = [_check_scores(t, f"score_tensors[{i}]") for i, t in enumerate(score_tensors)]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise InputError(
            f"score_tensors have different shapes {[tuple(t.shape) for t in tensors]}; "
            "fuse scores of the same model"
        )
    if method not in FUSION_METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {FUSION_METHODS}")
    if (
        not isinstance(rrf_k, numbers.Real)
        or isinstance(rrf_k, bool)
        or not math.isfinite(rrf_k)
        or rrf_k < 0
    ):
        raise InputError(f"rrf_k must be a finite number >= 0 (60 is the usual constant), got {rrf_k!r}")
    if method == "borda" and rrf_k != 60:
        raise InputError("rrf_k only applies to method='rrf'; leave it at its default for 'borda'")
    device = tensors[0].device
    ranks = torch.stack([_ranks(t.to(device)) for t in tensors])
    if method == "rrf":
        return (1.0 / (float(rrf_k) + ranks)).sum(0)
    return (tensors[0].numel() - ranks).sum(0)


def rank_fusion(
    score_tensors: Sequence[Float[Tensor, "n_layers d_mlp"]],
    *,
    k: int | None = None,
    fraction: float | int | None = None,
    method: str = "rrf",
    rrf_k: float | int = 60,
    name: str = "",
) -> NeuronSet:
    """Select the top neurons of several score tensors fused by rank (``fuse_scores``), e.g. the NIG of
    two collections or two labels.

    Args:
        score_tensors: the ``[n_layers, d_mlp]`` tensors to fuse (same shape).
        k, fraction: size of the selection, exactly one (see ``select_top``).
        method: ``"rrf"`` (reciprocal rank fusion) or ``"borda"``.
        rrf_k: the RRF constant (``method="rrf"`` only).
        name: name of the returned set.

    Returns:
        A ``NeuronSet`` whose ``scores`` are the fused scores of its members.

    Shapes:
        score_tensors: each ``[n_layers, d_mlp]``.

    Example:
        >>> shared = rank_fusion([nig_msmarco, nig_trec], fraction=0.01, name="fused")
    """
    fused = fuse_scores(score_tensors, method=method, rrf_k=rrf_k)
    return select_top(fused, k=k, fraction=fraction, largest=True, name=name)


def expected_overlap(size_a: int, size_b: int, universe: int) -> dict[str, float]:
    """Chance level of the overlap of two independent, uniformly random sets of sizes ``a`` and ``b``
    drawn from ``universe`` elements.

    The intersection size ``X`` is hypergeometric, ``P(X = x) = C(a, x) C(N − a, b − x) / C(N, b)``, so
    ``E[X] = a b / N`` and the expected Jaccard index is the exact sum ``Σ_x P(X = x) · x / (a + b − x)``
    over the support ``max(0, a + b − N) <= x <= min(a, b)``. The log-pmf is built in float64 from the
    ratio ``P(x + 1) / P(x) = (a − x)(b − x) / ((x + 1)(N − a − b + x + 1))`` by a cumulative sum of logs
    (stable: no differences of huge ``lgamma`` values, relative error ~1e-13 instead of ~1e-9 at
    ``N = 10^6``), exponentiated after subtracting its maximum and normalised by its sum. Terms further
    than ``sqrt(400 min(a, b))`` from the mean are skipped (Hoeffding's bound puts their total mass below
    ``2 e^-800``), so ``N`` up to ``10^6`` and sizes up to ``10^5`` take well under a millisecond. The
    Jaccard index of two empty sets is taken as 0.

    Returns:
        ``{"intersection": a b / N, "union": a + b − a b / N, "jaccard": E[|A ∩ B| / |A ∪ B|]}``.

    Example:
        >>> expected_overlap(4, 5, 12)["intersection"]
        1.6666666666666667
    """
    a, b, n = _as_int(size_a, "size_a"), _as_int(size_b, "size_b"), _as_int(universe, "universe")
    if n < 1:
        raise InputError(f"universe must be >= 1 (n_layers * d_mlp), got {n}")
    if not (0 <= a <= n and 0 <= b <= n):
        raise InputError(f"set sizes must be between 0 and the universe size {n}, got size_a={a}, size_b={b}")
    mean = a * b / n
    out = {"intersection": mean, "union": a + b - mean}
    if a == 0 or b == 0:
        out["jaccard"] = 0.0
        return out
    lo, hi = max(0, a + b - n), min(a, b)
    half = math.ceil(math.sqrt(_TAIL_D2 * min(a, b))) + 1
    lo, hi = max(lo, math.floor(mean) - half), min(hi, math.ceil(mean) + half)
    step = np.arange(lo, hi, dtype=np.float64)  # log P(x + 1) − log P(x) for x = lo .. hi − 1
    log_ratio = np.log(a - step) + np.log(b - step) - np.log(step + 1) - np.log(n - a - b + step + 1)
    logw = np.concatenate(([0.0], np.cumsum(log_ratio)))
    w = np.exp(logw - logw.max())
    x = np.arange(lo, hi + 1, dtype=np.float64)
    out["jaccard"] = float(np.dot(w, x / (a + b - x)) / w.sum())
    return out


def overlap_report(a: NeuronSet, b: NeuronSet) -> dict[str, Any]:
    """Overlap of two neuron sets and its chance level (``expected_overlap``) in the same universe.

    Returns:
        ``name_a``, ``name_b``, ``universe`` (``n_layers * d_mlp``), ``size_a``, ``size_b``,
        ``intersection``, ``union``, ``jaccard``, ``expected_intersection``, ``expected_jaccard`` and
        ``lift = jaccard / expected_jaccard`` (NaN when a set is empty: the chance level is 0).

    Example:
        >>> overlap_report(top_relevant, top_non_relevant)["lift"]
    """
    a, b = _check_set(a, "a"), _check_set(b, "b")
    inter = a.overlap(b)  # checks the universe
    chance = expected_overlap(len(a), len(b), a.universe_size)
    jac = a.jaccard(b)
    return {
        "name_a": a.name,
        "name_b": b.name,
        "universe": a.universe_size,
        "size_a": len(a),
        "size_b": len(b),
        "intersection": inter,
        "union": len(a) + len(b) - inter,
        "jaccard": jac,
        "expected_intersection": chance["intersection"],
        "expected_jaccard": chance["jaccard"],
        "lift": jac / chance["jaccard"] if chance["jaccard"] > 0 else math.nan,
    }


__all__ = [
    "FUSION_METHODS",
    "NeuronSet",
    "expected_overlap",
    "fuse_scores",
    "intersection",
    "overlap_report",
    "random_like",
    "rank_fusion",
    "select_top",
    "union",
]
