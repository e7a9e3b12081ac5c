"""The cross-collection study of Vast et al. (ICTIR 2024): relevance neurons shared by every collection,
out-of-domain (OOD) neurons, and transfer pruning.

``compare_collections(model, {"vaswani": col_a, "cisi": col_b}, in_domain="vaswani")``:

1. **attribution** of each collection's selection queries (``attribute_collection``; reused from
   ``out_dir/<name>/attribution.safetensors`` when that holds a complete attribution of this model, resumed
   when it holds a stopped one, computed otherwise);
2. **sets** per collection, scheme and fraction, named by both: ``relevant@vaswani`` (not
   ``relevant:all`` twice); a fused scheme ``rrf(relevant,nonrelevant)`` fuses two schemes of one collection
   by rank (:func:`~mechir_nig.sets.fuse_scores`);
3. **overlaps** of every two collections' sets with their chance level (``overlap_report``: exact
   hypergeometric expectation and ``P(X >= observed)``); **core** neurons (in every collection's set) and
   **OOD** neurons (in every OOD collection's set, not in the in-domain one) with their exact chance
   distribution (:func:`intersection_pmf`, :func:`ood_pmf`);
4. **scheme overlaps** per collection and fraction (the paper's intersections between schemes);
5. **transfer pruning**: the set selected on collection A ablated on collection B's held-out queries
   (``pruning_study(..., source_collection=A)``) against B's own set and random sets of the own set's size
   and layer profile, with the paired statistics of :mod:`mechir_nig.statistics` (bootstrap interval,
   sign-flip p-value, Holm across the study's rows).

Example:
    >>> from mechir_nig.experiments.compare import core_chance
    >>> round(core_chance([2, 2], 4, observed=2)["p_value"], 6)  # both sets equal by chance: 1 / C(4, 2)
    0.166667
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mechir_nig._validate import check_int
from mechir_nig.errors import InputError
from mechir_nig.models.protocol import HookedModel
from mechir_nig.results import Result
from mechir_nig.sets.components import ComponentSet

__all__ = [
    "COMPARE_NAME",
    "CollectionComparison",
    "compare_collections",
    "core_chance",
    "intersection_pmf",
    "ood_chance",
    "scheme_scores",
    "set_name",
]

COMPARE_NAME = "compare.json"
"""The comparison's file in a results folder (``mechir-nig compare --out DIR``)."""

