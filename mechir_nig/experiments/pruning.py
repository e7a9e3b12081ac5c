"""Pruning study: ablate NIG-selected neurons and measure the re-ranking effectiveness lost.

The validation of section 1 of the design: neurons selected by a NIG scheme on one set of queries are
ablated (``mechir_nig.interventions.ablate``) while re-ranking first-stage candidates of **other**
queries, and nDCG@10 / RR@10 (ir_measures) are compared with

- ``unpruned``: the model as it is;
- ``nig_top``: the highest scores of the ranking (the scheme given, e.g. mean NIG over relevant pairs);
- ``random``: random sets with the same per-layer counts as ``nig_top`` (``sets.random_like``), ``seeds``
  of them (mean and spread reported);
- ``bottom``: the least important neurons (smallest ``|score|``) among the ranked layers;
- ``negative``: the most negative scores.

Each condition is evaluated for each ablation ``mode`` (``zero``, ``baseline``, ``mean``) and each
``fraction`` of the ranked neurons. Selection and evaluation queries are disjoint by default
(:func:`split_queries`: half and half, seeded); the result records both lists.

Reuse: the candidates are given once; for a bi-encoder ablated on the document side the (unablated) query
embeddings are computed once for the whole study, every distinct document text once per condition, in
length-sorted batches; a cross-encoder re-scores every (query, candidate) pair per condition.

Statistics (:meth:`PruningResult.statistics`, :mod:`mechir_nig.statistics`): every condition is compared
with ``unpruned`` over the evaluation queries (the drop per query: its mean, a percentile bootstrap
interval, a paired sign-flip randomisation p-value, Holm-adjusted across the fractions and modes of the
condition, and the paired effect size ``d_z``), and every selected condition with the random sets of the
same fraction and mode (the difference to the random sets' mean, its interval and p-value, and the rank
among the random draws). ``moved`` records, per evaluation, the queries whose top ``RANK_DEPTH`` changed
and, per query, the documents that moved most up and down; :meth:`PruningResult.ceiling` says whether the
unpruned measure is at its maximum on most queries (then a drop can be measured, a rise cannot; warned).

Example:
    >>> from mechir_nig.experiments.attribute import attribute_collection
    >>> sel, held_out = split_queries(col, seed=0)
    >>> pairs = [p for p in judged_pairs(col, max_relevant_per_query=1) if p.query_id in sel][:4]
    >>> stats = attribute_collection(be, pairs, n_steps=4, layers=[4, 5], progress=False)
    >>> result = pruning_study(be, col, bm25_candidates(col, k=3), stats, select_queries=sel,
    ...                        eval_queries=held_out, fractions=(0.01,), seeds=1, modes="zero",
    ...                        progress=False, baseline_inputs=0)
    >>> print(result.to_markdown())  # doctest: +ELLIPSIS
    | condition | mode | fraction | neurons | nDCG@10 | drop nDCG@10 | RR@10 | drop RR@10 |
    |---|---|---|---|---|---|---|---|
    | unpruned | none | 0 | 0 | ...
    | nig_top | zero | 0.01 | ...
"""

from __future__ import annotations

import hashlib
import random
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

from mechir_nig._validate import check_fraction, check_int
from mechir_nig.errors import InputError
from mechir_nig.experiments._progress import Progress as _Progress
from mechir_nig.interventions.engine import Baseline
from mechir_nig.models.protocol import BiEncoderModel, HookedModel
from mechir_nig.results import Result, canonical_json
from mechir_nig.sets.components import ComponentSet, NeuronSet
from mechir_nig.statistics import CeilingWarning

__all__ = [
    "BASELINE_THRESHOLD",
    "CEILING_SHARE",
    "CEILING_VALUE",
    "CONDITIONS",
    "JUDGED",
    "MOVED_PER_QUERY",
    "RANK_DEPTH",
    "PruningCache",
    "PruningCheckpoint",
    "PruningResult",
    "pruning_study",
    "evaluable_queries",
    "judged_queries",
    "split_queries",
]

CONDITIONS = ("nig_top", "random", "bottom", "negative")
_MODES = ("zero", "mean", "baseline", "resample")
RANK_DEPTH = 10
"""A query's ranking "changed" when the ordered top ``RANK_DEPTH`` of its candidates changed."""
MOVED_PER_QUERY = 3
"""Documents kept per query and direction in ``PruningResult.moved`` (the largest rank changes)."""
CEILING_VALUE = 0.95
"""A query is at the ceiling of a measure (bounded by 1: nDCG, RR, P, AP, R) at this value or above."""
CEILING_SHARE = 0.5
"""The ceiling warning is given when more than this share of the evaluation queries is at the ceiling."""
_ID_KEYS = ("condition", "mode", "fraction", "seed", "n_neurons")


JUDGED = (
    "a judged query has at least one relevant document in the qrels (grade >= the collection's relevance "
    "threshold) and a query text"
)
"""The one definition of a judged query (``judged_queries``), stated in the results that use it."""


def judged_queries(collection: Any) -> list[str]:
    """The judged queries of ``collection`` in qrels order: those with at least one relevant document
    (``collection.is_relevant``) and a query text (:data:`JUDGED`). A query whose qrels hold only
    non-relevant grades scores 0 in every condition of an IR measure, so it is not evaluated; the
    split-half stability study uses the same definition.

    Example:
        >>> from mechir_nig.data import load_collection
        >>> len(judged_queries(load_collection("embedded")))
        15
    """
    return list(
        dict.fromkeys(
            q.query_id
            for q in collection.qrels
            if collection.is_relevant(q.relevance) and q.query_id in collection.queries
        )
    )


def split_queries(
    collection: Any, *, seed: int = 0, query_ids: Iterable[str] | None = None
) -> tuple[list[str], list[str]]:
    """Two disjoint halves (selection, evaluation) of the judged queries (:func:`judged_queries`),
    shuffled with ``seed``.

    Example:
        >>> from mechir_nig.data import load_collection
        >>> sel, ev = split_queries(load_collection("embedded"))
        >>> len(sel), len(ev), set(sel) & set(ev)
        (7, 8, set())
    """
    judged = judged_queries(collection)
    ids = sorted(judged if query_ids is None else [q for q in query_ids if q in set(judged)])
    random.Random(seed).shuffle(ids)
    half = len(ids) // 2
    return sorted(ids[:half]), sorted(ids[half:])


