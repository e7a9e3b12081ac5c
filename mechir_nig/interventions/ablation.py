"""Ablation of MLP neurons and attention heads through hooks: zero, mean, resample and NIG-baseline.

``ablate(model, components, mode=..., positions=...)`` is a context manager: inside it every forward
pass of ``model`` replaces the activations of ``components`` (a :class:`~mechir_nig.sets.NeuronSet` on
``blocks.{l}.mlp.hook_post`` ``[batch, pos, d_mlp]``, or a head :class:`~mechir_nig.sets.ComponentSet` on
``blocks.{l}.attn.hook_z`` ``[batch, pos, n_heads, d_head]``, or a set of any other site of
:mod:`mechir_nig.sites`, e.g. ``resid_pre`` positions). One hook per layer writes the selected indices
through the intervention engine (:mod:`mechir_nig.interventions.engine`, the writer ``patch`` and
``faithfulness`` use; no loop over neurons). Hooks are added with ``model.hooks(...)`` and removed on exit
and after an exception. :func:`ablation_hooks` returns the same hooks as
``[(hook_name, fn)]`` for ``model.run_with_hooks(batch, fwd_hooks=...)``.

Modes (the replacement value):

- ``zero``: ``0``.
- ``mean``: the token-mean activation over a reference set of inputs (:class:`AblationReference`,
  computed once, saved and loaded with ``save``/``load``).
- ``resample``: the token-mean activation of one reference input per row, drawn with ``seed``.
- ``baseline``: the activation of the NIG baseline input (``pad``: query and document tokens replaced by
  ``[PAD]``, ``[CLS]``/``[SEP]``, positions, token types and mask kept) of the **same** row at the same
  position: the counterfactual NIG integrates towards (Vast et al., ICTIR 2024). Each forward first runs
  a baseline pass of its batch's distinct baseline rows not seen before (up to the last ablated layer,
  with the batch's ``position_ids``), so a forward costs up to twice as much; ``ablation_hooks(...,
  batch=batch)`` is bound to that batch.

Positions: ``"all"`` (every position, padding included), ``"cls"``, ``"query"``, ``"doc"`` (the token
groups of the batch; a bi-encoder text's tokens are ``doc``) or a ``[batch, pos]`` bool tensor (for one
batch run as a whole, e.g. ``model(batch)``; ``model.score`` re-batches by length, so use groups there).

Bi-encoders: ``side`` names the encoded side(s) to ablate (``"both"``, default, ``"query"`` or ``"doc"``).
A text batch does not say which side it is, so ``side`` is honoured by the context's own scoring
helpers, :meth:`Ablation.encode` and :meth:`Ablation.score`; a plain ``model.encode`` inside the block
ablates every pass.

Example:
    >>> with ablate(ce, top, mode="zero", positions="doc") as ab:  # top: 20 neurons of layers 4-5
    ...     scores = ab.score(queries, docs)
    >>> scores.shape, torch.allclose(scores, ce.score(queries, docs))  # [n]; the scores move
    (torch.Size([2]), False)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from jaxtyping import Float
from torch import Tensor

from mechir_nig._validate import check_choice, check_int
from mechir_nig.errors import InputError
from mechir_nig.interventions.engine import (
    Baseline,
    Engine,
    Frame,
    Intervention,
    Mean,
    Resample,
    Value,
    Zero,
    is_batch,
)
from mechir_nig.models.protocol import BiEncoderModel, HookedModel
from mechir_nig.models.tokenization import PAD
from mechir_nig.results import Result
from mechir_nig.sets.components import ComponentSet
from mechir_nig.sites import hook_name, site

__all__ = [
    "MODES",
    "POSITIONS",
    "SIDES",
    "Ablation",
    "AblationReference",
    "BaselineActivity",
    "ablate",
    "ablation_hooks",
    "baseline_active",
]

MODES = ("zero", "mean", "resample", "baseline")
POSITIONS = ("all", "cls", "query", "doc", "prompt")  # prompt: a templated family's template text
SIDES = ("both", "query", "doc")


def _hook_names(model: HookedModel) -> list[str]:
    """The hooks an :class:`AblationReference` covers: every ``mlp_post`` and ``z``."""
    return [hook_name(s, i) for s in ("mlp_post", "z") for i in range(model.cfg.n_layers)]


def check_components(model: HookedModel, components: Any) -> ComponentSet:
    """``components`` if it is a set of ``model``'s components (MLP neurons, heads, or units of any site of
    :mod:`mechir_nig.sites`, positions at most ``n_ctx``), else an InputError saying what differs."""
    if not isinstance(components, ComponentSet):
        raise InputError(
            f"components must be a NeuronSet or a ComponentSet of heads, got {type(components).__name__}; "
            "build one with select_top(...) or NeuronSet(pairs, n_layers=..., d_mlp=...)"
        )
    cfg = model.cfg
    axis = site(components.kind).width
    width = int(cfg.n_ctx if axis is None else getattr(cfg, axis))
    fits = components.width <= width if axis is None else components.width == width
    if components.n_layers != cfg.n_layers or not fits:
        axis = axis or "n_ctx"
        raise InputError(
            f"components are a {components.n_layers} x {components.width} ({axis}) set but the model has "
            f"n_layers={cfg.n_layers}, {axis}={width}: select the set from this model's attribution"
        )
    return components


# -- reference activations ---------------------------------------------------------------------------------
@dataclass
class AblationReference(Result):
    """Token-mean activations of reference inputs at every ``mlp.hook_post`` and ``attn.hook_z``.

    ``per_input[name]`` is ``[n_ref, d_mlp]`` or ``[n_ref, n_heads, d_head]``: the mean over each
    reference input's attended tokens; ``tokens`` ``[n_ref]`` their counts. ``mean(name)`` is the mean
    over all reference tokens (the ``mean`` mode), a row of ``per_input`` the ``resample`` value.
    Compute once with :meth:`compute`, keep with :meth:`save` / :meth:`load` (safetensors and a JSON
    sidecar, checksummed: ``mechir_nig.results``; the ``torch.save`` files of earlier versions are
    refused, saying to compute the reference again).

    Example:
        >>> ref = AblationReference(
        ...     {"blocks.0.mlp.hook_post": torch.tensor([[1.0, 2.0], [3.0, 4.0]])},  # [n_ref, d_mlp]
        ...     tokens=torch.tensor([1, 3]),  # [n_ref] attended tokens of each reference input
        ...     n_layers=1,
        ...     d_mlp=2,
        ...     n_heads=1,
        ... )
        >>> ref.mean("blocks.0.mlp.hook_post").tolist()  # [d_mlp], weighted by token counts
        [2.5, 3.5]
        >>> ref = AblationReference.compute(ce, ["what is a cell", "why is the sky blue"], docs)
        >>> with ablate(ce, top, mode="mean", reference=ref) as ab:
        ...     scores = ab.score(queries, docs)
        >>> scores.shape  # [n]
        torch.Size([2])
    """

    per_input: dict[str, Tensor]
    tokens: Tensor
    n_layers: int
    d_mlp: int
    n_heads: int
    model: str = ""
    _means: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if len(self.tokens) == 0 or int(self.tokens.sum()) == 0:
            raise InputError(
                "the ablation reference is empty: pass at least one non-empty reference text or pair"
            )

    def __len__(self) -> int:
        return len(self.tokens)

    def mean(self, name: str) -> Tensor:
        """Mean activation over every reference token at hook ``name`` (cached)."""
        if name not in self._means:
            w = self.tokens.to(torch.float64)
            x = self.per_input[name].to(torch.float64)
            self._means[name] = (x * w.view(-1, *([1] * (x.ndim - 1)))).sum(0) / w.sum()
        return self._means[name]

    def check_model(self, model: HookedModel) -> None:
        cfg = model.cfg
        if (self.n_layers, self.d_mlp, self.n_heads) != (cfg.n_layers, cfg.d_mlp, cfg.n_heads):
            raise InputError(
                f"the reference was computed on a model with n_layers={self.n_layers}, d_mlp={self.d_mlp}, "
                f"n_heads={self.n_heads}; this model has {cfg.n_layers}, {cfg.d_mlp}, {cfg.n_heads}: "
                "compute the reference with this model (AblationReference.compute)"
            )

    @classmethod
    @torch.no_grad()
    def compute(
        cls,
        model: HookedModel,
        queries: Sequence[str],
        docs: Sequence[str] | None = None,
        *,
        batch_size: int = 16,
    ) -> AblationReference:
        """Reference activations of (query, doc) pairs (cross-encoder) or texts (bi-encoder: ``docs`` if
        given, else ``queries``), one cached forward per batch of ``batch_size``."""
        check_int(batch_size, "batch_size", minimum=1)
        if len(queries) == 0 or (docs is not None and len(docs) == 0):
            raise InputError("the ablation reference is empty: pass at least one reference pair or text")
        if model.pairwise:
            if docs is None or len(docs) != len(queries):
                raise InputError("a cross-encoder reference needs queries and docs of the same length")
            batch = model.tokenize(list(queries), list(docs))
        else:
            texts = list(docs if docs is not None else queries)
            if not texts:
                raise InputError("the ablation reference is empty: pass at least one reference text")
            batch = model.tokenize(texts)
        if len(batch) == 0:
            raise InputError("the ablation reference is empty: pass at least one reference pair")
        names = _hook_names(model)
        parts: dict[str, list[Tensor]] = {n: [] for n in names}
        counts = []
        for start in range(0, len(batch), batch_size):
            sub = batch.select(torch.arange(start, min(start + batch_size, len(batch))))
            _, cache = model.run_with_cache(sub, names_filter=lambda n: n in parts, return_cache_object=False)
            m = (sub.groups != PAD).to(torch.float64)
            counts.append(m.sum(1).cpu())
            for n in names:
                a = cache[n].to(torch.float64)
                w = m.view(*m.shape, *([1] * (a.ndim - 2)))
                parts[n].append(((a * w).sum(1) / w.sum(1).clamp(min=1)).cpu())
        cfg = model.cfg
        return cls(
            {n: torch.cat(v) for n, v in parts.items()},
            torch.cat(counts),
            cfg.n_layers,
            cfg.d_mlp,
            cfg.n_heads,
            model=str(getattr(cfg, "model_name", "")),
        )

    # -- persistence (``mechir_nig.results.Result``: save, load) -------------------------------------
    KIND = "AblationReference"
    WHAT = "ablation reference"

    @classmethod
    def from_parts(cls, tensors: dict[str, Tensor], info: dict[str, Any]) -> AblationReference:
        """``Result.from_parts`` checking that every ``per_input`` tensor is ``[n_ref, ...]``."""
        result = super().from_parts(tensors, info)
        if result.tokens.ndim != 1:
            raise ValueError(f"tokens is {tuple(result.tokens.shape)}, not [n_ref]")
        bad = [n for n, t in result.per_input.items() if t.ndim < 2 or len(t) != len(result.tokens)]
        if bad:
            raise ValueError(f"per_input {bad[:3]} are not [n_ref={len(result.tokens)}, ...] tensors")
        return result


# -- the interventions --------------------------------------------------------------------------------------
def _value(model: HookedModel, mode: str, reference: Any, seed: int, baseline: Any) -> Value:
    if mode == "zero":
        return Zero()
    if mode == "mean":
        return Mean(reference)
    if mode == "resample":
        return Resample(reference, seed)
    return Baseline(model, baseline)


def interventions(
    components: ComponentSet, value: Value, positions: str | Tensor = "all", mask: Tensor | None = None
) -> list[Intervention]:
    """One :class:`~mechir_nig.interventions.engine.Intervention` per layer of ``components`` (its units
    the set's indices), all writing ``value``; an empty set gives none."""
    return [
        Intervention(components.kind, layer, value, units=torch.tensor(idx), positions=positions, mask=mask)
        for layer, idx in (components.by_layer() if len(components) else {}).items()
    ]


def _check(
    model: HookedModel,
    components: Any,
    mode: str,
    positions: Any,
    reference: Any,
    side: str,
    seed: int,
    baseline: Any,
) -> ComponentSet:
    components = check_components(model, components)
    check_choice(mode, "mode", MODES)
    check_choice(side, "side", SIDES)
    check_int(seed, "seed")
    if isinstance(positions, Tensor):
        if positions.dtype != torch.bool or positions.ndim != 2:
            raise InputError(
                f"positions mask must be a [batch, pos] bool tensor, got dtype {positions.dtype} and shape "
                f"{tuple(positions.shape)}"
            )
    else:
        check_choice(positions, "positions", POSITIONS)
        if positions == "query" and not model.pairwise:
            raise InputError(
                "a bi-encoder text has no query group: use side='query' (and positions='all' or 'doc')"
            )
    if model.pairwise and side != "both":
        raise InputError("side applies to bi-encoders only; a cross-encoder scores one joint input")
    if mode in ("mean", "resample"):
        if reference is None:
            raise InputError(
                f"mode={mode!r} needs reference=AblationReference.compute(model, reference_queries, reference_docs)"
            )
        if not isinstance(reference, AblationReference):
            raise InputError(f"reference must be an AblationReference, got {type(reference).__name__}")
        if components.kind not in ("mlp", "head"):
            raise InputError(
                f"an AblationReference holds MLP neurons and heads: ablate a {components.kind!r} set with "
                "mode 'zero' or 'baseline'"
            )
        reference.check_model(model)
    elif reference is not None:
        raise InputError(f"reference= is used by modes 'mean' and 'resample' only, not {mode!r}")
    if mode == "baseline":
        from mechir_nig.attribution.baselines import check_baseline

        check_baseline(baseline)
    return components


def ablation_hooks(
    model: HookedModel,
    components: ComponentSet,
    *,
    mode: str = "zero",
    positions: str | Tensor = "all",
    reference: AblationReference | None = None,
    batch: Any = None,
    seed: int = 0,
    baseline: str = "pad",
) -> list[tuple[str, Any]]:
    """The ablation as ``[(hook_name, fn)]`` for ``model.run_with_hooks(batch, fwd_hooks=...)``.

    The hooks are bound to ``batch=`` (the batch you will run): token-group positions and
    ``mode='baseline'`` need it (its baseline rows are run once, when the hooks first run). See
    :func:`ablate` for the arguments (a ``positions`` mask is ``[batch, pos]`` bool; each hook rewrites
    ``[batch, pos, d_mlp]`` or ``[batch, pos, n_heads, d_head]`` activations).

    Example:
        >>> hooks = ablation_hooks(ce, top, mode="baseline", batch=batch)
        >>> scores = ce.run_with_hooks(batch, fwd_hooks=hooks)
        >>> with ablate(ce, top, mode="baseline"):
        ...     same = ce(batch)
        >>> torch.allclose(scores, same, atol=1e-6)  # the hooks are the context's ablation
        True
    """
    components = _check(model, components, mode, positions, reference, "both", seed, baseline)
    if batch is not None and not is_batch(batch):
        raise InputError("batch= must be a tokenized batch (model.tokenize(...))")
    value = _value(model, mode, reference, seed, baseline)
    return Engine(model, interventions(components, value, positions), batch=batch, follow=False).hooks()


class Ablation:
    """The context returned by :func:`ablate`; a :class:`~mechir_nig.models.protocol.Scorer` that scores
    with the bi-encoder ``side`` honoured.

    ``score`` returns ``[n]`` scores of ``n`` pairs, ``encode`` ``[n, d_model]`` embeddings.

    Example:
        >>> with ablate(be, top, side="doc") as ab:
        ...     scores = ab.score(queries, docs)  # [n]: only the document side is ablated
        ...     q = ab.encode(queries, side="query")  # the query side is not
        >>> scores.shape, torch.allclose(q, be.encode(queries), atol=1e-6)
        (torch.Size([2]), True)
    """

    sides = ("query", "doc")

    def __init__(
        self,
        model: HookedModel,
        components: ComponentSet,
        mode: str,
        positions: str | Tensor,
        reference: Any,
        side: str,
        seed: int,
        baseline: Any,
    ) -> None:
        self.model = model
        self.components = components
        self.mode = mode
        self.positions = positions
        self.side = side
        value = _value(model, mode, reference, seed, baseline)
        self.engine = Engine(model, interventions(components, value, positions))

    def __enter__(self) -> Ablation:
        self.engine.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.engine.__exit__(*exc)

    @property
    def pairwise(self) -> bool:
        """The model's ``pairwise`` (so ``evaluation.rerank(ab, ...)`` treats the context as the model)."""
        return bool(self.model.pairwise)

    def similarity_fn(
        self, q: Float[Tensor, "n d_model"], d: Float[Tensor, "n d_model"]
    ) -> Float[Tensor, " n"]:
        """The bi-encoder's similarity of encoded rows."""
        return cast(BiEncoderModel, self.model).similarity_fn(q, d)

    @torch.no_grad()
    def encode(
        self, texts: Sequence[str], *, side: str = "doc", batch_size: int = 32
    ) -> Float[Tensor, "n d_model"]:
        """Bi-encoder embeddings of ``texts`` as the ``side`` (``"query"``/``"doc"``), ablated if the
        ablation covers that side."""
        check_choice(side, "side", self.sides)
        previous = self.engine.active
        self.engine.active = self.side in ("both", side)
        try:
            return cast(BiEncoderModel, self.model).encode(list(texts), batch_size=batch_size)
        finally:
            self.engine.active = previous

    @torch.no_grad()
    def score(
        self, queries: Sequence[str], docs: Sequence[str], *, batch_size: int = 32
    ) -> Float[Tensor, " n"]:
        """Scores of the pairs under the ablation (a bi-encoder ablates only ``side``; each distinct text
        is encoded once)."""
        if self.model.pairwise:
            return self.model.score(list(queries), list(docs), batch_size=batch_size)

        def embed(texts: list[str], side: str) -> Tensor:
            unique = list(dict.fromkeys(texts))
            row = {t: i for i, t in enumerate(unique)}
            return self.encode(unique, side=side, batch_size=batch_size)[
                torch.tensor([row[t] for t in texts])
            ]

        return cast(BiEncoderModel, self.model).similarity_fn(
            embed(list(queries), "query"), embed(list(docs), "doc")
        )


def ablate(
    model: HookedModel,
    components: ComponentSet,
    *,
    mode: str = "zero",
    positions: str | Tensor = "all",
    reference: AblationReference | None = None,
    side: str = "both",
    seed: int = 0,
    baseline: str = "pad",
) -> Ablation:
    """Ablate ``components`` in every forward pass of ``model`` inside a ``with`` block.

    Args:
        model: a ``HookedCrossEncoder`` or ``HookedBiEncoder``.
        components: a ``NeuronSet`` (``mlp.hook_post``) or a head ``ComponentSet`` (``attn.hook_z``) of
            this model's shape; an empty set ablates nothing.
        mode: ``"zero"``, ``"mean"``, ``"resample"`` or ``"baseline"`` (see the module docstring).
        positions: ``"all"``, ``"cls"``, ``"query"``, ``"doc"`` or a ``[batch, pos]`` bool mask.
        reference: an :class:`AblationReference` (modes ``mean`` and ``resample`` only).
        side: bi-encoders: ``"both"``, ``"query"`` or ``"doc"`` (honoured by ``Ablation.encode/score``).
        seed: seed of the ``resample`` draws (one generator per context; draws follow the forward order).
        baseline: the NIG baseline of ``mode='baseline'`` (``"pad"`` by default, as NIG).

    Returns:
        An :class:`Ablation` context (``with ablate(...) as ab: ab.score(queries, docs)``).

    Raises:
        InputError: for a set of another model's shape, an unknown mode/positions/side, a missing or empty
            reference, a reference of another model, or (at run time) a positions mask of the wrong shape.

    Example:
        >>> from mechir_nig.sets import NeuronSet
        >>> top = NeuronSet([(5, 120), (5, 7)], n_layers=6, d_mlp=1536)
        >>> with ablate(ce, top, mode="zero", positions="doc") as ab:
        ...     pruned = ab.score(queries, docs)  # [n]
        >>> with ablate(ce, top, mode="baseline"):
        ...     scores = ce(batch)  # [batch]: every forward inside the block is ablated
    """
    components = _check(model, components, mode, positions, reference, side, seed, baseline)
    return Ablation(model, components, mode, positions, reference, side, seed, baseline)


# -- baseline-active neurons --------------------------------------------------------------------------------
@dataclass
class BaselineActivity:
    """Mean activation of each selected neuron on the inputs and on their NIG baseline inputs.

    ``input_mean`` / ``baseline_mean``: ``[n]`` token means (attended tokens) over every input, in the
    order of ``neurons`` (``[(layer, neuron)]``); ``active`` flags ``|baseline_mean| > threshold``.
    ``active_set`` holds the flagged neurons and ``filtered`` the selection without them.

    Example:
        >>> report = baseline_active(ce, queries, docs, top, threshold=0.1)
        >>> report.baseline_mean.shape  # [n]: one mean per selected neuron
        torch.Size([20])
        >>> top = report.filtered  # the selection without baseline-active neurons
    """

    neurons: list[tuple[int, int]]
    input_mean: Tensor
    baseline_mean: Tensor
    threshold: float
    active_set: ComponentSet
    filtered: ComponentSet

    @property
    def active(self) -> Tensor:
        return self.baseline_mean.abs() > self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "neurons": [
                {
                    "layer": layer,
                    "neuron": n,
                    "input_mean": float(a),
                    "baseline_mean": float(b),
                    "active": bool(f),
                }
                for (layer, n), a, b, f in zip(
                    self.neurons, self.input_mean, self.baseline_mean, self.active, strict=True
                )
            ],
        }


