"""Faithfulness of NIG: do the neurons NIG ranks high change the score when ablated?

For each pair, the ``k`` neurons with the largest ``|NIG|`` are ablated **one at a time** and the observed
score drop ``F(x) - F(x with neuron n ablated)`` is compared (Spearman rank correlation over the ``k``
neurons, averaged over pairs) with three predictions: NIG (Vast et al., ICTIR 2024), activation x
gradient (``sum_t a_t dF/da_t``, the first-order estimate of zero ablation) and activation magnitude
(``sum_t |a_t|``, compared with ``|drop|``). Under ``baseline`` ablation (the activation of the ``pad``
baseline input of the same pair) the drop is what NIG's completeness speaks about; ``zero`` and
``mean`` are reported next to it.

The cumulative curve ablates the top-``k`` neurons by (signed) NIG together, ``k = 1 .. K``, against
``k`` uniformly random neurons (``seeds`` draws), and reports the mean score drop per ``k``.

Single-neuron ablations are batched: the batch is expanded to one row per (pair, neuron set), each row
carrying its own ``[n_layers, d_mlp]`` mask, written by the intervention engine
(:mod:`mechir_nig.interventions.engine`, the writer ``ablate`` and ``patch`` use), in chunks of ``chunk_size`` rows (chunking never changes results). Cost: ``B * k`` (and
``B * K * (1 + seeds)``) forward passes, plus one baseline pass for ``baseline``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mechir_nig._validate import check_int
from mechir_nig.errors import InputError
from mechir_nig.experiments._progress import Progress
from mechir_nig.models.protocol import HookedModel
from mechir_nig.models.tokenization import PAD
from mechir_nig.results import Result
from mechir_nig.sites import hook_name
from mechir_nig.statistics import row_correlations

__all__ = ["FaithfulnessResult", "faithfulness", "masked_scores", "single_neuron_effects"]


def _scores(model: HookedModel, batch: Any, other: Tensor | None) -> Tensor:
    out = model(batch)
    if model.pairwise or other is None:
        return out
    return (out * other.to(out.device)).sum(-1)


@torch.no_grad()
def masked_scores(
    model: HookedModel,
    batch: Any,
    other: Tensor | None,
    rows: Tensor,
    masks: Tensor,
    *,
    mode: str = "zero",
    reference: Any = None,
    baseline: str = "pad",
    chunk_size: int = 64,
    on_chunk: Callable[[], None] | None = None,
) -> Tensor:
    """Scores of ``batch.select(rows)`` with each row's own neurons ablated (through the intervention
    engine: one ``mlp_post`` intervention per layer whose per-row mask is ``masks[:, layer]``), in chunks
    of ``chunk_size`` rows; ``on_chunk()`` is called after each chunk's forward (progress).

    Shapes:
        rows: ``[R]`` indices into ``batch``; masks: ``[R, n_layers, d_mlp]`` bool; returns ``[R]``.

    Example:
        >>> batch = ce.tokenize(queries, docs)
        >>> masks = torch.zeros(2, ce.cfg.n_layers, ce.cfg.d_mlp, dtype=torch.bool)
        >>> masks[0, 5, 120] = True  # row 0: ablate neuron (5, 120); row 1: nothing
        >>> scores = masked_scores(ce, batch, None, torch.tensor([0, 0]), masks)  # [R] = [2]
        >>> scores.shape
        torch.Size([2])
        >>> clean = ce.score(queries[:1], docs[:1])[0].double()
        >>> bool(torch.allclose(scores[1].double(), clean, atol=1e-4))  # row 1: the clean score
        True
    """
    from mechir_nig.interventions.ablation import _value
    from mechir_nig.interventions.engine import Engine, Intervention

    if mode not in ("zero", "baseline", "mean"):
        raise InputError(f"mode must be 'zero', 'baseline' or 'mean', got {mode!r}")
    check_int(chunk_size, "chunk_size", minimum=1)
    cfg = model.cfg
    if masks.shape[1:] != (cfg.n_layers, cfg.d_mlp) or masks.shape[0] != rows.shape[0]:
        raise InputError(f"masks must be [R, {cfg.n_layers}, {cfg.d_mlp}] with R = len(rows)")
    if mode == "mean":
        if reference is None:
            raise InputError("mode='mean' needs reference=AblationReference.compute(model, ...)")
        reference.check_model(model)
    layers = [int(x) for x in masks.any(dim=(0, 2)).nonzero().flatten()]
    value = _value(model, mode, reference, 0, baseline)  # one value: baseline rows are run once
    out = []
    for start in range(0, len(rows), chunk_size):
        r = rows[start : start + chunk_size]
        m = masks[start : start + chunk_size]
        its = [Intervention("mlp_post", layer, value, mask=m[:, layer, None, :]) for layer in layers]
        with Engine(model, its):
            out.append(_scores(model, batch.select(r), None if other is None else other[r]).float().cpu())
        if on_chunk is not None:
            on_chunk()
    return torch.cat(out) if out else torch.zeros(0)


def single_neuron_effects(
    model: HookedModel,
    batch: Any,
    other: Tensor | None,
    neurons: Tensor,
    *,
    mode: str = "zero",
    reference: Any = None,
    chunk_size: int = 64,
    on_chunk: Callable[[], None] | None = None,
) -> Tensor:
    """Score drop ``F(x) - F(x, neuron ablated)`` of each pair's listed neurons, one at a time, batched
    (``on_chunk()`` after the clean forward and after each chunk of ablated rows: progress).

    Shapes:
        neurons: ``[B, k, 2]`` long ``(layer, neuron)`` per pair; returns ``[B, k]``.

    Example:
        >>> batch = ce.tokenize(queries[:2], docs[:2])
        >>> neurons = torch.tensor([[[5, 120], [4, 7]], [[5, 120], [0, 3]]])  # [B=2, k=2, 2]
        >>> single_neuron_effects(ce, batch, None, neurons, mode="zero").shape
        torch.Size([2, 2])
    """
    b, k, _ = neurons.shape
    cfg = model.cfg
    masks = torch.zeros(b * k, cfg.n_layers, cfg.d_mlp, dtype=torch.bool)
    flat = neurons.reshape(b * k, 2)
    masks[torch.arange(b * k), flat[:, 0], flat[:, 1]] = True
    rows = torch.arange(b).repeat_interleave(k)
    with torch.no_grad():
        clean = _scores(model, batch, other).float().cpu()
    if on_chunk is not None:
        on_chunk()
    ablated = masked_scores(
        model,
        batch,
        other,
        rows,
        masks,
        mode=mode,
        reference=reference,
        chunk_size=chunk_size,
        on_chunk=on_chunk,
    )
    return (clean[rows] - ablated).view(b, k)


def _act_grad(model: HookedModel, batch: Any, other: Tensor | None) -> tuple[Tensor, Tensor]:
    """``sum_t a dF/da`` and ``sum_t |a|`` over attended tokens, ``[B, n_layers, d_mlp]`` each."""
    names = [hook_name("mlp_post", i) for i in range(model.cfg.n_layers)]
    acts: dict[str, Tensor] = {}

    def keep(act: Tensor, hook: Any) -> Tensor:
        acts[hook.name] = act
        return act

    emb = model.word_embeddings(batch.input_ids).detach().requires_grad_(True)
    with torch.enable_grad(), model.hooks(fwd_hooks=[(n, keep) for n in names]):
        score = model.score_embeds(emb, batch.token_type_ids, batch.attention_mask, other)
        grads = torch.autograd.grad(score.sum(), [acts[n] for n in names])
    m = (batch.groups != PAD).unsqueeze(-1).to(emb.dtype)
    a = torch.stack([acts[n].detach() for n in names], 1)  # [B, L, pos, d]
    g = torch.stack([x.detach() for x in grads], 1)
    m = m.unsqueeze(1)
    return (a * g * m).sum(2).double().cpu(), (a.abs() * m).sum(2).double().cpu()


@dataclass
class FaithfulnessResult(Result):
    """Spearman correlations (mean over pairs, per intervention and predictor) and the cumulative curve.

    ``spearman[mode][predictor]``: mean over pairs; ``per_pair[mode][predictor]``: ``[B]``, average ranks
    for ties (``statistics.row_correlations``), NaN for a pair whose drops or predictions are all equal
    (e.g. every drop 0: the correlation is undefined), left out of the mean and of ``statistics()``;
    ``drops[mode]``: ``[B, k]`` single-neuron drops of ``neurons`` ``[B, k, 2]``;
    ``curve[mode]``: ``{"nig": [K], "random": [K], "random_std": [K]}`` mean score drop per ``k``, and
    per pair at ``k = K``: ``"nig_at_k"`` ``[B]`` and ``"random_at_k"`` ``[B]`` (mean over the seeds;
    absent in results saved before they existed). ``statistics()``: the correlations with bootstrap
    intervals over pairs and the curve's NIG vs random comparison (:mod:`mechir_nig.statistics`).
    ``save``/``load`` keep it as one checksummed JSON file (``faithfulness.json``: the fields, the
    tensors as nested lists with their dtypes and shapes under ``tensors``; ``mechir_nig.results``).

    Example:
        >>> import os, tempfile
        >>> attr = neuron_integrated_gradients(ce, queries, docs, n_steps=4)
        >>> faith = faithfulness(ce, queries, docs, attr, k=4, curve_k=2, seeds=1, interventions=["baseline"])
        >>> -1.0 <= faith.spearman["baseline"]["nig"] <= 1.0  # mean Spearman over pairs
        True
        >>> faith.drops["baseline"].shape  # [B, k]
        torch.Size([2, 4])
        >>> path = os.path.join(tempfile.mkdtemp(), "faithfulness.json")
        >>> FaithfulnessResult.load(faith.save(path)).k
        4
    """

    k: int
    spearman: dict[str, dict[str, float]]
    per_pair: dict[str, dict[str, list[float]]]
    neurons: Tensor
    drops: dict[str, Tensor]
    curve: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def statistics(
        self, *, confidence: float = 0.95, n_resamples: int = 10000, seed: int = 0
    ) -> dict[str, dict[str, Any]]:
        """Per ablation mode: each predictor's mean Spearman over pairs with its percentile bootstrap
        interval over pairs and the sign-flip p-value of ``mean = 0`` (pairs whose correlation is
        undefined left out, counted in ``n``); NIG against each other predictor, paired over pairs
        (``nig_vs_<predictor>``: the mean difference of the correlations); and, with a curve kept per
        pair, ``curve``: the score drop of the top-``K`` NIG neurons minus that of ``K`` random neurons.

        Returns:
            ``{mode: {"correlations": {predictor: {"mean", "ci", "p", "n"}}, "nig_vs_<p>": {...},
            "curve": {...} or None}}``.

        Example:
            >>> r = FaithfulnessResult(2, {"zero": {"nig": 0.5}}, {"zero": {"nig": [0.9, 0.1, 0.5]}},
            ...                        torch.zeros(3, 2, 2, dtype=torch.long), {})
            >>> c = r.statistics()["zero"]["correlations"]["nig"]
            >>> round(c["mean"], 3), c["n"], c["p"]
            (0.5, 3, 0.25)
        """
        from mechir_nig.statistics import compare_paired

        kw: dict[str, Any] = {"confidence": confidence, "n_resamples": n_resamples, "seed": seed}

        def summary(values: Tensor) -> dict[str, Any]:
            keep = values[~values.isnan()]
            if keep.numel() == 0:
                return {"mean": math.nan, "ci": [math.nan, math.nan], "p": math.nan, "n": 0}
            cmp = compare_paired(keep, **kw)
            return {
                "mean": cmp.mean_difference,
                "ci": [cmp.ci_low, cmp.ci_high],
                "p": cmp.p_value,
                "n": cmp.n,
            }

        out: dict[str, dict[str, Any]] = {}
        for mode, per in self.per_pair.items():
            rho = {name: torch.tensor(v, dtype=torch.float64) for name, v in per.items()}
            entry: dict[str, Any] = {"correlations": {name: summary(v) for name, v in rho.items()}}
            for name, v in rho.items():
                if name != "nig" and "nig" in rho and len(v) == len(rho["nig"]):
                    entry[f"nig_vs_{name}"] = summary(rho["nig"] - v)
            cur = self.curve.get(mode) or {}
            entry["curve"] = None
            if cur.get("nig_at_k") and cur.get("random_at_k"):
                d = torch.tensor(cur["nig_at_k"], dtype=torch.float64) - torch.tensor(
                    cur["random_at_k"], dtype=torch.float64
                )
                entry["curve"] = summary(d) | {"k": len(cur["nig"])}
            out[mode] = entry
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "spearman": self.spearman,
            "per_pair": self.per_pair,
            "curve": self.curve,
            "settings": self.settings,
        }

    # -- persistence (``mechir_nig.results.Result``: save, load) -------------------------------------
    KIND = "FaithfulnessResult"
    WHAT = "faithfulness result"
    LAYOUT = "json"  # the command line's faithfulness.json
    JSON_DTYPES = {"neurons": torch.long, "drops": torch.float64}  # files without recorded dtypes

    @classmethod
    def from_parts(cls, tensors: dict[str, Tensor], info: dict[str, Any]) -> FaithfulnessResult:
        """``Result.from_parts``; a file without ``neurons`` (``to_dict()`` alone) has ``[0, k, 2]``."""
        neurons = tensors.get("neurons")
        if neurons is None or (neurons.numel() == 0 and neurons.ndim == 1):  # no shape recorded
            tensors = tensors | {"neurons": torch.zeros(0, info["k"], 2, dtype=torch.long)}
        return super().from_parts(tensors, info)

    def plot(self, kind: str | None = None, **kw: Any) -> Any:
        """A plotly figure of this result (``mechir_nig.plotting.plot``); ``kind``: ``"curves"`` (default) or
        ``"correlations"``; ``kw`` go to the figure function.

        Example:
            >>> attr = neuron_integrated_gradients(ce, queries, docs, n_steps=4)
            >>> faith = faithfulness(ce, queries, docs, attr, k=4, curve_k=2, seeds=1, interventions=["zero"])
            >>> fig = faith.plot("correlations")  # fig.show() opens it in a browser
            >>> len(fig.data) > 0
            True
        """
        from mechir_nig.plotting import plot

        return plot(self, kind, **kw)


def _per_neuron_nig(
    model: HookedModel,
    queries: Sequence[str],
    docs: Sequence[str],
    *,
    distributed: bool | str = "auto",
    costs: list[int] | None = None,
    **nig_kwargs: Any,
) -> Tensor:
    """Per-pair NIG summed over tokens, ``[B, n_layers, d_mlp]`` float64 on CPU, in pair order; under a
    ``torchrun`` launch the pairs are sharded over the ranks (by attended token count) and gathered, so
    every rank returns every pair's attribution. ``costs``: each pair's attended token count, when known;
    ``nig_kwargs`` go to ``neuron_integrated_gradients`` (``progress`` is shown on rank 0 only).

    Example:
        >>> nig = _per_neuron_nig(ce, queries, docs, n_steps=4)
        >>> nig.shape  # [B, L, d_mlp]
        torch.Size([2, 6, 1536])
    """
    from mechir_nig.attribution.nig import neuron_integrated_gradients
    from mechir_nig.runtime.distributed import context

    qs, ds = list(queries), list(docs)
    ctx = context(distributed, getattr(model, "device", None))
    if ctx.grouped:
        if costs is None:
            costs = _pair_costs(model.attribution_inputs(qs, ds)[0])
        nig_kwargs["progress"] = bool(nig_kwargs.get("progress")) and ctx.is_main

    def attribute(share: list[int]) -> list[Tensor]:
        attr = neuron_integrated_gradients(
            model, [qs[i] for i in share], [ds[i] for i in share], **nig_kwargs
        )
        return [row.clone() for row in attr.per_neuron().double().cpu()]

    rows = ctx.map(range(len(qs)), attribute, cost=costs, what="attributing the pairs", fingerprint=(qs, ds))
    return torch.stack(rows)


def _pair_costs(batch: Any) -> list[int]:
    """Each pair's attended token count (the cost ``shard_by_cost`` balances)."""
    return [int(n) for n in batch.attention_mask.sum(1).tolist()]


