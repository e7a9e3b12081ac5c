"""Cross-validated linear probes of a feature on cached activations, per site and layer, with a control.

``probe(model, pairs, feature, sites=("resid_post",))`` runs the pairs once, caching the activations of
every requested site and layer at the rows of one position group, and fits a linear probe per (site,
layer) with ``folds``-fold cross-validation:

- **rows**: a per-token feature (``[batch, pos]``) is probed on the tokens of ``group`` (``"doc"``:
  document tokens, ``"query"``: query tokens of a cross-encoder), where the feature is defined; a per-pair
  feature (``[batch]``) on the pair's first token (``group="first"``, the ``[CLS]`` of an encoder) or on
  the mean activation over a group's tokens.
- **folds**: held out by query (``hold_out="query"``: every pair of a query, i.e. all their tokens, in one
  fold; the query id of ``JudgedPair`` records, else the query text), by document (``"doc"``: every pair
  of a document text in one fold) or by pair, never by token, so a probe never sees a test document's
  other tokens in training. The default is ``"query"`` for a cross-encoder and ``"doc"`` for a
  bi-encoder, which reads the documents alone: the same document under two queries is the same input,
  and holding out by query would test on documents seen in training.
- **ridge** (``kind="ridge"``): closed form on centred activations,
  ``w = (XᵀX + λI)⁻¹ Xᵀy`` with ``λ = alpha · trace(XᵀX) / d`` (scale-free); the score is the out-of-fold
  R² ``1 − Σ(y − ŷ)² / Σ(y − ȳ)²`` pooled over every held-out row (``per_fold`` has each fold's own R²).
- **logistic** (``kind="logistic"``): binary labels (0/1), standardised activations, L2 penalty
  ``alpha · |w|²``, fitted with L-BFGS; the score is the held-out accuracy (``chance``: the majority
  label's share).
- **control**: the same probe on the same folds with the labels permuted over rows (seeded): what the
  probe finds in activations that carry no information about the labels (R² near 0 or below; accuracy
  near chance).

Example:
    >>> res = probe(be, [("cats", "cats purr"), ("dogs", "cats bark loudly")] * 3, "idf",
    ...             collection={"d1": "cats purr", "d2": "cats bark loudly"}, layers=[0], folds=2)
    >>> res.score.shape  # [site, layer]
    torch.Size([1, 1])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechir_nig._validate import check_choice, check_int, check_layers, check_number
from mechir_nig.analysis.features import (
    PAIR_FEATURES,
    TOKEN_FEATURES,
    IRFeatures,
    ir_features,
    split_pairs,
)
from mechir_nig.errors import InputError
from mechir_nig.models.protocol import HookedModel
from mechir_nig.models.tokenization import CLS, DOC, QUERY
from mechir_nig.sites import site

__all__ = ["ProbeResult", "probe"]

GROUPS = {"doc": DOC, "query": QUERY, "cls": CLS}
KINDS = ("ridge", "logistic")


@dataclass
class ProbeResult:
    """Cross-validated probe scores per (site, layer), with the shuffled-label control.

    Shapes:
        score, control: ``[site, layer]`` pooled out-of-fold R² (ridge) or accuracy (logistic).
        per_fold, control_per_fold: ``[site, layer, fold]`` each fold's own score.

    Attributes:
        feature: the feature's name (``"custom"`` for a tensor).
        kind: ``"ridge"`` or ``"logistic"``.
        metric: ``"r2"`` or ``"accuracy"``.
        sites: the sites (rows of ``score``).
        layers: the layers (columns of ``score``).
        n_rows: probed rows (tokens, or pairs).
        n_pairs: pairs.
        folds: cross-validation folds.
        chance: for ``logistic``, the majority label's share (always predicting it).
        settings: the remaining arguments (group, hold_out, alpha, seed).

    Example:
        >>> res = ProbeResult("idf", "ridge", "r2", ["resid_post"], [0, 1], torch.tensor([[0.2, 0.9]]),
        ...                   torch.tensor([[-0.01, 0.0]]), torch.zeros(1, 2, 5), torch.zeros(1, 2, 5), 100, 10, 5)
        >>> res.table()[1]["r2"], res.best()
        (0.8999999761581421, ('resid_post', 1, 0.8999999761581421))
    """

    feature: str
    kind: str
    metric: str
    sites: list[str]
    layers: list[int]
    score: Float[Tensor, "site layer"]
    control: Float[Tensor, "site layer"]
    per_fold: Float[Tensor, "site layer fold"]
    control_per_fold: Float[Tensor, "site layer fold"]
    n_rows: int
    n_pairs: int
    folds: int
    chance: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """One row per (site, layer): the pooled score, the fold mean and standard deviation, the control.

        Example:
            >>> res = probe(be, [("cats", "cats purr"), ("dogs", "cats bark loudly")] * 3, "idf",
            ...             collection={"d1": "cats purr", "d2": "cats bark loudly"}, layers=[0, 1], folds=2)
            >>> sorted(res.table()[0])
            ['control', 'fold_mean', 'fold_std', 'layer', 'r2', 'site']
        """
        rows = []
        for i, s in enumerate(self.sites):
            for j, layer in enumerate(self.layers):
                f = self.per_fold[i, j]
                rows.append(
                    {
                        "site": s,
                        "layer": layer,
                        self.metric: float(self.score[i, j]),
                        "fold_mean": float(f.mean()),
                        "fold_std": float(f.std()) if f.numel() > 1 else 0.0,
                        "control": float(self.control[i, j]),
                    }
                )
        return rows

    def to_markdown(self, digits: int = 3) -> str:
        """:meth:`table` as a markdown table (score, fold mean ± std, control).

        Example:
            >>> res = probe(be, [("cats", "cats purr"), ("dogs", "cats bark loudly")] * 3, "idf",
            ...             collection={"d1": "cats purr", "d2": "cats bark loudly"}, layers=[0, 1], folds=2)
            >>> print(res.to_markdown())  # doctest: +ELLIPSIS
            | site | layer | r2 | fold mean ± std | shuffled control |
            |---|---|---|---|---|
            | resid_post | 0 | ... |
            | resid_post | 1 | ... |
            <BLANKLINE>
        """
        head = (
            f"| site | layer | {self.metric} | fold mean ± std | shuffled control |\n|---|---|---|---|---|\n"
        )
        return head + "".join(
            f"| {r['site']} | {r['layer']} | {r[self.metric]:.{digits}f} | {r['fold_mean']:.{digits}f} ± "
            f"{r['fold_std']:.{digits}f} | {r['control']:.{digits}f} |\n"
            for r in self.table()
        )

    def best(self) -> tuple[str, int, float]:
        """``(site, layer, score)`` of the highest score.

        Example:
            >>> res = probe(be, [("cats", "cats purr"), ("dogs", "cats bark loudly")] * 3, "idf",
            ...             collection={"d1": "cats purr", "d2": "cats bark loudly"}, layers=[0, 1], folds=2)
            >>> site, layer, score = res.best()
            >>> site, layer in (0, 1), bool(score == res.score.max())
            ('resid_post', True, True)
        """
        flat = int(self.score.argmax())
        i, j = divmod(flat, len(self.layers))
        return self.sites[i], self.layers[j], float(self.score[i, j])

    def plot(self) -> Any:
        """A plotly figure: layer vs score per site, the control dashed, fold standard deviation as error
        bars.

        Example:
            >>> res = probe(be, [("cats", "cats purr"), ("dogs", "cats bark loudly")] * 3, "idf",
            ...             collection={"d1": "cats purr", "d2": "cats bark loudly"}, layers=[0, 1], folds=2)
            >>> fig = res.plot()  # fig.show() opens it in a browser
            >>> len(fig.data) > 0
            True
        """
        import plotly.graph_objects as go

        fig = go.Figure()
        for i, s in enumerate(self.sites):
            std = self.per_fold[i].std(-1) if self.folds > 1 else torch.zeros(len(self.layers))
            fig.add_scatter(
                x=self.layers,
                y=self.score[i].tolist(),
                error_y={"type": "data", "array": std.tolist()},
                mode="lines+markers",
                name=s,
            )
            fig.add_scatter(
                x=self.layers,
                y=self.control[i].tolist(),
                mode="lines",
                line={"dash": "dash"},
                name=f"{s} (shuffled labels)",
            )
        fig.update_layout(
            title=f"{self.kind} probe of {self.feature}",
            xaxis_title="layer",
            yaxis_title="held-out R²" if self.metric == "r2" else "held-out accuracy",
        )
        return fig


def _fold_ids(keys: list[str], folds: int, seed: int) -> Tensor:
    """Fold of each pair: distinct keys shuffled (seeded) and dealt round-robin."""
    distinct = list(dict.fromkeys(keys))
    if len(distinct) < folds:
        raise InputError(
            f"{folds} folds need at least {folds} distinct hold-out groups, got {len(distinct)}; pass more "
            "pairs, fewer folds, or hold_out='pair'"
        )
    order = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed)).tolist()
    fold_of = {distinct[k]: r % folds for r, k in enumerate(order)}
    return torch.tensor([fold_of[k] for k in keys])


def _ridge_folds(x: Tensor, ys: Tensor, fold: Tensor, folds: int, alpha: float) -> Tensor:
    """Out-of-fold ridge predictions ``[n, targets]`` of every column of ``ys``: the training Gram matrix
    of each fold is the total minus the held-out fold's (one pass over ``x``), centred in closed form."""
    d = x.shape[1]
    parts: list[tuple[Tensor, ...]] = []
    for f in range(folds):
        xf, yf = x[fold == f], ys[fold == f]
        parts.append(
            (torch.tensor(float(len(xf)), dtype=x.dtype), xf.T @ xf, xf.sum(0), xf.T @ yf, yf.sum(0))
        )
    total = [torch.stack([p[i] for p in parts]).sum(0) for i in range(5)]
    pred = torch.empty_like(ys)
    eye = torch.eye(d, dtype=x.dtype)
    for f, part in enumerate(parts):
        n, gram, sx, xy, sy = (t - p for t, p in zip(total, part, strict=True))
        mx, my = sx / n, sy / n
        gram_c = gram - n * torch.outer(mx, mx)  # Σ (x − mx)(x − mx)ᵀ over the training rows
        xy_c = xy - n * torch.outer(mx, my)  # Σ (x − mx)(y − my)ᵀ
        lam = alpha * torch.trace(gram_c) / d
        w = torch.linalg.solve(gram_c + lam * eye, xy_c)
        pred[fold == f] = (x[fold == f] - mx) @ w + my
    return pred


