"""Collection-scale NIG statistics: streamed per-label running sums that merge exactly.

``CollectionAttribution`` keeps, per label (``relevant`` / ``nonrelevant``) and per (layer, token group,
neuron), running sums, sums of squares, sums of absolute values and pair counts in float64 — memory
is flat in the number of pairs. Token groups are ``cls``, ``query``, ``sep``, ``doc`` and ``all`` (the
pair's total over its tokens); the statistics of a templated family (monoT5, a causal LM scored through a
template: ``prompt=True``) carry a ``prompt`` row too (the template's text), before ``all``. Two partial
statistics of disjoint pairs ``merge`` into the statistics of their union (what a sharded run needs). The orchestration (data, checkpoints, progress) lives in
``mechir_nig.experiments.attribute.attribute_collection``.

Example:
    >>> from mechir_nig.data import JudgedPair
    >>> from mechir_nig.experiments import attribute_collection
    >>> pairs = [JudgedPair("q1", "d1", queries[0], docs[0], 1, "relevant"),
    ...          JudgedPair("q1", "d2", queries[0], docs[1], 0, "nonrelevant")]
    >>> stats = attribute_collection(model, pairs, n_steps=4, layers=[4, 5], progress=False)
    >>> stats.mean("relevant").shape  # [layer, d_mlp]
    torch.Size([2, 1536])
    >>> first_half = attribute_collection(model, pairs[:1], n_steps=4, layers=[4, 5], progress=False)
    >>> second_half = attribute_collection(model, pairs[1:], n_steps=4, layers=[4, 5], progress=False)
    >>> whole = first_half.merge(second_half)  # the statistics of both pairs
    >>> bool(torch.allclose(whole.mean("nonrelevant"), stats.mean("nonrelevant"), atol=1e-5))
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechir_nig.errors import InputError
from mechir_nig.results import Result

LABELS = ("relevant", "nonrelevant")
GROUP_AXIS = ("cls", "query", "sep", "doc", "all")
"""The group axis of the statistics (``sums[label][:, g]``)."""
PROMPT_GROUP_AXIS = ("cls", "query", "sep", "doc", "prompt", "all")
"""The group axis of a templated family's statistics (``CollectionAttribution(prompt=True)``)."""
SCHEMES = ("relevant", "nonrelevant", "difference", "abs_mean", "mean_abs")
"""Neuron selection schemes (``scheme_scores``). ``absolute`` is the former name of ``abs_mean``."""


