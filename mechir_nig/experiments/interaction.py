"""Interaction study: the re-ranking effect of blocking the attention between two token groups, per layer.

MICE-style interaction removal (Vast et al.; ``interventions.attention.block_attention``): for each
interaction ``(from_group, to_group)`` (e.g. ``("query", "doc")``: query tokens stop attending to document
tokens) and each layer (alone, and optionally every layer at once), the held-out queries' candidates are
re-ranked with the interaction blocked and the IR measures (nDCG@10, RR@10, ...) compared with the
unblocked model, per query. The evaluation queries are those of ``pruning_study`` (the evaluation half of
``split_queries``; ``experiments.heldout.HeldOutRerank``).

Statistics (:meth:`InteractionResult.statistics`, :mod:`mechir_nig.statistics`): per (measure, interaction,
layer), over the evaluation queries ``q``, the drop ``mean_q(unblocked_q − blocked_q)`` with its
percentile bootstrap interval, the paired sign-flip randomisation p-value and ``p_holm``, Holm-adjusted
across every (interaction, layer) of the measure, and ``d_z``.

A bi-encoder encodes the query and the document apart: there is no attention between them to block, and
its inputs hold the groups ``cls``, ``doc`` (the text) and ``sep``; its interactions are within each text
(``side="doc"`` blocks them in the documents' encodings only).

Example:
    >>> res = interaction_study(ce, col, interactions=[("query", "doc")], layers=[0, 1], k=3, progress=False)
    >>> print(res.to_markdown())  # doctest: +ELLIPSIS
    drop of nDCG@10 (unblocked ...)
    <BLANKLINE>
    | interaction | L0 | L1 | all |
    |---|---|---|---|
    | query->doc | ... |
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import torch

from mechir_nig._validate import check_int, check_layers, check_number
from mechir_nig.errors import InputError
from mechir_nig.models.protocol import HookedModel
from mechir_nig.results import Result

__all__ = [
    "ALL_LAYERS",
    "BI_INTERACTIONS",
    "CROSS_INTERACTIONS",
    "InteractionResult",
    "interaction_name",
    "interaction_study",
]

CROSS_INTERACTIONS = (("query", "doc"), ("doc", "query"), ("cls", "query"), ("cls", "doc"))
"""The default interactions of a cross-encoder."""
BI_INTERACTIONS = (("cls", "doc"), ("doc", "cls"), ("doc", "sep"))
"""The default interactions of a bi-encoder (within one text: its groups are cls, doc and sep)."""
ALL_LAYERS = "all"
"""The layer label of the condition that blocks an interaction in every layer at once."""
_ID_KEYS = ("interaction", "layer")


def interaction_name(from_group: str, to_group: str) -> str:
    """``"query->doc"``: the label of an interaction.

    Example:
        >>> interaction_name("query", "doc")
        'query->doc'
    """
    return f"{from_group}->{to_group}"


@dataclass
class InteractionResult(Result):
    """Effectiveness per (interaction, layer) with per-query values (``runs[0]``: unblocked).

    ``runs[i]``: ``{"interaction": "query->doc" | "none", "layer": int | "all" | None, measure: mean}``;
    ``per_query[i]``: ``{query_id: {measure: value}}`` of ``runs[i]``; ``changed[i]``: the queries whose
    top ``pruning.RANK_DEPTH`` changed. ``statistics()`` compares each block with the unblocked model;
    ``save``/``load`` keep it as one checksummed JSON file (``interaction.json``).

    Example:
        >>> runs = [{"interaction": "none", "layer": None, "nDCG@10": 0.7},
        ...         {"interaction": "query->doc", "layer": 0, "nDCG@10": 0.5}]
        >>> pq = [{"a": {"nDCG@10": 0.8}, "b": {"nDCG@10": 0.6}}, {"a": {"nDCG@10": 0.5}, "b": {"nDCG@10": 0.5}}]
        >>> res = InteractionResult(["nDCG@10"], [["query", "doc"]], [0], runs, pq, ["a", "b"], {})
        >>> round(res.table()[1]["nDCG@10 drop"], 6)
        0.2
        >>> row = res.statistics(n_resamples=100)[0]
        >>> round(row["drop"], 6), row["p"], row["p_holm"]
        (0.2, 0.5, 0.5)
        >>> import tempfile
        >>> from pathlib import Path
        >>> InteractionResult.load(res.save(Path(tempfile.mkdtemp()) / "interaction.json")) == res
        True
    """

    KIND: ClassVar[str] = "InteractionResult"
    WHAT: ClassVar[str] = "interaction study"
    LAYOUT: ClassVar[str] = "json"

    measures: list[str]
    interactions: list[list[str]]
    layers: list[Any]
    runs: list[dict[str, Any]]
    per_query: list[dict[str, dict[str, float]]]
    eval_queries: list[str]
    settings: dict[str, Any]
    changed: list[list[str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def weight(self) -> float:
        """The attention weight multiplier of the study: ``0`` blocked the interactions (also a file
        written before re-weighting existed), ``w > 0`` re-weighted them by ``w`` (``block_attention``)."""
        return float(self.settings.get("weight") or 0.0)

    @property
    def action(self) -> str:
        """What was done to each interaction: ``"blocked"`` or ``"re-weighted by 0.5"``.

        Example:
            >>> InteractionResult(["m"], [], [], [], [], [], {"weight": 0.5}).action
            're-weighted by 0.5'
        """
        return "blocked" if self.weight == 0 else f"re-weighted by {self.weight:g}"

    @property
    def labels(self) -> list[str]:
        """The interactions' labels (``"query->doc"``), in order."""
        return [interaction_name(f, t) for f, t in self.interactions]

    def table(self) -> list[dict[str, Any]]:
        """One row per run: its measures and their drop from the unblocked model (``unblocked − run``)."""
        base = self.runs[0]
        rows = []
        for i, r in enumerate(self.runs):
            row = {k: r[k] for k in _ID_KEYS}
            for m in self.measures:
                row[m] = r[m]
                row[f"{m} drop"] = base[m] - r[m]
            row["changed_queries"] = len(self.changed[i]) if i < len(self.changed) else None
            rows.append(row)
        return rows

    def statistics(
        self,
        measure: str | None = None,
        *,
        confidence: float = 0.95,
        n_resamples: int = 10000,
        seed: int = 0,
    ) -> list[dict[str, Any]]:
        """Each blocked run against the unblocked one over the evaluation queries (module docstring).

        Args:
            measure: one of ``measures`` (default: every one).
            confidence: the intervals' coverage.
            n_resamples: bootstrap resamples and Monte Carlo sign vectors.
            seed: the generator's seed (deterministic).

        Returns:
            One dict per (measure, interaction, layer): ``measure``, ``interaction``, ``layer``,
            ``n_queries``, ``unblocked``, ``value``, ``drop``, ``drop_ci``, ``p``, ``p_holm`` (Holm across
            the interactions and layers of the measure), ``exact``, ``d_z``, ``changed_queries``.
        """
        from mechir_nig.statistics import compare_paired, holm

        measures = self.measures if measure is None else [measure]
        for m in measures:
            if m not in self.measures:
                raise InputError(f"measure must be one of {self.measures}, got {m!r}")
        rows: list[dict[str, Any]] = []
        for m in measures:
            base = {q: v[m] for q, v in self.per_query[0].items() if m in v}
            first = len(rows)
            for i in range(1, len(self.runs)):
                got = {q: v[m] for q, v in self.per_query[i].items() if m in v}
                qids = [q for q in base if q in got]
                if not qids:
                    continue
                ref = torch.tensor([base[q] for q in qids], dtype=torch.float64)
                val = torch.tensor([got[q] for q in qids], dtype=torch.float64)
                cmp = compare_paired(ref, val, confidence=confidence, n_resamples=n_resamples, seed=seed)
                rows.append(
                    {
                        "measure": m,
                        "interaction": self.runs[i]["interaction"],
                        "layer": self.runs[i]["layer"],
                        "n_queries": len(qids),
                        "unblocked": float(ref.mean()),
                        "value": float(val.mean()),
                        "drop": cmp.mean_difference,
                        "drop_ci": [cmp.ci_low, cmp.ci_high],
                        "p": cmp.p_value,
                        "exact": cmp.exact,
                        "d_z": cmp.d_z,
                        "changed_queries": len(self.changed[i]) if i < len(self.changed) else None,
                    }
                )
            for row, p in zip(rows[first:], holm([r["p"] for r in rows[first:]]), strict=True):
                row["p_holm"] = p
        return rows

    def drops(self, measure: str | None = None) -> torch.Tensor:
        """``[interaction, layer]`` mean drops of ``measure`` (default the first), in ``labels`` x
        ``layers`` order (NaN where a cell was not run)."""
        m = measure or self.measures[0]
        if m not in self.measures:
            raise InputError(f"measure must be one of {self.measures}, got {m!r}")
        out = torch.full((len(self.interactions), len(self.layers)), float("nan"), dtype=torch.float64)
        for r in self.table()[1:]:
            out[self.labels.index(r["interaction"]), self.layers.index(r["layer"])] = r[f"{m} drop"]
        return out

    def to_markdown(self, measure: str | None = None) -> str:
        """The drops as a Markdown table, interactions x layers."""
        m = measure or self.measures[0]
        d = self.drops(m)
        head = ["interaction", *[f"L{x}" if isinstance(x, int) else str(x) for x in self.layers]]
        title = f"drop of {m} (unblocked {self.runs[0][m]:.4f})"
        if self.weight:
            title = f"drop of {m}, attention {self.action} (unmodified {self.runs[0][m]:.4f})"
        lines = [title, "", "| " + " | ".join(head) + " |"]
        lines.append("|" + "---|" * len(head))
        for i, label in enumerate(self.labels):
            lines.append("| " + " | ".join([label, *[f"{float(v):+.4f}" for v in d[i]]]) + " |")
        return "\n".join(lines)

    def plot(self, kind: str = "heatmap", **kw: Any) -> Any:
        """``"heatmap"``: interaction x layer drops on one colour scale (``plotting.circuits``)."""
        from mechir_nig.plotting.circuits import plot_circuit

        return plot_circuit(self, kind, **kw)