def faithfulness(
    model: HookedModel,
    queries: Sequence[str],
    docs: Sequence[str],
    attribution: Any = None,
    *,
    k: int = 10,
    curve_k: int = 10,
    seeds: int = 3,
    interventions: Sequence[str] = ("baseline", "zero", "mean"),
    reference: Any = None,
    n_steps: int = 16,
    chunk_size: int = 64,
    seed: int = 0,
    distributed: bool | str = "auto",
    progress: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> FaithfulnessResult:
    """Single-neuron ablation of each pair's top-``k`` ``|NIG|`` neurons, and the top-k vs random curve.

    Args:
        attribution: a ``NeuronAttribution`` of these pairs (or its ``per_neuron()`` ``[B, L, d_mlp]``);
            default: ``neuron_integrated_gradients(model, queries, docs, n_steps=n_steps)``.
        k: neurons per pair for the correlations; curve_k: ``K`` of the cumulative curve (0: no curve).
        seeds: random sets per ``k`` in the curve.
        interventions: ablation modes among ``baseline``, ``zero``, ``mean`` (``mean`` needs ``reference``,
            else it is computed from these pairs).
        distributed: ``"auto"`` (default): under a ``torchrun`` launch of more than one process the pairs
            are sharded over the ranks (balanced by attended token count, ``shard_by_cost``): each rank
            computes the NIG (when ``attribution`` is not given), the activation x gradient, the
            single-neuron ablations and the curve's ablations of its pairs, the per-pair results are
            gathered and every rank returns the whole result, in pair order (the random neurons of the
            curve are drawn for all pairs on every rank, as in one process). ``True``: shard under any
            launch (even of one process); ``False``: ignore a launch (every rank does everything). The
            ``mean`` reference, when computed here, is computed on every rank (one forward pass).
            Under a launch every rank must call it with the same pairs (checked: ``DistributedError``
            otherwise); inside your own per-rank work pass ``False``.
        progress: show progress bars (rank 0): the NIG of the pairs (when ``attribution`` is not given)
            and the forward batches of the ablations (the activation x gradient pass, each clean pass and
            each chunk of ``chunk_size`` ablated rows, per intervention).
        on_batch: called with the number of forward batches of the ablations done so far, after each one
            (this rank's pairs).

    Returns:
        A :class:`FaithfulnessResult` (``spearman``, ``drops`` ``[B, k]``, ``curve``); in a sharded run
        every rank returns the single-process result (up to float rounding of the batch composition).

    Example:
        >>> attr = neuron_integrated_gradients(ce, queries, docs, n_steps=4)
        >>> faith = faithfulness(ce, queries, docs, attr, k=4, curve_k=2, seeds=1,
        ...                      interventions=("baseline", "zero"))
        >>> sorted(faith.spearman)  # {mode: {predictor: mean Spearman}}
        ['baseline', 'zero']
        >>> len(faith.curve["zero"]["nig"])  # mean score drop per k = 1..curve_k
        2
    """
    from mechir_nig.interventions.ablation import AblationReference
    from mechir_nig.runtime.distributed import context, split_rows, stack_rows

    check_int(k, "k", minimum=2)
    check_int(curve_k, "curve_k", minimum=0)
    check_int(seeds, "seeds", minimum=1)
    batch, other = model.attribution_inputs(list(queries), list(docs))
    cfg = model.cfg
    b, d = len(batch), cfg.d_mlp
    ctx = context(distributed, getattr(model, "device", None))
    ctx.agree("faithfulness", batch.input_ids, batch.attention_mask)
    costs = _pair_costs(batch)
    if attribution is None:
        nig = _per_neuron_nig(
            model, queries, docs, distributed=distributed, costs=costs, n_steps=n_steps, progress=progress
        )
    else:
        nig = attribution.per_neuron() if hasattr(attribution, "per_neuron") else attribution
        nig = torch.as_tensor(nig).double().cpu()
    if tuple(nig.shape) != (b, cfg.n_layers, d):
        raise InputError(
            f"attribution has shape {tuple(nig.shape)}; expected [B, n_layers, d_mlp] = "
            f"({b}, {cfg.n_layers}, {d}) for all layers"
        )
    if "mean" in interventions and reference is None:
        reference = (
            AblationReference.compute(model, list(queries), list(docs))
            if model.pairwise
            else AblationReference.compute(model, list(docs))
        )
    flat = nig.flatten(1)
    top = flat.abs().topk(k, dim=1).indices  # [B, k]
    neurons = torch.stack([top // d, top % d], -1)
    n_all = cfg.n_layers * d
    order = flat.topk(curve_k, dim=1).indices if curve_k else None  # signed: the positive contributors first
    gen = torch.Generator().manual_seed(seed)
    draws = {  # drawn for every pair on every rank, in the single-process order: the same random sets
        mode: torch.rand(seeds, b, n_all, generator=gen)
        .argsort(-1)[..., :curve_k]
        .clone()  # not a view  # [S, B, K]
        for mode in (interventions if curve_k else ())
    }

    def ablate(mine: list[int]) -> list[dict[str, Tensor]]:
        """This rank's pairs: the activation x gradient, the single-neuron drops and the curve's drops."""
        part: dict[str, Tensor] = {}
        idx = torch.as_tensor(mine, dtype=torch.long)
        whole = len(mine) == b
        sub = batch if whole else batch.select(idx)
        sub_other = other if other is None or whole else other[idx]
        m = len(mine)
        per_mode = 1 + -(-(m * k) // chunk_size)
        if curve_k:
            per_mode += 1 + -(-(m * curve_k * (1 + seeds)) // chunk_size)
        tick = stack.enter_context(
            Progress(
                1 + per_mode * len(interventions), "faithfulness", "batch", progress and ctx.is_main, on_batch
            )
        )
        axg, mag = _act_grad(model, sub, sub_other)
        tick.update()
        part["act_x_grad"] = axg.flatten(1).gather(1, top[idx])
        part["activation"] = mag.flatten(1).gather(1, top[idx])
        for mode in interventions:
            part[f"drop|{mode}"] = single_neuron_effects(
                model,
                sub,
                sub_other,
                neurons[idx],
                mode=mode,
                reference=reference,
                chunk_size=chunk_size,
                on_chunk=tick.update,
            ).double()
            if curve_k:
                assert order is not None
                top_dr, rnd_dr = _curve_drops(
                    model,
                    sub,
                    sub_other,
                    order[idx],
                    draws[mode][:, idx],
                    n_all,
                    mode=mode,
                    reference=reference,
                    chunk_size=chunk_size,
                    on_chunk=tick.update,
                )
                part[f"curve_top|{mode}"] = top_dr  # [m, K]
                part[f"curve_rnd|{mode}"] = rnd_dr.transpose(0, 1)  # [m, S, K]: pairs first
        return split_rows(part)

    with contextlib.ExitStack() as stack:  # closes the progress bar, also after an exception
        got = stack_rows(
            ctx.map(
                range(b),
                ablate,
                cost=costs,
                what="ablating the pairs' neurons",
                fingerprint=(batch.input_ids, batch.attention_mask),
            )
        )
    pred = {"nig": flat.gather(1, top), "act_x_grad": got["act_x_grad"], "activation": got["activation"]}
    spearman: dict[str, dict[str, float]] = {}
    per_pair: dict[str, dict[str, list[float]]] = {}
    drops: dict[str, Tensor] = {}
    curve: dict[str, dict[str, list[float]]] = {}
    for mode in interventions:
        drop = got[f"drop|{mode}"]
        drops[mode] = drop
        per_pair[mode] = {}
        spearman[mode] = {}
        for name, p in pred.items():
            target = drop.abs() if name == "activation" else drop
            rho = torch.from_numpy(row_correlations(p, target))  # average ranks: zero drops tie
            per_pair[mode][name] = rho.tolist()
            spearman[mode][name] = float(rho.nanmean())
        if curve_k:
            top_drop = got[f"curve_top|{mode}"].mean(0)
            rnd_drop = got[f"curve_rnd|{mode}"].transpose(0, 1).contiguous().mean(1)  # [S, K]
            curve[mode] = {
                "nig": top_drop.tolist(),
                "random": rnd_drop.mean(0).tolist(),
                "random_std": (rnd_drop.std(0) if seeds > 1 else torch.zeros(curve_k)).tolist(),
                "nig_at_k": got[f"curve_top|{mode}"][:, -1].tolist(),  # [B]: per pair at k = K
                "random_at_k": got[f"curve_rnd|{mode}"][:, :, -1].mean(1).tolist(),  # [B]: seeds' mean
            }
    return FaithfulnessResult(
        k,
        spearman,
        per_pair,
        neurons,
        drops,
        curve,
        {"n_pairs": b, "interventions": list(interventions), "seeds": seeds, "n_steps": n_steps},
    )


def _curve_drops(
    model: HookedModel,
    batch: Any,
    other: Tensor | None,
    order: Tensor,
    rnd: Tensor,
    n_all: int,
    *,
    mode: str,
    reference: Any,
    chunk_size: int,
    on_chunk: Callable[[], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Score drops of the cumulative curve for the pairs of ``batch``: ablating the first ``k`` neurons
    of each pair's NIG ``order`` ``[B, K]``, and the first ``k`` of each of its random draws ``rnd``
    ``[S, B, K]`` (flat neuron indices), ``k = 1 .. K``. Returns ``[B, K]`` and ``[S, B, K]`` (float64)."""
    seeds, b, curve_k = rnd.shape
    kk = torch.arange(1, curve_k + 1)
    masks_top = torch.zeros(b, curve_k, n_all, dtype=torch.bool)
    rank_mask = kk[:, None] > torch.arange(curve_k)[None, :]  # [K, K] first k of the order
    masks_top.scatter_(2, order[:, None, :].expand(b, curve_k, curve_k), rank_mask.expand(b, -1, -1))
    masks_rnd = torch.zeros(seeds, b, curve_k, n_all, dtype=torch.bool)
    masks_rnd.scatter_(
        3, rnd[:, :, None, :].expand(seeds, b, curve_k, curve_k), rank_mask.expand(seeds, b, -1, -1)
    )
    rows = torch.arange(b).repeat_interleave(curve_k)
    with torch.no_grad():
        clean = _scores(model, batch, other).double().cpu()
    if on_chunk is not None:
        on_chunk()
    all_masks = torch.cat([masks_top.reshape(b * curve_k, -1), masks_rnd.reshape(seeds * b * curve_k, -1)])
    all_rows = torch.cat([rows, rows.repeat(seeds)])
    scores = masked_scores(
        model,
        batch,
        other,
        all_rows,
        all_masks.view(-1, model.cfg.n_layers, n_all // model.cfg.n_layers),
        mode=mode,
        reference=reference,
        chunk_size=chunk_size,
        on_chunk=on_chunk,
    ).double()
    dr = clean[all_rows] - scores
    return dr[: b * curve_k].view(b, curve_k), dr[b * curve_k :].view(seeds, b, curve_k)