def evaluable_queries(
    collection: Any,
    candidates: Mapping[str, Mapping[str, float]],
    queries: Iterable[str],
    *,
    what: str,
    stacklevel: int = 2,
) -> list[str]:
    """The ``queries`` that can be evaluated: judged (:func:`judged_queries`) and with at least one
    candidate. Each other query is named in a ``UserWarning`` (a query with no candidate has no ranking
    to measure; counting it as 0 would dilute the mean), never dropped silently.

    Args:
        collection: the collection (qrels, query texts).
        candidates: first-stage run ``{query_id: {doc_id: score}}``.
        queries: the evaluation queries asked for, in order.
        what: the caller's name, for the messages.
        stacklevel: the warnings' ``stacklevel`` seen from the caller (2: the caller's caller).

    Raises:
        InputError: no query is judged and has candidates.

    Example:
        >>> from mechir_nig.data import load_collection
        >>> col = load_collection("embedded")
        >>> q = judged_queries(col)[0]
        >>> evaluable_queries(col, {q: {"d": 1.0}}, [q], what="example") == [q]
        True
    """
    asked = list(queries)
    judged = set(judged_queries(collection))
    unjudged = [q for q in asked if q not in judged]
    if unjudged:
        warnings.warn(
            f"{what}: {len(unjudged)} of {len(asked)} evaluation queries are not judged ({JUDGED}; e.g. "
            f"{unjudged[:3]}): they are not evaluated",
            UserWarning,
            stacklevel=stacklevel + 1,
        )
    empty = [q for q in asked if q in judged and not len(candidates.get(q) or {})]
    if empty:
        warnings.warn(
            f"{what}: {len(empty)} of {len(asked)} evaluation queries have no candidates (e.g. {empty[:3]}): "
            "they are not evaluated",
            UserWarning,
            stacklevel=stacklevel + 1,
        )
    ev = [q for q in asked if q in judged and len(candidates.get(q) or {})]
    if not ev:
        raise InputError(f"no evaluation query is judged and has candidates ({JUDGED})")
    return ev


