"""The intervention engine: *where* (a site, a layer, units, positions, rows) and *what value*, one writer.

An :class:`Intervention` names where it writes (a site of :mod:`mechir_nig.sites` and a layer, the
``units`` of the site's unit axis, the ``positions`` and a per-row ``mask``) and a :class:`Value`, the
source of what it writes. The value sources are siblings (as pyvene's single intervention hierarchy
has zero ablation and interchange side by side):

==================  ==========================================================================
value               written at the selected units
==================  ==========================================================================
:class:`Zero`       ``0``
:class:`Mean`       the token mean over a reference set (an ``AblationReference``)
:class:`Resample`   the token mean of one reference input per row, drawn once per forward
:class:`Baseline`   the activation of the row's NIG baseline input (one baseline pass per forward,
                    each distinct baseline row run once and kept)
:class:`Source`     another run's cached activation (patching), row ``rows[i]`` into row ``i``
:class:`Function`   ``fn(act, hook)``: any value of the activation's shape
==================  ==========================================================================

:func:`write` is the one hook writer: ``torch.where(where, value, act)``, with ``where`` a bool mask in
the site-independent layout ``[batch, pos, units]`` (``units`` = 1 for position sites) turned into the
site's own layout. Per-row masks let many interventions run as rows of one batch (one row per
(pair, neuron), per patch index ...). An :class:`Engine` holds interventions, gives their hooks
(``engine.hooks()`` for ``run_with_hooks``, or ``with engine:`` for every forward inside the block) and
reads the batch of each forward from the model's :func:`~mechir_nig.models.protocol.current_forward`.

Example:
    >>> import torch
    >>> act = torch.ones(2, 3, 4)  # [batch, pos, d_mlp]
    >>> rows = torch.tensor([[[True, False, False, False]], [[False, True, False, False]]])  # [2, 1, 4]
    >>> write(act, "mlp_post", rows, torch.tensor(0.0))[:, 0].tolist()  # one neuron per row
    [[0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 1.0]]
    >>> it = Intervention("mlp_post", 1, Zero(), units=torch.tensor([7]))
    >>> with Engine(ce, [it]):
    ...     scores = ce(batch)  # neuron (1, 7) zeroed at every position
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from mechir_nig.errors import InputError
from mechir_nig.models.protocol import HookedModel, current_forward
from mechir_nig.models.tokenization import CLS, DOC, PROMPT, QUERY
from mechir_nig.sites import Site, site

__all__ = [
    "Baseline",
    "Engine",
    "Function",
    "Intervention",
    "Mean",
    "Resample",
    "Source",
    "Value",
    "Zero",
    "is_batch",
    "require_hooks",
    "write",
]

GROUPS = {"cls": CLS, "query": QUERY, "doc": DOC, "prompt": PROMPT}
_NO_BATCH = "run a tokenized batch inside ablate(...), or pass batch= to ablation_hooks"


def is_batch(obj: Any) -> bool:
    """Whether ``obj`` is a tokenized batch (``PairBatch``/``TextBatch``: ids, mask and token groups)."""
    return all(hasattr(obj, a) for a in ("input_ids", "attention_mask", "groups"))


def require_hooks(model: Any, names: Iterable[str]) -> None:
    """An InputError naming every hook of ``names`` that ``model`` does not have (e.g. ModernBERT's first
    block has no ``ln1``), rather than a failure inside a forward; models without a ``hook_dict`` pass.

    Example:
        >>> require_hooks(ce, ["blocks.0.ln1.hook_scale"])  # every BERT-like block has both norms
    """
    have = getattr(model, "hook_dict", None)
    if have is None:
        return
    missing = sorted(n for n in names if n not in have)
    if missing:
        raise InputError(
            f"{type(model).__name__} has no hook {missing} (e.g. ModernBERT's first block has no ln1): "
            "choose layers= or sites that exist in this model (model.hook_dict lists its hooks)"
        )


def _layout(s: Site, where: Tensor, ndim: int) -> Tensor:
    """``where`` ``[batch, pos, units]`` in the layout of site ``s``'s activation (``ndim`` axes)."""
    if s.unit == "position" or s.unit_axis in (-1, ndim - 1):
        return where
    if s.unit_axis == 2:  # [batch, pos, n_heads, d_head]
        return where.unsqueeze(-1)
    return where.transpose(1, 2).unsqueeze(-1)  # [batch, n_heads, q_pos, k_pos]: the query position


