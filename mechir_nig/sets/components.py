"""Component sets keyed by site: MLP neurons or attention heads of an encoder, with their candidate pool.

A ``ComponentSet`` is an immutable set of ``(layer, index)`` pairs of one ``kind`` of component inside a
universe of ``n_layers x width`` components:

========  ==============================  ==========  ===========
kind      site (TransformerLens hook)     index       width
========  ==============================  ==========  ===========
``mlp``   ``blocks.{l}.mlp.hook_post``    neuron      ``d_mlp``
``head``  ``blocks.{l}.attn.hook_z``      head        ``n_heads``
any site  ``mechir_nig.sites`` template   its unit    ``d_mlp``, ``n_heads`` or ``n_pos``
========  ==============================  ==========  ===========

A set of another site of :mod:`mechir_nig.sites` (``kind="resid_pre"``: ``(layer, position)`` pairs in a
``n_layers x n_pos`` universe) is what ``ablate`` takes to write residual-stream positions; its JSON
records ``"kind"``.

``NeuronSet`` is the MLP case, with the constructor ``NeuronSet(pairs, n_layers=..., d_mlp=...)`` and the
JSON format of earlier releases. Every set also records its **candidate pool**: the layers it was selected
from (``pool_layers``, all layers unless ``select_top(..., layers=...)`` restricted them). Chance levels and
random baselines are computed over the pool (``mechir_nig.sets.chance``), not over the whole model.

Positions are not part of a set: a set names model components (attribution scores are summed over
tokens); the positions an intervention acts on are an argument of the intervention.

Example:
    >>> a = NeuronSet([(0, 1), (2, 3)], n_layers=3, d_mlp=4, name="a")
    >>> heads = ComponentSet([(1, 0), (1, 3)], kind="head", n_layers=3, width=4)
    >>> a.to_hook_names(), heads.to_hook_names()
    ({'blocks.0.mlp.hook_post': [1], 'blocks.2.mlp.hook_post': [3]}, {'blocks.1.attn.hook_z': [0, 3]})
"""

from __future__ import annotations

import functools
import numbers
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Literal, SupportsFloat, SupportsIndex, cast

import numpy as np
import torch
from jaxtyping import Bool
from torch import Tensor

from mechir_nig._validate import as_int, check_layers
from mechir_nig.errors import InputError
from mechir_nig.sites import SITES as SITE_TABLE
from mechir_nig.sites import site

Kind = Literal["mlp", "head"]
KINDS: tuple[str, ...] = ("mlp", "head")
"""The kinds of component attribution selects (``mlp`` = site ``mlp_post``, ``head`` = site ``z``)."""

SITE_KINDS: tuple[str, ...] = KINDS + tuple(n for n in SITE_TABLE if site(n).name not in ("mlp_post", "z"))
"""Every kind a set can hold: ``KINDS`` and the other sites of :mod:`mechir_nig.sites` (a set of
``resid_pre`` positions, of ``mlp_pre`` neurons ...); for position sites the width is the positions."""

SITES: Mapping[str, str] = MappingProxyType({kind: site(kind).template for kind in SITE_KINDS})
"""Hook name template of each kind (``.format(layer=l)``, from :mod:`mechir_nig.sites`, where ``mlp`` and
``head`` name ``mlp_post`` and ``z``); the set's index is the site's unit axis."""


def _width_name(kind: str) -> str:
    return site(kind).width or "n_pos"


# singular noun, plural noun, name of the width (the unit axis of the hook), per kind
_NOUN: Mapping[str, tuple[str, str, str]] = MappingProxyType(
    {k: (site(k).unit, site(k).unit + "s", _width_name(k)) for k in SITE_KINDS}
)
_JSON_KEYS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {"mlp": ("d_mlp", "neurons"), "head": ("n_heads", "heads")}
    | {k: (_width_name(k), "members") for k in SITE_KINDS[2:]}
)  # (width key, members key) of to_json, per kind (the site kinds also write "kind")

Pair = tuple[int, int]