_FUSED = re.compile(r"^(rrf|borda)\((\w+(?:,\w+)+)\)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def set_name(scheme: str, collection: str) -> str:
    """The name of a collection's set: ``scheme@collection``.

    Example:
        >>> set_name("relevant", "vaswani")
        'relevant@vaswani'
    """
    return f"{scheme}@{collection}"


def _check_scheme(scheme: Any) -> str:
    """``scheme`` if it is a scheme of ``CollectionAttribution.scheme_scores`` or a fusion of them."""
    from mechir_nig.attribution.stats import SCHEMES

    fused = _FUSED.match(scheme) if isinstance(scheme, str) else None
    parts = fused.group(2).split(",") if fused else [scheme]
    if any(p not in SCHEMES for p in parts):
        raise InputError(
            f"unknown scheme {scheme!r}: use one of {SCHEMES}, or a fusion of them such as "
            "'rrf(relevant,nonrelevant)' or 'borda(relevant,difference)'"
        )
    return str(scheme)


def scheme_scores(stats: Any, scheme: str) -> Tensor:
    """``[n_layers, d_mlp]`` scores of ``scheme``: a scheme of ``CollectionAttribution.scheme_scores``
    (``relevant``, ``nonrelevant``, ``difference``, ``abs_mean``, ``mean_abs``) or a fusion of several,
    ``rrf(a,b,...)`` / ``borda(a,b,...)`` (:func:`~mechir_nig.sets.fuse_scores` of their scores over the
    attributed layers; zeros elsewhere).

    Example:
        >>> from mechir_nig.attribution.stats import CollectionAttribution
        >>> stats = CollectionAttribution(layers=[0], n_layers=1, d_mlp=3)
        >>> stats.update("relevant", torch.tensor([3.0, 1.0, 2.0]).expand(1, 1, 4, 3))
        >>> stats.update("nonrelevant", torch.tensor([1.0, 3.0, 2.0]).expand(1, 1, 4, 3))
        >>> scheme_scores(stats, "borda(relevant,nonrelevant)").tolist()  # Σ (N − rank)
        [[2.0, 2.0, 2.0]]
    """
    from mechir_nig.sets.selection import fuse_scores

    _check_scheme(scheme)
    fused = _FUSED.match(scheme)
    if fused is None:
        return stats.scheme_scores(scheme).to(torch.float64)
    method, parts = fused.group(1), fused.group(2).split(",")
    layers = list(stats.layers)
    rows = [scheme_scores(stats, p)[layers] for p in parts]
    out = torch.zeros(stats.n_layers, stats.d_mlp, dtype=torch.float64)
    out[layers] = fuse_scores(rows, method=method)
    return out


# -- chance levels of many-set intersections ---------------------------------------------------------
def _hyper_logpmf(n: int, a: np.ndarray, b: int, y: np.ndarray) -> np.ndarray:
    """``log P(Y = y)`` for ``Y ~ Hypergeometric(N=n, a, b)`` (elementwise over ``a`` and ``y``;
    ``-inf`` outside the support)."""

    def gammaln(v: Any) -> Any:  # numpy scalars too
        return torch.lgamma(torch.as_tensor(v, dtype=torch.float64)).numpy()

    def lcomb(top: Any, k: Any) -> Any:
        ok = (k >= 0) & (k <= top)
        safe_k = np.where(ok, k, 0)
        v = gammaln(top + 1.0) - gammaln(safe_k + 1.0) - gammaln(top - safe_k + 1.0)
        return np.where(ok, v, -np.inf)

    return lcomb(a, y) + lcomb(n - a, b - y) - lcomb(np.asarray(n), np.asarray(b))


def _check_sizes(sizes: Sequence[int], universe: int) -> tuple[list[int], int]:
    n = int(universe)
    out = [int(s) for s in sizes]
    if n < 1 or not out or any(not 0 <= s <= n for s in out):
        raise InputError(f"set sizes must be between 0 and the pool size {n}, got {out}")
    return out, n


def intersection_pmf(sizes: Sequence[int], universe: int) -> np.ndarray:
    """Exact distribution of ``|A_1 ∩ … ∩ A_m|`` for independent, uniformly random sets of the given
    sizes drawn from ``universe`` candidates.

    ``X_1 = |A_1|`` and ``X_{i+1} | X_i ~ Hypergeometric(N, X_i, |A_{i+1}|)`` (the part of the running
    intersection that the next uniform set meets), so the law of ``X_m`` is a chain of hypergeometric
    transitions, computed in float64 from log-pmfs. For two sets it is the hypergeometric law of
    ``overlap_report``.

    Returns:
        ``pmf[x] = P(X = x)`` for ``x = 0 .. min(sizes)``.

    Example:
        >>> intersection_pmf([2, 2], 4).round(6).tolist()  # C(2,x) C(2,2-x) / C(4,2)
        [0.166667, 0.666667, 0.166667]
    """
    sizes, n = _check_sizes(sizes, universe)
    top = min(sizes)
    pmf = np.zeros(top + 1)
    pmf[top] = 1.0 if len(sizes) == 1 else 0.0
    if len(sizes) == 1:
        return pmf
    pmf = np.zeros(sizes[0] + 1)
    pmf[sizes[0]] = 1.0
    for b in sizes[1:]:
        x: np.ndarray = np.arange(len(pmf), dtype=np.float64)[:, None]
        y: np.ndarray = np.arange(min(len(pmf) - 1, b) + 1, dtype=np.float64)[None, :]
        trans = np.exp(_hyper_logpmf(n, x, b, y))  # [x, y]
        pmf = pmf @ trans
    return pmf[: top + 1] / pmf.sum()


def ood_pmf(ood_sizes: Sequence[int], in_domain_size: int, universe: int) -> np.ndarray:
    """Exact distribution of ``|(B_1 ∩ … ∩ B_k) \\ A|`` for independent uniform sets (``B_i`` the OOD
    collections' sets, ``A`` the in-domain one): with ``X = |∩ B_i|`` (:func:`intersection_pmf`),
    ``|X ∩ A| ~ Hypergeometric(N, X, |A|)`` and the OOD count is ``X − |X ∩ A|``.

    Example:
        >>> ood_pmf([2], 2, 4).round(6).tolist()  # |B \\ A| = 2 − |A ∩ B|
        [0.166667, 0.666667, 0.166667]
    """
    px = intersection_pmf(ood_sizes, universe)
    _, n = _check_sizes([in_domain_size], universe)
    out = np.zeros(len(px))
    for x, p in enumerate(px):
        if p == 0:
            continue
        inter: np.ndarray = np.arange(x + 1, dtype=np.float64)
        w = np.exp(_hyper_logpmf(n, np.full(x + 1, float(x)), int(in_domain_size), inter))
        out[x - np.arange(x + 1)] += p * w
    return out / out.sum()


def _tail(pmf: np.ndarray, observed: int) -> float:
    return float(min(1.0, pmf[observed:].sum())) if observed < len(pmf) else 0.0


def core_chance(sizes: Sequence[int], universe: int, observed: int = 0) -> dict[str, float]:
    """Chance level of the core (the intersection of every set): ``expected`` (``Π a_i / N^(m−1)``) and
    ``p_value`` ``= P(X >= observed)`` under independent uniform sets (:func:`intersection_pmf`).

    Example:
        >>> round(core_chance([3, 3, 3], 6)["expected"], 12)  # 3 · 3 · 3 / 6²
        0.75
    """
    pmf = intersection_pmf(sizes, universe)
    return {
        "expected": float(np.dot(np.arange(len(pmf)), pmf)),
        "p_value": _tail(pmf, int(observed)) if observed > 0 else 1.0,
    }


def ood_chance(
    ood_sizes: Sequence[int], in_domain_size: int, universe: int, observed: int = 0
) -> dict[str, float]:
    """Chance level of the OOD neurons (:func:`ood_pmf`): ``expected`` and ``p_value = P(Y >= observed)``.

    Example:
        >>> round(ood_chance([2], 2, 4)["expected"], 6)  # 2 (1 − 2/4)
        1.0
    """
    pmf = ood_pmf(ood_sizes, in_domain_size, universe)
    return {
        "expected": float(np.dot(np.arange(len(pmf)), pmf)),
        "p_value": _tail(pmf, int(observed)) if observed > 0 else 1.0,
    }


# -- the result --------------------------------------------------------------------------------------
@dataclass
class CollectionComparison(Result):
    """The cross-collection study (see the module docstring); saved as one JSON file (``compare.json``).

    ``sets``: ``{"<scheme>@<collection>|<fraction>": set JSON}``; ``overlaps``: one ``overlap_report`` per
    scheme, fraction and pair of collections (``scheme``, ``fraction``, ``collection_a``,
    ``collection_b`` added); ``shared``: the ``core`` and ``ood`` rows per scheme and fraction (``size``,
    ``expected``, ``p_value``, ``members``); ``scheme_overlaps``: per collection and fraction, every two
    schemes' ``overlap_report``; ``transfer``: one row per (target, source, mode) of the transfer pruning
    (``source == target``: the target's own set); ``attributions``: per collection what was attributed
    (pairs, queries, reused or computed, seconds).

    Example:
        >>> cmp = CollectionComparison(["a", "b"], "a", ["relevant"], [0.01], {}, [], [], [], [], {}, {})
        >>> cmp.findings()
        []
    """

    collections: list[str]
    in_domain: str | None
    schemes: list[str]
    fractions: list[float]
    sets: dict[str, dict[str, Any]]
    overlaps: list[dict[str, Any]]
    shared: list[dict[str, Any]]
    scheme_overlaps: list[dict[str, Any]]
    transfer: list[dict[str, Any]]
    attributions: dict[str, dict[str, Any]]
    settings: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)

    KIND = "CollectionComparison"
    WHAT = "collection comparison"
    LAYOUT = "json"

    def set(self, scheme: str, collection: str, fraction: float) -> ComponentSet:
        """The set of ``scheme`` selected on ``collection`` at ``fraction``.

        Example:
            >>> sorted(halves)  # two collections (the embedded one's queries split, as in compare_collections)
            ['even', 'odd']
            >>> opts = dict(schemes=("relevant",), n_steps=2, layers=[4, 5], max_queries=2)
            >>> opts.update(max_relevant_per_query=1, max_nonrelevant_per_query=1, progress=False)
            >>> cmp = compare_collections(ce, halves, in_domain="odd", transfer=False, **opts)
            >>> cmp.set("relevant", "odd", 0.01)  # doctest: +ELLIPSIS
            NeuronSet(name='relevant@odd', size=31, universe=6x1536, profile=[0, 0, 0, 0, ...], pool_layers=[4, 5])
        """
        key = f"{set_name(scheme, collection)}|{fraction:g}"
        if key not in self.sets:
            raise InputError(f"no set {key!r}; the comparison holds {sorted(self.sets)}")
        return ComponentSet.from_json(self.sets[key])

    def to_markdown(self) -> str:
        """The sets, overlaps with chance, core / OOD neurons and the transfer table as Markdown."""
        lines = ["| set | fraction | size | layer profile |", "|---|---|---|---|"]
        for key, js in self.sets.items():
            name, frac = key.split("|")
            s = ComponentSet.from_json(js)
            lines.append(f"| {name} | {frac} | {len(s)} | {s.layer_profile()} |")
        lines += [
            "",
            "| scheme | fraction | A | B | size A | size B | overlap | chance | Jaccard | p |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.overlaps:
            lines.append(
                f"| {r['scheme']} | {r['fraction']:g} | {r['collection_a']} | {r['collection_b']} | "
                f"{r['size_a']} | {r['size_b']} | {r['intersection']} | {r['expected_intersection']:.2f} | "
                f"{r['jaccard']:.3f} | {_p(r['p_value'])} |"
            )
        lines += ["", "| neurons | scheme | fraction | count | chance | p |", "|---|---|---|---|---|---|"]
        for r in self.shared:
            lines.append(
                f"| {r['kind']} | {r['scheme']} | {r['fraction']:g} | {r['size']} | {r['expected']:.2f} | "
                f"{_p(r['p_value'])} |"
            )
        if self.transfer:
            lines += [
                "",
                "| evaluated on | set from | mode | measure | unpruned | drop [95 % CI] | p (Holm) | "
                "vs own set [95 % CI] | p (Holm) | vs random [95 % CI] | p (Holm) | queries |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in self.transfer:
                lines.append(
                    f"| {r['target']} | {r['source']} | {r['mode']} | {r['measure']} | {r['unpruned']:.4f} | "
                    f"{r['drop']:+.4f} {_ci(r['drop_ci'])} | {_p(r['p_holm'])} | {_cmp_cell(r['vs_own'])} | "
                    f"{_cmp_cell(r['vs_random'])} | {r['n_queries']} |"
                )
        return "\n".join(lines)

    def findings(self) -> list[str]:
        """One sentence per overlap, core / OOD row and transfer row (the findings the command prints).

        Example:
            >>> sorted(halves)  # two collections (the embedded one's queries split, as in compare_collections)
            ['even', 'odd']
            >>> opts = dict(schemes=("relevant",), n_steps=2, layers=[4, 5], max_queries=2)
            >>> opts.update(max_relevant_per_query=1, max_nonrelevant_per_query=1, progress=False)
            >>> cmp = compare_collections(ce, halves, in_domain="odd", transfer=False, **opts)
            >>> cmp.findings()[0]  # doctest: +ELLIPSIS
            'The top 1 % relevant neurons of odd and even share ... of 31 / 31 (chance 0.3, p ...).'
        """
        from mechir_nig.findings import ALPHA, format_p

        out = []
        for r in self.overlaps:
            out.append(
                f"The top {_pct(r['fraction'])} {r['scheme']} neurons of {r['collection_a']} and "
                f"{r['collection_b']} share {r['intersection']} of {r['size_a']} / {r['size_b']} "
                f"(chance {r['expected_intersection']:.1f}, {format_p(r['p_value'])})."
            )
        for r in self.shared:
            what = (
                f"in every collection's top {_pct(r['fraction'])} {r['scheme']} set (core)"
                if r["kind"] == "core"
                else f"in the OOD collections' top {_pct(r['fraction'])} {r['scheme']} sets but not "
                f"{self.in_domain}'s (OOD)"
            )
            out.append(
                f"{r['size']} neurons are {what}; chance {r['expected']:.1f} ({format_p(r['p_value'])})."
            )
        for r in self.transfer:
            if r["source"] == r["target"] or r["vs_own"] is None:
                continue
            own = r["vs_own"]
            verdict = (
                "indistinguishable from"
                if own["p_holm"] >= ALPHA
                else ("less than" if own["difference"] > 0 else "more than")  # transfer − own value
            )
            change = "lowers" if r["drop"] >= 0 else "raises"
            out.append(
                f"On {r['target']} ({r['mode']}), the {r['source']} set {change} {r['measure']} by "
                f"{abs(r['drop']):.3f} (drop {_ci(r['drop_ci'])}), {verdict} {r['target']}'s own set "
                f"(difference {own['difference']:+.3f}, {format_p(own['p_holm'])}, {r['n_queries']} held-out "
                "queries)."
            )
        if self.transfer:
            out.append(
                "Transfer p-values are Holm-adjusted across the rows of each comparison; intervals are "
                "percentile bootstraps over the target collection's held-out queries."
            )
        note = self.settings.get("model_note")
        if note:
            out.append(f"Caveat: {note}")
        return out

    def plot(self, kind: str | None = None, **kw: Any) -> Any:
        """A plotly figure: ``"schemes"`` (the intersections between schemes per fraction, default;
        ``plotting.scheme_overlap_curves``), ``"summary"`` (overlaps, core and OOD neurons against chance;
        ``plotting.collection_overlap_bars``) or ``"layers"`` (the layer distribution of the top neurons;
        ``plotting.top_layer_bars``); ``kw`` go to the figure function.

        Example:
            >>> sorted(halves)  # two collections (the embedded one's queries split, as in compare_collections)
            ['even', 'odd']
            >>> opts = dict(schemes=("relevant",), n_steps=2, layers=[4, 5], max_queries=2)
            >>> opts.update(max_relevant_per_query=1, max_nonrelevant_per_query=1, progress=False)
            >>> cmp = compare_collections(ce, halves, in_domain="odd", transfer=False, **opts)
            >>> fig = cmp.plot("layers")  # fig.show() opens it in a browser
            >>> len(fig.data) > 0
            True
        """
        from mechir_nig.plotting import collection_overlap_bars, scheme_overlap_curves, top_layer_bars

        kinds = {
            "schemes": scheme_overlap_curves,
            "summary": collection_overlap_bars,
            "layers": top_layer_bars,
        }
        if kind is None:
            kind = "schemes" if self.scheme_overlaps else "summary"
        if kind not in kinds:
            raise InputError(f"unknown kind {kind!r} for a CollectionComparison; use one of {list(kinds)}")
        return kinds[kind](self, **kw)


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g} %"


def _p(p: float | None) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3g}"