def write(act: Tensor, site_name: str, where: Tensor, value: Tensor) -> Tensor:
    """``act`` with ``value`` written where ``where`` is true: the one hook writer (out of place).

    Shapes:
        act: the site's activation, e.g. ``[batch, pos, d_mlp]`` or ``[batch, pos, n_heads, d_head]``.
        where: bool, broadcastable to ``[batch, pos, units]`` (``units`` = 1 for position sites).
        value: broadcastable to ``act``.

    Example:
        >>> act = torch.zeros(1, 2, 2, 1)  # [batch, pos, n_heads, d_head]
        >>> write(act, "z", torch.tensor([[[True, False]]]), torch.tensor(5.0)).flatten().tolist()
        [5.0, 0.0, 5.0, 0.0]
    """
    where = _layout(site(site_name), where.to(act.device), act.ndim)
    return torch.where(where, value.to(act.device, act.dtype), act)


@dataclass
class Frame:
    """One forward pass as the hooks see it: its batch (``None`` for raw tensors) and per-pass values."""

    forward: Any
    batch: Any
    store: dict[Any, Any] = field(default_factory=dict)


# -- what value -----------------------------------------------------------------------------------------
class Value:
    """The source of what an intervention writes; subclasses are the value sources.

    ``__call__(act, name, frame)`` returns a tensor broadcastable to ``act`` (the activation at hook
    ``name``); ``begin(engine, frame)`` runs before a forward's first block when ``prepares`` is true.
    """

    prepares = False

    def begin(self, engine: Engine, frame: Frame) -> None:
        """Work before the forward (a baseline pass); nothing by default."""

    def __call__(self, act: Tensor, name: str, frame: Frame) -> Tensor:
        raise NotImplementedError


class Zero(Value):
    """``0`` (zero ablation).

    Example:
        >>> float(Zero()(torch.ones(1, 2, 3), "blocks.0.mlp.hook_post", Frame(None, None)))
        0.0
    """

    def __call__(self, act: Tensor, name: str, frame: Frame) -> Tensor:
        return act.new_zeros(())


@dataclass(eq=False)
class Mean(Value):
    """The token mean of the activation over a reference set (``reference.mean(name)``, e.g. ``[d_mlp]``).

    Example:
        >>> from mechir_nig.interventions.ablation import AblationReference
        >>> ref = AblationReference.compute(ce, queries, docs)  # the reference pairs
        >>> it = Intervention("mlp_post", 1, Mean(ref), units=torch.tensor([7]))
        >>> with Engine(ce, [it]):
        ...     scores = ce(batch)  # neuron 7 of layer 1 at its reference mean
        >>> scores.shape, ref.mean("blocks.1.mlp.hook_post").shape  # [batch]; [d_mlp]: what Mean writes
        (torch.Size([2]), torch.Size([1536]))
    """

    reference: Any

    def __call__(self, act: Tensor, name: str, frame: Frame) -> Tensor:
        return self.reference.mean(name)


@dataclass(eq=False)
class Resample(Value):
    """The token mean of one reference input per row, the rows drawn once per forward with ``seed``.

    Example:
        >>> from mechir_nig.interventions.ablation import AblationReference
        >>> ref = AblationReference.compute(ce, queries, docs)  # the reference pairs
        >>> it = Intervention("z", 0, Resample(ref, seed=3), units=torch.tensor([1]))  # head 1 of layer 0
        >>> with Engine(ce, [it]):
        ...     scores = ce(batch)
        >>> scores.shape  # [batch]
        torch.Size([2])
    """

    reference: Any
    seed: int = 0

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, act: Tensor, name: str, frame: Frame) -> Tensor:
        if self not in frame.store:
            frame.store[self] = torch.randint(len(self.reference), (act.shape[0],), generator=self.generator)
        return self.reference.per_input[name].index_select(0, frame.store[self]).unsqueeze(1)


