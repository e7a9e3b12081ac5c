"""Activation patching between a clean and a corrupted (perturbed) run, vectorised, from cached layers.

Two aligned inputs of the same shape (:func:`mechir_nig.interventions.perturb.align`) are run once each.
Then, for every patch index of every site (one ``(layer, position)`` of the residual stream, one head,
one neuron ...), the activation of one run (the **source**) is written into the other (the **base**)
through the site's TransformerLens hook, and the patched score is read:

- ``direction="noise"``: base = clean, source = corrupted (does the corrupted activation at this site
  carry the perturbation's effect into the clean run?);
- ``direction="denoise"`` (default): base = corrupted, source = clean (does restoring the clean
  activation at this site undo the perturbation?).

The metric is the normalised **recovery** ``(patched − base) / (source − base)``: 0 = no effect, 1 =
the patch moves the score all the way to the source run's score. For ``noise`` this is MechIR's
``(patched − clean) / (corrupted − clean)``. Where the perturbation does not move the score
(``|source − base| < eps``) the recovery is undefined: NaN and a :class:`NoScoreChangeWarning` naming
the pairs (MechIR returns a silent 0 there). ``metric="raw"`` gives ``patched − base``.

Sites (``blocks.{l}`` hooks), the patch index and the shape of ``values[site]``:

============  ==========================  ========================  ==================================
site          hook                        one patch writes          values
============  ==========================  ========================  ==================================
resid_pre     ``hook_resid_pre``          one position              ``[batch, layer, pos]``
attn_out      ``hook_attn_out``           one position              ``[batch, layer, pos]``
mlp_out       ``hook_mlp_out``            one position              ``[batch, layer, pos]``
heads         ``attn.hook_z``             one head, all positions   ``[batch, layer, n_heads]``
head_pos      ``attn.hook_z``             one head at one position  ``[batch, layer, n_heads, pos]``
q / k / v     ``attn.hook_q`` ...         one head at one position  ``[batch, layer, n_heads, pos]``
pattern       ``attn.hook_pattern``       one head's query row      ``[batch, layer, n_heads, pos]``
ln1_scale     ``ln1.hook_scale``          one position              ``[batch, layer, pos]``
ln1_normalized ``ln1.hook_normalized``    one position              ``[batch, layer, pos]``
ln2_scale / ln2_normalized  ``ln2.hook_...``  one position          ``[batch, layer, pos]``
neurons       ``mlp.hook_post``           one neuron, all positions ``[batch, layer, d_mlp]``
neuron_set    ``mlp.hook_post``           one member neuron         ``[batch, n_members]`` (set order)
head_set      ``attn.hook_z``             one member head, all pos  ``[batch, n_members]`` (set order)
<site>_set    ``hook_<site>``             one member position       ``[batch, n_members]`` (set order)
(joint=True)  the set's hook              every member at once      ``values["<key>_joint"]``
                                                                  ``[batch]``
============  ==========================  ========================  ==================================

A :class:`~mechir_nig.sets.ComponentSet` passed in ``sites`` (the same object ``ablate`` takes) is patched
member by member: a ``NeuronSet`` (kind ``mlp``) is the ``neuron_set`` site, a head set (kind
``head``/``z``) the ``head_set`` site (a member is the ``heads`` patch of that ``(layer, head)``), a
position set of a residual site (kind ``resid_pre``, ``attn_out``, ``mlp_out`` ...) the ``<kind>_set``
site, e.g. ``resid_pre_set`` (a member ``(layer, position)`` is the ``resid_pre`` patch there);
``result.members`` lists the members in ``values``' order. With ``joint=True`` also all of them together
(``values["<key>_joint"]``, e.g. ``neuron_set_joint``, ``head_set_joint``). One set per call.

How it is computed: both runs are cached once. Every patched run starts at the patched layer from the
base run's cached ``resid_pre`` (``start_at_layer``), so the layers below are never recomputed; the
patch indices of a layer are stacked along the batch axis (one row per index, trimmed to its pair's
span, ``chunk_size`` rows per forward), and the hook writes each row's source values at its index with
one indexed assignment. Patches that cannot change the result are not run and get the base score
exactly: positions masked in the base run (padding and alignment slots) and indices where the source
activation equals the base activation (e.g. every unchanged token at layer 0).

Example:
    >>> from mechir_nig.interventions import perturb
    >>> al = perturb.align(ce, queries, docs, perturb.tfc1)
    >>> res = patch(ce, al, sites=("resid_pre", "heads"))
    >>> res["resid_pre"].shape, res["heads"].shape  # [batch, layer, pos], [batch, layer, n_heads]
    (torch.Size([2, 6, 23]), torch.Size([2, 6, 12]))
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechir_nig._validate import check_bool, check_choice, check_int, check_layers, check_number
from mechir_nig.errors import InputError, NoScoreChangeWarning
from mechir_nig.interventions.engine import Engine, Intervention, Source, require_hooks
from mechir_nig.models.precision import check_finite
from mechir_nig.models.protocol import HookedModel
from mechir_nig.models.tokenization import PairBatch, TextBatch
from mechir_nig.results import Result
from mechir_nig.sites import hook_name, unit_width
from mechir_nig.sites import site as site_named

__all__ = [
    "DIRECTIONS",
    "METRICS",
    "SITES",
    "SMALL_CHANGE",
    "NoScoreChangeWarning",
    "PatchingResult",
    "patch",
    "set_key",
]

_INDEX = {
    "resid_pre": "pos",
    "attn_out": "pos",
    "mlp_out": "pos",
    "heads": "head",
    "head_pos": "head_pos",
    "neurons": "neuron",
    "neuron_set": "neuron",
    "q": "head_pos",
    "k": "head_pos",
    "v": "head_pos",
    "pattern": "head_pos",
    "ln1_scale": "pos",
    "ln1_normalized": "pos",
    "ln2_scale": "pos",
    "ln2_normalized": "pos",
}
"""Patch site -> its patch index kind; the hook is the :mod:`mechir_nig.sites` site of the same name
(``heads``/``neurons`` are its aliases of ``z``/``mlp_post``), ``head_pos``/``neuron_set`` that of ``heads``/``neurons``."""
_SITE_OF = {
    name: site_named({"head_pos": "heads", "neuron_set": "neurons"}.get(name, name)).name for name in _INDEX
}
SITES: dict[str, tuple[str, str]] = {
    name: (site_named(_SITE_OF[name]).template, kind) for name, kind in _INDEX.items()
}
"""Site name -> (hook name template, patch index kind), derived from :mod:`mechir_nig.sites`."""
DIRECTIONS = ("denoise", "noise")
METRICS = ("recovery", "raw")
SMALL_CHANGE = 0.05
"""A pair's perturbation is *tiny* when ``|corrupted − clean| < SMALL_CHANGE × spread``, the spread being
the standard deviation of the batch's clean and corrupted scores together: its recovery divides by a
score change that is small against the differences between pairs, so it is unstable (e.g. +2.68 from a
change of 0.004). Summaries leave such pairs out by default and say how many
(:meth:`PatchingResult.small_change`)."""
_TOKENS_PER_CHUNK = 65536  # default chunk: rows x positions (bounds the memory of one patched forward)


@dataclass
class PatchingResult(Result):
    """Patching effects of one or more sites for a batch of aligned pairs.

    Shapes:
        values: ``{site: tensor}``, the metric, ``[batch, layer, ...]`` per site (see the module table;
            ``layer`` indexes ``layers``); ``result[site]`` is ``values[site]``.
        patched: ``{site: tensor}`` of the same shapes: the patched scores.
        base_scores / source_scores / clean_scores / corrupted_scores: ``[batch]``.
        base_mask: ``[batch, pos]`` attention mask of the run patched into; changed: ``[batch, pos]``.
        clean_tokens / corrupted_tokens: aligned token strings (``""`` at masked slots and padding).

    ``save(path)`` writes the tensors to ``path`` (safetensors: ``values.<site>``, ``patched.<site>``,
    scores, masks) and the rest to the sidecar ``path.json``, checksummed; ``load(path)`` reads them back
    exactly and refuses a damaged or foreign file (``mechir_nig.results``).

    Example:
        >>> from mechir_nig.interventions.perturb import align, tfc1
        >>> res = patch(ce, align(ce, queries, docs, tfc1), sites=("resid_pre", "heads"))
        >>> res["resid_pre"].shape  # [batch, layer, pos]
        torch.Size([2, 6, 23])
        >>> res.base_scores.shape  # [batch]
        torch.Size([2])
        >>> res.recovery("heads").shape  # the metric again, whichever ``metric=`` was run
        torch.Size([2, 6, 12])
    """

    values: dict[str, Tensor]
    patched: dict[str, Tensor]
    clean_scores: Float[Tensor, " batch"]
    corrupted_scores: Float[Tensor, " batch"]
    layers: list[int]
    direction: str
    metric: str
    eps: float
    base_mask: Int[Tensor, "batch pos"]
    groups: Int[Tensor, "batch pos"]
    changed: Bool[Tensor, "batch pos"] | None = None
    clean_tokens: list[list[str]] = field(default_factory=list)
    corrupted_tokens: list[list[str]] = field(default_factory=list)
    members: list[tuple[int, int]] = field(default_factory=list)  # the set site's members, values' order
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, site: str) -> Float[Tensor, "batch *index"]:
        if site not in self.values:
            raise InputError(f"no site {site!r} in this result; it holds {list(self.values)}")
        return self.values[site]

    def __len__(self) -> int:
        return len(self.clean_scores)

    @property
    def sites(self) -> list[str]:
        return list(self.values)

    @property
    def base_scores(self) -> Float[Tensor, " batch"]:
        """Scores of the run patched into (corrupted for ``denoise``, clean for ``noise``)."""
        return self.corrupted_scores if self.direction == "denoise" else self.clean_scores

    @property
    def source_scores(self) -> Float[Tensor, " batch"]:
        """Scores of the run the patches come from (clean for ``denoise``, corrupted for ``noise``)."""
        return self.clean_scores if self.direction == "denoise" else self.corrupted_scores

    def _patched(self, site: str) -> Float[Tensor, "batch *index"]:
        self[site]  # raises for an unknown site
        return self.patched[site]

    def raw(self, site: str) -> Float[Tensor, "batch *index"]:
        """``patched − base`` of ``site`` (the shape of ``self[site]``)."""
        p = self._patched(site)
        return p - _bcast(self.base_scores, p)

    def recovery(self, site: str) -> Float[Tensor, "batch *index"]:
        """``(patched − base) / (source − base)`` of ``site`` (NaN where ``|source − base| < eps``; the
        shape of ``self[site]``)."""
        p = self._patched(site)
        return _recovery(p, self.base_scores, self.source_scores, self.eps)

    def small_change(self, threshold: float = SMALL_CHANGE) -> Bool[Tensor, " batch"]:
        """The pairs whose perturbation moves the score by less than ``threshold`` times the spread
        (the standard deviation of the clean and corrupted scores of the batch together; see
        ``SMALL_CHANGE``): their recovery has a tiny denominator.

        Example:
            >>> from mechir_nig.interventions.perturb import align, tfc1
            >>> res = patch(ce, align(ce, queries, docs, tfc1), sites="heads", layers=[4, 5])
            >>> res.small_change()  # [batch]: True for the pairs left out of the summaries
            tensor([False, False])
        """
        delta = (self.corrupted_scores - self.clean_scores).double().abs()
        return delta < threshold * self.score_spread

    @property
    def score_spread(self) -> float:
        """The standard deviation of the clean and corrupted scores together (what ``SMALL_CHANGE`` is
        relative to; 0 for a single score)."""
        pooled = torch.cat([self.clean_scores, self.corrupted_scores]).double()
        return float(pooled.std()) if pooled.numel() > 1 else 0.0

    def summary_pairs(self, include_small: bool = False) -> Bool[Tensor, " batch"]:
        """The pairs summaries average over: those without a tiny perturbation (``~small_change()``),
        or every pair when ``include_small`` or when every pair's perturbation is tiny.

        Example:
            >>> from mechir_nig.interventions.perturb import align, tfc1
            >>> res = patch(ce, align(ce, queries, docs, tfc1), sites="heads", layers=[4, 5])
            >>> res["heads"][res.summary_pairs()].mean(0).shape  # [layer, n_heads]
            torch.Size([2, 12])
        """
        small = self.small_change()
        if include_small or bool(small.all()):
            return torch.ones_like(small)
        return ~small

    def plot(self, kind: str | None = None, **kw: Any) -> Any:
        """A plotly figure of this result (``mechir_nig.plotting.plot``); ``kind``: ``"heatmap"`` (default);
        ``kw`` go to the figure function.

        Example:
            >>> from mechir_nig.interventions.perturb import align, tfc1
            >>> res = patch(ce, align(ce, queries, docs, tfc1), sites="heads", layers=[4, 5])
            >>> fig = res.plot(site="heads", pair=None)  # fig.show() opens it in a browser
            >>> len(fig.data) > 0
            True
        """
        from mechir_nig.plotting import plot

        return plot(self, kind, **kw)

    # -- persistence (``mechir_nig.results.Result``: save, load) -------------------------------------
    KIND = "PatchingResult"
    WHAT = "patching result"

    def to_parts(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """``Result.to_parts`` with one ``sites`` list for ``values`` and ``patched``."""
        tensors, info = super().to_parts()
        del info["patched"]
        info["sites"] = info.pop("values")
        return tensors, info

    @classmethod
    def from_parts(cls, tensors: dict[str, Tensor], info: dict[str, Any]) -> PatchingResult:
        """``Result.from_parts`` checking ``sites``, ``direction`` and ``metric``; ``members`` as tuples."""
        sites = info["sites"]
        if not isinstance(sites, list) or not all(isinstance(k, str) for k in sites):
            raise TypeError(f"sites is {sites!r}, not a list of names")
        if info["direction"] not in DIRECTIONS or info["metric"] not in METRICS:
            raise ValueError(
                f"direction {info['direction']!r} / metric {info['metric']!r} is not one of {DIRECTIONS} / "
                f"{METRICS}"
            )
        info = info | {
            "values": sites,
            "patched": sites,
            "eps": float(info["eps"]),
            "members": [(int(m[0]), int(m[1])) for m in info.get("members", [])],
        }
        return super().from_parts(tensors, info)


def _bcast(scores: Tensor, like: Tensor) -> Tensor:
    return scores.reshape(-1, *([1] * (like.dim() - 1)))


def _recovery(patched: Tensor, base: Tensor, source: Tensor, eps: float) -> Tensor:
    delta = source - base
    flat = delta.abs() < eps
    denom = torch.where(flat, torch.ones_like(delta), delta)
    out = (patched - _bcast(base, patched)) / _bcast(denom, patched)
    return out.masked_fill(_bcast(flat, patched), float("nan"))


def set_key(kind: str) -> str:
    """The ``values`` key of a component set of ``kind`` patched member by member.

    Example:
        >>> set_key("mlp"), set_key("head"), set_key("resid_pre")
        ('neuron_set', 'head_set', 'resid_pre_set')
    """
    s = site_named(kind)
    return {"mlp_post": "neuron_set", "z": "head_set"}.get(s.name, f"{s.name}_set")


_UNIT_INDEX = {"position": "pos", "head": "head", "neuron": "neuron"}


def _site_info(site: str, nset: Any) -> tuple[str, str, str]:
    """(site name, hook template, patch index kind) of an entry of ``_check_sites`` (a set's: its kind's)."""
    if nset is not None:
        s = site_named(nset.kind)
        return s.name, s.template, _UNIT_INDEX[s.unit]
    return _SITE_OF[site], *SITES[site]


# -- validation ------------------------------------------------------------------------------------------
def _check_sites(model: HookedModel, sites: Any) -> list[tuple[str, Any]]:
    from mechir_nig.sets.components import ComponentSet

    items = [sites] if isinstance(sites, str | ComponentSet) else sites
    if isinstance(items, str | bytes) or not isinstance(items, Sequence) or not items:
        raise InputError(
            f"sites must be a site name, a ComponentSet or a non-empty list of them, got {sites!r}"
        )
    out: list[tuple[str, Any]] = []
    names = [s for s in SITES if s != "neuron_set"]
    cfg = model.cfg
    for s in items:
        if isinstance(s, ComponentSet):
            out.append((set_key(s.kind), _check_set(s, cfg)))
        elif s in names:
            out.append((s, None))
        else:
            raise InputError(f"unknown site {s!r}; sites are {names} or a ComponentSet")
    keys = [k for k, _ in out]
    if len(set(keys)) != len(keys):
        raise InputError(f"sites {keys} repeat a site; list each once")
    if sum(nset is not None for _, nset in out) > 1:
        raise InputError(f"sites {keys} hold more than one ComponentSet; patch one set per call")
    return out


def _check_set(s: Any, cfg: Any) -> Any:
    """A component set that this model can patch (its site has a patch index; its universe fits)."""
    what = "NeuronSet" if s.kind == "mlp" else f"{s.kind} set"
    if site_named(s.kind).unit not in _UNIT_INDEX:
        raise InputError(
            f"a {s.kind} set cannot be patched member by member; use a neuron, head or residual-site set"
        )
    width = unit_width(s.kind, cfg)
    if s.universe[0] != cfg.n_layers or (width is not None and s.universe[1] != width):
        raise InputError(
            f"the {what} is for a model with n_layers x {site_named(s.kind).width or 'n_pos'} = "
            f"{s.universe[0]} x {s.universe[1]}; this model has {cfg.n_layers} x "
            f"{width if width is not None else 'n_pos'}: select the set on this model"
        )
    if not len(s):
        raise InputError(f"the {what} is empty; give at least one member")
    return s


def _check_batches(
    model: HookedModel, clean: Any, corrupted: Any, q_emb: Any
) -> tuple[Any, Any, Any, Tensor | None]:
    from mechir_nig.interventions.perturb import Alignment

    al = None
    if isinstance(clean, Alignment):
        if corrupted is not None or q_emb is not None:
            raise InputError(
                "pass either an Alignment or two aligned batches (and query_embeddings), not both"
            )
        al, clean, corrupted, q_emb = clean, clean.clean, clean.perturbed, clean.query_embeddings
    pairwise = getattr(model, "pairwise", True)
    kind = PairBatch if pairwise else TextBatch
    for name, b in (("clean", clean), ("corrupted", corrupted)):
        if not isinstance(b, kind):
            raise InputError(
                f"{name} must be a {kind.__name__} (or pass an Alignment from perturb.align), got {type(b).__name__}"
            )
    if not pairwise and (q_emb is None or tuple(q_emb.shape) != (len(clean), model.cfg.d_model)):
        raise InputError(
            f"a bi-encoder patches the document side: pass query_embeddings=model.encode(queries) of shape "
            f"({len(clean)}, {model.cfg.d_model}) (perturb.align does), got "
            f"{None if q_emb is None else tuple(q_emb.shape)}"
        )
    if clean.input_ids.shape != corrupted.input_ids.shape:
        raise InputError(
            f"clean {tuple(clean.input_ids.shape)} and corrupted {tuple(corrupted.input_ids.shape)} batches "
            "differ in shape [batch, pos]; align them with perturb.align(model, queries, docs, perturbed)"
        )
    if not torch.equal(clean.attention_mask[:, 0], corrupted.attention_mask[:, 0]) or not bool(
        clean.attention_mask[:, 0].all()
    ):
        raise InputError("position 0 ([CLS]) must be attended in both batches; align with perturb.align")
    dev = model.device
    return clean.to(dev), corrupted.to(dev), al, None if q_emb is None else q_emb.to(dev)


# -- the sweep -------------------------------------------------------------------------------------------
def _grid(kind: str, base: Tensor, src: Tensor | None, mask: Tensor, members: Tensor | None) -> Tensor:
    """Which patch indices can change the result: ``[batch, *index]`` bool (``src=None``: all indices
    at positions attended in the base run); with ``members`` (a set's units of this layer), ``[batch,
    n_members]``."""
    m = mask.bool()
    if src is None:
        src = base + 1  # differs everywhere
    if kind == "pos":
        g = m & (base != src).any(-1)
    elif kind == "head":
        g = ((base != src).any(-1) & m[:, :, None]).any(1)  # [batch, n_heads]
    elif kind == "head_pos":
        return ((base != src).any(-1) & m[:, :, None]).transpose(1, 2)  # [batch, n_heads, pos]
    else:
        g = ((base != src) & m[:, :, None]).any(1)  # neurons: [batch, d_mlp]
    if members is None:
        return g
    if kind == "pos" and int(members.max()) >= g.shape[1]:  # member positions past these pairs: skipped
        g = torch.nn.functional.pad(g, (0, int(members.max()) + 1 - g.shape[1]))
    return g[:, members]


def pos_first(site_name: str, act: Tensor) -> Tensor:
    """``act`` with the position axis second: a pattern-like site's ``[batch, n_heads, query_pos, key_pos]``
    as ``[batch, query_pos, n_heads, key_pos]`` (a head's query row is its unit at a position), other sites
    as they are."""
    s = site_named(site_name)
    return act.transpose(1, 2) if s.unit == "head" and s.unit_axis == 1 else act


def _patch_mask(kind: str, rows: Tensor, n_pos: int, width: int, members: Tensor | None) -> Tensor:
    """Where each patched row writes: ``[rows, pos | 1, units | 1]`` bool, one patch index per row
    (``rows[:, 1:]``: a position; a head (all positions); a head at a position; a neuron (all positions))."""
    r = torch.arange(rows.shape[0], device=rows.device)
    if kind == "pos":
        m = torch.zeros(rows.shape[0], n_pos, 1, dtype=torch.bool, device=rows.device)
        m[r, rows[:, 1] if members is None else members[rows[:, 1]], 0] = True
    elif kind == "head_pos":
        m = torch.zeros(rows.shape[0], n_pos, width, dtype=torch.bool, device=rows.device)
        m[r, rows[:, 2], rows[:, 1]] = True
    else:
        m = torch.zeros(rows.shape[0], 1, width, dtype=torch.bool, device=rows.device)
        m[r, 0, rows[:, 1] if members is None else members[rows[:, 1]]] = True
    return m


def _default_chunk(n_pos: int) -> int:
    return max(1, _TOKENS_PER_CHUNK // max(1, n_pos))


@torch.no_grad()
def patch(
    model: HookedModel,
    clean: Any,
    corrupted: PairBatch | TextBatch | None = None,
    *,
    sites: Any = ("resid_pre",),
    direction: str = "denoise",
    metric: str = "recovery",
    layers: Sequence[int] | None = None,
    chunk_size: int | None = None,
    eps: float = 1e-6,
    skip_unchanged: bool = True,
    query_embeddings: Tensor | None = None,
    joint: bool = False,
) -> PatchingResult:
    """Patch activations between aligned clean and corrupted runs of an encoder (see the module
    docstring for directions, the metric, sites and how it is computed).

    Args:
        model: a ``HookedCrossEncoder``, or a ``HookedBiEncoder`` (the document side is patched, the query
            embeddings stay fixed; score = similarity of the two).
        clean: an :class:`~mechir_nig.interventions.perturb.Alignment`, or the clean ``PairBatch``
            (``TextBatch`` of documents for a bi-encoder).
        corrupted: the corrupted batch of the same ``[batch, pos]`` (with a batch ``clean``).
        sites: a site name, a ``ComponentSet`` or a list of them (``resid_pre``, ``attn_out``,
            ``mlp_out``, ``heads``, ``head_pos``, ``neurons``, ``q``/``k``/``v`` per head and position,
            ``pattern`` per head's query row, the LayerNorm sites ``ln1_scale``, ``ln1_normalized``,
            ``ln2_scale``, ``ln2_normalized`` per position (a patched scale freezes that norm at the
            source run's ``1/sqrt(var + eps)``: an affine map of its input); a set, e.g. a ``NeuronSet``, a head set or a
            ``resid_pre`` position set, is patched member by member: ``neuron_set``, ``head_set``,
            ``resid_pre_set``, one set per call).
        direction: ``"denoise"`` (run corrupted, patch in clean) or ``"noise"`` (run clean, patch in
            corrupted).
        metric: ``"recovery"`` (normalised, NaN where the score does not move) or ``"raw"``
            (``patched − base``); ``PatchingResult.raw``/``recovery`` give either afterwards.
        layers: the layers to patch (default all); ``values``' layer axis follows this order (sorted).
        chunk_size: patched rows per forward (default: about 65k tokens per forward); never changes
            results beyond float rounding.
        eps: ``|source − base|`` below this makes the recovery NaN.
        query_embeddings: a bi-encoder's fixed query embeddings ``[batch, d_model]`` when ``clean`` is a
            batch (an Alignment carries them).
        skip_unchanged: give indices whose source and base activations are equal the base score
            without running them (exact); ``False`` runs them too (a check of the patched runs).
        joint: with a ``ComponentSet`` in ``sites``, also patch **all** its members (in ``layers``) at
            once (neurons and heads at every position): ``values["<key>_joint"]`` ``[batch]``, e.g.
            ``neuron_set_joint`` (how much of the perturbation's effect the set carries together; one
            run from its lowest layer).
    Returns:
        A :class:`PatchingResult`.

    Raises:
        InputError: mismatched batches, an unknown site or direction, layers out of range, a set of
            another model's shape or more than one set, a bad ``chunk_size``.

    Example:
        >>> from mechir_nig.interventions.perturb import align, tfc1
        >>> al = align(ce, queries, docs, tfc1)
        >>> res = patch(ce, al, sites=["heads", top], joint=True)  # top: 20 neurons of layers 4-5
        >>> res["heads"].shape  # [batch, layer, n_heads]
        torch.Size([2, 6, 12])
        >>> res["neuron_set_joint"].shape  # [batch]: the recovery of the whole set
        torch.Size([2])
    """
    job = _prepare(**locals())  # the first statement: locals() are exactly patch's arguments
    return job.result(*job.sweep(job.base, job.source, job.q_emb))


def _prepare(model: HookedModel, clean: Any, corrupted: Any = None, **options: Any) -> _Patching:
    """:func:`patch`'s arguments checked (its keywords and defaults, bound to its signature; the same
    errors): the base and source runs and the sweep that patches them."""
    bound = inspect.signature(patch).bind(model, clean, corrupted, **options)
    bound.apply_defaults()
    a = bound.arguments
    sites, direction, metric, eps = a["sites"], a["direction"], a["metric"], a["eps"]
    check_choice(direction, "direction", DIRECTIONS)
    check_choice(metric, "metric", METRICS)
    chunk_size = check_int(a["chunk_size"], "chunk_size", minimum=1, allow_none=True)
    skip_unchanged = check_bool(a["skip_unchanged"], "skip_unchanged")
    joint = check_bool(a["joint"], "joint")
    eps = check_number(eps, "eps", minimum=0, finite=False)
    site_list = _check_sites(model, sites)
    if joint and all(nset is None for _, nset in site_list):
        raise InputError("joint=True patches a set's members together: put a ComponentSet in sites")
    layer_list = check_layers(a["layers"], model.cfg.n_layers)
    require_hooks(
        model, {_site_info(s, ns)[1].format(layer=layer) for s, ns in site_list for layer in layer_list}
    )
    clean_b, corr_b, al, q_emb = _check_batches(model, clean, corrupted, a["query_embeddings"])

    base, source = (corr_b, clean_b) if direction == "denoise" else (clean_b, corr_b)
    members, member_idx = _members(model, site_list, layer_list)
    return _Patching(
        model,
        base,
        source,
        q_emb,
        al,
        site_list,
        layer_list,
        members,
        member_idx,
        direction,
        metric,
        eps,
        chunk_size,
        skip_unchanged,
        joint,
    )


@dataclass
class _Patching:
    """A checked ``patch`` call (see :func:`_prepare`): the base and source runs and how to sweep them.

    ``patch`` sweeps every pair at once; ``mechir_nig.experiments.patching.patch_study`` sweeps a share of
    the pairs per rank (:meth:`sweep_rows`) and puts the rows back together (:meth:`assemble`);
    :meth:`result` turns either into the :class:`PatchingResult`.
    """

    model: HookedModel
    base: Any
    source: Any
    q_emb: Tensor | None
    al: Any
    site_list: list[tuple[str, Any]]
    layer_list: list[int]
    members: list[tuple[int, int]]
    member_idx: dict[int, Tensor]
    direction: str
    metric: str
    eps: float
    chunk_size: int | None
    skip_unchanged: bool
    joint: bool

    def sweep(self, base: Any, source: Any, q_emb: Tensor | None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Base and source scores ``[batch]`` and the patched scores per site (on the CPU) of these pairs."""
        keys = ("site_list", "layer_list", "member_idx", "chunk_size", "skip_unchanged", "joint")
        return _sweep(self.model, base, source, q_emb, **{k: getattr(self, k) for k in keys})

    def sweep_rows(self, rows: list[int]) -> list[tuple[Tensor, Tensor, dict[str, Tensor]]]:
        """The sweep of the pairs ``rows`` (trimmed to their longest pair), one 1-pair sweep per row."""
        idx = torch.tensor(rows, device=self.model.device)
        n_pos = int(torch.maximum(self.base.lengths, self.source.lengths)[idx].max())  # same width both sides
        b_s, s_s, patched = self.sweep(
            self.base.select(rows, n_pos),
            self.source.select(rows, n_pos),
            None if self.q_emb is None else self.q_emb[idx],
        )
        return [  # copies: a gathered row sends only itself
            (
                b_s[j : j + 1].clone(),
                s_s[j : j + 1].clone(),
                {k: v[j : j + 1].clone() for k, v in patched.items()},
            )
            for j in range(len(rows))
        ]

    def assemble(
        self, rows: Sequence[tuple[Tensor, Tensor, dict[str, Tensor]]]
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """One sweep of every pair from the rows of :meth:`sweep_rows`, in pair order."""
        parts = [([i], row) for i, row in enumerate(rows)]
        cfg = self.model.cfg
        return _assemble(
            parts, self.site_list, cfg, len(self.base), len(self.layer_list), self.base, len(self.members)
        )

    def result(
        self, base_scores: Tensor, source_scores: Tensor, patched: dict[str, Tensor]
    ) -> PatchingResult:
        """The :class:`PatchingResult` of a sweep of every pair."""
        check_finite(self.model, "patching scores", base_scores, source_scores, *patched.values())
        clean_scores, corr_scores = (
            (source_scores, base_scores) if self.direction == "denoise" else (base_scores, source_scores)
        )
        b_s, s_s = base_scores.float().cpu(), source_scores.float().cpu()
        flat = ((s_s - b_s).abs() < self.eps).nonzero().flatten().tolist()
        if self.metric == "recovery" and flat:
            warnings.warn(
                f"the perturbation does not move the score (|source - base| < eps={self.eps}) of pairs {flat}; "
                "their recovery is NaN (use metric='raw' for score differences)",
                NoScoreChangeWarning,
                stacklevel=3,
            )
        values = {
            k: (_recovery(v, b_s, s_s, self.eps) if self.metric == "recovery" else v - _bcast(b_s, v))
            for k, v in patched.items()
        }
        return PatchingResult(
            values=values,
            patched=patched,
            clean_scores=clean_scores.float().cpu(),
            corrupted_scores=corr_scores.float().cpu(),
            layers=self.layer_list,
            direction=self.direction,
            metric=self.metric,
            eps=float(self.eps),
            base_mask=self.base.attention_mask.cpu(),
            groups=self.base.groups.cpu(),
            changed=None if self.al is None else self.al.changed.cpu(),
            clean_tokens=[] if self.al is None else self.al.clean_tokens,
            corrupted_tokens=[] if self.al is None else self.al.perturbed_tokens,
            members=self.members if any(nset is not None for _, nset in self.site_list) else [],
        )


def _members(
    model: HookedModel, site_list: list[tuple[str, Any]], layer_list: list[int]
) -> tuple[list[tuple[int, int]], dict[int, Tensor]]:
    """A set site's members in ``layer_list`` (values' order) and their unit indices per layer."""
    for site, nset in site_list:
        if nset is None:
            continue
        members = [m for m in nset if m[0] in layer_list]
        if not members:
            raise InputError(f"the {site} has no member in layers {layer_list}; pass layers=None")
        member_idx = {
            layer: torch.tensor([n for lyr, n in members if lyr == layer], device=model.device)
            for layer in sorted({m[0] for m in members})
        }
        return members, member_idx
    return [], {}


def _sweep(
    model: HookedModel,
    base: Any,
    source: Any,
    q_emb: Tensor | None,
    *,
    site_list: list[tuple[str, Any]],
    layer_list: list[int],
    member_idx: dict[int, Tensor],
    chunk_size: int | None,
    skip_unchanged: bool,
    joint: bool,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """:meth:`_Patching.sweep` (its fields as keywords)."""

    def score(out: Tensor, rows: Tensor | None = None) -> Tensor:  # a bi-encoder's output is an embedding
        if q_emb is None:
            return out
        return (out * (q_emb if rows is None else q_emb[rows])).sum(-1)

    hook_names = {_site_info(s, ns)[1].format(layer=layer) for s, ns in site_list for layer in layer_list}
    resid_names = {hook_name("resid_pre", layer) for layer in layer_list}
    base_out, base_cache = model.run_with_cache(
        base, names_filter=lambda n: n in hook_names | resid_names, return_cache_object=False
    )
    source_out, source_cache = model.run_with_cache(
        source, names_filter=lambda n: n in hook_names, return_cache_object=False
    )
    base_scores, source_scores = score(base_out), score(source_out)
    n_pos = base.input_ids.shape[1]
    n_members = sum(len(v) for v in member_idx.values())
    patched: dict[str, Tensor] = {}
    for site, nset in site_list:
        site_name, template, kind = _site_info(site, nset)
        out = _empty(
            "set" if nset is not None else kind,
            model.cfg,
            len(base),
            len(layer_list),
            n_pos,
            n_members,
            base_scores,
        )
        offset = 0
        for li, layer in enumerate(layer_list):
            if nset is not None and layer not in member_idx:
                continue
            name = template.format(layer=layer)
            b_act, s_act = pos_first(site_name, base_cache[name]), pos_first(site_name, source_cache[name])
            mem = member_idx.get(layer) if nset is not None else None
            valid = _grid(kind, b_act, s_act if skip_unchanged else None, base.attention_mask, mem)
            rows = valid.nonzero()
            resid = base_cache[hook_name("resid_pre", layer)]
            step = chunk_size or _default_chunk(n_pos)
            width = 1 if kind == "pos" else b_act.shape[-1 if kind == "neuron" else 2]
            for c in range(0, rows.shape[0], step):
                r = rows[c : c + step]
                b = r[:, 0]
                scores = score(
                    _run_rows(model, base, resid, source_cache, site_name, layer, kind, r, width, mem), b
                )
                if nset is not None:
                    out[b, offset + r[:, 1]] = scores.to(out.dtype)
                else:
                    out[(b, torch.full_like(b, li), *r[:, 1:].unbind(1))] = scores.to(out.dtype)
            if mem is not None:
                offset += len(mem)
        patched[site] = out.cpu()
        if nset is not None and joint:
            inside = _within(kind, member_idx, n_pos)  # no member inside these pairs: the base score
            patched[f"{site}_joint"] = (
                _patch_jointly(model, base, base_cache, source_cache, site_name, inside, score).cpu()
                if inside
                else base_scores.float().cpu().clone()
            )
    return base_scores.float().cpu(), source_scores.float().cpu(), patched


def _run_rows(
    model: HookedModel,
    base: Any,
    resid: Tensor,
    source_cache: dict[str, Tensor],
    site_name: str,
    layer: int,
    kind: str,
    rows: Tensor,
    width: int,
    members: Tensor | None = None,
) -> Tensor:
    """The model's output for patched rows ``rows`` (``[n, 1 + index]``: the pair, then the patch index of
    ``kind``) at site ``site_name`` of ``layer``: one row each, from the base run's cached ``resid``
    (``resid_pre`` of ``layer``), trimmed to the rows' longest pair."""
    b = rows[:, 0]
    span = int(base.lengths[b].max())
    mask = _patch_mask(kind, rows, span, width, members)
    writer = Intervention(site_name, layer, Source(source_cache, b), mask=mask)
    out: Tensor = model.run_with_hooks(
        None,
        base.token_type_ids[b, :span],
        base.attention_mask[b, :span],
        residual=resid[b, :span],
        start_at_layer=layer,
        **_positions(base, b, span),
        fwd_hooks=Engine(model, [writer]).hooks(),
    )
    return out


def _assemble(
    parts: list[tuple[list[int], Any]],
    site_list: list[tuple[str, Any]],
    cfg: Any,
    n_batch: int,
    n_layer: int,
    base: Any,
    n_members: int,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """The ranks' sweeps (``(pair indices, _sweep output)`` in rank order) as one sweep of all pairs, in
    the original pair order; a rank's rows are trimmed to its longest pair, so positions past it get the
    base score (what a masked position gets)."""
    base_scores = torch.empty(n_batch)
    source_scores = torch.empty(n_batch)
    for idx, part in parts:
        if part is not None:
            base_scores[idx], source_scores[idx] = part[0], part[1]
    n_pos = base.input_ids.shape[1]
    patched: dict[str, Tensor] = {}
    keys: list[tuple[str, str]] = []  # in the order one process fills them (the joint run after its set)
    for site, nset in site_list:
        keys.append((site, SITES[site][1] if nset is None else "set"))
        if nset is not None:
            keys.append((f"{site}_joint", "joint"))
    for key, kind in keys:
        if not any(part is not None and key in part[2] for _, part in parts):
            continue
        full = (
            base_scores.clone()
            if kind == "joint"
            else _empty(kind, cfg, n_batch, n_layer, n_pos, n_members, base_scores)
        )
        for idx, part in parts:
            if part is None:
                continue
            v = part[2][key]
            if kind in ("pos", "head_pos"):  # position is the last axis
                full[idx, ..., : v.shape[-1]] = v
            else:
                full[idx] = v
        patched[key] = full
    return base_scores, source_scores, patched


def _within(kind: str, member_idx: dict[int, Tensor], n_pos: int) -> dict[int, Tensor]:
    """A position set's members inside these pairs' ``n_pos`` positions (other kinds: all of them)."""
    if kind != "pos":
        return member_idx
    kept = {layer: idx[idx < n_pos] for layer, idx in member_idx.items()}
    return {layer: idx for layer, idx in kept.items() if len(idx)}


def _patch_jointly(
    model: HookedModel,
    base: Any,
    base_cache: dict[str, Tensor],
    source_cache: dict[str, Tensor],
    site_name: str,
    member_idx: dict[int, Tensor],
    score: Callable[..., Tensor],
) -> Float[Tensor, " batch"]:
    """Scores of the base run with every member (a neuron or head at every position, or a position) set
    to its source activation at site ``site_name``, started at the set's lowest layer from the base run's
    cached residual stream."""
    first = min(member_idx)
    source = Source(source_cache)
    writers = [Intervention(site_name, layer, source, units=idx) for layer, idx in sorted(member_idx.items())]
    out = model.run_with_hooks(
        None,
        base.token_type_ids,
        base.attention_mask,
        residual=base_cache[hook_name("resid_pre", first)],
        start_at_layer=first,
        **_positions(base, None, None),
        fwd_hooks=Engine(model, writers).hooks(),
    )
    return score(out).float()


def _positions(base: Any, rows: Tensor | None, span: int | None) -> dict[str, Any]:
    """``position_ids`` for a run started inside the blocks: the base batch's explicit positions (an
    aligned input) for ``rows`` (all: ``None``), trimmed to ``span``; empty where it has none. Relative
    and rotary positions are computed in every block, so a run started at a later layer needs them."""
    pos = getattr(base, "position_ids", None)
    if pos is None:
        return {}
    return {"position_ids": (pos if rows is None else pos[rows])[:, :span]}


def _empty(
    kind: str, cfg: Any, n_batch: int, n_layer: int, n_pos: int, n_members: int, base: Tensor
) -> Tensor:
    """Patched scores initialised to the base score (what a skipped patch gets; ``kind="set"``: a set's
    ``[batch, n_members]``)."""
    if kind == "set":
        shape: tuple[int, ...] = (n_batch, n_members)
    elif kind == "pos":
        shape = (n_batch, n_layer, n_pos)
    elif kind == "head":
        shape = (n_batch, n_layer, cfg.n_heads)
    elif kind == "head_pos":
        shape = (n_batch, n_layer, cfg.n_heads, n_pos)
    else:
        shape = (n_batch, n_layer, cfg.d_mlp)
    b = base.float()
    return b.reshape(-1, *([1] * (len(shape) - 1))).expand(shape).clone()