# -- validation helpers (shared by the package) ----------------------------------------------------------
def check_kind(kind: Any) -> Kind:
    """``kind`` if it is one of ``KINDS``."""
    if kind not in KINDS:
        raise InputError(
            f"kind must be one of {KINDS} ('mlp' for MLP neurons, 'head' for heads), got {kind!r}"
        )
    return cast(Kind, kind)


def check_site_kind(kind: Any) -> str:
    """``kind`` if it is one of ``SITE_KINDS`` (``KINDS`` or another site of :mod:`mechir_nig.sites`)."""
    if kind not in SITE_KINDS:
        raise InputError(
            f"kind must be one of {KINDS} ('mlp' for MLP neurons, 'head' for heads), or a site of "
            f"{SITE_KINDS[2:]}, got {kind!r}"
        )
    return str(kind)


def noun(kind: str, plural: bool = True) -> str:
    """``"neurons"`` / ``"heads"`` (or the singular) for messages."""
    return _NOUN[kind][1 if plural else 0]


def _universe(kind: str, n_layers: Any, width: Any) -> tuple[int, int]:
    width_name = _NOUN[kind][2]
    n_layers, width = as_int(n_layers, "n_layers"), as_int(width, width_name)
    if n_layers < 1 or width < 1:
        raise InputError(
            f"n_layers and {width_name} must be >= 1, got n_layers={n_layers}, {width_name}={width}"
        )
    return n_layers, width


def _split_pairs(pairs: Iterable[Any], one: str, what: str) -> tuple[list[int], list[int]]:
    """Layers and indices of ``(layer, index)`` pairs of integers (Python, numpy or 0-d torch)."""
    layers: list[int] = []
    index: list[int] = []
    for p in pairs:  # the input boundary; internal constructors build from arrays (ComponentSet._build)
        try:
            a, b = p
        except (TypeError, ValueError):
            raise InputError(f"{what} (layer, {one}) tuple, got {p!r}") from None
        layers.append(a if type(a) is int else as_int(a, "layer"))
        index.append(b if type(b) is int else as_int(b, one))
    return layers, index