def _ci(b: Sequence[float]) -> str:
    return f"[{b[0]:+.4f}, {b[1]:+.4f}]"


def _cmp_cell(c: Mapping[str, Any] | None) -> str:
    if c is None:
        return "n/a | n/a"
    return f"{c['difference']:+.4f} {_ci(c['ci'])} | {_p(c['p_holm'])}"


# -- the study ---------------------------------------------------------------------------------------
def _check_names(collections: Any, in_domain: Any) -> list[str]:
    if not isinstance(collections, Mapping) or len(collections) < 2:
        raise InputError(
            "collections must be a mapping {name: collection} of at least two collections, e.g. "
            '{"vaswani": load_collection("irds:vaswani"), "cisi": load_collection("path/to/cisi")}'
        )
    names = [str(n) for n in collections]
    bad = [n for n in names if not _NAME.match(n)]
    if bad:
        raise InputError(
            f"collection names {bad} must start with a letter or digit and hold only letters, digits, "
            "'_', '.' and '-' (they name sets, e.g. relevant@vaswani, and folders)"
        )
    if in_domain is not None and in_domain not in names:
        raise InputError(f"in_domain {in_domain!r} is not one of the collections {names}")
    return names


def _attribution(
    model: HookedModel,
    name: str,
    col: Any,
    *,
    given: Any,
    folder: Path | None,
    settings: Any,
    pair_options: Mapping[str, Any],
    max_queries: int | None,
    split_seed: int,
    batch_size: int,
    progress: bool,
) -> tuple[Any, dict[str, Any]]:
    """One collection's attribution: given, or through ``attribute_collection`` with its checkpoint in
    ``folder/<name>/`` (a complete checkpoint of the same pairs, settings and model is reused as it is, a
    stopped one resumed; one made otherwise is refused, naming what differs)."""
    from mechir_nig.attribution.stats import CollectionAttribution
    from mechir_nig.data import bm25_candidates, judged_pairs
    from mechir_nig.experiments.attribute import attribute_collection
    from mechir_nig.experiments.pruning import split_queries
    from mechir_nig.report import FILES

    if given is not None:
        return given, {"source": "given", "pairs": int(given.n_done), "counts": dict(given.counts)}
    sel, _ = split_queries(col, seed=split_seed)
    sel = sel[:max_queries] if max_queries is not None else sel
    opts = dict(pair_options)
    k = int(opts.pop("k", 100))
    from_bm25 = bool(opts.pop("negatives_from_bm25", False))
    cands = bm25_candidates(col, k=k, query_ids=sel) if from_bm25 else None
    pairs = judged_pairs(
        col, candidates=cands, sample_nonrelevant_from_candidates=cands is not None, query_ids=sel, **opts
    )
    if len(pairs) == 0:
        raise InputError(
            f"collection {name!r}: no judged pair among its {len(sel)} selection queries; check its qrels, or "
            "take non-relevant pairs from BM25 (negatives_from_bm25=True)"
        )
    path = folder / name / FILES["attribution"] if folder is not None else None
    source = "computed"
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            done = CollectionAttribution.load(path).n_done
            source = "reused" if done == len(pairs) else "resumed"
    t0 = time.perf_counter()
    try:
        stats = attribute_collection(
            model,
            pairs,
            settings=settings,
            batch_size=batch_size,
            checkpoint=path,
            resume=path is not None,
            progress=progress,
            collection=name,
            meta={"query_ids": sel},
        )
    except InputError as exc:
        if path is None or "was made with" not in str(exc):
            raise
        raise InputError(
            f"collection {name!r}: {str(exc).split('; use another file')[0]}; run with the options that "
            f"made it, remove {path} to attribute again, or use another output folder"
        ) from exc
    info = {
        "source": source,
        "path": None if path is None else str(path),
        "pairs": len(pairs),
        "counts": dict(stats.counts),
        "queries": len(sel),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return stats, info


def _select(stats: Any, scheme: str, fraction: float, name: str) -> ComponentSet:
    from mechir_nig.sets import select_top

    return select_top(scheme_scores(stats, scheme), fraction=fraction, layers=stats.layers, name=name)


def compare_collections(
    model: HookedModel,
    collections: Mapping[str, Any],
    *,
    in_domain: str | None = None,
    schemes: Sequence[str] = ("relevant", "difference"),
    fractions: Sequence[float] = (0.01,),
    settings: Any = None,
    attributions: Mapping[str, Any] | None = None,
    out_dir: str | Path | None = None,
    max_relevant_per_query: int | None = 3,
    max_nonrelevant_per_query: int | None = 3,
    negatives_from_bm25: bool = False,
    k: int = 100,
    seed: int = 0,
    split_seed: int = 0,
    max_queries: int | None = None,
    batch_size: int = 8,
    transfer: bool = True,
    transfer_scheme: str | None = None,
    transfer_fraction: float | None = None,
    modes: Sequence[str] = ("baseline",),
    seeds: int = 3,
    depth: int = 50,
    max_eval_queries: int | None = None,
    measures: Sequence[str] = ("nDCG@10",),
    n_resamples: int = 10000,
    progress: bool = True,
    **options: Any,
) -> CollectionComparison:
    """Compare the NIG neuron sets of several collections and prune across them (module docstring).

    Args:
        model: a hooked cross- or bi-encoder.
        collections: ``{name: Collection}`` (at least two); names name the sets (``relevant@name``).
        in_domain: the collection the model was trained on (the others are out-of-domain); without it
            there are no OOD rows.
        schemes: selection schemes (``CollectionAttribution.SCHEMES`` or fusions ``rrf(a,b)``,
            ``borda(a,b)``; :func:`scheme_scores`).
        fractions: top shares of the attributed neurons.
        settings: the NIG options (``NIGSettings``), or give them as keywords (``**options``).
        attributions: ``{name: CollectionAttribution}`` already computed (not recomputed).
        out_dir: where each collection's attribution is kept (``<out_dir>/<name>/attribution.safetensors``:
            reused when complete, resumed when stopped) and the pruning studies are written
            (``<out_dir>/<target>/pruning-from-<source>.json``).
        max_relevant_per_query: ``judged_pairs`` cap per query (``None``: all).
        max_nonrelevant_per_query: ``judged_pairs`` cap per query (``None``: all).
        negatives_from_bm25: non-relevant pairs from the BM25 top ``k`` (collections that judge only
            relevant documents, e.g. Vaswani and CISI).
        k: the BM25 depth of ``negatives_from_bm25``.
        seed: seed of the pair sampling.
        split_seed: seed of each collection's selection / evaluation split (``split_queries``).
        max_queries: attribute at most this many selection queries per collection (the first of the
            sorted selection half).
        batch_size: pairs per NIG call.
        transfer: run the transfer pruning.
        transfer_scheme: the scheme of the pruned sets (default: the first of ``schemes``).
        transfer_fraction: the fraction of the pruned sets (default: the first of ``fractions``).
        modes: ablation modes of the pruning (``pruning_study``).
        seeds: random sets per target.
        depth: BM25 candidates re-ranked per evaluation query.
        max_eval_queries: evaluate at most this many held-out queries per collection.
        measures: ir_measures names (the first is the one of the statistics rows).
        n_resamples: bootstrap resamples and Monte Carlo sign vectors.
        progress: progress bars.
        **options: NIG options as keywords (``n_steps=8``), instead of ``settings``.

    Returns:
        A :class:`CollectionComparison`.

    Example:
        >>> from mechir_nig.data import Collection
        >>> ids = sorted(col.queries)  # two collections: the embedded one's queries split in two
        >>> halves = {}
        >>> for name, qs in (("odd", ids[::2]), ("even", ids[1::2])):
        ...     qrels = [r for r in col.qrels if r.query_id in qs]
        ...     halves[name] = Collection(col.docs, {q: col.queries[q] for q in qs}, qrels, name=name)
        >>> opts = dict(schemes=("relevant",), n_steps=2, layers=[4, 5], max_queries=2)
        >>> opts.update(max_relevant_per_query=1, max_nonrelevant_per_query=1, progress=False)
        >>> cmp = compare_collections(ce, halves, in_domain="odd", modes=("zero",), seeds=1, depth=3,
        ...                           max_eval_queries=2, n_resamples=200, **opts)
        >>> print(cmp.to_markdown())  # doctest: +ELLIPSIS
        | set | fraction | size | layer profile |
        |---|---|---|---|
        | relevant@odd | 0.01 | 31 | [0, 0, 0, 0, ...] |
        | relevant@even | 0.01 | 31 | [0, 0, 0, 0, ...] |
        ...
        | evaluated on | set from | mode | measure | unpruned | drop [95 % CI] | ...
    """
    from mechir_nig.attribution.settings import NIGSettings
    from mechir_nig.sets import intersection, overlap_report

    t_start = time.perf_counter()
    names = _check_names(collections, in_domain)
    cfg = NIGSettings.of(settings, options, "compare_collections")
    schemes = list(schemes)
    if not schemes:
        raise InputError("schemes is empty; give at least one, e.g. ('relevant',)")
    for sch in schemes:
        _check_scheme(sch)
    if transfer_scheme is not None:
        _check_scheme(transfer_scheme)
    check_int(seeds, "seeds", minimum=1, hint="random sets per target")
    fractions = [float(f) for f in fractions]
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise InputError(f"fractions must be shares in (0, 1], e.g. (0.01,), got {fractions}")
    folder = Path(out_dir) if out_dir is not None else None
    given = dict(attributions or {})
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise InputError(f"attributions name collections {unknown} that are not in collections {names}")
    pair_options = {
        "max_relevant_per_query": max_relevant_per_query,
        "max_nonrelevant_per_query": max_nonrelevant_per_query,
        "seed": seed,
        "k": k,
        "negatives_from_bm25": negatives_from_bm25,
    }
    stats: dict[str, Any] = {}
    info: dict[str, dict[str, Any]] = {}
    timings: dict[str, float] = {}
    for name in names:
        t0 = time.perf_counter()
        stats[name], info[name] = _attribution(
            model,
            name,
            collections[name],
            given=given.get(name),
            folder=folder,
            settings=cfg,
            pair_options=pair_options,
            max_queries=max_queries,
            split_seed=split_seed,
            batch_size=batch_size,
            progress=progress,
        )
        timings[f"attribute|{name}"] = time.perf_counter() - t0
    layer_sets = {tuple(s.layers) for s in stats.values()}
    if len(layer_sets) > 1:
        raise InputError(
            f"the collections' attributions cover different layers {sorted(layer_sets)}; attribute every "
            "collection on the same layers"
        )

    sets: dict[str, dict[str, Any]] = {}
    chosen: dict[tuple[str, str, float], ComponentSet] = {}
    overlaps: list[dict[str, Any]] = []
    shared: list[dict[str, Any]] = []
    scheme_rows: list[dict[str, Any]] = []
    ood_names = [n for n in names if n != in_domain] if in_domain is not None else []
    for sch in schemes:
        for f in fractions:
            for name in names:
                s = _select(stats[name], sch, f, set_name(sch, name))
                chosen[(sch, name, f)] = s
                sets[f"{s.name}|{f:g}"] = s.to_json()
            for i, a in enumerate(names):
                for b in names[i + 1 :]:
                    rep = overlap_report(chosen[(sch, a, f)], chosen[(sch, b, f)])
                    overlaps.append(
                        {"scheme": sch, "fraction": f, "collection_a": a, "collection_b": b} | rep
                    )
            every = [chosen[(sch, n, f)] for n in names]
            pool = every[0].pool_size
            core = intersection(every, name=f"core:{sch}")
            shared.append(
                {"kind": "core", "scheme": sch, "fraction": f, "collections": names, "size": len(core)}
                | core_chance([len(s) for s in every], pool, len(core))
                | {"members": [list(m) for m in core]}
            )
            if ood_names:
                inside = intersection([chosen[(sch, n, f)] for n in ood_names])
                ood = inside - chosen[(sch, in_domain, f)]  # type: ignore[index]
                shared.append(
                    {"kind": "ood", "scheme": sch, "fraction": f, "collections": ood_names, "size": len(ood)}
                    | ood_chance(
                        [len(chosen[(sch, n, f)]) for n in ood_names],
                        len(chosen[(sch, in_domain, f)]),  # type: ignore[index]
                        pool,
                        len(ood),
                    )
                    | {"members": [list(m) for m in ood], "in_domain": in_domain}
                )
    for name in names:
        for f in fractions:
            for i, a in enumerate(schemes):
                for b in schemes[i + 1 :]:
                    rep = overlap_report(chosen[(a, name, f)], chosen[(b, name, f)])
                    scheme_rows.append(
                        {"collection": name, "fraction": f, "scheme_a": a, "scheme_b": b} | rep
                    )

    rows: list[dict[str, Any]] = []
    t_sch = transfer_scheme or schemes[0]
    t_frac = float(transfer_fraction if transfer_fraction is not None else fractions[0])
    if transfer:
        t0 = time.perf_counter()
        rows = _transfer(
            model,
            collections,
            names,
            stats,
            scheme=t_sch,
            fraction=t_frac,
            modes=list(modes),
            seeds=seeds,
            depth=depth,
            split_seed=split_seed,
            max_eval_queries=max_eval_queries,
            measures=list(measures),
            folder=folder,
            batch_size=batch_size,
            n_resamples=n_resamples,
            progress=progress,
        )
        timings["transfer"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    record = {
        "nig": cfg.record(),
        "pairs": {k_: v for k_, v in pair_options.items()},
        "split_seed": split_seed,
        "max_queries": max_queries,
        "transfer": {
            "scheme": t_sch,
            "fraction": t_frac,
            "modes": list(modes),
            "seeds": seeds,
            "depth": depth,
            "max_eval_queries": max_eval_queries,
            "measures": list(measures),
        }
        if transfer
        else None,
        "model": str(getattr(model.cfg, "model_name", "")),
        "chance": "exact: independent uniformly random sets of the same sizes from the candidate pool",
    }
    return CollectionComparison(
        names, in_domain, schemes, fractions, sets, overlaps, shared, scheme_rows, rows, info, record, timings
    )


def _transfer(
    model: HookedModel,
    collections: Mapping[str, Any],
    names: list[str],
    stats: Mapping[str, Any],
    *,
    scheme: str,
    fraction: float,
    modes: list[str],
    seeds: int,
    depth: int,
    split_seed: int,
    max_eval_queries: int | None,
    measures: list[str],
    folder: Path | None,
    batch_size: int,
    n_resamples: int,
    progress: bool,
) -> list[dict[str, Any]]:
    """The transfer pruning rows: every source's set on every target's held-out queries."""
    from mechir_nig.attribution.settings import model_fingerprint
    from mechir_nig.data import bm25_candidates
    from mechir_nig.experiments.pruning import PruningResult, pruning_study, split_queries
    from mechir_nig.statistics import compare_paired, holm, versus_random

    kw: dict[str, Any] = {"n_resamples": n_resamples, "seed": 0}
    fingerprint = model_fingerprint(model)
    rows: list[dict[str, Any]] = []
    m = measures[0]
    for target in names:
        col = collections[target]
        _, ev = split_queries(col, seed=split_seed)
        ev = ev[:max_eval_queries] if max_eval_queries is not None else ev
        cands = bm25_candidates(col, k=depth, query_ids=ev)
        studies: dict[str, PruningResult] = {}
        for source in [target] + [n for n in names if n != target]:
            own = source == target
            path = folder / target / f"pruning-from-{source}.json" if folder is not None else None
            ranking = stats[source]
            plan = {
                "scheme": scheme,
                "fractions": [fraction],
                "modes": modes,
                "seeds": seeds if own else 1,
                "source_collection": source,
                "requested_eval_queries": ev,
                "model_fingerprint": fingerprint,
            }
            previous = _reusable(path, plan)
            if previous is not None:
                studies[source] = previous
                continue
            scores = scheme_scores(ranking, scheme)
            result = pruning_study(
                model,
                col,
                cands,
                scores,
                scheme=scheme,
                fractions=(fraction,),
                seeds=seeds if own else 1,
                modes=tuple(modes),
                conditions=("nig_top", "random") if own else ("nig_top",),
                select_queries=list(ranking.meta.get("query_ids") or []),
                eval_queries=ev,
                measures=measures,
                batch_size=max(batch_size, 16),
                progress=progress,
                source_collection=source,
            )
            result.settings.update(requested_eval_queries=ev, model_fingerprint=fingerprint)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                result.save(path)
            studies[source] = result
        own_study = studies[target]
        for mode in modes:
            own_vals = _values(own_study, "nig_top", mode, m)
            random_vals = [_values(own_study, "random", mode, m, seed=s) for s in range(seeds)]
            base = _values(own_study, "unpruned", "none", m)
            for source, study in studies.items():
                vals = _values(study, "nig_top", mode, m)
                qids = [q for q in base if q in vals and q in own_vals and all(q in r for r in random_vals)]
                if not qids:
                    continue
                b = [base[q] for q in qids]
                v = [vals[q] for q in qids]
                drop = compare_paired(b, v, **kw)
                rnd = versus_random(v, [[r[q] for q in qids] for r in random_vals], **kw)
                row: dict[str, Any] = {
                    "target": target,
                    "source": source,
                    "scheme": scheme,
                    "fraction": fraction,
                    "mode": mode,
                    "measure": m,
                    "n_neurons": next(
                        r["n_neurons"]
                        for r in study.runs
                        if r["condition"] == "nig_top" and r["mode"] == mode
                    ),
                    "n_queries": len(qids),
                    "unpruned": float(np.mean(b)),
                    "value": float(np.mean(v)),
                    "drop": drop.mean_difference,
                    "drop_ci": [drop.ci_low, drop.ci_high],
                    "p": drop.p_value,
                    "vs_random": {
                        "difference": rnd.comparison.mean_difference,
                        "ci": [rnd.comparison.ci_low, rnd.comparison.ci_high],
                        "p": rnd.comparison.p_value,
                        "rank": rnd.rank,
                        "n_random": rnd.n_random,
                    },
                    "vs_own": None,
                    "per_query": {q: x for q, x in zip(qids, v, strict=True)},
                }
                if source != target:
                    o = [own_vals[q] for q in qids]
                    c = compare_paired(o, v, **kw)  # own − transfer: > 0 when the transferred set lowers less
                    row["vs_own"] = {
                        "difference": -c.mean_difference,  # transfer − own: how much less the transfer set lowers
                        "ci": [-c.ci_high, -c.ci_low],
                        "p": c.p_value,
                    }
                rows.append(row)
    for key in ("p",):
        for r, adj in zip(rows, holm([r[key] for r in rows]), strict=True):
            r["p_holm"] = adj
    for fam in ("vs_random", "vs_own"):
        fam_rows = [r for r in rows if r[fam] is not None]
        for r, adj in zip(fam_rows, holm([r[fam]["p"] for r in fam_rows]), strict=True):
            r[fam]["p_holm"] = adj
    return rows


def _values(study: Any, condition: str, mode: str, measure: str, seed: int = 0) -> dict[str, float]:
    for i, r in enumerate(study.runs):
        if r["condition"] == condition and r["mode"] == mode and r["seed"] == seed:
            return {q: v[measure] for q, v in study.per_query[i].items() if measure in v}
    if condition == "unpruned":
        raise InputError("the pruning study has no unpruned run")
    return {}


def _reusable(path: Path | None, plan: Mapping[str, Any]) -> Any:
    """The pruning study saved at ``path`` by an earlier call with the same plan, model and evaluation
    queries (a resumed comparison does not evaluate it again), else None."""
    from mechir_nig.experiments.pruning import PruningResult

    if path is None or not path.is_file():
        return None
    try:
        old = PruningResult.load(path)
    except Exception:  # unreadable: evaluated again and overwritten
        return None
    return old if all(old.settings.get(k) == v for k, v in plan.items()) else None