def _logistic(x_tr: Tensor, y_tr: Tensor, x_te: Tensor, alpha: float) -> Tensor:
    mx, sx = x_tr.mean(0), x_tr.std(0).clamp_min(1e-12)
    xs = (x_tr - mx) / sx
    w = torch.zeros(xs.shape[1], dtype=xs.dtype, requires_grad=True)
    b = torch.zeros((), dtype=xs.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xs @ w + b, y_tr) + alpha * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return (((x_te - mx) / sx) @ w + b > 0).to(xs.dtype)


def _cross_validate(
    x: Tensor, ys: Tensor, fold: Tensor, folds: int, kind: str, alpha: float
) -> tuple[Tensor, Tensor]:
    """Pooled out-of-fold score ``[targets]`` and the score of each fold ``[targets, folds]`` of every
    column of ``ys`` (``[n, targets]``: the labels and the control's, on the same folds)."""
    if kind == "ridge":
        pred = _ridge_folds(x, ys, fold, folds, alpha)
    else:
        pred = torch.empty_like(ys)
        for f in range(folds):
            te = fold == f
            for t in range(ys.shape[1]):
                pred[te, t] = _logistic(x[~te], ys[~te, t], x[te], alpha)
    pooled = torch.tensor(
        [_score(ys[:, t], pred[:, t], kind) for t in range(ys.shape[1])], dtype=torch.float64
    )
    per_fold = torch.tensor(
        [
            [_score(ys[fold == f, t], pred[fold == f, t], kind) for f in range(folds)]
            for t in range(ys.shape[1])
        ],
        dtype=torch.float64,
    )
    return pooled, per_fold