@dataclass(eq=False)
class Source(Value):
    """Another run's activations ``acts[name]``: row ``rows[i]`` (default ``i``) into row ``i``, trimmed to
    the patched run's positions (every position axis: a pattern's query and key axes too; patching).

    Shapes:
        acts: ``{hook name: [n_source, pos, ...]}``; rows: ``[batch]`` long; returns ``[batch, pos, ...]``.

    Example:
        >>> src = Source({"h": torch.arange(6.0).view(3, 2)}, rows=torch.tensor([2, 0]))
        >>> src(torch.zeros(2, 2), "h", Frame(None, None)).tolist()
        [[4.0, 5.0], [0.0, 1.0]]
    """

    acts: Any
    rows: Tensor | None = None

    def __call__(self, act: Tensor, name: str, frame: Frame) -> Tensor:
        a = self.acts[name]
        if self.rows is not None:
            a = a.index_select(0, self.rows.to(a.device))
        if act.ndim != a.ndim:
            return a
        return a[(slice(None), *(slice(0, n) for n in act.shape[1:]))]  # every position axis trimmed


@dataclass(eq=False)
class Function(Value):
    """``fn(act, hook_name)``: a user function returning a value broadcastable to ``act``.

    Shapes:
        act: the site's activation (e.g. ``[batch, pos, d_mlp]``); ``fn``'s value broadcasts to it.

    Example:
        >>> double = Function(lambda act, name: 2 * act)
        >>> double(torch.ones(1, 2), "h", Frame(None, None)).tolist()
        [[2.0, 2.0]]
    """

    fn: Callable[[Tensor, str], Tensor]

    def __call__(self, act: Tensor, name: str, frame: Frame) -> Tensor:
        return self.fn(act, name)