def _member(sorted_flat: np.ndarray, key: int) -> bool:
    pos = int(np.searchsorted(sorted_flat, key))
    return pos < len(sorted_flat) and int(sorted_flat[pos]) == key


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _scores_of(
    scores: Any, members: np.ndarray, kind: str, n_layers: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(sorted flat keys, float64 values)`` of a ``{(layer, index): score}`` mapping over members."""
    one = noun(kind, plural=False)
    if not isinstance(scores, Mapping):
        raise InputError(f"scores must be a mapping (layer, {one}) -> float, got {type(scores).__name__}")
    layers, index = _split_pairs(scores.keys(), one, "each key of scores must be a")
    values = list(scores.values())
    for i, v in enumerate(values):  # the input boundary, as for the pairs
        if type(v) is not float and (not isinstance(v, numbers.Real) or isinstance(v, bool)):
            raise InputError(f"scores[{(layers[i], index[i])}] must be a real number, got {v!r}")
    lay = np.asarray([min(max(v, -1), n_layers) for v in layers], dtype=np.int64)  # clipped: no overflow
    idx = np.asarray([min(max(v, -1), width) for v in index], dtype=np.int64)
    keys = lay * width + idx
    ok = (lay >= 0) & (lay < n_layers) & (idx >= 0) & (idx < width) & np.isin(keys, members)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise InputError(
            f"scores has a key {(layers[i], index[i])} that is not in the set; score only its members"
        )
    keys, first = np.unique(keys, return_index=True)
    return keys, np.asarray(values, dtype=np.float64)[first]


class ComponentSet:
    """An immutable set of components ``(layer, index)`` of one kind, in a ``n_layers x width`` universe.

    Sets of the same kind and universe combine with ``&``, ``|`` and ``-``; iteration is sorted by
    ``(layer, index)``. Two sets are equal when they have the same kind, universe and members (``name``,
    ``scores`` and ``pool_layers`` are metadata and do not take part in equality). Every library function
    returns a ``NeuronSet`` for MLP sets.

    The candidate pool ``pool_layers`` is the layers the set was selected from; it must contain every
    member. The result of ``&``, ``|``, ``-``, ``intersection`` and ``union`` has the union of its operands'
    pools: the common pool when they share one, and always a pool that holds every member.

    Args:
        pairs: the ``(layer, index)`` pairs (index = neuron for ``mlp``, head for ``head``); duplicates
            are merged.
        kind: ``"mlp"`` (site ``blocks.{l}.mlp.hook_post``) or ``"head"`` (site ``blocks.{l}.attn.hook_z``).
        n_layers: number of layers of the universe.
        width: components per layer (``d_mlp`` or ``n_heads``).
        scores: optional ``{(layer, index): score}`` of the score that selected the members; every key
            must be a member.
        name: a label for reports and plots.
        pool_layers: the layers the set was selected from (default: all layers).

    Shapes:
        to_mask(), pool_mask(): ``[n_layers, width]`` bool.

    Example:
        >>> h = ComponentSet([(0, 1), (2, 3)], kind="head", n_layers=3, width=4, pool_layers=[0, 2])
        >>> h.layer_profile(), h.pool_size, h.to_hook_names()["blocks.2.attn.hook_z"]
        ([1, 0, 1], 8, [3])
    """

    __slots__ = ("_flat", "_scores", "kind", "n_layers", "width", "pool_layers", "name")
    _FIXED_KIND: ClassVar[str | None] = None  # set by subclasses that hold one kind only

    _flat: np.ndarray  # sorted distinct flat indices layer * width + index, int64, read-only
    _scores: (
        tuple[np.ndarray, np.ndarray] | None
    )  # (sorted flat indices of the scored members, float64 scores)
    kind: str
    n_layers: int
    width: int
    pool_layers: tuple[int, ...]
    name: str

    def __init__(
        self,
        pairs: Iterable[tuple[SupportsIndex, SupportsIndex]],
        *,
        kind: str,
        n_layers: int,
        width: int,
        scores: Mapping[tuple[SupportsIndex, SupportsIndex], SupportsFloat] | None = None,
        name: str = "",
        pool_layers: Iterable[SupportsIndex] | None = None,
    ) -> None:
        kind = check_site_kind(kind)
        n_layers, width = _universe(kind, n_layers, width)
        if not isinstance(name, str):
            raise InputError(f"name must be a str, got {type(name).__name__}")
        one = noun(kind, plural=False)
        if isinstance(pairs, (str, bytes, Tensor, Mapping)):
            raise InputError(
                f"pairs must be an iterable of (layer, {one}) tuples; use {type(self).__name__}.from_mask "
                "for a bool tensor"
            )
        layer_idx, index_idx = _split_pairs(pairs, one, "each pair must be a")
        flat = self._flat_of(layer_idx, index_idx, kind, n_layers, width)
        members = np.unique(flat)
        scored = None if scores is None else _scores_of(scores, members, kind, n_layers, width)
        pool = tuple(check_layers(pool_layers, n_layers, "pool_layers"))
        self._set_state(kind, n_layers, width, members, scored, name, pool)

    # -- construction helpers -----------------------------------------------------------------------------
    @staticmethod
    def _flat_of(layers: list[int], index: list[int], kind: str, n_layers: int, width: int) -> np.ndarray:
        """Flat indices ``layer * width + index``, after checking every pair is inside the universe."""
        try:
            lay, idx = np.asarray(layers, dtype=np.int64), np.asarray(index, dtype=np.int64)
        except OverflowError:  # beyond int64: certainly outside; clip to find which pair
            lay = np.asarray([min(max(v, -1), n_layers) for v in layers], dtype=np.int64)
            idx = np.asarray([min(max(v, -1), width) for v in index], dtype=np.int64)
        outside = (lay < 0) | (lay >= n_layers) | (idx < 0) | (idx >= width)
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            raise InputError(
                f"{noun(kind, plural=False)} ({layers[i]}, {index[i]}) is outside the universe of {n_layers} "
                f"layers x {width} {noun(kind)}; check n_layers and {_NOUN[kind][2]}"
            )
        return lay * width + idx

    def _set_state(
        self,
        kind: str,
        n_layers: int,
        width: int,
        flat: np.ndarray,
        scored: tuple[np.ndarray, np.ndarray] | None,
        name: str,
        pool: tuple[int, ...],
    ) -> None:
        if self._FIXED_KIND is not None and kind != self._FIXED_KIND:
            raise InputError(
                f"a {type(self).__name__} holds {noun(self._FIXED_KIND)} only, got kind {kind!r}; "
                "use ComponentSet for other kinds"
            )
        if len(flat):
            outside = ~np.isin(flat // width, np.asarray(pool, dtype=np.int64))
            if outside.any():
                layer, index = divmod(int(flat[outside][0]), width)
                raise InputError(
                    f"{noun(kind, plural=False)} ({layer}, {index}) is in layer {layer}, outside pool_layers "
                    f"{list(pool)}; the pool must contain every member (leave pool_layers=None for all layers)"
                )
        s = object.__setattr__
        s(self, "_flat", _readonly(flat))
        s(self, "_scores", None if scored is None else (_readonly(scored[0]), _readonly(scored[1])))
        s(self, "kind", kind)
        s(self, "n_layers", n_layers)
        s(self, "width", width)
        s(self, "pool_layers", pool)
        s(self, "name", name)

    @staticmethod
    def _build(
        kind: str,
        n_layers: int,
        width: int,
        flat: np.ndarray,
        *,
        values: np.ndarray | None = None,
        name: str = "",
        pool: tuple[int, ...] | None = None,
    ) -> ComponentSet:
        """Internal fast constructor from sorted distinct flat indices (no per-member Python loop);
        ``values`` are the members' scores, aligned with ``flat``."""
        cls = NeuronSet if kind == "mlp" else ComponentSet
        out = object.__new__(cls)
        flat = np.ascontiguousarray(flat, dtype=np.int64)
        scored = None if values is None else (flat, np.ascontiguousarray(values, dtype=np.float64))
        out._set_state(
            kind, n_layers, width, flat, scored, name, tuple(range(n_layers)) if pool is None else pool
        )
        return out

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(
            f"{type(self).__name__} is immutable: cannot set {key!r}; build a new {type(self).__name__} instead"
        )

    def __delattr__(self, key: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {key!r}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickle / copy through the JSON form (the set is immutable)
        return (ComponentSet.from_json, (self.to_json(),))

    # -- container protocol -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._flat)

    def __contains__(self, item: object) -> bool:
        try:
            a, b = cast(Any, item)
            layer, index = operator.index(a), operator.index(b)
        except (TypeError, ValueError):
            return False
        if not (0 <= layer < self.n_layers and 0 <= index < self.width):
            return False
        return _member(self._flat, layer * self.width + index)

    def __iter__(self) -> Iterator[Pair]:
        layers, index = np.divmod(self._flat, self.width)
        return zip(layers.tolist(), index.tolist(), strict=True)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ComponentSet):
            return NotImplemented
        return (
            self.kind == other.kind
            and self.universe == other.universe
            and np.array_equal(self._flat, other._flat)
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.n_layers, self.width, self._flat.tobytes()))

    def __repr__(self) -> str:
        parts = [] if self._FIXED_KIND is not None else [f"kind={self.kind!r}"]
        if self.name:
            parts.append(f"name={self.name!r}")
        parts += [
            f"size={len(self)}",
            f"universe={self.n_layers}x{self.width}",
            f"profile={self.layer_profile()}",
        ]
        if not self.full_pool:
            parts.append(f"pool_layers={list(self.pool_layers)}")
        return f"{type(self).__name__}({', '.join(parts)})"

    # -- properties ---------------------------------------------------------------------------------------
    @property
    def universe(self) -> tuple[int, int]:
        """``(n_layers, width)``."""
        return (self.n_layers, self.width)

    @property
    def universe_size(self) -> int:
        """``n_layers * width``: the number of components of this kind in the model."""
        return self.n_layers * self.width

    @property
    def pool_size(self) -> int:
        """``len(pool_layers) * width``: the number of candidates the set was selected from."""
        return len(self.pool_layers) * self.width

    @property
    def full_pool(self) -> bool:
        """Whether the pool is every layer of the model."""
        return len(self.pool_layers) == self.n_layers

    @property
    def scores(self) -> Mapping[Pair, float] | None:
        """Read-only ``{(layer, index): score}`` of the score that selected the members, or ``None``."""
        if self._scores is None:
            return None
        flat, values = self._scores
        layers, index = np.divmod(flat, self.width)
        return MappingProxyType(dict(zip(zip(layers.tolist(), index.tolist()), values.tolist(), strict=True)))

    @property
    def site(self) -> str:
        """Hook name template of the kind, e.g. ``"blocks.{layer}.mlp.hook_post"``."""
        return SITES[self.kind]

    # -- algebra ------------------------------------------------------------------------------------------
    def _check_same(self, other: ComponentSet, op: str) -> None:
        if self.kind != other.kind:
            raise InputError(
                f"cannot compute {op} of a set of {noun(self.kind)} and a set of {noun(other.kind)}; "
                "combine only sets of the same kind"
            )
        if self.universe != other.universe:
            raise InputError(
                f"cannot compute {op} of {noun(self.kind, plural=False)} sets from different universes "
                f"({self.n_layers}x{self.width} vs {other.n_layers}x{other.width}); "
                "combine only sets selected from the same model"
            )

    def _combine(self, other: object, op: str) -> ComponentSet:
        if not isinstance(other, ComponentSet):
            return NotImplemented
        self._check_same(other, repr(op))
        a, b = self._flat, other._flat
        if op == "&":
            flat = np.intersect1d(a, b, assume_unique=True)
        elif op == "|":
            flat = np.union1d(a, b)
        else:
            flat = np.setdiff1d(a, b, assume_unique=True)  # keeps a's (sorted) order
        name = f"({self.name} {op} {other.name})" if self.name and other.name else ""
        pool = _pool_union((self, other))
        return ComponentSet._build(self.kind, self.n_layers, self.width, flat, name=name, pool=pool)

    def __and__(self, other: ComponentSet) -> ComponentSet:
        return self._combine(other, "&")

    def __or__(self, other: ComponentSet) -> ComponentSet:
        return self._combine(other, "|")

    def __sub__(self, other: ComponentSet) -> ComponentSet:
        return self._combine(other, "-")

    def _other(self, other: Any, op: str) -> ComponentSet:
        if not isinstance(other, ComponentSet):
            raise InputError(f"other must be a {type(self).__name__}, got {type(other).__name__}")
        self._check_same(other, op)
        return other

    def overlap(self, other: ComponentSet) -> int:
        """Size of the intersection ``|self ∩ other|`` (same kind and universe required)."""
        other = self._other(other, "the overlap")
        return len(np.intersect1d(self._flat, other._flat, assume_unique=True))

    def jaccard(self, other: ComponentSet) -> float:
        """Jaccard index ``|A ∩ B| / |A ∪ B|``; 0.0 when both sets are empty (same kind and universe)."""
        other = self._other(other, "the Jaccard index")
        inter = len(np.intersect1d(self._flat, other._flat, assume_unique=True))
        union = len(self) + len(other) - inter
        return inter / union if union else 0.0

    # -- views --------------------------------------------------------------------------------------------
    def to_mask(self) -> Bool[Tensor, "n_layers width"]:
        """Boolean mask, ``True`` at the members.

        Shapes:
            returns ``[n_layers, width]`` bool.
        """
        mask = torch.zeros(self.universe_size, dtype=torch.bool)
        mask[torch.from_numpy(self._flat.copy())] = True
        return mask.view(self.n_layers, self.width)

    def pool_mask(self) -> Bool[Tensor, "n_layers width"]:
        """Boolean mask of the candidate pool, ``True`` on every component of ``pool_layers``.

        Shapes:
            returns ``[n_layers, width]`` bool.
        """
        mask = torch.zeros(self.n_layers, self.width, dtype=torch.bool)
        mask[list(self.pool_layers)] = True
        return mask

    @classmethod
    def from_mask(
        cls,
        mask: Bool[Tensor, "n_layers width"],
        *,
        kind: str | None = None,
        name: str = "",
        pool_layers: Iterable[SupportsIndex] | None = None,
    ) -> ComponentSet:
        """The set of ``True`` entries of a ``[n_layers, width]`` bool mask (the universe is its shape).

        Args:
            mask: ``True`` at the members.
            kind: ``"mlp"`` or ``"head"``; required for ``ComponentSet``, implied for ``NeuronSet``.
            name: name of the set.
            pool_layers: the layers the set was selected from (default: all).

        Shapes:
            mask: ``[n_layers, width]`` bool.

        Example:
            >>> NeuronSet.from_mask(torch.eye(2, dtype=torch.bool)).to_json()["neurons"]
            [[0, 0], [1, 1]]
        """
        kind = cls._kind_for(kind)
        if not isinstance(mask, Tensor):
            raise InputError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise InputError(
                f"mask must be a bool tensor, got dtype {mask.dtype}; convert it with mask.bool()"
            )
        if mask.ndim != 2:
            raise InputError(f"mask must be 2-D [n_layers, {_NOUN[kind][2]}], got shape {tuple(mask.shape)}")
        n_layers, width = _universe(kind, mask.shape[0], mask.shape[1])
        if not isinstance(name, str):
            raise InputError(f"name must be a str, got {type(name).__name__}")
        flat: np.ndarray = mask.detach().flatten().nonzero().flatten().cpu().numpy().astype(np.int64)
        pool = tuple(check_layers(pool_layers, n_layers, "pool_layers"))
        return ComponentSet._build(kind, n_layers, width, flat, name=name, pool=pool)

    @classmethod
    def _kind_for(cls, kind: Any) -> str:
        if cls._FIXED_KIND is not None:
            if kind is not None and kind != cls._FIXED_KIND:
                raise InputError(
                    f"{cls.__name__} holds {noun(cls._FIXED_KIND)} only, got kind={kind!r}; "
                    "use ComponentSet for other kinds"
                )
            return check_kind(cls._FIXED_KIND)
        if kind is None:
            raise InputError(f"give kind= (one of {KINDS}) to build a ComponentSet")
        return check_site_kind(kind)

    def layer_profile(self) -> list[int]:
        """Number of members in each layer (length ``n_layers``)."""
        return np.bincount(self._flat // self.width, minlength=self.n_layers).tolist()

    def by_layer(self) -> dict[int, list[int]]:
        """``{layer: sorted indices}`` for the layers that have members, in layer order."""
        layers, index = np.divmod(self._flat, self.width)
        present, starts = np.unique(layers, return_index=True)
        chunks = np.split(index, starts[1:])
        return {int(layer): chunk.tolist() for layer, chunk in zip(present, chunks, strict=True)}

    def to_hook_names(self) -> dict[str, list[int]]:
        """``{hook name: indices}`` for ablating or patching the set through hooks.

        ``{"blocks.{l}.mlp.hook_post": neurons}`` for MLP sets (index on ``d_mlp``) and
        ``{"blocks.{l}.attn.hook_z": heads}`` for head sets (index on the ``n_heads`` axis of
        ``[batch, pos, n_heads, d_head]``).
        """
        return {self.site.format(layer=layer): index for layer, index in self.by_layer().items()}

    # -- JSON ---------------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """A plain, JSON-serialisable dict (``json.dumps`` works on it); inverse of ``from_json``.

        MLP sets: ``{"name", "n_layers", "d_mlp", "neurons": [[layer, neuron], ...], "scores":
        [[layer, neuron, score], ...] or null, "pool_layers": [...]}``; head sets use ``"n_heads"`` and
        ``"heads"`` instead of ``"d_mlp"`` and ``"neurons"``.
        """
        width_key, members_key = _JSON_KEYS[self.kind]
        members = np.stack(np.divmod(self._flat, self.width), axis=1).tolist()
        scores = None
        if self._scores is not None:
            flat, values = self._scores
            layers, index = np.divmod(flat, self.width)
            scores = [
                [lay, i, v]
                for lay, i, v in zip(layers.tolist(), index.tolist(), values.tolist(), strict=True)
            ]
        return ({"kind": self.kind} if self.kind not in KINDS else {}) | {
            "name": self.name,
            "n_layers": self.n_layers,
            width_key: self.width,
            members_key: members,
            "scores": scores,
            "pool_layers": list(self.pool_layers),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ComponentSet:
        """Rebuild a set from the dict of ``to_json`` (e.g. after ``json.loads``).

        The kind is read from the keys (``d_mlp``/``neurons`` or ``n_heads``/``heads``). Files written
        before pools were recorded (no ``pool_layers``) load with every layer as the pool.

        Example:
            >>> NeuronSet.from_json({"name": "", "n_layers": 2, "d_mlp": 3, "neurons": [[1, 2]], "scores": None})
            NeuronSet(size=1, universe=2x3, profile=[0, 1])
        """
        if not isinstance(data, Mapping):
            raise InputError(
                f"from_json expects the dict written by {cls.__name__}.to_json, got {type(data).__name__}"
            )
        found = [data["kind"]] if "kind" in data else [k for k in KINDS if set(_JSON_KEYS[k]) & set(data)]
        if len(found) != 1:
            raise InputError(
                f"not a {cls.__name__}.to_json dict: it needs either 'd_mlp' and 'neurons' (MLP neurons) or "
                f"'n_heads' and 'heads' (attention heads), got keys {sorted(data)}"
            )
        kind = check_site_kind(found[0])
        if cls._FIXED_KIND is not None and kind != cls._FIXED_KIND:
            raise InputError(
                f"this JSON holds a set of {noun(kind)}, not {noun(cls._FIXED_KIND)}; load it with "
                "ComponentSet.from_json"
            )
        width_key, members_key = _JSON_KEYS[kind]
        required = {"n_layers", width_key, members_key}
        allowed = required | {"name", "scores", "pool_layers", "kind"}
        missing, unknown = required - set(data), set(data) - allowed
        if missing or unknown:
            raise InputError(
                f"not a {cls.__name__}.to_json dict: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}"
            )
        one = noun(kind, plural=False)
        scores = None
        if data.get("scores") is not None:
            try:
                scores = {(layer, index): value for layer, index, value in data["scores"]}
            except (TypeError, ValueError):
                raise InputError(f"scores must be a list of [layer, {one}, score] triples") from None
        try:
            pairs = [tuple(p) for p in data[members_key]]
        except TypeError:
            raise InputError(f"{members_key} must be a list of [layer, {one}] pairs") from None
        return ComponentSet._make(
            kind,
            pairs,
            n_layers=data["n_layers"],
            width=data[width_key],
            scores=scores,
            name=data.get("name", "") or "",
            pool_layers=data.get("pool_layers"),
        )

    @staticmethod
    def _make(kind: str, pairs: Any, **kwargs: Any) -> ComponentSet:
        """The public constructor of the kind's class (``NeuronSet`` for MLP sets)."""
        if kind == "mlp":
            kwargs["d_mlp"] = kwargs.pop("width")
            return NeuronSet(pairs, **kwargs)
        return ComponentSet(pairs, kind=kind, **kwargs)


class NeuronSet(ComponentSet):
    """An immutable set of MLP neurons ``(layer, neuron)`` of a model with ``n_layers x d_mlp`` neurons.

    The MLP case of ``ComponentSet`` (kind ``"mlp"``, site ``blocks.{l}.mlp.hook_post``), with the
    constructor and JSON format of earlier releases. Sets combine with ``&``, ``|`` and ``-`` (both
    sets must share the universe); iteration is sorted by ``(layer, neuron)``. Two sets are equal when
    they have the same universe and the same neurons (``name``, ``scores`` and ``pool_layers`` are
    metadata).

    Args:
        pairs: the ``(layer, neuron)`` pairs; duplicates are merged.
        n_layers: number of layers of the universe.
        d_mlp: number of MLP neurons per layer.
        scores: optional ``{(layer, neuron): score}`` of the score that selected the neurons; every key
            must be a member of the set.
        name: a label for reports and plots.
        pool_layers: the layers the set was selected from (default: all layers).

    Shapes:
        to_mask(): ``[n_layers, d_mlp]`` bool.

    Example:
        >>> a = NeuronSet([(0, 1), (2, 3)], n_layers=3, d_mlp=4, name="a")
        >>> b = NeuronSet([(0, 1), (1, 0)], n_layers=3, d_mlp=4)
        >>> len(a & b), a.jaccard(b), a.layer_profile()
        (1, 0.3333333333333333, [1, 0, 1])
    """

    __slots__ = ()
    _FIXED_KIND: ClassVar[str | None] = "mlp"

    def __init__(
        self,
        pairs: Iterable[tuple[SupportsIndex, SupportsIndex]],
        *,
        n_layers: int,
        d_mlp: int,
        scores: Mapping[tuple[SupportsIndex, SupportsIndex], SupportsFloat] | None = None,
        name: str = "",
        pool_layers: Iterable[SupportsIndex] | None = None,
    ) -> None:
        super().__init__(
            pairs,
            kind="mlp",
            n_layers=n_layers,
            width=d_mlp,
            scores=scores,
            name=name,
            pool_layers=pool_layers,
        )

    @property
    def d_mlp(self) -> int:
        """Number of MLP neurons per layer (the ``width`` of the universe)."""
        return self.width


def check_set(value: Any, what: str) -> ComponentSet:
    """``value`` if it is a ``ComponentSet`` (a ``NeuronSet`` is one)."""
    if not isinstance(value, ComponentSet):
        raise InputError(f"{what} must be a NeuronSet or ComponentSet, got {type(value).__name__}")
    return value


def check_sets(sets: Any) -> list[ComponentSet]:
    """A non-empty list of sets of one kind and universe."""
    if isinstance(sets, (ComponentSet, str, bytes, Mapping)) or not isinstance(sets, Iterable):
        raise InputError(
            "sets must be an iterable of NeuronSets / ComponentSets (e.g. a list), not a single set"
        )
    out = [check_set(s, "every element of sets") for s in sets]
    if not out:
        raise InputError("sets is empty; give at least one NeuronSet or ComponentSet")
    kinds = sorted({s.kind for s in out})
    if len(kinds) > 1:
        raise InputError(f"the sets hold different kinds of component {kinds}; combine only sets of one kind")
    universes = sorted({s.universe for s in out})
    if len(universes) > 1:
        raise InputError(
            f"the sets come from different universes {universes}; combine only sets of the same model"
        )
    return out


def _pool_union(sets: Iterable[ComponentSet]) -> tuple[int, ...]:
    return tuple(sorted(set().union(*(s.pool_layers for s in sets))))


def _fold(sets: Iterable[ComponentSet], name: str, op: Callable[[Any, Any], Any]) -> ComponentSet:
    """``op`` folded over the sets' sorted flat indices (a loop over sets, not over components), named
    ``name``, on the union of their pools."""
    items = check_sets(sets)
    if not isinstance(name, str):
        raise InputError(f"name must be a str, got {type(name).__name__}")
    flat = functools.reduce(op, (s._flat for s in items))
    first = items[0]
    return ComponentSet._build(
        first.kind, first.n_layers, first.width, flat, name=name, pool=_pool_union(items)
    )


def intersection(sets: Iterable[ComponentSet], *, name: str = "") -> ComponentSet:
    """Components common to every set (e.g. to all labels or collections).

    The result's pool is the union of the sets' pools (their common pool when they share one).

    Example:
        >>> a = NeuronSet([(0, 1), (1, 2)], n_layers=2, d_mlp=4)
        >>> b = NeuronSet([(1, 2), (1, 3)], n_layers=2, d_mlp=4)
        >>> list(intersection([a, b], name="shared"))
        [(1, 2)]
    """
    return _fold(sets, name, lambda a, b: np.intersect1d(a, b, assume_unique=True))


def union(sets: Iterable[ComponentSet], *, name: str = "") -> ComponentSet:
    """Components in at least one set.

    The result's pool is the union of the sets' pools (their common pool when they share one).

    Example:
        >>> a = NeuronSet([(0, 1), (1, 2)], n_layers=2, d_mlp=4)
        >>> b = NeuronSet([(1, 2), (1, 3)], n_layers=2, d_mlp=4)
        >>> list(union([a, b], name="any"))
        [(0, 1), (1, 2), (1, 3)]
    """
    return _fold(sets, name, np.union1d)


__all__ = ["KINDS", "SITES", "SITE_KINDS", "ComponentSet", "NeuronSet", "intersection", "union"]