@dataclass
class CollectionAttribution(Result):
    """Running NIG statistics of a collection, per label.

    Shapes:
        ``sums[label]``, ``sums_sq[label]``, ``sums_abs[label]``: ``[layer, group, d_mlp]`` (float64),
        groups ``group_axis``: ``GROUP_AXIS``, or ``PROMPT_GROUP_AXIS`` with ``prompt=True``;
        ``mean(label, group)``, ``std(label, group)``: ``[layer, d_mlp]``.

    ``prompt``: whether the statistics carry a ``prompt`` row: ``attribute_collection`` sets it for a model
    scored through a template (its ``by_group()`` has five groups); otherwise a fifth group of ``update``
    counts in ``all`` only.

    Example:
        >>> stats = CollectionAttribution(layers=[0, 1], n_layers=2, d_mlp=3)
        >>> stats.update("relevant", torch.ones(5, 2, 4, 3))  # [pairs, layer, group, d_mlp]
        >>> stats.counts["relevant"], stats.mean("relevant").shape  # group "all": [layer, d_mlp]
        (5, torch.Size([2, 3]))
        >>> stats.mean("relevant", "doc")[0].tolist()
        [1.0, 1.0, 1.0]
        >>> stats.merge(stats).counts["relevant"]  # the statistics of two disjoint halves
        10
        >>> templated = CollectionAttribution(layers=[0], n_layers=1, d_mlp=2, prompt=True)
        >>> templated.update("relevant", torch.arange(5.0).view(1, 1, 5, 1).expand(1, 1, 5, 2))
        >>> templated.group_axis, templated.mean("relevant", "prompt")[0].tolist()
        (('cls', 'query', 'sep', 'doc', 'prompt', 'all'), [4.0, 4.0])
    """

    layers: list[int]
    n_layers: int
    d_mlp: int
    sums: dict[str, Tensor] = field(default_factory=dict)
    sums_sq: dict[str, Tensor] = field(default_factory=dict)
    sums_abs: dict[str, Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    n_done: int = 0
    prompt: bool = False

    def __post_init__(self) -> None:
        shape = (len(self.layers), len(self.group_axis), self.d_mlp)
        for label in LABELS:
            self.sums.setdefault(label, torch.zeros(shape, dtype=torch.float64))
            self.sums_sq.setdefault(label, torch.zeros(shape, dtype=torch.float64))
            self.sums_abs.setdefault(label, torch.zeros(shape, dtype=torch.float64))
            self.counts.setdefault(label, 0)

    @property
    def group_axis(self) -> tuple[str, ...]:
        """The groups of the sums' group axis: ``GROUP_AXIS``, or ``PROMPT_GROUP_AXIS`` (``prompt``)."""
        return PROMPT_GROUP_AXIS if self.prompt else GROUP_AXIS

    @property
    def group_names(self) -> tuple[str, ...]:
        """The token groups (``group_axis`` without ``all``), as ``NeuronAttribution.group_names``."""
        return self.group_axis[:-1]

    def update(self, label: str, by_group: Float[Tensor, "n layer group d_mlp"]) -> None:
        """Add pairs of one label (their per-group NIG, ``NeuronAttribution.by_group()``: 4 groups, or 5 with
        a templated family's ``prompt``: its own row with ``prompt=True``, else counted in ``all`` only;
        4 groups into ``prompt=True`` statistics add a zero prompt row, a template whose text gave no
        prompt token)."""
        if label not in LABELS:
            raise InputError(f"label must be one of {LABELS}, got {label!r}")
        if by_group.dim() != 4 or by_group.shape[2] not in (4, 5):
            raise InputError(
                f"by_group must be [pairs, layer, 4 or 5 groups, d_mlp], got {tuple(by_group.shape)}"
            )
        v = by_group.to(torch.float64)
        groups = v
        if self.prompt and v.shape[2] == 4:
            groups = torch.cat([v, torch.zeros_like(v[:, :, :1])], dim=2)
        elif not self.prompt:
            groups = v[:, :, :4]
        v = torch.cat([groups, v.sum(2, keepdim=True)], dim=2)  # + the "all" group (prompt included)
        self.sums[label] += v.sum(0)
        self.sums_sq[label] += (v * v).sum(0)
        self.sums_abs[label] += v.abs().sum(0)
        self.counts[label] += v.shape[0]

    def _group(self, group: str) -> int:
        if group == "prompt" and not self.prompt:
            raise InputError(
                "these statistics have no prompt group (the model reads no template: an encoder, or a "
                f"score head); use one of {self.group_axis}"
            )
        if group not in self.group_axis:
            raise InputError(f"group must be one of {self.group_axis}, got {group!r}")
        return self.group_axis.index(group)

    def _count(self, label: str) -> int:
        if label not in LABELS:
            raise InputError(f"label must be one of {LABELS}, got {label!r}")
        n = self.counts[label]
        if n == 0:
            raise InputError(f"no {label} pairs were attributed; attribute some or use another label")
        return n

    def mean(self, label: str, group: str = "all") -> Float[Tensor, "layer d_mlp"]:
        """Mean NIG per pair of ``label`` (summed over the tokens of ``group``)."""
        return self.sums[label][:, self._group(group)] / self._count(label)

    def std(self, label: str, group: str = "all") -> Float[Tensor, "layer d_mlp"]:
        """Population standard deviation over the pairs of ``label``."""
        n = self._count(label)
        g = self._group(group)
        m = self.sums[label][:, g] / n
        return (self.sums_sq[label][:, g] / n - m * m).clamp(min=0).sqrt()

    def plot(self, kind: str | None = None, **kw: Any) -> Any:
        """A plotly figure (``mechir_nig.plotting.plot``); ``kind``: ``"heatmap"`` (default), ``"top"`` or
        ``"groups"``.

        Example:
            >>> from mechir_nig.data import JudgedPair
        >>> from mechir_nig.experiments import attribute_collection
        >>> pairs = [JudgedPair("q1", "d1", queries[0], docs[0], 1, "relevant"),
        ...          JudgedPair("q1", "d2", queries[0], docs[1], 0, "nonrelevant")]
            >>> stats = attribute_collection(ce, pairs, n_steps=4, layers=[5], progress=False)
            >>> fig = stats.plot("top", k=20)  # fig.show() opens it
            >>> len(fig.data) > 0
            True
        """
        from mechir_nig.plotting import plot

        return plot(self, kind, **kw)

    def scheme_scores(self, scheme: str, group: str = "all") -> Float[Tensor, "n_layers d_mlp"]:
        """Scores of every neuron of the model under a selection scheme (zeros for unattributed layers).

        - ``relevant`` / ``nonrelevant``: mean NIG over that label's pairs (signed);
        - ``difference``: relevant minus non-relevant mean;
        - ``abs_mean``: ``|mean NIG|`` over all pairs of both labels — signs cancel across pairs, so a
          neuron that pushes some pairs up and others down scores low;
        - ``mean_abs``: mean over all pairs of ``|NIG of the pair|`` — how much the neuron matters to a
          pair, whatever the direction.

        ``absolute`` (the former name of ``abs_mean``) still works with a ``DeprecationWarning``.
        """
        if scheme == "absolute":
            warnings.warn(
                "scheme 'absolute' is |mean NIG| and is now called 'abs_mean'; for the mean of |NIG| per "
                "pair use 'mean_abs'",
                DeprecationWarning,
                stacklevel=2,
            )
            scheme = "abs_mean"
        if scheme == "relevant" or scheme == "nonrelevant":
            s = self.mean(scheme, group)
        elif scheme == "difference":
            s = self.mean("relevant", group) - self.mean("nonrelevant", group)
        elif scheme in ("abs_mean", "mean_abs"):
            n = sum(self.counts.values())
            if n == 0:
                raise InputError("no pairs were attributed")
            g = self._group(group)
            table = self.sums if scheme == "abs_mean" else self.sums_abs
            pooled = torch.stack([table[lab][:, g] for lab in LABELS]).sum(0) / n
            s = pooled.abs() if scheme == "abs_mean" else pooled
        else:
            raise InputError(f"unknown scheme {scheme!r}; use one of {SCHEMES}")
        full = torch.zeros(self.n_layers, self.d_mlp, dtype=torch.float64)
        full[self.layers] = s
        return full

    # -- merging ---------------------------------------------------------------------------------
    SETTINGS_KEYS = ("model", "dtype", "n_steps", "baseline", "method", "layers", "side", "max_length")
    """Metadata that two partial statistics must share to be merged."""

    def merge(self, other: CollectionAttribution) -> CollectionAttribution:
        """The statistics of the union of two disjoint sets of pairs (sums and counts added).

        Both must cover the same layers and model shape, with the same model and NIG settings where
        recorded. The result's ``meta`` keeps the shared settings, adds the truncation counts and
        lists the parts' pair fingerprints under ``merged_from``. The prompt row is kept where both have
        it; where one lacks it (a checkpoint written before statistics had one) the merge has none, with a
        warning (the prompt still counts in ``all``).

        Example:
            >>> from mechir_nig.data import JudgedPair
        >>> from mechir_nig.experiments import attribute_collection
        >>> pairs = [JudgedPair("q1", "d1", queries[0], docs[0], 1, "relevant"),
        ...          JudgedPair("q1", "d2", queries[0], docs[1], 0, "nonrelevant")]
            >>> stats_a = attribute_collection(ce, pairs[:1], n_steps=4, layers=[5], progress=False)
            >>> stats_b = attribute_collection(ce, pairs[1:], n_steps=4, layers=[5], progress=False)
            >>> whole = stats_a.merge(stats_b)
            >>> whole.counts["relevant"], whole.counts["nonrelevant"]
            (1, 1)
        """
        if not isinstance(other, CollectionAttribution):
            raise InputError(f"merge takes a CollectionAttribution, got {type(other).__name__}")
        if (self.layers, self.n_layers, self.d_mlp) != (other.layers, other.n_layers, other.d_mlp):
            raise InputError(
                f"cannot merge statistics of layers {self.layers} (n_layers={self.n_layers}, "
                f"d_mlp={self.d_mlp}) with layers {other.layers} (n_layers={other.n_layers}, "
                f"d_mlp={other.d_mlp}); attribute both with the same model and layers"
            )
        if self.prompt != other.prompt:
            warnings.warn(
                "merging statistics with a prompt row and statistics without one (e.g. a checkpoint written "
                "before statistics had one): the merged statistics have no prompt row (the prompt tokens "
                "still count in 'all')",
                UserWarning,
                stacklevel=2,
            )
            return self._without_prompt().merge(other._without_prompt())
        for key in self.SETTINGS_KEYS:
            a, b = self.meta.get(key), other.meta.get(key)
            if a is not None and b is not None and a != b:
                raise InputError(
                    f"cannot merge statistics made with different {key}: {a!r} vs {b!r}; "
                    "attribute both parts with the same model and settings"
                )
        meta = {k: v for k, v in self.meta.items() if k not in ("pairs_fingerprint", "n_pairs", "truncated")}
        for k, v in other.meta.items():
            meta.setdefault(k, v)
        meta["merged_from"] = [
            fp
            for part in (self, other)
            for fp in (part.meta.get("merged_from") or [part.meta.get("pairs_fingerprint")])
        ]
        meta["truncated"] = {
            lab: (self.meta.get("truncated") or {}).get(lab, 0)
            + (other.meta.get("truncated") or {}).get(lab, 0)
            for lab in LABELS
        }
        mine, theirs = self.meta.get("n_steps_used"), other.meta.get("n_steps_used")
        if mine is not None or theirs is not None:
            same = self.meta.get("pairs_fingerprint") == other.meta.get("pairs_fingerprint") is not None
            if same:  # parts of one pair list (a sharded run): each holds its own pairs' steps
                meta["n_steps_used"] = _union_steps([mine, theirs])
            else:  # two pair lists: this one's pairs, then the other's
                n_a = len(mine) if mine is not None else self.n_done
                n_b = len(theirs) if theirs is not None else other.n_done
                meta["n_steps_used"] = (mine or [None] * n_a) + (theirs or [None] * n_b)
        return CollectionAttribution(
            layers=list(self.layers),
            n_layers=self.n_layers,
            d_mlp=self.d_mlp,
            sums={lab: self.sums[lab] + other.sums[lab] for lab in LABELS},
            sums_sq={lab: self.sums_sq[lab] + other.sums_sq[lab] for lab in LABELS},
            sums_abs={lab: self.sums_abs[lab] + other.sums_abs[lab] for lab in LABELS},
            counts={lab: self.counts[lab] + other.counts[lab] for lab in LABELS},
            meta=meta,
            n_done=self.n_done + other.n_done,
            prompt=self.prompt,
        )

    def _without_prompt(self) -> CollectionAttribution:
        """These statistics without the prompt row (``all`` unchanged)."""
        if not self.prompt:
            return self
        keep = [PROMPT_GROUP_AXIS.index(g) for g in GROUP_AXIS]

        def cut(table: dict[str, Tensor]) -> dict[str, Tensor]:
            return {lab: t[:, keep] for lab, t in table.items()}

        return replace(
            self,
            sums=cut(self.sums),
            sums_sq=cut(self.sums_sq),
            sums_abs=cut(self.sums_abs),
            prompt=False,
        )

    def record_steps(self, idx: Sequence[int], steps: Sequence[int], n_pairs: int) -> None:
        """Keep the steps ``n_steps="auto"`` chose for pairs ``idx`` (positions in the run's ``pairs``)
        in ``meta["n_steps_used"]`` (a list in input order, ``None`` for pairs not attributed yet)."""
        table = self.meta.get("n_steps_used")
        if table is None:
            table = self.meta["n_steps_used"] = [None] * n_pairs
        for i, n in zip(idx, steps, strict=True):
            table[i] = int(n)

    def merge_steps(self, tables: Sequence[list[int | None] | None]) -> None:
        """Combine the step records of parts of one run (every rank's), each holding its own pairs."""
        self.meta["n_steps_used"] = _union_steps(tables)

    def n_steps_used(self) -> Int[Tensor, " n_pairs"]:
        """The steps ``n_steps="auto"`` chose for each pair, in the order of the run's ``pairs``
        (``-1``: not attributed yet, e.g. in an unfinished checkpoint).

        Raises:
            InputError: the run used a fixed ``n_steps`` (every pair used ``meta["n_steps"]``).

        Example:
            >>> stats = CollectionAttribution(layers=[0], n_layers=1, d_mlp=2)
            >>> stats.record_steps([2, 0], [16, 8], n_pairs=3)
            >>> stats.n_steps_used().tolist()
            [8, -1, 16]
        """
        table = self.meta.get("n_steps_used")
        if table is None:
            raise InputError(
                f"no per-pair steps recorded: the run used a fixed n_steps ({self.meta.get('n_steps')!r} for "
                "every pair); attribute with n_steps='auto' to choose them per pair"
            )
        return torch.tensor([-1 if n is None else int(n) for n in table], dtype=torch.long)

    # -- persistence (``mechir_nig.results.Result``: save, load) -------------------------------------
    KIND = "CollectionAttribution"
    WHAT = "collection attribution"
    LAYOUT = "checkpoint"  # one self-contained file (a checkpoint); path.json is a readable copy
    FIX = (
        "Nothing can be resumed from it: delete it (or move it away) to start over, or pass another "
        "checkpoint= path"
    )
    _SUMS = (("sums", "sum"), ("sums_sq", "sum_sq"), ("sums_abs", "sum_abs"))  # field, tensor suffix

    def to_parts(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The sums as ``<label>.sum``, ``<label>.sum_sq``, ``<label>.sum_abs``; the rest as JSON."""
        tensors = {
            f"{label}.{suffix}": getattr(self, name)[label].contiguous().cpu()
            for label in LABELS
            for name, suffix in self._SUMS
        }
        info = {
            "layers": self.layers,
            "n_layers": self.n_layers,
            "d_mlp": self.d_mlp,
            "counts": self.counts,
            "n_done": self.n_done,
            "meta": self.meta,
        }
        if self.prompt:  # an encoder's file keeps its layout
            info["groups"] = list(self.group_axis)
        return tensors, info

    @classmethod
    def tensor_names(cls) -> tuple[set[str], Callable[[str], bool]]:
        """Every label's sums and sums of squares; its sums of absolute values (absent in files written
        before they existed)."""
        return {
            f"{lab}.{s}" for lab in LABELS for s in ("sum", "sum_sq")
        }, lambda n: n in {f"{lab}.sum_abs" for lab in LABELS}

    @classmethod
    def from_parts(cls, tensors: dict[str, Tensor], info: dict[str, Any]) -> CollectionAttribution:
        """The statistics of ``to_parts``' pieces, checking each sum is float64 ``[layer, group, d_mlp]``
        (groups ``info["groups"]`` where written, else ``GROUP_AXIS``)."""
        layers, d_mlp = [int(x) for x in info["layers"]], int(info["d_mlp"])
        groups = tuple(info.get("groups", GROUP_AXIS))
        if groups not in (GROUP_AXIS, PROMPT_GROUP_AXIS):
            raise ValueError(
                f"groups {list(groups)} are neither {list(GROUP_AXIS)} nor {list(PROMPT_GROUP_AXIS)}"
            )
        shape = (len(layers), len(groups), d_mlp)
        for name, t in tensors.items():
            if tuple(t.shape) != shape or t.dtype != torch.float64:
                raise ValueError(f"tensor {name} is {t.dtype} {tuple(t.shape)}, expected float64 {shape}")
        return cls(
            layers=layers,
            n_layers=int(info["n_layers"]),
            d_mlp=d_mlp,
            **{
                name: {lab: tensors[f"{lab}.{suffix}"] for lab in LABELS if f"{lab}.{suffix}" in tensors}
                for name, suffix in cls._SUMS
            },
            counts={lab: int(info["counts"][lab]) for lab in LABELS},
            meta=info["meta"],
            n_done=int(info["n_done"]),
            prompt=groups == PROMPT_GROUP_AXIS,
        )

    def __repr__(self) -> str:
        return (
            f"CollectionAttribution(layers={self.layers}, counts={self.counts}, n_done={self.n_done}, "
            f"collection={self.meta.get('collection')!r}{', prompt=True' if self.prompt else ''})"
        )


def _union_steps(tables: Sequence[list[int | None] | None]) -> list[int | None] | None:
    """Element-wise union of step records of one pair list (each pair recorded by at most one part)."""
    present = [t for t in tables if t is not None]
    if not present:
        return None
    out: list[int | None] = [None] * max(len(t) for t in present)
    for t in present:
        for i, n in enumerate(t):
            if n is not None:
                out[i] = n
    return out


def top_neuron_set(
    attribution: CollectionAttribution,
    scheme: str = "relevant",
    *,
    k: int | None = None,
    fraction: float | None = None,
    group: str = "all",
) -> Any:
    """The neuron set selected by ``scheme`` (``SCHEMES``) among the attributed layers.

    Returns:
        A ``NeuronSet`` whose candidate pool is the attributed layers (chance levels use it).

    Example:
        >>> stats = CollectionAttribution(layers=[1], n_layers=2, d_mlp=4)
        >>> per_group = torch.tensor([0.0, 3.0, -1.0, 2.0]).expand(1, 1, 4, 4)  # [pairs, layer, group, d_mlp]
        >>> stats.update("relevant", per_group)
        >>> sorted(top_neuron_set(stats, "relevant", k=2))  # (layer, neuron) pairs
        [(1, 1), (1, 3)]
    """
    from mechir_nig.sets import select_top

    return select_top(
        attribution.scheme_scores(scheme, group),
        k=k,
        fraction=fraction,
        layers=attribution.layers,
        name=f"{scheme}:{group}",
    )