@dataclass(eq=False)
class Baseline(Value):
    """The activation of each row's NIG baseline input (``baseline``, as NIG) at the same position.

    Before each forward the baseline inputs of the batch are run up to the last layer written (with the
    batch's token types, mask and ``position_ids``). With a named baseline (``"pad"`` ...) a baseline
    row depends only on its kept tokens, groups, mask, types and positions: each distinct one is run once
    per ``Baseline`` and its activations kept (trimmed to its span) for later batches.

    Shapes:
        the value at a hook: ``[batch, pos, ...]``, the baseline run's activation of each row.

    Example:
        >>> with Engine(ce, [Intervention("mlp_post", 5, Baseline(ce), units=torch.tensor([120]))]):
        ...     scores = ce(batch)
    """

    model: HookedModel
    baseline: Any = "pad"
    prepares = True
    _rows: dict[bytes, dict[str, Tensor]] = field(default_factory=dict, repr=False)

    def __call__(self, act: Tensor, name: str, frame: Frame) -> Tensor:
        acts = frame.store.get(self)
        if acts is None:
            raise InputError(f"mode='baseline' needs a baseline pass of this batch: {_NO_BATCH}")
        return acts[name][:, : act.shape[1]]

    def begin(self, engine: Engine, frame: Frame) -> None:
        from mechir_nig.attribution.baselines import baseline_embeddings, baseline_replaced

        names = engine.names_of(self)
        batch = frame.batch
        if not names:
            return
        if not is_batch(batch):
            raise InputError(
                "mode='baseline' needs a tokenized batch (model.tokenize(...)) to build the baseline input: "
                + _NO_BATCH
            )
        ids, mask, groups = batch.input_ids, batch.attention_mask, batch.groups
        types = getattr(batch, "token_type_ids", None)
        pos_ids = getattr(batch, "position_ids", None)
        last = max(engine.layer_of[n] for n in names) + 1

        def run(rows: Tensor | None, width: int) -> dict[str, Tensor]:
            def sub(t: Any) -> Any:
                return t if rows is None or t is None else t[rows, :width]

            emb = baseline_embeddings(self.model, sub(ids), sub(groups), self.baseline)
            args = (None, sub(types), sub(mask))
            return engine.capture(
                names,
                lambda: self.model.encoder_forward(
                    *args, input_embeds=emb, stop_at_layer=last, position_ids=sub(pos_ids)
                ),
            )

        if not isinstance(self.baseline, str):  # a tensor baseline: run per batch
            frame.store[self] = run(None, ids.shape[1])
            return
        base_ids = torch.where(baseline_replaced(groups, self.baseline), -1, ids)
        key = torch.cat(
            [base_ids, groups, mask.long()] + [t.long() for t in (types, pos_ids) if t is not None], 1
        )
        n_key = key.shape[1] // ids.shape[1]
        attended = mask.bool()
        spans = torch.where(attended.any(1), ids.shape[1] - attended.flip(1).long().argmax(1), 0).tolist()
        keys = [
            key[i].view(n_key, -1)[:, : spans[i]].cpu().numpy().tobytes() + bytes(str(spans[i]), "ascii")
            for i in range(len(ids))
        ]
        todo = list(dict.fromkeys(k for k in keys if k not in self._rows))
        if todo:
            first = [keys.index(k) for k in todo]
            got = run(torch.tensor(first, device=ids.device), max(spans[i] for i in first))
            for j, (k, i) in enumerate(zip(todo, first, strict=True)):
                self._rows[k] = {n: a[j, : spans[i]] for n, a in got.items()}
        out = {}
        for name in names:
            like = self._rows[keys[0]][name]
            full = like.new_zeros((len(ids), ids.shape[1], *like.shape[1:]))
            for i, k in enumerate(keys):
                full[i, : spans[i]] = self._rows[k][name]
            out[name] = full
        frame.store[self] = out


# -- where ------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Intervention:
    """Write ``value`` at site ``site_name`` of ``layer``: at ``units`` of the site's unit axis (``None``:
    every unit; for position sites, e.g. ``resid_pre``, positions), at ``positions`` (``"all"``, ``"cls"``, ``"query"``, ``"doc"`` or a ``[batch, pos]``
    bool mask) and where the per-row ``mask`` (bool, broadcastable to ``[batch, pos, units]``) is true.

    Example:
        >>> Intervention("z", 0, Zero(), units=torch.tensor([1])).hook_name
        'blocks.0.attn.hook_z'
    """

    site_name: str
    layer: int
    value: Value
    units: Tensor | None = None
    positions: str | Tensor = "all"
    mask: Bool[Tensor, "batch pos units"] | None = None

    def __post_init__(self) -> None:
        self.site = site(self.site_name)
        self.hook_name = self.site.hook(self.layer)

    def where(self, act: Tensor, frame: Frame) -> Tensor:
        """The bool mask ``[batch, pos, units]`` (broadcastable) of what this intervention writes."""
        s, dev = self.site, act.device
        width = 1 if s.unit == "position" else act.shape[s.unit_axis]
        out = torch.ones((), dtype=torch.bool, device=dev)
        p = self.positions
        n_pos = act.shape[2] if s.unit == "head" and s.unit_axis == 1 else act.shape[1]
        if self.units is not None:  # positions of a position site (those past this batch's end: none)
            units = self.units.to(dev)
            u = torch.zeros(n_pos if s.unit == "position" else width, dtype=torch.bool, device=dev)
            u[units[units < len(u)]] = True
            out = out & (u[:, None] if s.unit == "position" else u)
        if isinstance(p, Tensor):
            if tuple(p.shape) != (act.shape[0], n_pos):
                raise InputError(
                    f"positions mask has shape {tuple(p.shape)} but the batch is [batch, pos] = "
                    f"{(act.shape[0], n_pos)}: pass a bool mask shaped like the batch's input_ids"
                )
            out = out & p.to(dev)[:, :, None]
        elif p != "all":
            if not is_batch(frame.batch):
                raise InputError(f"positions={p!r} needs the batch's token groups: {_NO_BATCH}")
            out = out & (frame.batch.groups == GROUPS[p]).to(dev)[:, :, None]
        if self.mask is not None:
            out = out & self.mask.to(dev)
        return out


