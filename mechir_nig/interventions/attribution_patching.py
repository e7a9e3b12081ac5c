"""Attribution patching (AtP): a first-order estimate of every patch of :func:`~.patching.patch`'s sweep.

Where :func:`~mechir_nig.interventions.patching.patch` runs one patched forward per index (one
``(layer, position)`` of ``resid_pre``, one head, one neuron ...), attribution patching (Nanda 2023;
Kramár et al. 2024, "AtP*") estimates all of them at once from the base run, the source run and one
backward pass of the base run (parameters frozen):

``estimate(i) = Σ_{j ∈ i} (a_source[j] − a_base[j]) · ∂F/∂a[j]`` (the gradient at the base run)

with ``j`` running over the activation entries one patch index ``i`` writes (a position's ``d_model``
entries, a head's ``d_head`` entries at every position, a neuron at every position ...). Base and source
are ``patch``'s: ``direction="denoise"`` (default) estimates the clean activation written into the
corrupted run, ``"noise"`` the corrupted into the clean run. The estimates come back as ``patch``'s
:class:`~mechir_nig.interventions.patching.PatchingResult` (``patched`` = base score + estimate,
``values`` the recovery or raw difference computed from them), so plots, reports and saving work as
for ``patch``. Indices that ``patch`` skips (positions masked in the base run, equal source and base
activations) get the base score, as there.

AtP*'s **QK fix** (attention saturation: a first-order step through a saturated softmax misses a large
change of the pattern) applies where the patched activation feeds the attention pattern only: the ``q``
and ``k`` sites. With ``qk_fix=True`` (default) the pattern of the patched head is recomputed exactly
(one changed key column, or one changed query row, of ``softmax(q kᵀ / √d_head + mask)``, in closed form)
and only the step from the pattern to the score is linear: ``Σ (A' − A) · ∂F/∂A``. The fix needs the
model's ``hook_attn_scores`` to equal ``q kᵀ / √d_head + mask`` (checked on the run; a family with
rotary embeddings fails the check and gets the plain estimate, with a warning). AtP*'s other fix (GradDrop,
dropping one layer's gradient at a time to find cancelling paths) costs one backward per layer and is not
done: use ``verify_top`` to check the estimates that matter exactly.

``verify_top=k`` re-runs the ``k`` largest ``|values|`` exactly through ``patch``'s machinery (one
patched forward each, from the base run's cached ``resid_pre`` of the patched layer) and records in
``result.meta["attribution"]["verify"]`` their indices, the estimates, the exact values, the Spearman
rank correlation between them and the absolute errors.

Example:
    >>> from mechir_nig.interventions.perturb import align, tfc1
    >>> al = align(ce, queries, docs, tfc1)
    >>> est = attribution_patch(ce, al, sites=("resid_pre", "heads"), verify_top=20)
    >>> est["heads"].shape, est["resid_pre"].shape  # [batch, layer, n_heads], [batch, layer, pos]
    (torch.Size([2, 6, 12]), torch.Size([2, 6, 23]))
    >>> -1 <= est.meta["attribution"]["verify"]["spearman"] <= 1  # rank agreement of the top 20 with exact patches
    True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mechir_nig._validate import check_bool, check_int
from mechir_nig.interventions.patching import (
    PatchingResult,
    _grid,
    _members,
    _prepare,
    _run_rows,
    _site_info,
    pos_first,
)
from mechir_nig.models.protocol import HookedModel
from mechir_nig.sites import hook_name
from mechir_nig.statistics import correlation

__all__ = ["attribution_patch"]


def _reduce(kind: str, prod: Tensor) -> Tensor:
    """Per-index sums of ``(a_source − a_base) · ∂F/∂a`` (``prod``, positions on axis 1) in ``patch``'s
    index layout: ``pos`` ``[batch, pos]``, ``head`` ``[batch, n_heads]``, ``head_pos``
    ``[batch, n_heads, pos]``, ``neuron`` ``[batch, d_mlp]``."""
    if kind == "pos":
        return prod.sum(-1)
    if kind == "head":
        return prod.sum((1, 3))
    if kind == "head_pos":
        return prod.sum(-1).transpose(1, 2)
    return prod.sum(1)


def _gradients(
    model: HookedModel,
    base: Any,
    names: set[str],
    keep: set[str],
    first: int,
    score: Callable[[Tensor], Tensor],
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """One forward of ``base`` and one backward of the sum of its scores (rows are independent), the
    parameters frozen: the scores, the activations at ``names | keep`` and ``∂F/∂a`` at ``names``.

    The graph starts at ``resid_pre`` of layer ``first`` (a leaf), an ancestor of every patched site."""
    from mechir_nig.attribution.nig.kernel import frozen

    acts: dict[str, Tensor] = {}
    leaf = hook_name("resid_pre", first)

    def hook(act: Tensor, hook: Any) -> Tensor:
        if hook.name == leaf:
            act = act.detach().requires_grad_(True)
        acts[hook.name] = act
        return act

    with frozen(model), torch.enable_grad():
        out = model.run_with_hooks(base, fwd_hooks=[(n, hook) for n in sorted(names | keep | {leaf})])
        scores = score(out)
        wanted = sorted(names)
        grads = torch.autograd.grad(scores.sum(), [acts[n] for n in wanted], allow_unused=True)
    g = {n: (torch.zeros_like(acts[n]) if gr is None else gr) for n, gr in zip(wanted, grads, strict=True)}
    return scores.detach(), {n: a.detach() for n, a in acts.items()}, g


def _qk_estimate(
    site_name: str, layer: int, acts: dict[str, Tensor], grads: dict[str, Tensor], source: dict[str, Tensor]
) -> Tensor | None:
    """AtP*'s QK-fixed estimate ``[batch, n_heads, pos]`` of patching ``q`` or ``k`` per head and position:
    the patched head's pattern recomputed exactly (closed form for one changed logit column / one changed
    row), ``Σ (A' − A) · ∂F/∂A``; ``None`` when the run's scores are not ``q kᵀ / √d_head + mask``."""
    q, k = acts[hook_name("q", layer)], acts[hook_name("k", layer)]
    scores, pattern = acts[hook_name("attn_scores", layer)], acts[hook_name("pattern", layer)]
    g = grads[hook_name("pattern", layer)].double()
    scale = 1.0 / math.sqrt(q.shape[-1])
    qk = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * scale
    mask = (scores.double() - qk)[:, :1, :1, :]  # the additive mask, [batch, 1, 1, key]
    attended = mask > -1e4
    tol = 1e-4 if q.dtype == torch.float32 else 1e-8
    if not torch.allclose(
        (scores.double() - qk) * attended, mask * attended, atol=tol * (1 + float(qk.abs().max()))
    ):
        return None
    a = pattern.double()
    if site_name == "k":
        dk = (source[hook_name("k", layer)] - k).double()
        delta = torch.einsum("bqhd,bphd->bhqp", q.double(), dk) * scale  # logit change of key column p
        log_a = torch.log(a)
        log_z = torch.logaddexp(torch.log1p(-a.clamp(max=1.0)), log_a + delta)  # log of the new normaliser
        a_new_p = torch.exp(log_a + delta - log_z)  # new weight of key p
        rest = (a * g).sum(-1, keepdim=True) - a * g  # Σ_{j≠p} A_j G_j
        est = (torch.exp(-log_z) - 1) * rest + (a_new_p - a) * g  # [batch, head, query, p]
        return est.sum(2)
    dq = (source[hook_name("q", layer)] - q).double()
    delta = torch.einsum("bphd,bkhd->bhpk", dq, k.double()) * scale  # logit change of query row p
    a_new = torch.softmax(scores.double() + delta, dim=-1)
    return ((a_new - a) * g).sum(-1)


def attribution_patch(
    model: HookedModel,
    clean: Any,
    corrupted: Any = None,
    *,
    sites: Any = ("resid_pre",),
    direction: str = "denoise",
    metric: str = "recovery",
    layers: Any = None,
    eps: float = 1e-6,
    query_embeddings: Tensor | None = None,
    joint: bool = False,
    verify_top: int | None = None,
    qk_fix: bool = True,
) -> PatchingResult:
    """Estimate every patch of :func:`~mechir_nig.interventions.patching.patch`'s sites by attribution
    patching (see the module docstring): two forwards and one backward.

    Args:
        model: a ``HookedModel`` (cross-encoder, or bi-encoder with the query embeddings fixed).
        clean: an ``Alignment`` (``perturb.align``), or the clean batch.
        corrupted: the corrupted batch of the same shape (with a batch ``clean``).
        sites: ``patch``'s sites: a name, a ``ComponentSet`` or a list of them.
        direction: ``"denoise"`` (base corrupted, source clean) or ``"noise"``, as ``patch``.
        metric: ``"recovery"`` or ``"raw"``, as ``patch``.
        layers: the layers to estimate (default all).
        eps: ``|source − base|`` below this makes the recovery NaN.
        query_embeddings: a bi-encoder's fixed query embeddings when ``clean`` is a batch.
        joint: with a ``ComponentSet``, also the estimate of patching all its members at once (the sum of
            the members' estimates: first order).
        verify_top: re-run the ``k`` largest ``|values|`` exactly (``None``: none) and record the
            comparison in ``result.meta["attribution"]["verify"]``.
        qk_fix: AtP*'s exact pattern for the ``q`` and ``k`` sites.

    Returns:
        A :class:`~mechir_nig.interventions.patching.PatchingResult` of estimates;
        ``meta["attribution"]`` says how it was made.

    Raises:
        InputError: as ``patch``; a ``verify_top`` that is not an integer >= 1.

    Example:
        >>> from mechir_nig.interventions.perturb import align, tfc1
        >>> est = attribution_patch(ce, align(ce, queries, docs, tfc1), sites="heads", verify_top=5)
        >>> verify = est.meta["attribution"]["verify"]
        >>> sorted(verify)
        ['estimate', 'exact', 'index', 'k', 'max_abs_error', 'mean_abs_error', 'spearman']
        >>> verify["spearman"] > 0.5  # the 5 largest estimates rank nearly as the exact patches do (1.0 here)
        True
    """
    check_int(verify_top, "verify_top", minimum=1, allow_none=True)
    check_bool(qk_fix, "qk_fix")
    job = _prepare(
        model,
        clean,
        corrupted,
        sites=sites,
        direction=direction,
        metric=metric,
        layers=layers,
        eps=eps,
        query_embeddings=query_embeddings,
        joint=joint,
    )
    base, source, q_emb, layer_list = job.base, job.source, job.q_emb, job.layer_list
    members, member_idx = _members(model, job.site_list, layer_list)

    def score(out: Tensor) -> Tensor:  # a bi-encoder's output is an embedding
        return out if q_emb is None else (out * q_emb).sum(-1)

    entries = [(site, nset, *_site_info(site, nset)) for site, nset in job.site_list]
    names = {t.format(layer=layer) for _, _, _, t, _ in entries for layer in layer_list}
    hook_dict = getattr(model, "hook_dict", {})
    fix = {
        layer
        for _, _, s, _, _ in entries
        for layer in layer_list
        if qk_fix
        and s in ("q", "k")
        and all(hook_name(x, layer) in hook_dict for x in ("q", "k", "attn_scores", "pattern"))
    }
    keep = {hook_name(x, layer) for layer in fix for x in ("q", "k", "attn_scores")}
    keep |= {hook_name("resid_pre", layer) for layer in layer_list}
    names |= {hook_name("pattern", layer) for layer in fix}
    with torch.no_grad():
        source_out, source_cache = model.run_with_cache(
            source, names_filter=lambda n: n in names | keep, return_cache_object=False
        )
    source_scores = score(source_out)
    base_scores, acts, grads = _gradients(model, base, names, keep, min(layer_list), score)
    b_s = base_scores.float().cpu()
    fallback: list[int] = []
    estimates: dict[str, Tensor] = {}
    for site, nset, site_name, template, kind in entries:
        per_layer = []
        for layer in layer_list:
            name = template.format(layer=layer)
            b_act, s_act = pos_first(site_name, acts[name]), pos_first(site_name, source_cache[name])
            est = None
            if layer in fix and site_name in ("q", "k"):
                est = _qk_estimate(site_name, layer, acts, grads, source_cache)
                if est is None:
                    fallback.append(layer)
            if est is None:
                est = _reduce(kind, (s_act - b_act) * pos_first(site_name, grads[name]))
            valid = _grid(kind, b_act, s_act, base.attention_mask, None)
            per_layer.append(torch.where(valid, est.float(), 0.0).cpu())
        full = torch.stack(per_layer, 1)  # [batch, layer, *index]
        if nset is None:
            estimates[site] = full
            continue
        li = torch.tensor([layer_list.index(m[0]) for m in members])
        unit = torch.tensor([m[1] for m in members])
        if kind == "pos":  # member positions past these pairs: no patch, estimate 0
            full = torch.nn.functional.pad(full, (0, max(0, int(unit.max()) + 1 - full.shape[-1])))
        estimates[site] = full[:, li, unit]
        if joint:
            estimates[f"{site}_joint"] = estimates[site].sum(1)
    if fallback:
        warnings.warn(
            f"layers {sorted(set(fallback))}: the attention scores are not q kᵀ / √d_head + mask (e.g. rotary "
            "embeddings), so the q/k estimates there are the plain first-order ones (no QK fix)",
            UserWarning,
            stacklevel=2,
        )
    patched = {k: v + b_s.reshape(-1, *[1] * (v.dim() - 1)) for k, v in estimates.items()}
    res = job.result(base_scores, source_scores, patched)
    res.meta["attribution"] = {
        "method": "attribution patching: (a_source - a_base) . dF/da at the base run",
        "qk_fix": sorted(fix - set(fallback)),
    }
    if verify_top is not None:
        res.meta["attribution"]["verify"] = _verify(model, job, res, acts, source_cache, verify_top, members)
    return res


def _verify(
    model: HookedModel,
    job: Any,
    res: PatchingResult,
    acts: dict[str, Tensor],
    source_cache: dict[str, Tensor],
    k: int,
    members: list[tuple[int, int]],
) -> dict[str, Any]:
    """The ``k`` largest ``|values|`` (joint keys aside) patched exactly, one patched forward each:
    indices, estimates, exact values (the result's metric), Spearman correlation and absolute errors."""
    info = {site: (nset, *_site_info(site, nset)) for site, nset in job.site_list}
    cands = [(site, idx) for site in info for idx in res.values[site].isfinite().nonzero().tolist()]
    mags = torch.tensor([abs(float(res.values[s][tuple(i)])) for s, i in cands])
    top = [cands[i] for i in mags.argsort(descending=True, stable=True)[:k].tolist()]
    exact: list[float] = []
    with torch.no_grad():
        for site, idx in top:
            nset, site_name, _, kind = info[site]
            if nset is not None:  # a set's value index: (pair, member)
                layer, rest = members[idx[1]][0], [members[idx[1]][1]]
            else:
                layer, rest = job.layer_list[idx[1]], idx[2:]
            rows = torch.tensor([[idx[0], *rest]], device=model.device)
            act = pos_first(site_name, source_cache[hook_name(site_name, layer)])
            width = 1 if kind == "pos" else act.shape[-1 if kind == "neuron" else 2]
            resid = acts[hook_name("resid_pre", layer)]
            out = _run_rows(model, job.base, resid, source_cache, site_name, layer, kind, rows, width)
            q = None if job.q_emb is None else job.q_emb[rows[:, 0]]
            exact.append(float(out[0] if q is None else (out * q).sum(-1)[0]))
    pair = torch.tensor([i[0] for _, i in top], dtype=torch.long)
    b, s = res.base_scores[pair], res.source_scores[pair]
    est = torch.tensor([float(res.values[site][tuple(i)]) for site, i in top])
    ex = torch.tensor(exact) - b
    if res.metric == "recovery":
        ex = ex / (s - b)
    err = (est - ex).abs()
    rho = correlation(est, ex) if len(top) else math.nan
    return {
        "k": len(top),
        "index": [[site, *i] for site, i in top],
        "estimate": est.tolist(),
        "exact": ex.tolist(),
        "spearman": None if math.isnan(rho) else rho,
        "max_abs_error": float(err.max()) if len(top) else 0.0,
        "mean_abs_error": float(err.mean()) if len(top) else 0.0,
    }