def _check_interactions(model: HookedModel, interactions: Any) -> list[tuple[str, str]]:
    from mechir_nig.interventions.attention import GROUPS

    default = CROSS_INTERACTIONS if model.pairwise else BI_INTERACTIONS
    items = list(default if interactions is None else interactions)
    if not items:
        raise InputError("interactions is empty; give (from_group, to_group) pairs, e.g. [('query', 'doc')]")
    out: list[tuple[str, str]] = []
    for it in items:
        if not (isinstance(it, tuple | list) and len(it) == 2 and all(g in GROUPS for g in it)):
            raise InputError(
                f"each interaction must be a (from_group, to_group) pair of {sorted(GROUPS)}, got {it!r}"
            )
        if not model.pairwise and "query" in it:
            raise InputError(
                f"interaction {it!r}: a bi-encoder encodes the query and the document apart, so no attention "
                "goes between them; its inputs hold the groups cls, doc (the text) and sep"
            )
        if tuple(it) in out:
            raise InputError(f"interaction {tuple(it)!r} is listed twice; list each once")
        out.append((str(it[0]), str(it[1])))
    return out


def interaction_study(
    model: HookedModel,
    collection: Any,
    candidates: Mapping[str, Mapping[str, float]] | None = None,
    *,
    interactions: Sequence[tuple[str, str]] | None = None,
    layers: Sequence[int] | None = None,
    all_layers: bool = True,
    heads: Sequence[int] | None = None,
    weight: float = 0.0,
    eval_queries: Iterable[str] | None = None,
    k: int = 20,
    measures: Sequence[str] = ("nDCG@10", "RR@10"),
    side: str = "doc",
    split_seed: int = 0,
    batch_size: int = 32,
    progress: bool = True,
) -> InteractionResult:
    """Block each interaction in each layer and evaluate the re-ranking of held-out queries.

    Args:
        model: a ``HookedCrossEncoder`` or ``HookedBiEncoder`` (any family).
        collection: the collection (texts, qrels).
        candidates: first-stage run ``{query_id: {doc_id: score}}`` (default: ``bm25_candidates(collection,
            k=k)``).
        interactions: ``(from_group, to_group)`` pairs (default :data:`CROSS_INTERACTIONS` or
            :data:`BI_INTERACTIONS`).
        layers: the layers blocked one at a time (default all).
        all_layers: also block each interaction in every layer of ``layers`` at once (layer ``"all"``).
        heads: block only these heads of each layer (default all).
        weight: ``0`` (default) blocks each interaction; ``w > 0`` re-weights it instead: each
            ``from_group`` token's attention weight on ``to_group`` keys is multiplied by ``w`` and its row
            renormalised (``block_attention(weight=w)``; ``1`` changes nothing).
        eval_queries: the queries evaluated (default: the evaluation half of ``split_queries(collection,
            seed=split_seed)``, as ``pruning_study``).
        k: BM25 depth when ``candidates`` is not given.
        measures: ir_measures names.
        side: bi-encoders: the side blocked (``"doc"``, default; ``"query"``, ``"both"``).
        split_seed: the seed of the default split.
        batch_size: texts or pairs per forward.
        progress: show a progress bar.

    Returns:
        An :class:`InteractionResult` (``table()``, ``statistics()``, ``to_markdown()``, ``plot()``,
        ``save()``).

    Raises:
        InputError: bad interactions (a bi-encoder has no query-document attention), layers or heads, no
            judged evaluation query with candidates.

    Example:
        >>> res = interaction_study(ce, load_collection("embedded"), layers=[0], k=3, progress=False)
        >>> len(res.statistics("nDCG@10")[0]["drop_ci"])  # the bootstrap interval of the mean drop
        2
    """
    from tqdm.auto import tqdm

    from mechir_nig.experiments.heldout import HeldOutRerank
    from mechir_nig.experiments.pruning import _moved
    from mechir_nig.interventions.attention import block_attention

    t_start = time.perf_counter()
    pairs_of = _check_interactions(model, interactions)
    layer_list = check_layers(layers, model.cfg.n_layers)
    weight = 0.0 + check_number(  # -0.0 -> 0.0: the settings record a plain 0
        weight,
        "weight",
        minimum=0,
        hint="0 blocks, 0 < w re-weights, 1 changes nothing",
        noun="a finite number",
    )
    if heads is not None:
        check_layers(heads, model.cfg.n_heads, what="heads")
    check_int(k, "k", minimum=1)
    if candidates is None:
        from mechir_nig.data import bm25_candidates

        candidates = bm25_candidates(collection, k=k)
    ev = HeldOutRerank.prepare(
        model,
        collection,
        candidates,
        eval_queries=eval_queries,
        measures=measures,
        side=side,
        batch_size=batch_size,
        split_seed=split_seed,
        what="interaction_study",
    )
    cells: list[Any] = list(layer_list) + ([ALL_LAYERS] if all_layers and len(layer_list) > 1 else [])
    jobs: list[tuple[str, Any, Any]] = [("none", None, None)]
    for f, t in pairs_of:
        for cell in cells:
            blocked = layer_list if cell == ALL_LAYERS else [cell]
            jobs.append(
                (
                    interaction_name(f, t),
                    cell,
                    partial(block_attention, model, f, t, layers=blocked, heads=heads, weight=weight),
                )
            )
    runs: list[dict[str, Any]] = []
    per_query: list[dict[str, dict[str, float]]] = []
    changed: list[list[str]] = []
    timings: dict[str, float] = {}
    base_scores = None
    for name, cell, ctx in tqdm(jobs, desc="interactions", disable=not progress):
        t0 = time.perf_counter()
        scores = ev.score(ctx)
        means, pq = ev.measure(scores)
        base_scores = scores if base_scores is None else base_scores
        runs.append({"interaction": name, "layer": cell, **means})
        per_query.append(pq)
        changed.append(_moved(ev.pairs, base_scores, scores)["changed"])
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    from mechir_nig.experiments.pruning import JUDGED

    result = InteractionResult(
        measures=[m for m in runs[0] if m not in _ID_KEYS],
        interactions=[[f, t] for f, t in pairs_of],
        layers=cells,
        runs=runs,
        per_query=per_query,
        eval_queries=ev.queries,
        settings={
            "heads": None if heads is None else sorted(heads),
            "side": side if not model.pairwise else "pair",
            "pairs": len(ev.pairs),
            "split": "the evaluation half of split_queries (the pruning study's held-out queries)",
            "split_seed": split_seed,
            "judged_queries": JUDGED,
            "weight": weight,
            "blocking": "attention scores of the blocked (query, key) pairs set to the dtype minimum "
            "(block_attention)"
            if weight == 0
            else f"log {weight:g} added to the attention scores of the (query, key) pairs: their weights "
            f"multiplied by {weight:g}, rows renormalised (block_attention(weight={weight:g}))",
            "model": str(getattr(model.cfg, "model_name", "")),
        },
        changed=changed,
        timings=timings,
    )
    return result