def _score(y: Tensor, pred: Tensor, kind: str) -> float:
    if kind == "logistic":
        return float((pred == y).to(torch.float64).mean())
    sst = ((y - y.mean()) ** 2).sum()
    return float(1 - ((y - pred) ** 2).sum() / sst) if sst > 0 else float("nan")


def _feature(
    feature: Any, model: HookedModel, pairs: Any, collection: Any, features: Any
) -> tuple[str, Tensor, Any, IRFeatures | None]:
    """``(name, values, defined mask or None, IRFeatures or None)``."""
    if isinstance(feature, str):
        if features is None:
            if collection is None:
                raise InputError(
                    f"feature {feature!r} is an IR feature: pass collection= (or features=ir_features(...))"
                )
            features = ir_features(model, collection, pairs)
        if not isinstance(features, IRFeatures):
            raise InputError("features must be what ir_features(...) returns")
        values = features[feature]
        return feature, values, features.mask if values.ndim == 2 else None, features
    if isinstance(feature, Tensor):
        return "custom", feature.detach().to("cpu", torch.float64), None, None
    raise InputError(
        f"feature must be an IR feature name ({TOKEN_FEATURES} per token, {PAIR_FEATURES} per pair) or a tensor "
        f"[batch, pos] / [batch], got {type(feature).__name__}"
    )


