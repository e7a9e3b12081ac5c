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

from mechir_nig.attribution.baselines import baseline_embeddings
from mechir_nig.attribution.nig.auto import (
    AutoRun,
    AutoSteps,
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
from mechir_nig.attribution.rules import weights as rule_weights
from mechir_nig.attribution.settings import NIGSettings
from mechir_nig.attribution.target import target_name
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
        >>> nig = NeuronIntegratedGradients(ce)
        >>> attr = nig.attribute(ce.tokenize(queries, docs), n_steps=8, reduce="group")
        >>> attr.values.shape  # [batch, layer, 4, d_mlp]
        torch.Size([2, 6, 4, 1536])
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
        settings: NIGSettings | None = None,
        **options: Any,
    ) -> NeuronAttribution:
        """Attribute a tokenized batch.

        Args:
            batch: a ``PairBatch`` (cross-encoder) or the interpolated side's ``TextBatch`` (bi-encoder).
            other: bi-encoder only: the fixed side's embeddings ``[batch, d_model]``.
            settings: the options (``NIGSettings``: ``n_steps`` incl. ``"auto"``, ``method``, ``baseline``,
                ``layers``, ``sites``/``heads``, ``reduce``, ``tol``/``min_steps``/``max_steps``, window
                sizes, ``target`` ...; ``side`` and ``max_length`` apply to tokenizing and are not used
                here).
            **options: the same options as keywords (``NIGSettings(**options)``), instead of ``settings``.

        Returns:
            NeuronAttribution with ``values`` (``mlp_post``), ``head_values`` (``z``) and ``site_values``
            (every site) as ``reduce`` says, ``n_steps_used`` ``[batch]``.

        Raises:
            InputError: an invalid option, or both ``settings`` and keywords.

        Shapes:
            ``values``: ``[batch, layer, pos, d_mlp]`` (token), ``[batch, layer, 4, d_mlp]`` (group),
            ``[batch, layer, d_mlp]`` (neuron); ``head_values`` likewise with ``n_heads``; a residual-stream
            site ``[batch, layer, pos]``, ``[batch, layer, 4]`` or ``[batch, layer]``.

        Example:
            >>> attr = NeuronIntegratedGradients(ce).attribute(
            ...     batch, n_steps="auto", tol=0.05, min_steps=4, max_steps=16, layers=[4, 5]
            ... )
            >>> attr.n_steps_used.shape, attr.convergence_delta.shape  # per pair
            (torch.Size([2]), torch.Size([2]))
            >>> s = NIGSettings(n_steps=8, sites=("resid_pre", "mlp_post"), reduce="group")
            >>> NeuronIntegratedGradients(ce).attribute(batch, settings=s).site("resid_pre").shape
            torch.Size([2, 6, 4])
        """
        m = self.model
        s = NIGSettings.of(settings, options, "NeuronIntegratedGradients.attribute").checked(m)
        auto = s.auto()
        layer_list = list(s.layers or ())
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
            base = baseline_embeddings(m, batch.input_ids, batch.groups, s.baseline)
        window = default_window(int(batch.lengths.max()), s.internal_batch_size, s.window_tokens)
        target = Conductance(s.reduce, batch.groups, layer_list, m.cfg, s.site_names(), m.cfg.acc_dtype)
        with frozen(m), torch.enable_grad():
            if auto is None:
                path = self._fixed(batch, base, other, target, s, window)
            else:
                path = self._auto(batch, base, other, target, s, auto, window)
            # a float16 overflow gives NaN/inf along the path: an error, never a NaN attribution
            check_finite(m, "NIG scores", path.scores, path.baseline_scores)
            for name, v in target.sites.items():
                check_finite(m, f"NIG attributions ({name})", v)
        meta = {
            "model": m.cfg.model_name,
            **path.meta,
            "method": s.method,
            "baseline": s.baseline if isinstance(s.baseline, str) else "tensor",
            "reduce": s.reduce,
            "sites": list(s.sites),
        }
        if s.target is not None:
            meta["target"] = target_name(s.target)
        tok = m.tokenizer
        tokens = (
            [
                tok.convert_ids_to_tokens(row[: int(n)].tolist())
                for row, n in zip(batch.input_ids, batch.lengths)
            ]
            if tok is not None
            else []
        )
        if path.run is not None and auto is not None:
            warn_unconverged(path.run, auto, tokens)
        site_values = {name: v.cpu() for name, v in target.sites.items()}
        values = site_values.get("mlp_post")
        if values is None:  # no MLP site asked for: no neurons
            some = next(iter(site_values.values()))
            values = some.new_zeros(*some.shape[: 2 + (s.reduce != "neuron")], 0)
        return NeuronAttribution(
            values=values,
            layers=layer_list,
            groups=batch.groups.cpu(),
            input_ids=batch.input_ids.cpu(),
            scores=path.scores,
            baseline_scores=path.baseline_scores,
            convergence_delta=path.delta,
            head_values=site_values.get("z"),
            tokens=tokens,
            meta=meta,
            point_scores=path.point_scores,
            truncated=batch.truncated.cpu(),
            reduce=s.reduce,
            n_steps_used=path.n_steps_used,
            site_values=site_values,
        )

    def _kernel(
        self, batch: PairBatch | TextBatch, base: Tensor, other: Tensor | None, table: Tensor, s: NIGSettings
    ) -> PathKernel:
        """The path kernel of ``s``'s layers, sites and target over the alphas ``table``."""
        layers = list(s.layers or ())
        return PathKernel(
            self.model,
            batch,
            base,
            other,
            table,
            layers,
            s.site_names(),
            s.target,
            checkpoint=s.checkpoint_blocks,
        )

    def _fixed(
        self,
        batch: PairBatch | TextBatch,
        base: Tensor,
        other: Tensor | None,
        target: Conductance,
        s: NIGSettings,
        window: int,
    ) -> _Path:
        """One rule, every pair at the same ``n_steps + 1`` points."""
        m, acc = self.model, target.dtype
        n_steps, layers = int(s.n_steps), list(s.layers or ())
        alphas = rule_alphas(s.method, n_steps + 1)
        kernel = self._kernel(batch, base, other, torch.tensor(alphas, dtype=acc, device=m.device), s)
        scalars = PathScalars(len(batch), len(alphas), acc, m.device)
        points = kernel.run(
            WindowPlan.grid(batch.lengths.cpu(), len(alphas), window, s.window_padding),
            GridConductance(target, site_names(layers, s.site_names())),
            scalars,
            input_grad=s.return_convergence_delta,
            progress=s.progress,
        )
        point_scores = scalars.score.cpu()
        scores, base_scores = self._end_scores(kernel, base, other, point_scores, alphas, window)
        delta = None
        if s.return_convergence_delta:  # sum_k w_k grad_x F(x_k) . (x - x') - (F(x) - F(x'))
            w = torch.tensor(rule_weights(s.method, len(alphas)), dtype=acc, device=m.device)
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
        s: NIGSettings,
        settings: AutoSteps,
        window: int,
    ) -> _Path:
        """Nested trapezoid grids refined per pair (``auto.py``)."""
        m, acc = self.model, target.dtype
        layers = list(s.layers or ())
        # the table j / max_steps in the accumulation dtype (bf16 would merge nearby alphas)
        table = torch.arange(settings.max_steps + 1, dtype=torch.float64) / settings.max_steps
        kernel = self._kernel(batch, base, other, table.to(m.device, acc), s)
        names = site_names(layers, s.site_names())
        run = run_auto(
            kernel,
            target,
            names,
            {n: site_shape(m.cfg, n) for n in names},
            batch.lengths.cpu(),
            window,
            settings,
            bank_dtype=m.cfg.dtype,
            progress=s.progress,
            window_padding=s.window_padding,
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
        kernel: PathKernel,
        base: Tensor,
        other: Tensor | None,
        point_scores: Tensor,
        alphas: list[float],
        rows: int,
    ) -> tuple[Tensor, Tensor]:
        """``F(x)`` and ``F(x')``: read off the path when the rule has points at 0 and 1, else computed."""
        batch = kernel.batch
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
                        pair = torch.arange(len(batch), device=emb.device)[sl]
                        parts.append(
                            kernel.score(emb[sl], batch.token_type_ids[sl], batch.attention_mask[sl], o, pair)
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
    settings: NIGSettings | None = None,
    **options: Any,
) -> NeuronAttribution:
    """NIG of every MLP neuron (or of any ``sites``) for each (query, document) pair.

    Vast et al., ICTIR 2024 (arXiv:2406.19309): the total conductance of each neuron along the straight
    path from the baseline to the input, all layers in one pass. For a bi-encoder, ``side`` ("doc", the
    default, or "query") is the text interpolated from the baseline; the other side's embedding is held
    fixed.

    Args:
        model: a hooked model with the attribution protocol.
        queries: the pairs' queries.
        docs: the pairs' documents (``queries[i]`` with ``docs[i]``).
        settings: every option in one ``NIGSettings`` (see its attributes).
        **options: or the same options as keywords: ``neuron_integrated_gradients(ce, qs, ds, n_steps=16)``
            is ``neuron_integrated_gradients(ce, qs, ds, settings=NIGSettings(n_steps=16))``; giving both is
            an ``InputError``.

    Shapes:
        ``attr.values``: ``[batch, layer, pos, d_mlp]`` (``reduce="token"``), ``[batch, layer, 4, d_mlp]``
        (``"group"``), ``[batch, layer, d_mlp]`` (``"neuron"``); ``attr.n_steps_used``: ``[batch]``;
        ``attr.site_values[name]`` likewise with the site's units.

    Example:
        >>> attr = neuron_integrated_gradients(ce, ["what is a neuron"], ["A neuron is a cell."],
        ...                                    n_steps="auto", tol=0.05, min_steps=4, max_steps=16,
        ...                                    reduce="group")
        >>> attr.values.shape  # [1, n_layers, 4, d_mlp]
        torch.Size([1, 6, 4, 1536])
        >>> f_neg = ce.score(queries, ["Tea is a drink.", "Paris is in France."])  # a negative per pair
        >>> margin = NIGSettings(n_steps=4, layers=[5], reduce="neuron", target=lambda t: t.score - f_neg[t.pair])
        >>> neuron_integrated_gradients(ce, queries, docs, settings=margin).values.shape
        torch.Size([2, 1, 1536])
    """
    s = NIGSettings.of(settings, options, "neuron_integrated_gradients")
    nig = NeuronIntegratedGradients(model)
    batch, other = model.attribution_inputs(queries, docs, side=s.side, max_length=s.max_length)
    attr = nig.attribute(batch, other=other, settings=s)
    if nig.is_bi:
        side = s.side or "doc"
        if side == "query":
            attr.relabel_group(DOC, QUERY)
        attr.meta["side"] = side
    return attr
