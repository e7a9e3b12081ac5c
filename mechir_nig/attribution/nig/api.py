"""The NIG API: ``NeuronIntegratedGradients(model).attribute(batch)`` and ``neuron_integrated_gradients``.

Validates the arguments, builds the baseline, runs the kernel (``kernel.py``) over a window plan
(``plan.py``) — one fixed rule, or nested grids refined per pair (``n_steps="auto"``, ``auto.py``) — and
returns a ``NeuronAttribution``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechir_nig._validate import check_layers
from mechir_nig.attribution.baselines import baseline_embeddings, check_baseline
from mechir_nig.attribution.nig.auto import (
    AutoRun,
    AutoSteps,
    check_auto,
    completeness_error,
    run_auto,
    warn_unconverged,
)
from mechir_nig.attribution.nig.kernel import (
    REDUCE,
    Conductance,
    GridConductance,
    PathKernel,
    PathScalars,
    frozen,
    site_names,
    site_shape,
)
from mechir_nig.attribution.nig.plan import WindowPlan, default_window
from mechir_nig.attribution.result import NeuronAttribution
from mechir_nig.attribution.rules import alphas as rule_alphas
from mechir_nig.attribution.rules import check_n_steps, check_rule
from mechir_nig.attribution.rules import weights as rule_weights
from mechir_nig.errors import InputError
from mechir_nig.models.precision import check_finite
from mechir_nig.models.protocol import AttributionModel
from mechir_nig.models.tokenization import DOC, QUERY, PairBatch, TextBatch


def check_reduce(reduce: str) -> str:
    if reduce not in REDUCE:
        raise InputError(
            f"reduce must be one of {REDUCE} (per token, per token group cls/query/sep/doc, or summed over "
            f"tokens), got {reduce!r}"
        )
    return reduce


def _check_internal_batch_size(internal_batch_size: int | None) -> None:
    if internal_batch_size is not None and (
        isinstance(internal_batch_size, bool)
        or not isinstance(internal_batch_size, int)
        or internal_batch_size < 1
    ):
        raise InputError(f"internal_batch_size must be None or an int >= 1, got {internal_batch_size!r}")


def _check_steps(
    n_steps: int | str,
    method: str,
    tol: float | None,
    min_steps: int | None,
    max_steps: int | None,
    reuse_bytes: int | None,
) -> AutoSteps | None:
    """The ``n_steps="auto"`` settings, or ``None`` for a valid int ``n_steps`` without them."""
    if n_steps == "auto":
        return check_auto(check_rule(method), tol, min_steps, max_steps, reuse_bytes)
    check_n_steps(n_steps, allow_auto=True)
    given = [
        k
        for k, v in (
            ("tol", tol),
            ("min_steps", min_steps),
            ("max_steps", max_steps),
            ("reuse_bytes", reuse_bytes),
        )
        if v is not None
    ]
    if given:
        one = len(given) == 1
        raise InputError(
            f"{', '.join(given)} {'applies' if one else 'apply'} only to n_steps='auto'; "
            f"pass n_steps='auto' or leave {'it' if one else 'them'} out"
        )
    return None


@dataclass
class _Path:
    """What a fixed or an adaptive run gives besides the conductances."""

    scores: Tensor
    baseline_scores: Tensor
    delta: Tensor | None
    point_scores: Tensor
    n_steps_used: Tensor
    meta: dict[str, Any]
    run: AutoRun | None = None


class NeuronIntegratedGradients:
    """NIG for any model with the attribution protocol (``HookedCrossEncoder``, ``HookedBiEncoder``).

    Args:
        model: the hooked model (its parameters are frozen while attributing); it must implement
            ``mechir_nig.models.protocol.AttributionModel``.

    Example:
        >>> nig = NeuronIntegratedGradients(ce)  # doctest: +SKIP
        >>> attr = nig.attribute(ce.tokenize(queries, docs), n_steps="auto", reduce="group")  # doctest: +SKIP
        >>> attr.values.shape  # [batch, layer, 4, d_mlp]  # doctest: +SKIP
    """

    def __init__(self, model: AttributionModel):
        if not isinstance(model, AttributionModel):
            raise InputError(
                f"model must be a hooked model with the attribution protocol (HookedCrossEncoder, "
                f"HookedBiEncoder), got {type(model).__name__}"
            )
        self.model = model
        self.is_bi = not model.pairwise

    def attribute(
        self,
        batch: PairBatch | TextBatch,
        *,
        other: Float[Tensor, "batch d_model"] | None = None,
        n_steps: int | str = 50,
        baseline: str | Tensor = "pad",
        method: str = "riemann_trapezoid",
        layers: Sequence[int] | int | None = None,
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
        heads: bool = False,
        progress: bool = False,
        reduce: str = "token",
        tol: float | None = None,
        min_steps: int | None = None,
        max_steps: int | None = None,
        reuse_bytes: int | None = None,
    ) -> NeuronAttribution:
        """Attribute a tokenized batch.

        Args:
            batch: a ``PairBatch`` (cross-encoder) or the interpolated side's ``TextBatch`` (bi-encoder).
            other: bi-encoder only: the fixed side's embeddings ``[batch, d_model]``.
            n_steps: number of intervals (``n_steps + 1`` points), or ``"auto"``: per pair, trapezoid
                grids doubled from ``min_steps`` until ``|convergence_delta| <= tol · |F(x) − F(x')|``
                (at most ``max_steps``); the steps used are in ``attr.n_steps_used``.
            baseline: a name in ``baselines.BASELINES`` or a ``[batch, pos, d_model]`` tensor.
            method: integration rule (``rules.RULES``); ``n_steps="auto"`` needs ``riemann_trapezoid``.
            layers: layers to attribute (default all).
            internal_batch_size: points per forward/backward (default ``8192 // longest pair``); memory
                only, never results.
            return_convergence_delta: also integrate the input gradient for the completeness check:
                ``Σ_k w_k ∇_x F(γ(α_k))·(x − x') − (F(x) − F(x'))`` with the rule's quadrature weights
                (always on with ``n_steps="auto"``).
            heads: also return attention-head conductance (``attn.hook_z`` summed over ``d_head``).
            progress: show a progress bar over windows.
            reduce: what ``values`` holds per (pair, layer): ``"token"`` (every token), ``"group"``
                (summed over the tokens of cls/query/sep/doc) or ``"neuron"`` (summed over tokens).
                ``"group"``/``"neuron"`` accumulate directly, never holding per-token values, so memory
                does not grow with the pairs' length.
            tol: ``n_steps="auto"``: the completeness target, a fraction of ``|F(x) − F(x')|`` (0.01).
            min_steps: ``n_steps="auto"``: the first, coarsest grid (8 intervals).
            max_steps: ``n_steps="auto"``: the cap, ``min_steps`` times a power of 2 (512); pairs that
                reach it above ``tol`` are named in a ``ConvergenceWarning``.
            reuse_bytes: ``n_steps="auto"``: memory for keeping activations and gradients of computed
                points so refinement reuses them (2 GiB); pairs beyond it are finished by one extra
                pass over their final grid (same result, more points).

        Returns:
            NeuronAttribution with ``values`` as ``reduce`` says, ``n_steps_used`` ``[batch]``.

        Shapes:
            ``values``: ``[batch, layer, pos, d_mlp]`` (token), ``[batch, layer, 4, d_mlp]`` (group),
            ``[batch, layer, d_mlp]`` (neuron); ``head_values`` likewise with ``n_heads``.

        Example:
            >>> attr = NeuronIntegratedGradients(ce).attribute(batch, n_steps="auto", tol=0.01)  # doctest: +SKIP
            >>> attr.n_steps_used, attr.convergence_delta  # doctest: +SKIP
        """
        m = self.model
        settings = _check_steps(n_steps, method, tol, min_steps, max_steps, reuse_bytes)
        method = check_rule(method)
        baseline = check_baseline(baseline)
        reduce = check_reduce(reduce)
        layer_list = check_layers(layers, m.cfg.n_layers)
        _check_internal_batch_size(internal_batch_size)
        m.check_attribution_batch(batch, other)
        if getattr(batch, "position_ids", None) is not None:
            raise InputError(
                "this batch has explicit position_ids (an aligned input from interventions.perturb); NIG "
                "scores through AttributionModel.score_embeds, which takes none, so positions would be "
                "wrong: attribute a batch from model.tokenize(...) instead"
            )
        if other is not None:
            other = other.to(m.device, m.cfg.dtype)
        batch = batch.to(m.device)
        if torch.is_inference_mode_enabled():
            raise InputError("NIG needs gradients: call it outside torch.inference_mode()")
        with torch.no_grad():
            base = baseline_embeddings(m, batch.input_ids, batch.groups, baseline)
        window = default_window(int(batch.lengths.max()), internal_batch_size)
        target = Conductance(reduce, batch.groups, layer_list, m.cfg, heads, m.cfg.acc_dtype)
        with frozen(m), torch.enable_grad():
            if settings is None:
                path = self._fixed(
                    batch,
                    base,
                    other,
                    target,
                    int(n_steps),
                    method,
                    layer_list,
                    heads,
                    window,
                    return_convergence_delta,
                    progress,
                )
            else:
                path = self._auto(batch, base, other, target, settings, layer_list, heads, window, progress)
            # a float16 overflow gives NaN/inf along the path: an error, never a NaN attribution
            check_finite(m, "NIG scores or attributions", path.scores, path.baseline_scores, target.values)
            check_finite(m, "NIG head attributions", target.head_values)
        meta = {
            "model": m.cfg.model_name,
            **path.meta,
            "method": method,
            "baseline": baseline if isinstance(baseline, str) else "tensor",
            "reduce": reduce,
        }
        tok = m.tokenizer
        tokens = (
            [
                tok.convert_ids_to_tokens(row[: int(n)].tolist())
                for row, n in zip(batch.input_ids, batch.lengths)
            ]
            if tok is not None
            else []
        )
        if path.run is not None and settings is not None:
            warn_unconverged(path.run, settings, tokens)
        return NeuronAttribution(
            values=target.values.cpu(),
            layers=layer_list,
            groups=batch.groups.cpu(),
            input_ids=batch.input_ids.cpu(),
            scores=path.scores,
            baseline_scores=path.baseline_scores,
            convergence_delta=path.delta,
            head_values=target.head_values.cpu() if target.head_values is not None else None,
            tokens=tokens,
            meta=meta,
            point_scores=path.point_scores,
            truncated=batch.truncated.cpu(),
            reduce=reduce,
            n_steps_used=path.n_steps_used,
        )

    def _fixed(
        self,
        batch: PairBatch | TextBatch,
        base: Tensor,
        other: Tensor | None,
        target: Conductance,
        n_steps: int,
        method: str,
        layers: list[int],
        heads: bool,
        window: int,
        want_delta: bool,
        progress: bool,
    ) -> _Path:
        """One rule, every pair at the same ``n_steps + 1`` points."""
        m, acc = self.model, target.values.dtype
        alphas = rule_alphas(method, n_steps + 1)
        table = torch.tensor(alphas, dtype=acc, device=m.device)
        kernel = PathKernel(m, batch, base, other, table, layers, heads)
        scalars = PathScalars(len(batch), len(alphas), acc, m.device)
        points = kernel.run(
            WindowPlan.grid(batch.lengths.cpu(), len(alphas), window),
            GridConductance(target, site_names(layers, heads)),
            scalars,
            input_grad=want_delta,
            progress=progress,
        )
        point_scores = scalars.score.cpu()
        scores, base_scores = self._end_scores(batch, base, other, point_scores, alphas, window)
        delta = None
        if want_delta:  # sum_k w_k grad_x F(x_k) . (x - x') - (F(x) - F(x'))
            w = torch.tensor(rule_weights(method, len(alphas)), dtype=acc, device=m.device)
            delta = (scalars.slope * w).sum(1).cpu() - (scores - base_scores)
        return _Path(
            scores=scores,
            baseline_scores=base_scores,
            delta=delta,
            point_scores=point_scores,
            n_steps_used=torch.full((len(batch),), n_steps, dtype=torch.long),
            meta={"n_steps": n_steps, "alphas": alphas, "points_evaluated": points},
        )

    def _auto(
        self,
        batch: PairBatch | TextBatch,
        base: Tensor,
        other: Tensor | None,
        target: Conductance,
        settings: AutoSteps,
        layers: list[int],
        heads: bool,
        window: int,
        progress: bool,
    ) -> _Path:
        """Nested trapezoid grids refined per pair (``auto.py``)."""
        m, acc = self.model, target.values.dtype
        # the table j / max_steps in the accumulation dtype (bf16 would merge nearby alphas)
        table = torch.arange(settings.max_steps + 1, dtype=torch.float64) / settings.max_steps
        kernel = PathKernel(m, batch, base, other, table.to(m.device, acc), layers, heads)
        names = site_names(layers, heads)
        run = run_auto(
            kernel,
            target,
            names,
            {n: site_shape(m.cfg, n) for n in names},
            batch.lengths.cpu(),
            window,
            settings,
            bank_dtype=m.cfg.dtype,
            progress=progress,
        )
        used = run.n_steps
        delta, _ = completeness_error(run.scalars, used)
        return _Path(
            scores=run.scalars.score[:, -1].cpu(),
            baseline_scores=run.scalars.score[:, 0].cpu(),
            delta=delta.cpu(),
            point_scores=_scores_on_grids(run.scalars.score, used).cpu(),
            n_steps_used=used,
            meta={
                "n_steps": "auto",
                "tol": settings.tol,
                "min_steps": settings.min_steps,
                "max_steps": settings.max_steps,
                "n_steps_used": used.tolist(),
                "points_evaluated": run.points,
            },
            run=run,
        )

    def _end_scores(
        self,
        batch: PairBatch | TextBatch,
        base: Tensor,
        other: Tensor | None,
        point_scores: Tensor,
        alphas: list[float],
        rows: int,
    ) -> tuple[Tensor, Tensor]:
        """``F(x)`` and ``F(x')``: read off the path when the rule has points at 0 and 1, else computed."""
        need = [a for a in (0.0, 1.0) if a not in (alphas[0], alphas[-1])]
        found = {}
        if alphas[0] == 0.0:
            found[0.0] = point_scores[:, 0]
        if alphas[-1] == 1.0:
            found[1.0] = point_scores[:, -1]
        if need:
            with torch.no_grad():
                x = self.model.word_embeddings(batch.input_ids)
                for a in need:
                    emb = x if a == 1.0 else base
                    parts = []
                    for i in range(0, len(batch), rows):
                        sl = slice(i, i + rows)
                        o = other[sl] if other is not None else None
                        parts.append(
                            self.model.score_embeds(
                                emb[sl], batch.token_type_ids[sl], batch.attention_mask[sl], o
                            )
                        )
                    found[a] = torch.cat(parts).to(point_scores.dtype).cpu()
        return found[1.0], found[0.0]


def _scores_on_grids(score: Tensor, used: Tensor) -> Tensor:
    """``F`` at each pair's final grid ``k / n_i`` ``[batch, max n_i + 1]``, NaN beyond ``n_i``."""
    n_max = score.shape[1] - 1
    k = torch.arange(int(used.max()) + 1)
    stride = n_max // used
    idx = (k[None] * stride[:, None]).clamp(max=n_max)
    out = score.gather(1, idx.to(score.device))
    return torch.where((k[None] <= used[:, None]).to(score.device), out, torch.full_like(out, float("nan")))


def neuron_integrated_gradients(
    model: AttributionModel,
    queries: Sequence[str],
    docs: Sequence[str],
    *,
    n_steps: int | str = 50,
    baseline: str | Tensor = "pad",
    method: str = "riemann_trapezoid",
    layers: Sequence[int] | int | None = None,
    internal_batch_size: int | None = None,
    return_convergence_delta: bool = False,
    heads: bool = False,
    side: str | None = None,
    max_length: int | None = None,
    progress: bool = False,
    reduce: str = "token",
    tol: float | None = None,
    min_steps: int | None = None,
    max_steps: int | None = None,
    reuse_bytes: int | None = None,
) -> NeuronAttribution:
    """NIG of every MLP neuron for each (query, document) pair.

    Vast et al., ICTIR 2024 (arXiv:2406.19309): the total conductance of each neuron along the straight
    path from the baseline to the input, all layers in one pass. For a bi-encoder, ``side`` ("doc", the
    default, or "query") is the text interpolated from the baseline; the other side's embedding is held
    fixed. See ``NeuronIntegratedGradients.attribute`` for the other arguments.

    Shapes:
        ``attr.values``: ``[batch, layer, pos, d_mlp]`` (``reduce="token"``), ``[batch, layer, 4, d_mlp]``
        (``"group"``), ``[batch, layer, d_mlp]`` (``"neuron"``); ``attr.n_steps_used``: ``[batch]``.

    Example:
        >>> attr = neuron_integrated_gradients(ce, ["what is a neuron"], ["A neuron is a cell."],  # doctest: +SKIP
        ...                                    n_steps="auto", tol=0.01, reduce="group")
        >>> attr.values.shape  # [1, n_layers, 4, d_mlp]  # doctest: +SKIP
    """
    nig = NeuronIntegratedGradients(model)
    batch, other = model.attribution_inputs(queries, docs, side=side, max_length=max_length)
    attr = nig.attribute(
        batch,
        other=other,
        n_steps=n_steps,
        baseline=baseline,
        method=method,
        layers=layers,
        internal_batch_size=internal_batch_size,
        return_convergence_delta=return_convergence_delta,
        heads=heads,
        progress=progress,
        reduce=reduce,
        tol=tol,
        min_steps=min_steps,
        max_steps=max_steps,
        reuse_bytes=reuse_bytes,
    )
    if nig.is_bi:
        side = side or "doc"
        if side == "query":
            attr.relabel_group(DOC, QUERY)
        attr.meta["side"] = side
    return attr