@torch.no_grad()
def baseline_active(
    model: HookedModel,
    queries: Sequence[str],
    docs: Sequence[str],
    components: ComponentSet,
    *,
    threshold: float = 0.1,
    baseline: str = "pad",
    batch_size: int = 16,
) -> BaselineActivity:
    """Report which selected MLP neurons are active on the NIG baseline input (and filter them out).

    A neuron strongly active on the ``[PAD]`` baseline has NIG measured against a non-zero reference;
    zero-ablating it and baseline-ablating it are then different interventions. For a bi-encoder the
    ``docs`` side is encoded (the side NIG interpolates by default).

    Args:
        threshold: flag neurons whose mean baseline activation has ``|mean| > threshold``.

    Returns:
        :class:`BaselineActivity` with the per-neuron means (``[n]`` for ``n`` selected neurons), the
        flagged set and the filtered selection.

    Example:
        >>> report = baseline_active(ce, queries, docs, top)
        >>> flagged = report.active_set  # neurons with |baseline mean| > 0.1
        >>> import json
        >>> text = json.dumps(report.to_dict())  # per-neuron means, JSON-ready
    """
    components = check_components(model, components)
    if components.kind != "mlp":
        raise InputError("baseline_active reports MLP neurons: pass a NeuronSet")
    check_int(batch_size, "batch_size", minimum=1)
    batch = model.tokenize(list(queries), list(docs)) if model.pairwise else model.tokenize(list(docs))
    hooks = components.to_hook_names()
    sums = {n: torch.zeros(2, len(i), dtype=torch.float64) for n, i in hooks.items()}
    total = 0.0
    value = Baseline(model, baseline)  # the baseline pass of ablate(mode="baseline"), position ids included
    engine = Engine(model, interventions(components, value))
    for start in range(0, len(batch), batch_size):
        sub = batch.select(torch.arange(start, min(start + batch_size, len(batch))))
        m = (sub.groups != PAD).to(torch.float64).unsqueeze(-1).cpu()
        total += float(m.sum())
        _, cache = model.run_with_cache(sub, names_filter=lambda n: n in hooks, return_cache_object=False)
        frame = Frame(None, sub)
        value.begin(engine, frame)
        for row, acts in enumerate((cache, frame.store[value])):
            for n, idx in hooks.items():
                sums[n][row] += (acts[n][..., idx].to(torch.float64).cpu() * m).sum((0, 1))
    neurons = [(int(n.split(".")[1]), i) for n, idx in hooks.items() for i in idx]
    means = torch.cat([sums[n] for n in hooks], dim=1) / max(total, 1.0)
    flagged = means[1].abs() > threshold
    active = ComponentSet.from_mask(_mask_of(components, neurons, flagged), kind="mlp")
    return BaselineActivity(neurons, means[0], means[1], float(threshold), active, components - active)


def _mask_of(components: ComponentSet, neurons: list[tuple[int, int]], keep: Tensor) -> Tensor:
    mask = torch.zeros(components.n_layers, components.width, dtype=torch.bool)
    if neurons:
        lay = torch.tensor([n[0] for n in neurons])
        idx = torch.tensor([n[1] for n in neurons])
        mask[lay[keep], idx[keep]] = True
    return mask