def probe(
    model: HookedModel,
    pairs: Any,
    feature: str | Tensor,
    *,
    sites: Sequence[str] = ("resid_post",),
    layers: Sequence[int] | None = None,
    group: str | None = None,
    kind: str = "ridge",
    folds: int = 5,
    seed: int = 0,
    alpha: float = 1e-3,
    hold_out: str | None = None,
    collection: Any = None,
    features: IRFeatures | None = None,
    batch_size: int = 16,
) -> ProbeResult:
    """Fit cross-validated linear probes of ``feature`` at every (site, layer) (the module docstring has
    the method).

    Args:
        model: a ``HookedModel`` (a bi-encoder reads the documents: the document side).
        pairs: ``(query, doc)`` tuples or ``JudgedPair`` records.
        feature: an IR feature name (:mod:`mechir_nig.analysis.features`), or a tensor ``[batch, pos]``
            (per token, on the positions of ``model.tokenize`` of the pairs; NaN where undefined) or
            ``[batch]`` (per pair).
        sites: sites of :mod:`mechir_nig.sites` with a position axis (``resid_pre``, ``resid_mid``,
            ``resid_post``, ``attn_out``, ``mlp_out``, ``mlp_pre``, ``mlp_post``, ``z``, ``q``, ``k``, ``v``;
            heads are concatenated).
        layers: the layers (default all).
        group: rows: ``"doc"`` / ``"query"`` tokens for a per-token feature (default ``"doc"``); for a
            per-pair feature ``"first"`` (the first token, default) or a group's mean activation.
        kind: ``"ridge"`` (R²) or ``"logistic"`` (accuracy; labels 0/1).
        folds: cross-validation folds (>= 2).
        seed: seeds the fold assignment and the control's permutation.
        alpha: the regularisation (ridge: relative to ``trace(XᵀX)/d``; logistic: the L2 weight).
        hold_out: ``"query"`` (a query's pairs share a fold), ``"doc"`` (a document's pairs share a fold)
            or ``"pair"``; default ``"query"`` for a cross-encoder, ``"doc"`` for a bi-encoder.
        collection: the collection an IR feature's IDF and lengths come from.
        features: precomputed :func:`~mechir_nig.analysis.features.ir_features` of the pairs.
        batch_size: pairs per forward.

    Returns:
        :class:`ProbeResult` (``score`` ``[site, layer]``, ``control``, ``per_fold``, ``table()``, ``plot()``).

    Raises:
        InputError: unknown site, feature or kind; a feature of the wrong shape; too few hold-out groups;
            non-binary labels for ``logistic``; a constant feature.

    Example:
        >>> pairs = judged_pairs(col, max_relevant_per_query=1, max_nonrelevant_per_query=1)
        >>> res = probe(ce, pairs, "query_tf", collection=col, sites=["resid_post", "mlp_out"], layers=[4, 5])
        >>> res.score.shape, res.control.shape  # [site, layer]: the probe's R² and the shuffled control's
        (torch.Size([2, 2]), torch.Size([2, 2]))
        >>> print(res.to_markdown())  # doctest: +ELLIPSIS
        | site | layer | r2 | fold mean ± std | shuffled control |
        |---|---|---|---|---|
        | resid_post | 4 | ... |
        | resid_post | 5 | ... |
        | mlp_out | 4 | ... |
        | mlp_out | 5 | ... |
        <BLANKLINE>
    """
    check_choice(kind, "kind", KINDS)
    hold_out = hold_out or ("query" if model.pairwise else "doc")
    check_choice(hold_out, "hold_out", ("query", "doc", "pair"))
    check_int(folds, "folds", minimum=2)
    check_int(batch_size, "batch_size", minimum=1)
    check_number(alpha, "alpha", minimum=0, finite=False)
    if isinstance(sites, str) or not sites:
        raise InputError("sites must be a non-empty list of site names, e.g. ['resid_post']")
    site_list = [site(s) for s in sites]
    for s in site_list:
        if s.unit == "head" and s.unit_axis == 1:
            raise InputError(
                f"site {s.name!r} has no position axis of its own (query x key): probe another site"
            )
    layer_list = list(check_layers(layers, model.cfg.n_layers))
    queries, docs, keys = split_pairs(pairs)
    name, values, defined, feats = _feature(feature, model, pairs, collection, features)
    batch = (
        feats.batch
        if feats is not None
        else (model.tokenize(queries, docs) if model.pairwise else model.tokenize(docs))
    )
    n, n_pos = batch.input_ids.shape
    per_token = values.ndim == 2
    if tuple(values.shape) not in ((n, n_pos), (n,)):
        raise InputError(
            f"feature has shape {tuple(values.shape)}; want [batch, pos] = {(n, n_pos)} (per token, the positions "
            f"of model.tokenize of the pairs) or [batch] = ({n},) (per pair)"
        )
    group = group or ("doc" if per_token else "first")
    check_choice(group, "group", ("doc", "query") if per_token else ("first", "doc", "query", "cls"))
    if group == "query" and not model.pairwise:
        raise InputError("a bi-encoder's probe reads the documents: group='query' needs a cross-encoder")
    in_group = batch.groups == GROUPS.get(group, CLS)
    if per_token:
        rows = in_group & batch.attention_mask.bool() & ~values.isnan()
        if defined is not None:
            rows &= defined
        y = values[rows]
    else:
        rows = None
        y = values
    if y.numel() == 0:
        raise InputError(f"no rows to probe: feature {name!r} is defined on no {group} token")
    if not bool((y != y[0]).any()):
        raise InputError(f"feature {name!r} is constant on the probed rows: nothing to probe")
    if kind == "logistic" and not bool(((y == 0) | (y == 1)).all()):
        raise InputError("kind='logistic' needs labels 0 or 1; use kind='ridge' for a graded feature")
    by = {"query": keys, "doc": docs, "pair": [str(i) for i in range(n)]}[hold_out]
    pair_fold = _fold_ids(by, folds, seed)
    fold = pair_fold[:, None].expand(n, n_pos)[rows] if per_token else pair_fold

    names = [(s, layer, s.hook(layer)) for s in site_list for layer in layer_list]
    acts: dict[str, list[Tensor]] = {h: [] for _, _, h in names}
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        sub = batch.select(idx, n_pos=n_pos)
        got: dict[str, Tensor] = {}

        def keep(act: Tensor, hook: Any, got: dict[str, Tensor] = got) -> Tensor:
            got[hook.name] = act.detach()
            return act

        with torch.no_grad(), model.hooks(fwd_hooks=[(h, keep) for _, _, h in names]):
            model(sub.to(model.device))
        for _, _, h in names:
            a = got[h].to("cpu", torch.float64)
            a = a.reshape(*a.shape[:2], -1)  # [batch, pos, features]: heads concatenated
            if per_token:
                acts[h].append(a[rows[idx]])  # type: ignore[index]
            elif group == "first":
                acts[h].append(a[:, 0])
            else:
                m = in_group[idx].to(a.dtype)[:, :, None]
                acts[h].append((a * m).sum(1) / m.sum(1).clamp_min(1))

    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 1))
    y_control = y[perm]
    score = torch.empty(len(site_list), len(layer_list), dtype=torch.float64)
    control, per_fold, control_fold = (
        score.clone(),
        score.new_empty(*score.shape, folds),
        score.new_empty(*score.shape, folds),
    )
    for i, s in enumerate(site_list):
        for j, layer in enumerate(layer_list):
            x = torch.cat(acts[s.hook(layer)])
            both, both_folds = _cross_validate(
                x, torch.stack([y, y_control], 1), fold, folds, kind, float(alpha)
            )
            score[i, j], control[i, j] = both
            per_fold[i, j], control_fold[i, j] = both_folds
    chance = None
    if kind == "logistic":
        rate = float(y.mean())
        chance = max(rate, 1.0 - rate)
    return ProbeResult(
        name,
        kind,
        "r2" if kind == "ridge" else "accuracy",
        [s.name for s in site_list],
        layer_list,
        score,
        control,
        per_fold,
        control_fold,
        len(y),
        n,
        folds,
        chance,
        {"group": group, "hold_out": hold_out, "alpha": float(alpha), "seed": seed},
    )