# -- the engine ---------------------------------------------------------------------------------------------
class Engine:
    """Interventions written by one hook per hook name; ``with engine:`` applies them to every forward.

    ``batch``: the batch every forward is taken to read (for hooks run on raw tensors);
    ``follow``: read each forward's batch from the model (``current_forward``), else ``batch`` only.
    ``active``: a switch (a bi-encoder ablation writes only the sides it covers).

    Example:
        >>> eng = Engine(ce, [Intervention("mlp_post", 0, Zero())])
        >>> scores = ce.run_with_hooks(batch, fwd_hooks=eng.hooks())
    """

    def __init__(
        self,
        model: HookedModel,
        interventions: Iterable[Intervention],
        *,
        batch: Any = None,
        follow: bool = True,
    ):
        self.model = model
        self.by_hook: dict[str, list[Intervention]] = {}
        for it in interventions:
            self.by_hook.setdefault(it.hook_name, []).append(it)
        require_hooks(model, self.by_hook)
        self.layer_of = {n: its[0].layer for n, its in self.by_hook.items()}
        self.batch = batch
        self.follow = follow
        self.active = True
        self._frame: Frame | None = None
        self._capturing = False
        self._stack: ExitStack | None = None
        self._prepared = [v for v in self._values() if v.prepares]

    def _values(self) -> list[Value]:
        return list({id(it.value): it.value for its in self.by_hook.values() for it in its}.values())

    def names_of(self, value: Value) -> list[str]:
        """The hook names where ``value`` is written."""
        return [n for n, its in self.by_hook.items() if any(it.value is value for it in its)]

    def frame(self) -> Frame:
        """The current forward's :class:`Frame` (a new one, prepared, at each forward)."""
        fwd = current_forward()
        if self._frame is None or self._frame.forward is not fwd:
            batch = fwd.batch if self.follow and fwd is not None and fwd.batch is not None else self.batch
            self._frame = Frame(fwd, batch)
            for v in self._prepared:
                v.begin(self, self._frame)
        return self._frame

    def capture(self, names: Iterable[str], run: Callable[[], Any]) -> dict[str, Tensor]:
        """Run ``run()`` recording the activations at ``names``, with this engine's writes off."""
        got: dict[str, Tensor] = {}

        def keep(act: Tensor, hook: Any) -> Tensor:
            got[hook.name] = act.detach()
            return act

        previous, self._capturing = self._capturing, True
        try:
            with self.model.hooks(fwd_hooks=[(n, keep) for n in names]):
                run()
        finally:
            self._capturing = previous
        return got

    def _hook(self, act: Tensor, hook: Any) -> Tensor:
        if self._capturing or not self.active:
            return act
        name, frame = hook.name, self.frame()
        for it in self.by_hook.get(name, ()):
            act = write(act, it.site_name, it.where(act, frame), it.value(act, name, frame))
        return act

    def hooks(self) -> list[tuple[str, Callable[[Tensor, Any], Tensor]]]:
        """``[(hook_name, fn)]`` for ``model.run_with_hooks`` / ``model.hooks`` (a first hook on
        ``hook_embed`` prepares the forward, e.g. runs the baseline pass, before any block)."""
        first = [("hook_embed", self._hook)] if self._prepared else []
        return first + [(name, self._hook) for name in self.by_hook]

    def __enter__(self) -> Engine:
        stack = ExitStack()
        stack.enter_context(self.model.hooks(fwd_hooks=self.hooks()))
        self._stack = stack
        return self

    def __exit__(self, *exc: Any) -> None:
        stack, self._stack, self._frame = self._stack, None, None
        if stack is not None:
            stack.close()