@dataclass
class PruningResult(Result):
    """Effectiveness per (condition, mode, fraction, seed), per query, with the sets and timings.

    ``runs``: one record per evaluation, ``{"condition", "mode", "fraction", "seed", "n_neurons",
    measure: mean}``; ``per_query[i]``: ``{query_id: {measure: value}}`` of ``runs[i]``; ``sets``:
    ``{"condition|fraction|seed": set JSON}``; ``moved[i]`` (empty in results saved before it existed):
    ``{"depth": RANK_DEPTH, "changed": [query ids whose top-depth ranking differs from unpruned],
    "docs": {query_id: {"up": [[doc_id, rank before, rank after], ...], "down": [...]}}}`` (the
    ``MOVED_PER_QUERY`` largest rank changes each way, ranks from 1). ``statistics()`` compares the
    conditions over the evaluation queries, ``ceiling()`` flags a measure at its maximum.
    ``baseline_activity``: each ranked neuron's mean activation on the NIG ``[PAD]`` baseline inputs of
    the selection queries' relevant documents, measured once (``{"threshold", "inputs", "n_inputs",
    "layers", "baseline_mean": [layer][neuron]}``; :meth:`active_on_baseline` counts a set's active
    neurons). ``seconds[i]``: the time ``runs[i]`` took (measured when it ran, kept by a resumed study; empty in
    results saved before it existed; ``timings`` holds the sums per condition and mode).
    ``save``/``load`` keep it as one checksummed JSON file (``pruning.json``, with the ``table`` and the
    ``statistics`` written beside the fields for readers; ``mechir_nig.results``).

    Example:
        >>> runs = [
        ...     {"condition": "unpruned", "mode": "zero", "fraction": 0.0, "seed": 0, "n_neurons": 0,
        ...      "nDCG@10": 0.70},
        ...     {"condition": "nig_top", "mode": "zero", "fraction": 0.01, "seed": 0, "n_neurons": 92,
        ...      "nDCG@10": 0.55},
        ... ]
        >>> result = PruningResult(["nDCG@10"], runs, [{}, {}], {}, ["q1"], ["q2"], {})
        >>> print(result.to_markdown())
        | condition | mode | fraction | neurons | nDCG@10 | drop nDCG@10 |
        |---|---|---|---|---|---|
        | unpruned | zero | 0 | 0 | 0.7000 | +0.0000 |
        | nig_top | zero | 0.01 | 92 | 0.5500 | +0.1500 |
        >>> import tempfile
        >>> from pathlib import Path
        >>> path = result.save(Path(tempfile.mkdtemp()) / "pruning.json")
        >>> PruningResult.load(path) == result  # every field, exactly
        True
    """

    measures: list[str]
    runs: list[dict[str, Any]]
    per_query: list[dict[str, dict[str, float]]]
    sets: dict[str, dict[str, Any]]
    select_queries: list[str]
    eval_queries: list[str]
    settings: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    moved: list[dict[str, Any]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    baseline_activity: dict[str, Any] = field(default_factory=dict)

    def active_on_baseline(self, components: Any) -> tuple[int, int] | None:
        """``(k, n)``: how many of the ``n`` neurons of ``components`` (a ``NeuronSet`` of this model, its
        JSON, or ``[(layer, neuron)]``) are active on the NIG baseline input (``|mean activation| >
        threshold`` in ``baseline_activity``, measured once by the study); None when it was not measured
        or a neuron lies outside the measured layers.

        Example:
            >>> r = PruningResult([], [], [], {}, [], [], {}, baseline_activity={
            ...     "threshold": 0.1, "layers": [0, 1], "baseline_mean": [[0.5, 0.0], [-0.2, 0.05]]})
            >>> r.active_on_baseline([(0, 0), (0, 1), (1, 0)])
            (2, 3)
        """
        act = self.baseline_activity
        if not act.get("baseline_mean"):
            return None
        if isinstance(components, Mapping):
            components = ComponentSet.from_json(components)
        row = {layer: i for i, layer in enumerate(act["layers"])}
        members = [(int(layer), int(n)) for layer, n in components]
        if any(layer not in row for layer, _ in members):
            return None
        means = act["baseline_mean"]
        k = sum(abs(means[row[layer]][n]) > act["threshold"] for layer, n in members)
        return k, len(members)

    def table(self) -> list[dict[str, Any]]:
        """One row per (condition, mode, fraction): mean and standard deviation over seeds, and the drop
        from ``unpruned`` (``unpruned - condition``) of each measure."""
        base = next(r for r in self.runs if r["condition"] == "unpruned")
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for r in self.runs:
            groups.setdefault((r["condition"], r["mode"], r["fraction"]), []).append(r)
        rows = []
        for (cond, mode, frac), rs in groups.items():
            row: dict[str, Any] = {
                "condition": cond,
                "mode": mode,
                "fraction": frac,
                "n_neurons": rs[0]["n_neurons"],
                "n_seeds": len(rs),
            }
            for m in self.measures:
                vals = torch.tensor([r[m] for r in rs], dtype=torch.float64)
                row[m] = float(vals.mean())
                row[f"{m} std"] = float(vals.std()) if len(rs) > 1 else 0.0
                row[f"{m} drop"] = base[m] - float(vals.mean())
            rows.append(row)
        return rows

    def _per_query(self, i: int, measure: str) -> dict[str, float]:
        return {q: v[measure] for q, v in self.per_query[i].items() if measure in v}

    def statistics(
        self,
        measure: str | None = None,
        *,
        confidence: float = 0.95,
        n_resamples: int = 10000,
        seed: int = 0,
    ) -> list[dict[str, Any]]:
        """Each condition against ``unpruned`` and (selected sets) against the random sets, per query.

        For each (condition, mode, fraction) but ``unpruned``, over the evaluation queries ``q``:
        ``drop`` ``= mean_q(unpruned_q − condition_q)`` (a random condition: its seeds' mean per query) with
        its percentile bootstrap interval ``drop_ci``, the paired sign-flip ``p`` (exact up to 16 queries),
        ``p_holm`` (Holm across the fractions and modes of the condition), ``d_z`` and ``changed_queries``
        (queries whose top ``RANK_DEPTH`` changed; mean over seeds for random). A selected condition with
        random sets of the same fraction and mode also gets ``vs_random``: ``difference`` (the random
        sets' mean minus the condition's, per query: how much more it lowers the measure), ``ci``, ``p``,
        ``p_holm`` (Holm across fractions and modes), ``rank`` among the ``n_random`` draws (1: the
        lowest value), ``random_drop`` and ``ratio`` (``drop / random_drop``, None unless the random
        drop is positive). See :mod:`mechir_nig.statistics` for the formulas.

        Args:
            measure: one of ``measures`` (default: every one).
            confidence: the intervals' coverage.
            n_resamples: bootstrap resamples and Monte Carlo sign vectors.
            seed: the generator's seed (deterministic).

        Returns:
            One dict per (measure, condition, mode, fraction), in ``table()`` order.

        Example:
            >>> runs = [{"condition": "unpruned", "mode": "none", "fraction": 0.0, "seed": 0,
            ...          "n_neurons": 0, "RR@10": 1.0},
            ...         {"condition": "nig_top", "mode": "zero", "fraction": 0.1, "seed": 0,
            ...          "n_neurons": 9, "RR@10": 0.5}]
            >>> pq = [{"a": {"RR@10": 1.0}, "b": {"RR@10": 1.0}}, {"a": {"RR@10": 0.5}, "b": {"RR@10": 0.5}}]
            >>> row = PruningResult(["RR@10"], runs, pq, {}, [], ["a", "b"], {}).statistics()[0]
            >>> row["drop"], row["drop_ci"], row["p"], row["n_queries"]
            (0.5, [0.5, 0.5], 0.5, 2)
        """
        from mechir_nig.statistics import compare_paired, holm, versus_random

        measures = self.measures if measure is None else [measure]
        for m in measures:
            if m not in self.measures:
                raise InputError(f"measure must be one of {self.measures}, got {m!r}")
        base_i = next((i for i, r in enumerate(self.runs) if r["condition"] == "unpruned"), None)
        if base_i is None:
            return []
        groups: dict[tuple[str, str, float], list[int]] = {}
        for i, r in enumerate(self.runs):
            if r["condition"] != "unpruned":
                groups.setdefault((r["condition"], r["mode"], r["fraction"]), []).append(i)
        kw: dict[str, Any] = {"confidence": confidence, "n_resamples": n_resamples, "seed": seed}
        rows: list[dict[str, Any]] = []
        for m in measures:
            base = self._per_query(base_i, m)
            first = len(rows)
            for (cond, mode, frac), idx in groups.items():
                per_seed = [self._per_query(i, m) for i in idx]
                qids = [q for q in base if all(q in v for v in per_seed)]
                if not qids:
                    continue
                vals = torch.tensor([[v[q] for q in qids] for v in per_seed], dtype=torch.float64)
                ref = torch.tensor([base[q] for q in qids], dtype=torch.float64)
                cmp = compare_paired(ref, vals.mean(0), **kw)
                changed = [
                    len((self.moved[i] if i < len(self.moved) else {}).get("changed", [])) for i in idx
                ]
                row: dict[str, Any] = {
                    "measure": m,
                    "condition": cond,
                    "mode": mode,
                    "fraction": frac,
                    "n_neurons": self.runs[idx[0]]["n_neurons"],
                    "n_seeds": len(idx),
                    "n_queries": len(qids),
                    "unpruned": float(ref.mean()),
                    "value": float(vals.mean()),
                    "drop": cmp.mean_difference,
                    "drop_ci": [cmp.ci_low, cmp.ci_high],
                    "p": cmp.p_value,
                    "exact": cmp.exact,
                    "d_z": cmp.d_z,
                    "changed_queries": (sum(changed) / len(changed)) if self.moved else None,
                    "vs_random": None,
                }
                rand = groups.get(("random", mode, frac))
                if cond != "random" and rand:
                    draws = [self._per_query(i, m) for i in rand]
                    common = [q for q in qids if all(q in d for d in draws)]
                    if common:
                        target = torch.tensor([per_seed[0][q] for q in common], dtype=torch.float64)
                        rnd = torch.tensor([[d[q] for q in common] for d in draws], dtype=torch.float64)
                        rc = versus_random(target, rnd, **kw)
                        random_drop = float(
                            torch.tensor([base[q] for q in common]).double().mean() - rnd.mean()
                        )
                        row["vs_random"] = {
                            "difference": rc.comparison.mean_difference,
                            "ci": [rc.comparison.ci_low, rc.comparison.ci_high],
                            "p": rc.comparison.p_value,
                            "rank": rc.rank,
                            "n_random": rc.n_random,
                            "random_drop": random_drop,
                            "ratio": row["drop"] / random_drop if random_drop > 0 else None,
                            "n_queries": len(common),
                        }
                rows.append(row)
            # Holm: one family per (measure, condition) for each comparison, over its fractions and modes
            for cond in dict.fromkeys(r["condition"] for r in rows[first:]):
                fam = [r for r in rows[first:] if r["condition"] == cond]
                for r, adj in zip(fam, holm([r["p"] for r in fam]), strict=True):
                    r["p_holm"] = adj
                vs = [r for r in fam if r["vs_random"] is not None]
                for r, adj in zip(vs, holm([r["vs_random"]["p"] for r in vs]), strict=True):
                    r["vs_random"]["p_holm"] = adj
        return rows

    def ceiling(self, measure: str | None = None) -> dict[str, Any]:
        """Whether the unpruned ``measure`` (default: the first) is at its maximum on most evaluation
        queries: ``{"measure", "at_ceiling", "n_queries", "share", "warning"}``; ``warning`` is a sentence
        when more than ``CEILING_SHARE`` of the queries score ``CEILING_VALUE`` or more (a drop can be
        measured there, a rise cannot), else None.

        Example:
            >>> runs = [{"condition": "unpruned", "mode": "none", "fraction": 0.0, "seed": 0,
            ...          "n_neurons": 0, "RR@10": 1.0}]
            >>> pq = [{"a": {"RR@10": 1.0}, "b": {"RR@10": 1.0}, "c": {"RR@10": 0.5}}]
            >>> PruningResult(["RR@10"], runs, pq, {}, [], ["a", "b", "c"], {}).ceiling()["warning"]
            'the unpruned RR@10 is at its maximum (>= 0.95) on 2 of 3 evaluation queries: it can drop, not rise'
        """
        m = measure or self.measures[0]
        base_i = next((i for i, r in enumerate(self.runs) if r["condition"] == "unpruned"), None)
        values = list(self._per_query(base_i, m).values()) if base_i is not None else []
        at = sum(v >= CEILING_VALUE for v in values)
        share = at / len(values) if values else 0.0
        warning = None
        if values and share > CEILING_SHARE:
            warning = (
                f"the unpruned {m} is at its maximum (>= {CEILING_VALUE:g}) on {at} of {len(values)} "
                "evaluation queries: it can drop, not rise"
            )
        return {"measure": m, "at_ceiling": at, "n_queries": len(values), "share": share, "warning": warning}

    def to_dict(self) -> dict[str, Any]:
        return {
            "measures": self.measures,
            "table": self.table(),
            "statistics": self.statistics(),
            "runs": self.runs,
            "per_query": self.per_query,
            "sets": self.sets,
            "select_queries": self.select_queries,
            "eval_queries": self.eval_queries,
            "settings": self.settings,
            "timings": self.timings,
            "moved": self.moved,
            "seconds": self.seconds,
            "baseline_activity": self.baseline_activity,
        }

    # -- persistence (``mechir_nig.results.Result``: save, load) -------------------------------------
    KIND = "PruningResult"
    WHAT = "pruning study"
    LAYOUT = "json"  # the command line's pruning.json

    def to_parts(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """``to_dict()``: the fields and the ``table`` (recomputed by ``load``)."""
        return {}, self.to_dict()

    @classmethod
    def from_parts(cls, tensors: dict[str, Tensor], info: dict[str, Any]) -> PruningResult:
        """``Result.from_parts`` checking that ``runs`` and ``per_query`` match (``table`` and other extra
        keys are ignored)."""
        runs, per_query = info["runs"], info["per_query"]
        if not all(isinstance(r, dict) for r in runs) or not all(isinstance(q, dict) for q in per_query):
            raise TypeError("its runs and per_query must be lists of JSON objects")
        if len(runs) != len(per_query):
            raise ValueError(
                f"it holds {len(runs)} runs but {len(per_query)} per_query records (one per run)"
            )
        return super().from_parts(
            tensors,
            info
            | {
                "timings": info.get("timings") or {},
                "moved": info.get("moved") or [],
                "seconds": info.get("seconds") or [],
                "baseline_activity": info.get("baseline_activity") or {},
            },
        )

    def plot(self, kind: str | None = None, **kw: Any) -> Any:
        """A plotly figure of this result (``mechir_nig.plotting.plot``); ``kind``: ``"curves"`` (default);
        ``kw`` go to the figure function.

        Example:
            >>> ranking = torch.randn(6, 1536, generator=torch.Generator().manual_seed(0))
            >>> result = pruning_study(ce, col, bm25_candidates(col, k=3), ranking, fractions=(0.01,),
            ...                        seeds=1, modes="zero", conditions=("nig_top", "random"),
            ...                        progress=False, baseline_inputs=0)
            >>> fig = result.plot(measure="nDCG@10")  # fig.show() opens it in a browser
            >>> len(fig.data) > 0
            True
        """
        from mechir_nig.plotting import plot

        return plot(self, kind, **kw)

    def to_markdown(self) -> str:
        """The table as Markdown (mean ± std over seeds, drop from unpruned)."""
        head = ["condition", "mode", "fraction", "neurons"]
        for m in self.measures:
            head += [m, f"drop {m}"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.table():
            cells = [r["condition"], r["mode"], f"{r['fraction']:g}", str(r["n_neurons"])]
            for m in self.measures:
                spread = f" ± {r[f'{m} std']:.4f}" if r["n_seeds"] > 1 else ""
                cells += [f"{r[m]:.4f}{spread}", f"{r[f'{m} drop']:+.4f}"]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _ranking_scores(model: HookedModel, ranking: Any, scheme: str) -> tuple[Tensor, list[int]]:
    cfg = model.cfg
    if hasattr(ranking, "scheme_scores"):
        scores, layers = ranking.scheme_scores(scheme).to(torch.float64), list(ranking.layers)
    elif isinstance(ranking, Tensor):
        scores, layers = ranking.detach().to("cpu", torch.float64), list(range(cfg.n_layers))
    else:
        raise InputError(
            f"ranking must be a CollectionAttribution or a [n_layers, d_mlp] tensor, got {type(ranking).__name__}"
        )
    if tuple(scores.shape) != (cfg.n_layers, cfg.d_mlp):
        raise InputError(
            f"ranking scores have shape {tuple(scores.shape)}; the model has [n_layers, d_mlp] = "
            f"({cfg.n_layers}, {cfg.d_mlp}): attribute this model"
        )
    return scores, layers


def _select(
    scores: Tensor, layers: list[int], fraction: float, condition: str, n_layers: int
) -> ComponentSet:
    from mechir_nig.sets.selection import select_top

    d_mlp = scores.shape[1]
    size = round(fraction * len(layers) * d_mlp)
    if size == 0:
        return NeuronSet([], n_layers=n_layers, d_mlp=d_mlp, name=condition, pool_layers=layers)
    if condition == "nig_top":
        return select_top(scores, k=size, layers=layers, name=condition)
    if condition == "bottom":
        return select_top(scores.abs(), k=size, largest=False, layers=layers, name=condition)
    return select_top(scores, k=size, largest=False, layers=layers, name=condition)


class PruningCache:
    """The passes a pruning study reuses across its conditions and across calls (pass one object to
    successive :func:`pruning_study` calls with the same model, e.g. transfer pruning over collections).

    It keeps, per model and per list of texts (and ``batch_size``): the clean (unablated) encodings of a
    bi-encoder's texts or a cross-encoder's clean scores, and the NIG-baseline-input activations of
    ``mode="baseline"`` (each distinct baseline row is run once, up to the last ablated layer; the rows of
    the most recent set of ablated layers are kept, so memory stays that of one condition). Every entry
    is exactly what the pass would compute again: a cached study equals an uncached one. Entries are keyed
    by the model object: do not change its weights between calls that share a cache.

    Example:
        >>> cache = PruningCache()
        >>> len(cache)
        0
        >>> cands = bm25_candidates(col, k=3)
        >>> kw = dict(fractions=(0.01,), seeds=1, modes="zero", conditions=("nig_top",))
        >>> kw.update(progress=False, baseline_inputs=0)
        >>> stats_a = torch.randn(6, 1536, generator=torch.Generator().manual_seed(0))
        >>> stats_b = torch.randn(6, 1536, generator=torch.Generator().manual_seed(1))
        >>> a = pruning_study(be, col, cands, stats_a, cache=cache, **kw)
        >>> len(cache) > 0
        True
        >>> b = pruning_study(be, col, cands, stats_b, cache=cache, **kw)  # the clean pass is not run again
        >>> a.table()[0] == b.table()[0]  # the same unpruned row
        True
    """

    def __init__(self) -> None:
        self._clean: dict[tuple[int, str], Tensor] = {}
        self._baseline: dict[int, Any] = {}
        self.hits = 0
        """How many clean passes were taken from the cache instead of computed."""

    def __len__(self) -> int:
        return len(self._clean)

    def clean(self, model: HookedModel, key: str, compute: Any) -> Tensor:
        """The clean pass ``compute()`` of ``model`` on what ``key`` names, computed once."""
        k = (id(model), key)
        if k in self._clean:
            self.hits += 1
        else:
            self._clean[k] = compute()
        return self._clean[k]

    def baseline(self, model: HookedModel) -> Any:
        """The shared NIG-baseline value of ``model`` (``mode="baseline"``), its rows kept across conditions."""
        if id(model) not in self._baseline:
            self._baseline[id(model)] = _StudyBaseline(model)
        return self._baseline[id(model)]


@dataclass(eq=False)
class _StudyBaseline(Baseline):
    """``Baseline`` whose row cache survives from one ablation to the next while the ablated layers stay
    the same (random sets share the selected set's per-layer counts); another set of layers starts a new
    cache (the previous one is dropped: the memory of one condition)."""

    _names: tuple[str, ...] = ()

    def begin(self, engine: Any, frame: Any) -> None:
        names = tuple(engine.names_of(self))
        if names != self._names:
            self._names, self._rows = names, {}
        super().begin(engine, frame)


@dataclass
class PruningCheckpoint(Result):
    """The evaluations a pruning study has finished (``pruning_study(checkpoint=...)``), one atomic,
    checksummed JSON file rewritten after each evaluation.

    ``record``: what the study must match to resume it (its evaluations, queries, candidates, measures,
    side, batch size, the model's fingerprint); ``done``: ``{job index: {"run", "per_query",
    "seconds"}}``; ``scores``: ``{job index: [n_pairs] float64}`` (each evaluation's scores, for ``moved``).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> ck = PruningCheckpoint({"fingerprint": "x"}, {}, {})
        >>> PruningCheckpoint.load(ck.save(Path(tempfile.mkdtemp()) / "p.ckpt.json")) == ck
        True
    """

    record: dict[str, Any]
    done: dict[str, Any]
    scores: dict[str, Tensor]

    KIND = "PruningCheckpoint"
    WHAT = "pruning checkpoint"
    LAYOUT = "json"
    JSON_DTYPES = {"scores": torch.float64}


def _n_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def pruning_study(
    model: HookedModel,
    collection: Any,
    candidates: Mapping[str, Mapping[str, float]],
    ranking: Any,
    *,
    scheme: str = "relevant",
    fractions: Sequence[float] = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1),
    seeds: int = 5,
    modes: str | Sequence[str] = ("zero", "baseline"),
    conditions: Sequence[str] = CONDITIONS,
    select_queries: Iterable[str] | None = None,
    eval_queries: Iterable[str] | None = None,
    measures: Sequence[str] = ("nDCG@10", "RR@10"),
    side: str = "doc",
    reference: Any = None,
    batch_size: int = 32,
    progress: bool = True,
    distributed: bool | str = "auto",
    source_collection: str | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    cache: PruningCache | None = None,
    on_batch: Callable[[int], None] | None = None,
    on_evaluation: Callable[[dict[str, Any]], None] | None = None,
    baseline_inputs: int = 40,
) -> PruningResult:
    """Ablate neuron sets chosen from ``ranking`` and evaluate the re-ranking of held-out queries.

    Args:
        model: a ``HookedCrossEncoder`` or ``HookedBiEncoder``.
        collection: the collection (texts, qrels).
        candidates: first-stage run ``{query_id: {doc_id: score}}`` (e.g. ``bm25_candidates(col, k=50)``),
            computed once by the caller.
        ranking: a ``CollectionAttribution`` (its ``scheme_scores(scheme)`` over its attributed layers) or
            a ``[n_layers, d_mlp]`` score tensor (all layers), computed on ``select_queries``.
        scheme: the selection scheme of a ``CollectionAttribution``; for a tensor ranking, the name of
            the scheme it holds (recorded in ``settings``, e.g. ``"rrf(relevant,nonrelevant)"``).
        fractions: shares of the ranked neurons to ablate (``0`` gives the unpruned model).
        seeds: random sets per fraction.
        modes: ablation modes (``"zero"``, ``"baseline"``, ``"mean"``, ``"resample"``; the last two need
            ``reference``).
        conditions: a subset of ``CONDITIONS``.
        select_queries: the queries the ranking was computed on (default: the first half of
            :func:`split_queries`); recorded, and must not meet ``eval_queries``.
        eval_queries: the queries evaluated (default: the other half).
        measures: ir_measures names.
        side: bi-encoders: the ablated side (``"doc"``, default: queries encoded once, unablated;
            ``"query"`` or ``"both"``).
        reference: an ``AblationReference`` for modes ``mean``/``resample``.
        batch_size: texts (bi-encoder) or pairs (cross-encoder) per forward.
        progress: show a progress bar over the forward batches of every evaluation.
        distributed: ``"auto"``: under a ``torchrun`` launch of several processes the evaluations are
            sharded across the ranks (``mechir_nig.runtime.distributed.Context.map``, equal costs) and
            every rank returns all of them (save on rank 0); ``False``: every rank evaluates everything.
        source_collection: the collection the ranking was computed on (default: a
            ``CollectionAttribution``'s ``meta["collection"]``, else ``collection``'s name). When it is
            another collection (transfer: a set selected on A ablated on B), ``select_queries`` are
            that collection's queries (default: the ranking's ``meta["query_ids"]``), so they are not
            checked against ``eval_queries`` (the two collections' query ids are different namespaces)
            and ``eval_queries`` default to the held-out half of ``collection``. ``settings`` records
            ``source_collection``, ``transfer``, the ``scheme`` and ``ranking`` (``"CollectionAttribution"``
            or ``"tensor"``).
        checkpoint: a file (e.g. ``OUT/pruning.ckpt.json``; its folder is created) where each finished
            evaluation (condition x mode x fraction x random draw) is saved as it completes (atomically:
            a crash leaves the previous state, never a half-written one). A single-process run only.
        resume: continue the study in ``checkpoint``: its finished evaluations are taken as they are and
            only the others are run; the result equals an uninterrupted study's (runs, per-query values,
            ``moved``; ``seconds`` keeps each evaluation's measured time). A checkpoint of another study
            (other evaluations, queries, candidates, measures, side, batch size or model weights) is
            refused. Without ``resume`` an existing ``checkpoint`` is refused.
        cache: a :class:`PruningCache` to reuse the clean pass and the baseline-input pass across calls
            (default: one for this call, shared by its conditions).
        on_batch: called with the number of forward batches done in this call after each batch.
        on_evaluation: called with each evaluation's ``runs`` record once it is finished (and saved).
        baseline_inputs: measure, once, every ranked neuron's mean activation on the NIG ``[PAD]``
            baseline input of this many relevant (query, document) pairs of the selection queries (qrels
            order; a bi-encoder: their documents), kept in ``baseline_activity`` so that every selected
            set says how many of its neurons are active on the baseline (``|mean| >`` 0.1,
            ``interventions.baseline_active``); 0: not measured.

    Returns:
        A :class:`PruningResult` (``table()``, ``to_markdown()``, ``to_dict()``, ``save()``).

    Raises:
        InputError: bad arguments; ``checkpoint`` exists without ``resume``, or was made by another
            study; ``checkpoint`` under a launch of several processes.
        CheckpointError: ``checkpoint`` cannot be written, or is damaged (``mechir_nig.results``).
        CheckpointLockedError: another live process writes ``checkpoint``.

    Example:
        >>> import os, tempfile
        >>> col = load_collection("embedded")
        >>> sel, held_out = split_queries(col, seed=0)
        >>> # the ranking: a CollectionAttribution of the selection queries, or any [n_layers, d_mlp] scores
        >>> stats = torch.randn(6, 1536, generator=torch.Generator().manual_seed(0))
        >>> ckpt = os.path.join(tempfile.mkdtemp(), "results", "pruning.ckpt.json")
        >>> result = pruning_study(
        ...     ce, col, bm25_candidates(col, k=3), stats, select_queries=sel, eval_queries=held_out,
        ...     fractions=(0.01,), seeds=1, modes="zero", checkpoint=ckpt, resume=True, progress=False,
        ...     baseline_inputs=0,
        ... )
        >>> print(result.to_markdown())  # doctest: +ELLIPSIS
        | condition | mode | fraction | neurons | nDCG@10 | drop nDCG@10 | RR@10 | drop RR@10 |
        |---|---|---|---|---|---|---|---|
        | unpruned | none | 0 | 0 | ...
        | nig_top | zero | 0.01 | ...
    """
    import contextlib

    from mechir_nig.evaluation import candidate_pairs, evaluate
    from mechir_nig.sets.selection import random_like

    t_start = time.perf_counter()
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    for m in modes:
        if m not in _MODES:
            raise InputError(f"modes must be among {_MODES}, got {m!r}")
    for c in conditions:
        if c not in CONDITIONS:
            raise InputError(f"conditions must be among {CONDITIONS}, got {c!r}")
    check_int(seeds, "seeds", minimum=1)
    check_int(batch_size, "batch_size", minimum=1)
    for f in fractions:
        check_fraction(f, "each of fractions", allow_zero=True)
    if model.pairwise and side != "doc":
        raise InputError("side applies to bi-encoders only")
    if side not in ("doc", "query", "both"):
        raise InputError(f"side must be 'doc', 'query' or 'both', got {side!r}")
    if resume and checkpoint is None:
        raise InputError("resume=True needs checkpoint= (the file a previous call wrote)")
    scores, layers = _ranking_scores(model, ranking, scheme)
    target = str(getattr(collection, "name", "") or "")
    meta = getattr(ranking, "meta", None) or {}
    source = str(source_collection or meta.get("collection") or target)
    transfer = source != target
    default_sel, default_eval = split_queries(collection)
    if transfer and select_queries is None:  # the queries of the source collection the ranking came from
        default_sel = [str(q) for q in meta.get("query_ids") or []]
    sel = list(default_sel if select_queries is None else select_queries)
    ev = list(default_eval if eval_queries is None else eval_queries)
    overlap = [] if transfer else sorted(set(sel) & set(ev))
    if overlap:
        raise InputError(
            f"{len(overlap)} queries are both selection and evaluation queries (e.g. {overlap[:3]}): "
            "evaluate on held-out queries (see split_queries)"
        )
    ev = evaluable_queries(collection, candidates, ev, what="pruning_study", stacklevel=2)
    from mechir_nig.runtime.distributed import context

    ctx = context(distributed, getattr(model, "device", None))  # one process: every job here
    if checkpoint is not None and ctx.grouped:
        raise InputError(
            "checkpoint= is for a single-process pruning study; under a launch of several processes pass "
            "distributed=False with one checkpoint file per rank, or leave checkpoint out"
        )
    cache = cache if cache is not None else PruningCache()

    # the pairs, texts and (for a bi-encoder) the unablated side, once
    pairs, docs = candidate_pairs(collection, candidates, ev)
    q_texts = [collection.queries[q] for q, _ in pairs]
    d_texts = [docs[d] for _, d in pairs]
    bi = not model.pairwise
    uq, ud = list(dict.fromkeys(q_texts)), list(dict.fromkeys(d_texts))
    qpos, dpos = {t: i for i, t in enumerate(uq)}, {t: i for i, t in enumerate(ud)}
    q_row = torch.tensor([qpos[t] for t in q_texts])
    d_row = torch.tensor([dpos[t] for t in d_texts])
    texts_key = hashlib.sha256("\0".join([*q_texts, "\1", *d_texts]).encode()).hexdigest()

    def encode(texts: list[str], which: str, ab: Any) -> Tensor:
        if ab is None:
            return cast(BiEncoderModel, model).encode(texts, batch_size=batch_size)
        return cast(Tensor, ab.encode(texts, side=which, batch_size=batch_size))

    def clean_side(which: str) -> Tensor:
        texts = uq if which == "query" else ud
        key = f"{which}|{batch_size}|" + hashlib.sha256("\0".join(texts).encode()).hexdigest()
        return cache.clean(model, key, lambda: encode(texts, which, None))

    def score(components: ComponentSet | None, mode: str) -> Tensor:
        if components is None or len(components) == 0:
            if bi:
                return cast(BiEncoderModel, model).similarity_fn(
                    clean_side("query")[q_row], clean_side("doc")[d_row]
                )
            return cache.clean(
                model,
                f"pairs|{batch_size}|{texts_key}",
                lambda: model.score(q_texts, d_texts, batch_size=batch_size),
            )
        with _ablation(model, components, mode, reference, side if bi else "both", cache) as ab:
            if not bi:
                return model.score(q_texts, d_texts, batch_size=batch_size)
            qe = encode(uq, "query", ab) if side != "doc" else clean_side("query")
            de = encode(ud, "doc", ab) if side != "query" else clean_side("doc")
            return cast(BiEncoderModel, model).similarity_fn(qe[q_row], de[d_row])

    def measure(values: Tensor) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        run: dict[str, dict[str, float]] = {q: {} for q in ev}
        for (q, d), v in zip(pairs, values.tolist(), strict=True):
            run[q][d] = v
        res = evaluate(run, collection, list(measures), per_query=True, query_ids=ev)
        return {m: float(res[m]) for m in res}, res.per_query or {}

    jobs: list[tuple[str, str, float, int, ComponentSet | None]] = [("unpruned", "none", 0.0, 0, None)]
    sets: dict[str, dict[str, Any]] = {}
    for f in fractions:
        for cond in conditions:
            base = _select(
                scores, layers, float(f), "nig_top" if cond == "random" else cond, model.cfg.n_layers
            )
            chosen = (
                [(s, random_like(base, seed=s) if len(base) else base) for s in range(seeds)]
                if cond == "random"
                else [(0, base)]
            )
            for s, comp in chosen:
                sets[f"{cond}|{f:g}|{s}"] = comp.to_json()
                for mode in modes:
                    jobs.append((cond, mode, float(f), s, comp))
    plan = [(c, m, f, s, None if x is None else sorted(x)) for c, m, f, s, x in jobs]

    def batches_of(job: tuple[str, str, float, int, ComponentSet | None]) -> int:
        """Forward batches an evaluation runs (what the progress bar counts)."""
        comp = job[4]
        if comp is None or len(comp) == 0:
            return 0  # the clean pass: cached after the first call
        if not bi:
            return _n_batches(len(pairs), batch_size)
        n = _n_batches(len(ud), batch_size) if side != "query" else 0
        return n + (_n_batches(len(uq), batch_size) if side != "doc" else 0)

    ckpt = Path(checkpoint) if checkpoint is not None else None
    state: PruningCheckpoint | None = None
    with contextlib.ExitStack() as stack:
        if ckpt is not None:
            from mechir_nig._io import OutputLock, probe_writable
            from mechir_nig.attribution.settings import model_fingerprint

            probe_writable(ckpt, "checkpoint")
            stack.enter_context(OutputLock(ckpt))
            record = {
                "plan": hashlib.sha256(canonical_json(plan).encode()).hexdigest(),
                "evaluations": len(jobs),
                "select_queries": hashlib.sha256(canonical_json(sorted(sel)).encode()).hexdigest(),
                "candidates": hashlib.sha256(
                    canonical_json([(q, list(candidates[q])) for q in ev]).encode()
                ).hexdigest(),
                "measures": list(measures),
                "side": side,
                "batch_size": batch_size,
                "model": model_fingerprint(model),
            }
            if ckpt.exists():
                if not resume:
                    raise InputError(
                        f"checkpoint {ckpt} exists; pass resume=True (--resume) to continue it, or remove it"
                    )
                state = PruningCheckpoint.load(ckpt)
                if state.record != record:
                    diff = sorted(k for k in record if state.record.get(k) != record[k])
                    what = (
                        "another model (its weights differ)" if "model" in diff else f"another study {diff}"
                    )
                    raise InputError(f"checkpoint {ckpt} was made with {what}; use another file")
            else:
                state = PruningCheckpoint(record, {}, {})
        done = state.done if state is not None else {}
        todo = [j for j in range(len(jobs)) if str(j) not in done]
        tick = _Progress(
            sum(batches_of(jobs[j]) for j in todo),
            "pruning",
            "batch",
            progress and ctx.is_main,
            on_batch,
        )
        hook = "hook_score" if model.pairwise else "hook_embedding"
        stack.enter_context(tick)

        def run_jobs(
            share: list[int],
        ) -> list[tuple[dict[str, Any], dict[str, dict[str, float]], float, Tensor]]:
            out = []
            for j in share:
                cond, mode, f, s, comp = jobs[j]
                t0 = time.perf_counter()
                with torch.no_grad(), model.hooks(fwd_hooks=[(hook, tick.hook)] if comp else []):
                    values = score(comp, mode)
                values = values.to(torch.float64).cpu()
                means, pq = measure(values)
                run = {"condition": cond, "mode": mode, "fraction": f, "seed": s}
                entry = (
                    run | {"n_neurons": 0 if comp is None else len(comp)} | means,
                    pq,
                    time.perf_counter() - t0,
                    values,
                )
                if state is not None and ckpt is not None:
                    state.done[str(j)] = {"run": entry[0], "per_query": pq, "seconds": entry[2]}
                    state.scores[str(j)] = values
                    state.save(ckpt)
                if on_evaluation is not None:
                    on_evaluation(entry[0])
                out.append(entry)
            return out

        computed = ctx.map(
            todo,
            run_jobs,
            what="evaluating the pruning conditions",
            fingerprint=(plan, sel, {q: list(candidates[q]) for q in ev}),
        )
    by_job = dict(zip(todo, computed, strict=True))
    for key, entry in done.items():
        if int(key) not in by_job:
            assert state is not None
            by_job[int(key)] = (entry["run"], entry["per_query"], float(entry["seconds"]), state.scores[key])
    results = [by_job[j] for j in range(len(jobs))]
    timings: dict[str, float] = {}
    for (cond, mode, *_), (_, _, seconds, _) in zip(jobs, results, strict=True):  # summed over the ranks:
        timings[f"{cond}|{mode}"] = timings.get(f"{cond}|{mode}", 0.0) + seconds  # compute, not wall time
    runs = [results[j][0] for j in range(len(jobs))]
    per_query = [results[j][1] for j in range(len(jobs))]
    moved = [_moved(pairs, results[0][3], results[j][3]) for j in range(len(jobs))]
    measure_names = [k for k in runs[0] if k not in _ID_KEYS]
    timings["total"] = time.perf_counter() - t_start
    if len(todo) < len(jobs):
        timings["resumed_evaluations"] = float(len(jobs) - len(todo))
    settings = {
        "scheme": scheme,  # a tensor ranking: the scheme its caller names (``scheme``)
        "ranking": "CollectionAttribution" if hasattr(ranking, "scheme_scores") else "tensor",
        "source_collection": source,
        "transfer": transfer,
        "ranked_layers": layers,
        "fractions": [float(f) for f in fractions],
        "seeds": seeds,
        "modes": list(modes),
        "conditions": list(conditions),
        "side": side if bi else "pair",
        "pairs": len(pairs),
        "split": (
            f"transfer: the ranking was selected on collection {source!r} (select_queries are its queries) "
            f"and evaluated on {target!r}"
            if transfer
            else "selection and evaluation queries are disjoint (select on one half, evaluate on the other)"
        ),
        "judged_queries": JUDGED,
        "model": str(getattr(model.cfg, "model_name", "")),
    }
    activity = _baseline_activity(model, collection, sel, layers, baseline_inputs, batch_size)
    result = PruningResult(
        measure_names or list(measures),
        runs,
        per_query,
        sets,
        sorted(sel),
        ev,
        settings,
        timings,
        moved,
        [float(r[2]) for r in results],
        activity,
    )
    for m in result.measures:
        warning = result.ceiling(m)["warning"]
        if warning is not None:
            warnings.warn(f"pruning_study: {warning}", CeilingWarning, stacklevel=2)
    return result


BASELINE_THRESHOLD = 0.1
"""A neuron is active on the baseline when its mean baseline activation has ``|mean| >`` this."""


def _baseline_activity(
    model: HookedModel, collection: Any, sel: list[str], layers: list[int], n_inputs: int, batch_size: int
) -> dict[str, Any]:
    """Every ranked neuron's mean activation on the NIG baseline input of the first ``n_inputs`` relevant
    pairs of the selection queries (``interventions.baseline_active``); ``{}`` when none or ``n_inputs=0``."""
    from mechir_nig.interventions.ablation import baseline_active

    check_int(n_inputs, "baseline_inputs", minimum=0)
    chosen = set(sel)
    rel = [
        (r.query_id, r.doc_id)
        for r in collection.qrels
        if r.query_id in chosen and collection.is_relevant(r.relevance) and r.query_id in collection.queries
    ]
    rel = list(dict.fromkeys(rel))[:n_inputs]
    if not rel or not layers:
        return {}
    docs = collection.get_docs(d for _, d in rel)
    rel = [(q, d) for q, d in rel if d in docs]
    if not rel:
        return {}
    everything = NeuronSet(
        [(layer, n) for layer in layers for n in range(model.cfg.d_mlp)],
        n_layers=model.cfg.n_layers,
        d_mlp=model.cfg.d_mlp,
    )
    report = baseline_active(
        model,
        [collection.queries[q] for q, _ in rel],
        [docs[d] for _, d in rel],
        everything,
        threshold=BASELINE_THRESHOLD,
        batch_size=batch_size,
    )
    row = {layer: i for i, layer in enumerate(layers)}
    means = torch.zeros(len(layers), model.cfg.d_mlp, dtype=torch.float64)
    for (layer, n), v in zip(report.neurons, report.baseline_mean.tolist(), strict=True):
        means[row[layer], n] = v
    return {
        "threshold": BASELINE_THRESHOLD,
        "inputs": "the [PAD] baseline inputs of relevant pairs of the selection queries",
        "n_inputs": len(rel),
        "layers": layers,
        "baseline_mean": [[round(float(v), 6) for v in row] for row in means],
    }


def _ablation(
    model: HookedModel, components: ComponentSet, mode: str, reference: Any, side: str, cache: PruningCache
) -> Any:
    """``ablate(model, components, mode=...)``; ``mode="baseline"`` writes the study's shared baseline
    value (``cache.baseline``: each distinct baseline row run once for the conditions that share layers)."""
    from mechir_nig.interventions.ablation import ablate, interventions
    from mechir_nig.interventions.engine import Engine

    ref = reference if mode in ("mean", "resample") else None
    ab = ablate(model, components, mode=mode, reference=ref, side=side)
    if mode == "baseline":
        ab.engine = Engine(model, interventions(ab.components, cache.baseline(model), "all"))
    return ab


def _moved(pairs: list[tuple[str, str]], before: Tensor, after: Tensor) -> dict[str, Any]:
    """The queries whose top ``RANK_DEPTH`` differs between the scores ``before`` and ``after`` (one per
    pair of ``pairs``), and per query the ``MOVED_PER_QUERY`` documents that moved most up and down
    (``[doc_id, rank before, rank after]``, ranks from 1, ties in candidate order)."""
    by_query: dict[str, list[int]] = {}
    for i, (q, _) in enumerate(pairs):
        by_query.setdefault(q, []).append(i)
    changed: list[str] = []
    docs: dict[str, dict[str, list[list[Any]]]] = {}
    for q, rows in by_query.items():
        idx = torch.tensor(rows)
        rank_b = _ranks(before[idx])
        rank_a = _ranks(after[idx])
        top_b = rank_b.argsort()[:RANK_DEPTH]
        top_a = rank_a.argsort()[:RANK_DEPTH]
        if not torch.equal(top_b, top_a):
            changed.append(q)
        shift = rank_b - rank_a  # positive: moved up
        if not bool(shift.any()):
            continue
        moves: list[tuple[str, int, int]] = sorted(
            ((pairs[r][1], int(rank_b[j]), int(rank_a[j])) for j, r in enumerate(rows)),
            key=lambda e: (e[2] - e[1], e[1]),  # most up first (after - before most negative)
        )
        docs[q] = {
            "up": [list(e) for e in moves[:MOVED_PER_QUERY] if e[2] < e[1]],
            "down": [list(e) for e in reversed(moves[-MOVED_PER_QUERY:]) if e[2] > e[1]],
        }
    return {"depth": RANK_DEPTH, "changed": changed, "docs": docs}


def _ranks(scores: Tensor) -> Tensor:
    """Rank from 1 of each score, highest first (ties: the earlier candidate first)."""
    order = torch.sort(-scores, stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(1, len(scores) + 1)
    return ranks
