"""One self-contained HTML report of a results folder: metadata, summary tables and every figure.

:func:`build` reads what a results folder holds (the layout the command line writes, ``docs/cli.md``:
``run.json``, ``attribution.safetensors``, ``pruning.json``, ``patching.safetensors``,
``faithfulness.json``, ``rerank.json``, ``stability.json``), skips what is missing, and writes one HTML
file: plotly.js inlined once, then each figure of :mod:`mechir_nig.plotting` as a ``div``, the run's
metadata (model, collection, settings, versions, timings of every command) and the summary tables. The
file references nothing outside itself, so it opens offline and can be mailed or archived as it is.
Every text that comes from a result (tokens, queries, names, settings) is HTML-escaped.

Example:
    >>> from mechir_nig.report import build
    >>> build("mechir-nig-demo")  # the folder of `mechir-nig demo`  # doctest: +SKIP
    PosixPath('mechir-nig-demo/report.html')

:func:`build`'s example runs on a results folder it makes in place.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import shlex
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from mechir_nig.errors import InputError

__all__ = ["CIRCUIT_FILES", "FILES", "LAYOUT_VERSION", "attribution_incomplete", "build", "check_layout"]

LAYOUT_VERSION = 1
"""The version of the results-folder layout (``run.json``'s ``layout``) this mechir_nig writes and reads."""

FILES: dict[str, str] = {
    "run": "run.json",
    "attribution": "attribution.safetensors",
    "pruning": "pruning.json",
    "patching": "patching.safetensors",
    "faithfulness": "faithfulness.json",
    "rerank": "rerank.json",
    "stability": "stability.json",
}
"""The files a results folder may hold, by what they hold (the command line's ``LAYOUT`` is these,
:data:`CIRCUIT_FILES` and :data:`REPORT_NAME`)."""

CIRCUIT_FILES: dict[str, str] = {
    "attribution_patching": "attribution_patching.safetensors",
    "interaction": "interaction.json",
    "attention_groups": "attention_groups.safetensors",
    "path_patching": "path_patching.safetensors",
    "path_patching_heads": "path_patching_heads.safetensors",
}
"""The results of ``mechir-nig circuits`` (issue 17): read and reported like :data:`FILES` when present, and
listed among the folder's files only then. ``path_patching`` holds a ``PatchingResult`` whose values are
keyed by sender site (``interventions.path_patching``), the heads' direct paths into the score;
``path_patching_heads`` a ``PathPatchingResult``: earlier heads into the query/key/value inputs of later
heads."""

REPORT_NAME = "report.html"
TOP_NEURONS = 20
"""Rows of the top-neuron table and bars of the top-neuron figure."""
SET_FRACTION = 0.01
"""Share of the attributed neurons in the top sets whose layer profile and overlap are drawn."""
MAX_PAIR_FIGURES = 4
"""Patching sites with a position axis are drawn per pair: for the first this many pairs."""
_LONG_LIST = 12

_TITLES = {
    "run": "Run",
    "rerank": "Re-ranking",
    "attribution": "Attribution (NIG)",
    "pruning": "Pruning study",
    "patching": "Activation patching",
    "faithfulness": "Faithfulness",
    "stability": "Split-half stability",
    "attribution_patching": "Attribution patching",
    "interaction": "Attention interactions (blocking or re-weighting)",
    "attention_groups": "Attention by token group",
    "path_patching": "Path patching",
    "path_patching_heads": "Path patching into heads",
}
_ORDER = (
    "run",
    "rerank",
    "attribution",
    "pruning",
    "patching",
    "faithfulness",
    "stability",
    *CIRCUIT_FILES,
)


def check_layout(run: Mapping[str, Any], path: str | Path = "run.json") -> None:
    """Refuse (``InputError``) a ``run.json`` of a layout version this mechir_nig does not know (one
    without a ``layout`` is read as version 1).

    Example:
        >>> check_layout({"layout": 1})
        >>> check_layout({"layout": 7})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mechir_nig.errors.InputError: run.json has results-folder layout version 7; this mechir_nig reads ...
    """
    version = run.get("layout", LAYOUT_VERSION)
    if version != LAYOUT_VERSION or isinstance(version, bool):
        raise InputError(
            f"{path} has results-folder layout version {version!r}; this mechir_nig reads version "
            f"{LAYOUT_VERSION}: read it with the mechir_nig that wrote it (or a newer one)"
        )


def attribution_incomplete(stats: Any) -> str | None:
    """``None`` when a ``CollectionAttribution`` holds every pair its run planned, else what it holds
    (e.g. ``"2 of 28 planned pairs (relevant 2 of 14, nonrelevant 0 of 14)"``): a run that was stopped
    leaves such a checkpoint. One made without a plan (``meta["n_pairs"]``) counts as complete.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> attribution_incomplete(NS(n_done=2, meta={"n_pairs": 28}, counts={"relevant": 2}))
        '2 of 28 planned pairs'
    """
    planned = stats.meta.get("n_pairs")
    if not isinstance(planned, int) or stats.n_done >= planned:
        return None
    text = f"{stats.n_done} of {planned} planned pairs"
    by_label = stats.meta.get("planned")
    if isinstance(by_label, Mapping) and by_label:
        text += (
            " (" + ", ".join(f"{lab} {stats.counts.get(lab, 0)} of {n}" for lab, n in by_label.items()) + ")"
        )
    return text


# -- formatting --------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    """``value`` as escaped HTML text."""
    return html.escape(str(value), quote=True)


class _Html(str):
    """A table cell that is already HTML (not escaped again)."""


def _num(value: float, spec: str = ".4g") -> str:
    """A float with ``spec`` (``nan`` / ``inf`` spelled out)."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, spec)


def _fixed(value: Any, spec: str = ".4f") -> Any:
    """A measure or correlation with a fixed number of decimals (a cell; other values as they are)."""
    if isinstance(value, float):
        return _Html(_e(_num(value, spec)))
    return value


def _fmt(value: Any) -> str:
    """A short display text of a value from a result (not escaped)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, Mapping):
        text = ", ".join(
            f"{k}: {_fmt(v) if not isinstance(v, Mapping) else '{' + _fmt(v) + '}'}" for k, v in value.items()
        )
        return text if len(text) <= 400 else text[:397] + "..."
    if isinstance(value, list | tuple):
        items = [_fmt(v) for v in value[:_LONG_LIST]]
        more = f", … ({len(value)} in all)" if len(value) > _LONG_LIST else ""
        return "[" + ", ".join(items) + more + "]"
    return str(value)


def _cell(value: Any) -> str:
    return str(value) if isinstance(value, _Html) else _e(_fmt(value))


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], *, cls: str = "") -> str:
    """An HTML table; every cell is escaped (except :class:`_Html` cells)."""
    out = [f'<table class="{_e(cls)}">' if cls else "<table>", "<thead><tr>"]
    out += [f"<th>{_e(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _kv(items: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> str:
    """A two-column key / value table."""
    pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_cell(v)}</td></tr>" for k, v in pairs)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def _code(text: str) -> _Html:
    return _Html(f"<code>{_e(text)}</code>")


# -- the document ------------------------------------------------------------------------------------
@dataclass
class _Doc:
    """The report being written: its sections, figures and notes."""

    sections: list[tuple[str, str, list[str]]] = field(default_factory=list)  # (id, title, parts)
    n_figures: int = 0
    problems: list[str] = field(default_factory=list)
    loaded: dict[str, Any] = field(default_factory=dict)  # every result read, for cross-references

    def section(self, key: str, title: str) -> list[str]:
        parts: list[str] = []
        self.sections.append((key, title, parts))
        return parts

    def problem(self, parts: list[str], message: str) -> None:
        """Note ``message`` among the report's problems and, visibly, in ``parts``."""
        self.problems.append(message)
        parts.append(f'<p class="problem">{_e(message)}</p>')

    def figure(self, parts: list[str], what: str, make: Callable[[], Any]) -> None:
        """Draw ``make()`` into ``parts``; a figure that cannot be drawn becomes a visible note."""
        from mechir_nig.plotting._common import figure_html

        try:
            fig = make()
        except Exception as exc:  # one bad figure must not cost the whole report
            message = f"figure '{what}' could not be drawn: {type(exc).__name__}: {exc}"
            warnings.warn(message, UserWarning, stacklevel=3)
            self.problem(parts, message)
            return
        self.n_figures += 1
        div = figure_html(fig, div_id=f"figure-{self.n_figures}")  # as wide as the page at most
        parts.append(f'<div class="figure" data-figure="{_e(what)}">{div}</div>')


# -- loading -----------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _load_faithfulness(path: Path) -> Any:
    from mechir_nig.experiments.faithfulness import FaithfulnessResult

    return FaithfulnessResult.load(path), _read_json(path)  # the file's extra keys (pairs) for the tables


def _loaders() -> dict[str, Callable[[Path], Any]]:
    from mechir_nig.attribution.stats import CollectionAttribution
    from mechir_nig.experiments.interaction import InteractionResult
    from mechir_nig.experiments.pruning import PruningResult
    from mechir_nig.interventions.attention import AttentionGroups
    from mechir_nig.interventions.patching import PatchingResult
    from mechir_nig.interventions.path_patching import PathPatchingResult

    return {
        "run": _read_json,
        "attribution": CollectionAttribution.load,
        "pruning": PruningResult.load,
        "patching": PatchingResult.load,
        "faithfulness": _load_faithfulness,
        "rerank": _read_json,
        "stability": _read_json,
        "attribution_patching": PatchingResult.load,
        "interaction": InteractionResult.load,
        "attention_groups": AttentionGroups.load,
        "path_patching": PatchingResult.load,
        "path_patching_heads": PathPatchingResult.load,
    }


# -- sections ----------------------------------------------------------------------------------------
def _history(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    history = run.get("history")
    if isinstance(history, list) and history:
        return [h for h in history if isinstance(h, dict)]
    return [{k: v for k, v in run.items() if k not in ("history", "layout")}]


def _run_section(doc: _Doc, run: Mapping[str, Any]) -> None:
    parts = doc.section("run", _TITLES["run"])
    history = _history(run)
    models: dict[Any, tuple[dict[str, Any], list[Any]]] = {}
    collections: dict[Any, tuple[dict[str, Any], list[Any]]] = {}
    for rec in history:
        m, c = rec.get("model"), rec.get("collection")
        if isinstance(m, dict):
            models.setdefault(m.get("fingerprint") or m.get("spec"), (m, []))[1].append(rec.get("command"))
        if isinstance(c, dict):
            collections.setdefault(c.get("spec") or c.get("name"), (c, []))[1].append(rec.get("command"))
    for what, found in (("Model", models), ("Collection", collections)):
        if not found:
            continue
        parts.append(f"<h3>{what}</h3>")
        if len(found) > 1:
            parts.append(
                f'<p class="problem">The commands of this folder used {len(found)} different '
                f"{what.lower()}s; each is listed with its commands.</p>"
            )
        for record, commands in found.values():
            items = dict(record)
            if len(found) > 1:
                items["used by"] = ", ".join(str(c) for c in commands)
            parts.append(_kv(items))
    parts.append("<h3>Commands</h3>")
    rows = []
    for i, rec in enumerate(history):
        argv = rec.get("argv") or []
        line = "mechir-nig " + shlex.join(str(a) for a in argv) if argv else "(Python API)"
        timings = rec.get("timings") or {}
        status = rec.get("status")
        rows.append(
            [
                i + 1,
                rec.get("command") if status in (None, "finished") else f"{rec.get('command')} ({status})",
                _code(line),
                rec.get("started"),
                rec.get("seconds"),
                ", ".join(f"{k} {_fmt(v)} s" for k, v in timings.items()) or None,
                ", ".join(str(o) for o in rec.get("outputs") or []) or None,
            ]
        )
    parts.append(
        _table(
            ["#", "command", "command line", "started", "seconds", "timings", "wrote"], rows, cls="commands"
        )
    )
    for i, rec in enumerate(history):
        settings = rec.get("settings") or {}
        summary = rec.get("summary") or {}
        if not settings and not summary:
            continue
        body = _kv(settings) if settings else ""
        if summary:
            body += "<h4>summary</h4>" + _kv(summary)
        parts.append(
            f"<details><summary>settings of #{i + 1} <code>{_e(rec.get('command'))}</code></summary>"
            f"{body}</details>"
        )
    versions = next((r.get("versions") for r in reversed(history) if r.get("versions")), None)
    if versions:
        parts.append("<h3>Versions</h3>" + _kv(versions))


def _rerank_section(doc: _Doc, study: Mapping[str, Any]) -> None:
    parts = doc.section("rerank", _TITLES["rerank"])
    bm25, reranked = study.get("bm25") or {}, study.get("reranked") or {}
    parts.append(
        _kv(
            [
                ("collection", study.get("collection")),
                ("queries", study.get("queries")),
                ("BM25 depth re-ranked (k)", study.get("k")),
                ("seconds", study.get("seconds")),
            ]
        )
    )
    rows = []
    for m in dict.fromkeys([*bm25, *reranked]):
        b, r = bm25.get(m), reranked.get(m)
        change = r - b if isinstance(b, int | float) and isinstance(r, int | float) else None
        rows.append([m, _fixed(b), _fixed(r), None if change is None else _fixed(change, "+.4f")])
    parts.append(_table(["measure", "BM25", "re-ranked by the model", "change"], rows, cls="numbers"))


def _attribution_section(doc: _Doc, stats: Any) -> None:
    from mechir_nig.attribution.stats import LABELS, top_neuron_set
    from mechir_nig.plotting import (
        group_bars,
        layer_profile_bars,
        neuron_heatmap,
        overlap_bars,
        top_neurons_bar,
    )

    parts = doc.section("attribution", _TITLES["attribution"])
    incomplete = attribution_incomplete(stats)
    if incomplete is not None:
        message = (
            f"The attribution is incomplete: it holds {incomplete} (a run that was stopped); every "
            "figure and table below is of those pairs only. Finish it with mechir-nig attribute --resume."
        )
        doc.problem(parts, message)
    meta = dict(stats.meta)
    meta.pop("planned", None)
    present = [lab for lab in LABELS if stats.counts.get(lab, 0) > 0]
    items: list[tuple[str, Any]] = [(f"{lab} pairs", stats.counts.get(lab, 0)) for lab in LABELS]
    items += [
        ("layers attributed", stats.layers),
        ("model", f"{stats.n_layers} layers x {stats.d_mlp} neurons"),
        ("model name", meta.pop("model_name", None)),
        ("model fingerprint", meta.pop("model", None)),
    ]
    for key in ("collection", "n_steps", "baseline", "method", "side", "max_length", "truncated"):
        if key in meta:
            items.append((key, meta.pop(key)))
    qids = meta.pop("query_ids", None)
    if qids is not None:
        items.append(
            ("queries", f"{len(qids)} ({meta.pop('queries', '')}, split seed {meta.pop('split_seed', '')})")
        )
    meta.pop("layers", None)
    items += [(k, v) for k, v in meta.items()]
    parts.append(_kv(items))
    if not present:
        parts.append('<p class="problem">The attribution holds no pairs: nothing to draw.</p>')
        return
    scheme = "difference" if len(present) == 2 else present[0]
    ranked = top_neuron_set(stats, scheme, k=min(TOP_NEURONS, len(stats.layers) * stats.d_mlp))
    order = sorted((ranked.scores or {}).items(), key=lambda kv: -kv[1])
    means = {lab: stats.scheme_scores(lab) for lab in present}
    head = ["rank", "layer", "neuron", *[f"mean NIG {lab}" for lab in present]]
    if len(present) == 2:
        head.append("difference")
    rows = []
    for rank, ((layer, neuron), _score) in enumerate(order, 1):
        vals = [float(means[lab][layer, neuron]) for lab in present]
        rows.append([rank, layer, neuron, *vals, *([vals[0] - vals[1]] if len(present) == 2 else [])])
    parts.append(f"<h3>Top {len(rows)} neurons by {_e(scheme)} mean NIG</h3>")
    parts.append(
        f'<p class="note">Ranked by the {_e(scheme)} scheme; a pruning study ranks by its own scheme '
        "(its settings' scheme, prune --scheme, default relevant), so its ablated sets can differ from "
        "this list.</p>"
    )
    parts.append(_table(head, rows, cls="numbers"))
    parts.append("<h3>Figures</h3>")
    doc.figure(parts, "neuron heatmap", lambda: neuron_heatmap(stats))
    doc.figure(parts, "top neurons", lambda: top_neurons_bar(stats, k=TOP_NEURONS, scheme=scheme))
    doc.figure(parts, "token groups", lambda: group_bars(stats))
    schemes = [*present, *(["difference"] if len(present) == 2 else [])]

    def sets() -> dict[str, Any]:
        return {s: top_neuron_set(stats, s, fraction=SET_FRACTION) for s in schemes}

    pct = f"{SET_FRACTION:.0%}"
    doc.figure(
        parts,
        "layer profile of the top sets",
        lambda: layer_profile_bars(sets(), title=f"Top {pct} neurons per layer, by scheme"),
    )
    label_sets = sets()
    pruning = doc.loaded.get("pruning")
    same_model = pruning is not None and (
        not stats.meta.get("model_name")
        or str(pruning.settings.get("model", "")) in ("", str(stats.meta.get("model_name")))
    )
    overlap: dict[str, str] = {}
    if len(present) == 2:
        from mechir_nig.sets import overlap_report

        rep = overlap_report(label_sets[LABELS[0]], label_sets[LABELS[1]])
        text = (
            f"{rep['intersection']} shared (chance {rep['expected_intersection']:.2g}, hypergeometric "
            f"p = {_num(rep['p_value'], '.3g')})"
        )
        overlap = {
            LABELS[0]: f"{text} with the {LABELS[1]} set",
            LABELS[1]: f"{text} with the {LABELS[0]} set",
        }
    rows = [
        [
            name,
            len(comp),
            _profile(comp),
            _active_text(pruning.active_on_baseline(comp) if same_model and pruning is not None else None),
            overlap.get(name, "–"),
        ]
        for name, comp in label_sets.items()
    ]
    parts.append(f"<h3>Top {pct} sets by scheme</h3>")
    parts.append(
        _table(
            ["scheme", "neurons", "layer profile", "NIG baseline", "overlap vs chance"], rows, cls="numbers"
        )
    )
    if len(present) == 2:
        parts.append(
            f"<h3>Overlap of the top {pct} relevant and non-relevant neurons vs chance (exact hypergeometric "
            "p-value over the attributed layers)</h3>"
        )
        keys = ["size_a", "size_b", "intersection", "expected_intersection", "jaccard", "lift", "p_value"]
        parts.append(_table(keys, [[rep[k] for k in keys]], cls="numbers"))
        doc.figure(
            parts,
            "overlap of the label sets",
            lambda: _narrow(
                overlap_bars(
                    {lab: s for lab, s in sets().items() if lab in LABELS},
                    title=f"Overlap of the top {pct} relevant and non-relevant neurons vs chance",
                )
            ),
        )


def _narrow(fig: Any) -> Any:
    """A bar chart of a few categories at a width that suits them (not one bar across the page)."""
    n = len(fig.data[0].x) if fig.data and fig.data[0].x is not None else 1
    return fig.update_layout(width=min(1200, 620 + 160 * n), bargap=0.45)


def _profile(components: Any) -> str:
    """A set's members per layer, e.g. ``"L0 41, L1 5"`` (layers without members left out)."""
    return ", ".join(f"L{i} {n}" for i, n in enumerate(components.layer_profile()) if n) or "–"


def _active_text(counted: tuple[int, int] | None) -> str:
    """``"k of n active on the baseline"``, or why it is not known."""
    if counted is None:
        return "not measured (a pruning study of this model measures it: prune)"
    return f"{counted[0]} of {counted[1]} active on the baseline"


def _scheme_text(settings: Mapping[str, Any]) -> str:
    """The ranking a pruning study selected its sets by, in words."""
    scheme = settings.get("scheme")
    if scheme in (None, "tensor"):
        return "a score tensor passed in (no scheme recorded)"
    source = settings.get("ranking_collection") or settings.get("ranking_source")
    return f"the {scheme} scheme" + (f" of {source}" if source else "")


def _pruning_sets(parts: list[str], result: Any) -> None:
    """The sets a pruning study ablated: the scheme they were ranked by, their size and layer profile, and
    how many of their neurons are active on the NIG baseline input (measured once by the study)."""
    from mechir_nig.sets import ComponentSet

    if not result.sets:
        return
    act = result.baseline_activity or {}
    rows = []
    for key, data in result.sets.items():
        cond, frac, seed = key.split("|")
        comp = ComponentSet.from_json(data)
        first = ", ".join(f"L{layer}N{n}" for layer, n in list(comp)[:5])
        rows.append(
            [
                cond,
                frac,
                seed if cond == "random" else "–",
                len(comp),
                _profile(comp),
                _active_text(result.active_on_baseline(data)),
                first + (" …" if len(comp) > 5 else ""),
            ]
        )
    measured = ""
    if act.get("baseline_mean"):
        measured = (
            f" Active on the baseline: |mean activation| > {act['threshold']:g} on the [PAD] baseline inputs of "
            f"{act['n_inputs']} relevant pairs of the selection queries."
        )
    parts.append(f"<h3>Ablated sets, ranked by {_e(_scheme_text(result.settings))}</h3>")
    parts.append(
        f'<p class="note">nig_top: the highest scores of that ranking; random: sets with nig_top\'s per-layer '
        f"counts; bottom: the smallest |score|; negative: the most negative scores.{_e(measured)}</p>"
    )
    head = ["set", "fraction", "seed", "neurons", "layer profile", "NIG baseline", "first neurons"]
    parts.append(_table(head, rows, cls="numbers"))


def _pruning_section(doc: _Doc, result: Any) -> None:
    from mechir_nig.plotting import layer_profile_bars, pruning_curves
    from mechir_nig.sets import ComponentSet

    parts = doc.section("pruning", _TITLES["pruning"])
    settings = dict(result.settings)
    if settings.get("attribution_incomplete"):
        message = (
            f"The pruning study selected its neurons from an incomplete attribution "
            f"({settings['attribution_incomplete']}; prune --allow-incomplete)."
        )
        doc.problem(parts, message)
    items: list[tuple[str, Any]] = [
        ("selection queries", len(result.select_queries)),
        ("evaluation queries", len(result.eval_queries)),
        ("measures", result.measures),
        ("evaluations", len(result.runs)),
    ]
    items += list(settings.items())
    if result.timings:
        items.append(("timings (s)", {k: round(float(v), 2) for k, v in result.timings.items()}))
    if result.seconds:
        secs = sorted(result.seconds)
        items.append(
            (
                "seconds per evaluation",
                f"min {secs[0]:.2f}, median {secs[len(secs) // 2]:.2f}, max {secs[-1]:.2f} ({len(secs)} evaluations)",
            )
        )
    parts.append(_kv(items))
    _pruning_sets(parts, result)
    head = ["condition", "mode", "fraction", "neurons", "seeds"]
    for m in result.measures:
        head += [m, f"drop {m}"]
    rows = []
    try:
        table = result.table()
    except StopIteration:  # no unpruned run to compare with
        table = []
        parts.append('<p class="problem">The study has no unpruned run: no table of drops.</p>')
    for r in table:
        row: list[Any] = [r["condition"], r["mode"], r["fraction"], r["n_neurons"], r["n_seeds"]]
        for m in result.measures:
            spread = f" ± {_num(r[f'{m} std'], '.4f')}" if r["n_seeds"] > 1 else ""
            row += [_Html(_e(f"{_num(r[m], '.4f')}{spread}")), _Html(_e(_num(r[f"{m} drop"], "+.4f")))]
        rows.append(row)
    if rows:
        parts.append("<h3>Effectiveness per condition (mean ± std over seeds; drop from unpruned)</h3>")
        parts.append(_table(head, rows, cls="numbers"))
    _pruning_statistics(parts, result)
    parts.append("<h3>Figures</h3>")
    for m in result.measures:
        doc.figure(parts, f"pruning curves {m}", partial(pruning_curves, result, measure=m))
    fractions = sorted({float(k.split("|")[1]) for k in result.sets if k.count("|") == 2})
    if fractions:
        top = fractions[-1]

        def profile() -> Any:
            chosen: dict[str, Any] = {}
            for key, data in result.sets.items():
                cond, frac, seed = key.split("|")
                if float(frac) == top and cond not in chosen:
                    chosen[cond if int(seed) == 0 or cond != "random" else f"{cond} seed {seed}"] = (
                        ComponentSet.from_json(data)
                    )
            return layer_profile_bars(chosen, title=f"Ablated neurons per layer at fraction {top:g}")

        doc.figure(parts, "layer profile of the ablated sets", profile)


def _ci_cell(bounds: Sequence[float]) -> _Html:
    return _Html(_e(f"[{_num(bounds[0], '+.4f')}, {_num(bounds[1], '+.4f')}]"))


def _pruning_statistics(parts: list[str], result: Any) -> None:
    """The statistics table of a pruning study (``PruningResult.statistics``), its ceiling warnings and
    the documents that moved most for one query."""
    rows = []
    for r in result.statistics():
        vs = r["vs_random"] or {}
        rows.append(
            [
                r["measure"],
                r["condition"],
                r["mode"],
                r["fraction"],
                r["n_neurons"],
                _fixed(r["drop"], "+.4f"),
                _ci_cell(r["drop_ci"]),
                _fixed(r["p_holm"], ".3g"),
                _fixed(r["d_z"], "+.2f"),
                None if r["changed_queries"] is None else f"{r['changed_queries']:g} of {r['n_queries']}",
                _fixed(vs["difference"], "+.4f") if vs else None,
                _ci_cell(vs["ci"]) if vs else None,
                _fixed(vs["p_holm"], ".3g") if vs else None,
                f"{vs['rank']} of {vs['n_random'] + 1}" if vs else None,
            ]
        )
    if rows:
        parts.append(
            "<h3>Statistics over the held-out queries (drop from unpruned; vs random: the random sets' "
            "mean minus the condition; 95 % percentile bootstrap intervals; sign-flip p-values, "
            "Holm-adjusted across fractions and modes)</h3>"
        )
        head = ["measure", "condition", "mode", "fraction", "neurons", "drop", "95 % CI", "p (Holm)", "d_z"]
        head += ["top-10 changed", "vs random", "95 % CI", "p (Holm)", "rank"]
        parts.append(_table(head, rows, cls="numbers"))
    for m in result.measures:
        warning = result.ceiling(m)["warning"]
        if warning:
            parts.append(f'<p class="problem">Ceiling: {_e(warning)}.</p>')
    moved = [
        (i, r) for i, r in enumerate(result.runs) if r["condition"] == "nig_top" and i < len(result.moved)
    ]
    if moved:
        i, run = max(moved, key=lambda ir: (ir[1]["fraction"], ir[1]["mode"] == "baseline"))
        docs = result.moved[i].get("docs") or {}
        if docs:
            query = max(docs, key=lambda q: sum(abs(e[1] - e[2]) for e in docs[q]["up"] + docs[q]["down"]))
            cells = [
                [direction, e[0], e[1], e[2]] for direction in ("up", "down") for e in docs[query][direction]
            ]
            parts.append(
                f"<h3>Documents that moved most for query {_e(query)} (nig_top, {_e(run['mode'])}, fraction "
                f"{_e(run['fraction'])}; {len(result.moved[i].get('changed', []))} of "
                f"{len(result.eval_queries)} queries changed their top {result.moved[i].get('depth')})</h3>"
            )
            parts.append(_table(["moved", "doc_id", "rank unpruned", "rank pruned"], cells, cls="numbers"))


def _patching_section(doc: _Doc, result: Any, key: str = "patching") -> None:
    """A ``PatchingResult``'s section (``key``: ``patching``; the circuits' attribution and path patching
    results reuse it)."""
    from mechir_nig.findings import patching_notes
    from mechir_nig.interventions.patching import SITES
    from mechir_nig.plotting import patching_heatmap

    parts = doc.section(key, _TITLES[key])
    what = key.replace("_", " ")  # the figures' names: "patching resid_pre pair 0", "path patching heads"
    meta = dict(result.meta)
    n = len(result)
    queries = meta.pop("queries", None) or []
    pairs = meta.pop("pairs", None) or []
    perturbed_docs = meta.pop("perturbed_docs", None) or []
    items: list[tuple[str, Any]] = [
        ("pairs", n),
        ("sites", result.sites),
        ("layers", result.layers),
        ("direction", result.direction),
        ("metric", result.metric),
    ]
    items += list(meta.items())
    parts.append(_kv(items))
    delta = (result.corrupted_scores - result.clean_scores).tolist()
    rows = []
    for i in range(n):
        ids = pairs[i] if i < len(pairs) and isinstance(pairs[i], dict) else {}
        changed = []
        if result.changed is not None and result.clean_tokens and result.corrupted_tokens:
            for p in result.changed[i].nonzero().flatten().tolist():
                c, k = result.clean_tokens[i][p], result.corrupted_tokens[i][p]
                changed.append(f"{c or '∅'}→{k or '∅'}")
        rows.append(
            [
                i,
                ids.get("query_id"),
                ids.get("doc_id"),
                queries[i] if i < len(queries) else None,
                _fixed(float(result.clean_scores[i])),
                _fixed(float(result.corrupted_scores[i])),
                _fixed(delta[i], "+.4f"),
                " ".join(changed) or None,
            ]
        )
    parts.append("<h3>Pairs</h3>")
    parts.append(
        _table(
            [
                "pair",
                "query_id",
                "doc_id",
                "query",
                "clean score",
                "perturbed score",
                "change",
                "changed tokens",
            ],
            rows,
            cls="numbers",
        )
    )
    if perturbed_docs:
        docs = "".join(f"<li>{_e(d)}</li>" for d in perturbed_docs)
        parts.append(f"<details><summary>perturbed documents</summary><ol start=0>{docs}</ol></details>")
    summary_rows = site_summaries(result)
    if summary_rows:
        raw_note = " (Δ: the mean raw score change patched − base)" if result.metric == "recovery" else ""
        parts.append(f"<h3>Summary per site ({_e(result.metric)}, mean over pairs{_e(raw_note)})</h3>")
        parts.append(_table(["site", "what", "values"], summary_rows))
        for note in patching_notes(result):
            parts.append(f'<p class="note">{_e(note)}</p>')
    parts.append("<h3>Figures</h3>")
    for site in result.sites:
        kind = SITES.get(site, ("", ""))[1]
        if kind in ("pos", "head_pos"):
            shown = min(n, MAX_PAIR_FIGURES)
            zmax = _shared_range(result, site, shown)
            if zmax is not None:
                parts.append(
                    f'<p class="note">{_e(site)}: one colour scale for every pair, ±{_e(_num(zmax, ".3g"))} '
                    "(the largest |value| of the pairs without a tiny perturbation; others saturate).</p>"
                )
            for i in range(shown):
                doc.figure(
                    parts,
                    f"{what} {site} pair {i}",
                    partial(patching_heatmap, result, site, pair=i, zmax=zmax),
                )
            if n > MAX_PAIR_FIGURES:
                parts.append(
                    f'<p class="note">{_e(site)}: figures of the first {MAX_PAIR_FIGURES} of {n} pairs.</p>'
                )
        else:
            doc.figure(parts, f"{what} {site}", partial(patching_heatmap, result, site, pair=None))


def _findings_html(sentences: Sequence[tuple[str, str]], sections: set[str]) -> str:
    """The Findings section: one list item per sentence, linking to its result's section."""
    if not sentences:
        return ""
    items = []
    for key, sentence in sentences:
        title = COMPARE_TITLE if key == "compare" else _TITLES.get(key, key)
        link = f' <a href="#{_e(key)}">({_e(title)})</a>' if key in sections else ""
        cls = ' class="caveat"' if sentence.startswith("Caveat") else ""
        items.append(f"<li{cls}>{_e(sentence)}{link}</li>")
    return (
        '<section id="findings"><h2>Findings</h2><ul class="findings">' + "".join(items) + "</ul></section>"
    )


def _shared_range(result: Any, site: str, n_pairs: int) -> float | None:
    """The largest finite ``|value|`` of ``site`` over the first ``n_pairs`` pairs that summaries keep
    (``PatchingResult.summary_pairs``): one colour range for the figures of its pairs; None when 0."""

    return _largest_abs(result[site][:n_pairs].double()[result.summary_pairs()[:n_pairs]])


def _largest_abs(values: Any) -> float | None:
    """The largest finite ``|value|`` of a tensor (a shared colour range), None when there is none or it is 0."""
    import torch

    v = values[torch.isfinite(values)]
    top = float(v.abs().max()) if v.numel() else 0.0
    return top if top > 0 else None


def site_summaries(result: Any, *, include_small: bool = False) -> list[tuple[str, str, str]]:
    """``(site, what, values)`` of each site of a ``PatchingResult`` (the report's table and the lines
    ``mechir-nig patch`` prints): the mean effect at the changed positions per layer, or the largest mean
    effects (heads, neurons, set members). With the ``recovery`` metric each value is followed by the
    mean raw score difference ``patched − base`` (``Δ``). Pairs whose perturbation is tiny
    (``PatchingResult.small_change``) are left out of the means unless ``include_small`` (when every
    pair is tiny, all are kept); ``findings.patching_notes`` says how many."""
    import torch

    from mechir_nig.interventions.patching import SITES

    keep = result.summary_pairs(include_small)
    with_raw = result.metric == "recovery"
    out = []
    for site in result.sites:
        v = torch.nan_to_num(result[site].double())[keep]
        raw = result.raw(site).double()[keep] if with_raw else None
        kind = SITES.get(site, ("", ""))[1]
        if site.endswith("_set"):
            mean = v.mean(0)
            raw_mean = raw.mean(0) if raw is not None else None
            top = mean.abs().topk(min(5, mean.numel())).indices.tolist()
            letter = {"neuron_set": "N", "head_set": "H"}.get(site, "P")
            cells = ", ".join(
                f"L{result.members[j][0]}{letter}{result.members[j][1]} {float(mean[j]):+.3f}"
                + (f" (Δ {float(raw_mean[j]):+.4f})" if raw_mean is not None else "")
                for j in top
            )
            out.append((site, "largest mean effect (members)", cells))
        elif kind in ("pos", "head_pos") and result.changed is not None:
            changed = result.changed[keep].to(v.dtype)
            if kind == "pos":  # [batch, layer, pos]
                per_layer = (v * changed[:, None, :]).sum(-1).mean(0).tolist()
                raw_layer = (raw * changed[:, None, :]).sum(-1).mean(0).tolist() if raw is not None else None
                cells = " ".join(
                    f"L{lyr} {x:+.3f}" + (f" (Δ {raw_layer[i]:+.4f})" if raw_layer is not None else "")
                    for i, (lyr, x) in enumerate(zip(result.layers, per_layer))
                )
                out.append((site, "at the changed positions, per layer", cells))
            else:  # [batch, layer, head, pos]
                mean = (v * changed[:, None, None, :]).sum(-1).mean(0)
                raw_mean = (raw * changed[:, None, None, :]).sum(-1).mean(0) if raw is not None else None
                out.append(
                    (
                        site,
                        "largest mean at the changed positions",
                        _top_cells(mean, result.layers, "H", raw=raw_mean),
                    )
                )
        elif v.dim() == 3:  # heads / neurons: [batch, layer, index]
            letter = "H" if kind == "head" else "N"
            raw_mean = raw.mean(0) if raw is not None else None
            out.append(
                (site, "largest mean over pairs", _top_cells(v.mean(0), result.layers, letter, raw=raw_mean))
            )
    return out


def _top_cells(mean: Any, layers: Sequence[int], letter: str, k: int = 5, raw: Any = None) -> str:
    """``L{layer}{letter}{index} value`` of the ``k`` largest ``|mean|`` of a ``[layer, index]`` table
    (with ``(Δ raw)`` from the table ``raw`` of the same shape)."""
    width = mean.shape[-1]
    flat = mean.flatten()
    flat_raw = raw.flatten() if raw is not None else None
    top = flat.abs().topk(min(k, flat.numel())).indices.tolist()
    return ", ".join(
        f"L{layers[j // width]}{letter}{j % width} {float(flat[j]):+.3f}"
        + (f" (Δ {float(flat_raw[j]):+.4f})" if flat_raw is not None else "")
        for j in top
    )


def _faithfulness_section(doc: _Doc, loaded: Any) -> None:
    from mechir_nig.plotting import faithfulness_bars, faithfulness_curves

    result, raw = loaded
    parts = doc.section("faithfulness", _TITLES["faithfulness"])
    items: list[tuple[str, Any]] = [("neurons per pair (k)", result.k)]
    pairs = raw.get("pairs")
    if pairs:
        items.append(("pairs", ", ".join(f"{p.get('query_id')}/{p.get('doc_id')}" for p in pairs)))
    items += list(result.settings.items())
    parts.append(_kv(items))
    predictors = list(dict.fromkeys(p for m in result.spearman for p in result.spearman[m]))
    rows = [
        [mode, *[_fixed(result.spearman[mode].get(p), "+.3f") for p in predictors]]
        for mode in result.spearman
    ]
    parts.append("<h3>Spearman ρ of the single-neuron score drops with each predictor (mean over pairs)</h3>")
    parts.append(_table(["ablation mode", *predictors], rows, cls="numbers"))
    stats = result.statistics()
    ci_rows = [
        [mode, p, _fixed(c["mean"], "+.3f"), _ci_cell(c["ci"]), _fixed(c["p"], ".3g"), c["n"]]
        for mode, st in stats.items()
        for p, c in st["correlations"].items()
    ]
    if ci_rows:
        parts.append("<h3>Mean Spearman ρ with 95 % bootstrap intervals over pairs (p: mean = 0)</h3>")
        parts.append(
            _table(["ablation mode", "predictor", "mean ρ", "95 % CI", "p", "pairs"], ci_rows, cls="numbers")
        )
    parts.append("<h3>Figures</h3>")
    if result.curve:
        doc.figure(parts, "faithfulness curves", lambda: faithfulness_curves(result))
    if result.spearman:
        doc.figure(parts, "faithfulness correlations", lambda: _narrow(faithfulness_bars(result)))


def _stability_section(doc: _Doc, study: Mapping[str, Any]) -> None:
    from mechir_nig.plotting import overlap_bars

    parts = doc.section("stability", _TITLES["stability"])
    overlap = study.get("overlap") or {}
    parts.append(
        _kv(
            [
                ("top fraction", study.get("fraction")),
                ("seed", study.get("seed")),
                ("NIG settings", study.get("settings")),
            ]
        )
    )
    halves = study.get("halves") or []
    if halves:
        head = list(dict.fromkeys(k for h in halves for k in h))
        rows = [[i, *[h.get(k) for k in head]] for i, h in enumerate(halves)]
        parts.append(_table(["half", *head], rows, cls="numbers"))
    if overlap:
        keys = [
            "size_a",
            "size_b",
            "intersection",
            "expected_intersection",
            "jaccard",
            "expected_jaccard",
            "lift",
            "p_value",
            "pool_size",
        ]
        parts.append("<h3>Overlap of the two halves' top sets</h3>")
        parts.append(_table(keys, [[overlap.get(k) for k in keys]], cls="numbers"))
    parts.append("<h3>Figures</h3>")
    if overlap:
        doc.figure(
            parts,
            "stability overlap",
            lambda: _narrow(
                overlap_bars({"half 0 vs half 1": overlap}, title="Top neurons of two query halves vs chance")
            ),
        )
    profiles = study.get("layer_profiles")
    if profiles:
        doc.figure(parts, "stability layer profiles", lambda: _profile_figure(profiles))


def _profile_figure(profiles: Sequence[Sequence[int]]) -> Any:
    """Members per layer of the halves' top sets (the sets themselves are not stored, their profiles are)."""
    from mechir_nig.plotting._common import layer_bars

    series = [(f"half {i}", f"half {i} ({sum(counts)})", counts) for i, counts in enumerate(profiles)]
    return layer_bars(series, unit="neurons", title="Top neurons per layer of each query half")


@dataclass
class _Provenance:
    """Which command, model and collection made each result file (from ``run.json``'s history)."""

    records: dict[str, tuple[int, Mapping[str, Any]]]
    mixed: str | None

    def line(self, name: str) -> str:
        if name not in self.records:
            return f'<p class="note">{_e(name)}: not recorded in run.json (its model and collection are unknown).</p>'
        i, rec = self.records[name]
        text = (
            f"{name}: made by {rec.get('command')} (command #{i + 1}) with model {_who(rec.get('model'))} "
            f"on collection {_who(rec.get('collection'))}."
        )
        return f'<p class="{"problem" if self.mixed else "note"}">{_e(text)}</p>'


def _who(record: Any) -> str:
    if not isinstance(record, Mapping):
        return "(unknown)"
    name = record.get("spec") or record.get("name") or "(unknown)"
    fp = record.get("fingerprint")
    return f"{name} (fingerprint {str(fp)[:12]})" if fp else str(name)


def _provenance(run: Mapping[str, Any], names: Sequence[str]) -> _Provenance:
    """The last command of ``run``'s history that wrote each of ``names``; a note when they differ in
    model or collection."""
    records: dict[str, tuple[int, Mapping[str, Any]]] = {}
    for i, rec in enumerate(_history(run) if run else []):
        for name in rec.get("outputs") or []:
            if name in names:
                records[name] = (i, rec)
    models: dict[Any, str] = {}
    collections: dict[Any, str] = {}
    for _i, made_by in records.values():
        m, c = made_by.get("model"), made_by.get("collection")
        if isinstance(m, Mapping):
            models[m.get("fingerprint") or m.get("spec")] = _who(m)
        if isinstance(c, Mapping):
            collections[c.get("spec") or c.get("name")] = _who(c)
    mixed = []
    if len(models) > 1:
        mixed.append(f"{len(models)} models ({'; '.join(models.values())})")
    if len(collections) > 1:
        mixed.append(f"{len(collections)} collections ({'; '.join(collections.values())})")
    note = None
    if mixed:
        note = (
            f"The results in this folder were computed with {' and '.join(mixed)}: they are not one study; "
            "each section names the model and collection of its result."
        )
    return _Provenance(records, note)


# -- circuits (issue 17): attribution patching, interaction blocking, attention by group, path patching ----
def _attribution_patching_section(doc: _Doc, result: Any) -> None:
    """Attribution-patching estimates drawn as a patching result, then the exact verification."""
    _patching_section(doc, result, "attribution_patching")
    parts = doc.sections[-1][2]
    v = (result.meta.get("attribution") or {}).get("verify")
    if not v:
        parts.append('<p class="note">No estimate was verified exactly (verify_top was not set).</p>')
        return
    rho = "undefined" if v["spearman"] is None else _num(v["spearman"], "+.3f")
    parts.append(
        f"<h3>Verification: the {_e(v['k'])} largest estimates re-run exactly</h3>"
        f"<p>Spearman ρ {_e(rho)}; max |estimate − exact| {_e(_num(v['max_abs_error'], '.3g'))}, mean "
        f"{_e(_num(v['mean_abs_error'], '.3g'))}.</p>"
    )
    rows = [
        [" ".join(map(str, idx)), _fixed(est, "+.4f"), _fixed(ex, "+.4f")]
        for idx, est, ex in zip(v["index"], v["estimate"], v["exact"], strict=False)
    ]
    parts.append(_table(["index (site, pair, layer, ...)", "estimate", "exact"], rows, cls="numbers"))


def _interaction_section(doc: _Doc, result: Any) -> None:
    """The interaction study: settings, per-block statistics (Holm across the blocks) and the heatmap."""
    from mechir_nig.plotting import interaction_heatmap

    what = "blocking" if result.weight == 0 else f"re-weighting by {result.weight:g}"
    parts = doc.section("interaction", f"Attention interactions ({what})")
    parts.append(
        _kv(
            [
                ("interactions", result.labels),
                ("attention", result.action),
                ("layers", result.layers),
                ("evaluation queries", len(result.eval_queries)),
                *result.settings.items(),
            ]
        )
    )
    for m in result.measures:
        rows = [
            [
                r["interaction"],
                r["layer"],
                _fixed(r["value"]),
                _fixed(r["drop"], "+.4f"),
                _ci_cell(r["drop_ci"]),
                _num(r["p"], ".3g"),
                _num(r["p_holm"], ".3g"),
                r["changed_queries"],
            ]
            for r in result.statistics(m)
        ]
        base = "unmodified" if result.weight else "unblocked"
        parts.append(f"<h3>{_e(m)} ({base} {_e(_num(result.runs[0][m], '.4f'))})</h3>")
        parts.append(
            _table(
                ["interaction", "layer", m, "drop", "95 % CI", "p", "p (Holm)", "queries changed"],
                rows,
                cls="numbers",
            )
        )
        doc.figure(parts, f"interaction {m}", partial(interaction_heatmap, result, m))


def _attention_groups_section(doc: _Doc, result: Any) -> None:
    """Attention by group: layer x head shares, the top heads, and one pair's pattern per head."""
    from mechir_nig.plotting import attention_group_heatmap, attention_pattern_view

    parts = doc.section("attention_groups", _TITLES["attention_groups"])
    parts.append(_kv([("pairs", len(result)), ("layers", result.layers), *result.meta.items()]))
    rows = sorted(
        result.table("query"), key=lambda r: -r["doc_match"] if r["doc_match"] == r["doc_match"] else 0
    )
    if rows and rows[0]["doc_match"] == rows[0]["doc_match"]:
        parts.append("<h3>Heads whose query tokens attend most to matching document tokens</h3>")
        parts.append(
            _table(
                ["layer", "head", *result.to_categories],
                [
                    [r["layer"], r["head"], *(_fixed(r[c], ".3f") for c in result.to_categories)]
                    for r in rows[:10]
                ],
                cls="numbers",
            )
        )
    for f in result.from_groups:
        if bool(result.mean()[:, :, result.from_groups.index(f)].isfinite().any()):
            doc.figure(parts, f"attention from {f}", partial(attention_group_heatmap, result, f))
    if result.pattern is not None:
        parts.append(
            '<p class="note">One pair\'s attention pattern per head (the slider picks layer and head; rows attend '
            "to columns).</p>"
        )
        doc.figure(parts, "attention pattern", partial(attention_pattern_view, result))


def _path_patching_heads_section(doc: _Doc, result: Any) -> None:
    """Earlier heads path-patched into later heads' inputs: how the receivers were chosen, the pairs, the
    largest senders per receiver, and one figure per receiver head (its q, k, v inputs side by side), every
    figure on one colour scale."""
    import torch

    from mechir_nig.findings import patching_notes
    from mechir_nig.plotting import path_patching_heatmaps

    parts = doc.section("path_patching_heads", _TITLES["path_patching_heads"])
    first = result[result.receivers[0]]
    chosen = result.meta.get("receivers_chosen") or {}
    heads = [f"L{lyr}H{h}" for lyr, h in chosen.get("heads", [])]
    how = (
        "the heads of layer >= 1 with the largest |mean| direct-path effect on the score"
        if chosen.get("by") == "score_direct"
        else "given (--receivers)"
    )
    items: list[tuple[str, Any]] = [
        ("pairs", len(result)),
        ("receiver heads", heads),
        ("chosen as", how),
    ]
    if chosen.get("direct_effect"):
        items.append(
            (
                f"their direct effect ({chosen.get('metric', first.metric)})",
                ", ".join(f"{x:+.3f}" for x in chosen["direct_effect"]),
            )
        )
    items += [
        ("receivers (q, k, v: a head's query, key, value input)", result.receivers),
        ("senders", "every head of the layers before the receiver's"),
        ("direction", first.direction),
        ("metric", first.metric),
    ]
    items += [(k, v) for k, v in result.meta.items() if k in ("perturbation", "model", "collection")]
    parts.append(_kv(items))
    raw_note = " (Δ: the mean raw score change patched − base)" if first.metric == "recovery" else ""
    parts.append(f"<h3>Largest senders per receiver ({_e(first.metric)}, mean over pairs{_e(raw_note)})</h3>")
    rows = [[key, *row[1:]] for key in result.receivers for row in site_summaries(result[key])]
    parts.append(_table(["receiver", "what", "values"], rows))
    for note in patching_notes(first):
        parts.append(f'<p class="note">{_e(note)}</p>')
    groups: dict[str, list[str]] = dict(chosen.get("inputs") or {})  # under GQA: the group's k/v head
    if not groups:  # a file written before "inputs" was recorded: "q:L3H1" -> the receiver head "L3H1"
        for key in result.receivers:
            groups.setdefault(key.split(":", 1)[1], []).append(key)
    zmax = _largest_abs(
        torch.cat([torch.nanmean(result[k]["heads"].double(), 0).flatten() for k in result.receivers])
    )
    if zmax is not None:
        parts.append(
            f'<p class="note">One colour scale for every receiver, ±{_e(_num(zmax, ".3g"))} (the largest '
            "|mean over pairs|).</p>"
        )
    for head, keys in groups.items():
        doc.figure(
            parts,
            f"path patching into {head}",
            partial(path_patching_heatmaps, result, "heads", receivers=keys, pair=None, zmax=zmax),
        )


# -- the cross-collection study (compare.json, ``mechir-nig compare``) ------------------------------------
COMPARE_TITLE = "Collections compared"


def _compare_section(doc: _Doc, cmp: Any) -> None:
    """The "Collections compared" section of ``compare.json`` (``experiments.compare``): its sets,
    overlaps with chance, core / OOD neurons, transfer pruning and the study's three figures."""
    from mechir_nig.plotting import collection_overlap_bars, scheme_overlap_curves, top_layer_bars

    parts = doc.section("compare", COMPARE_TITLE)
    parts.append(
        _kv(
            [
                ("collections", cmp.collections),
                ("in-domain", cmp.in_domain),
                ("schemes", cmp.schemes),
                ("fractions", cmp.fractions),
                ("attributions", cmp.attributions),
                ("settings", cmp.settings),
            ]
        )
    )
    keys = ["name_a", "name_b", "fraction", "size_a", "size_b", "intersection"]
    keys += ["expected_intersection", "jaccard", "expected_jaccard", "p_value", "pool_size"]
    parts.append("<h3>Overlap of every two collections' sets vs chance</h3>")
    parts.append(_table(keys, [[r.get(k) for k in keys] for r in cmp.overlaps], cls="numbers"))
    if cmp.shared:
        keys = ["kind", "scheme", "fraction", "collections", "size", "expected", "p_value"]
        parts.append("<h3>Core neurons (every collection) and OOD neurons (not the in-domain one)</h3>")
        parts.append(_table(keys, [[r.get(k) for k in keys] for r in cmp.shared], cls="numbers"))
    if cmp.transfer:
        head = ["evaluated on", "set from", "mode", "neurons", "queries", "unpruned", "drop", "95 % CI"]
        head += ["p (Holm)", "vs own set", "95 % CI", "p (Holm)", "vs random", "95 % CI", "p (Holm)"]
        rows = []
        for r in cmp.transfer:
            row: list[Any] = [r["target"], r["source"], r["mode"], r["n_neurons"], r["n_queries"]]
            row += [_fixed(r["unpruned"]), _fixed(r["drop"], "+.4f"), _ci_cell(r["drop_ci"]), r["p_holm"]]
            for fam in ("vs_own", "vs_random"):
                c = r[fam]
                row += (
                    ["", "", ""]
                    if c is None
                    else [_fixed(c["difference"], "+.4f"), _ci_cell(c["ci"]), c["p_holm"]]
                )
            rows.append(row)
        parts.append(
            f"<h3>Transfer pruning ({_e(cmp.transfer[0]['measure'])}; drop = unpruned − pruned; vs own set = "
            "transfer − own set; vs random = random sets − this set)</h3>"
        )
        parts.append(_table(head, rows, cls="numbers"))
    parts.append("<h3>Figures</h3>")
    if cmp.scheme_overlaps:
        doc.figure(parts, "intersections between schemes", partial(scheme_overlap_curves, cmp))
    doc.figure(parts, "shared neurons vs chance", partial(collection_overlap_bars, cmp))
    doc.figure(parts, "layer distribution of the top neurons", partial(top_layer_bars, cmp))


def _load_compare(folder: Path, doc: _Doc) -> Any:
    """``folder/compare.json`` when present (None otherwise; unreadable: noted among the problems)."""
    from mechir_nig.experiments.compare import COMPARE_NAME, CollectionComparison

    path = folder / COMPARE_NAME
    if not path.is_file():
        return None
    try:
        return CollectionComparison.load(path)
    except Exception as exc:
        message = f"{path.name} could not be read: {type(exc).__name__}: {exc}"
        doc.problems.append(message)
        warnings.warn(message, UserWarning, stacklevel=3)
        return None


_SECTIONS: dict[str, Callable[[_Doc, Any], None]] = {
    "run": _run_section,
    "rerank": _rerank_section,
    "attribution": _attribution_section,
    "pruning": _pruning_section,
    "patching": _patching_section,
    "faithfulness": _faithfulness_section,
    "stability": _stability_section,
    "attribution_patching": _attribution_patching_section,
    "interaction": _interaction_section,
    "attention_groups": _attention_groups_section,
    "path_patching": partial(_patching_section, key="path_patching"),
    "path_patching_heads": _path_patching_heads_section,
}

_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;margin:0;
 color:#222;background:#f6f7f9;line-height:1.45}
header{background:#1f3a5f;color:#fff;padding:18px 32px}
header h1{margin:0 0 4px 0;font-size:1.6em}
header p{margin:2px 0;opacity:.9}
nav{background:#fff;border-bottom:1px solid #dde;padding:8px 32px;position:sticky;top:0;z-index:10}
nav a{margin-right:18px;color:#1f3a5f;text-decoration:none;font-weight:600}
main{max-width:1500px;margin:0 auto;padding:8px 32px 40px}
section{background:#fff;border:1px solid #e2e4e8;border-radius:8px;margin:18px 0;padding:6px 22px 18px}
h2{border-bottom:2px solid #1f3a5f;padding-bottom:4px}
h3{margin:18px 0 8px 0;font-size:1.08em}
h4{margin:10px 0 4px 0}
table{border-collapse:collapse;margin:6px 0 10px 0;font-size:.9em;display:block;max-width:100%;overflow-x:auto}
th,td{border:1px solid #dde;padding:3px 8px;text-align:left;vertical-align:top}
thead th{background:#eef1f5}
table.kv th{background:#f4f6f8;font-weight:600;white-space:nowrap}
table.numbers td{font-variant-numeric:tabular-nums}
td code{white-space:pre-wrap;word-break:break-all}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.92em}
details{margin:6px 0}
summary{cursor:pointer;color:#1f3a5f}
.files li.missing{color:#888}
.files li.found::marker{content:"✓ ";color:#2a7a2a}
.files li.missing::marker{content:"– "}
section,.figure{scroll-margin-top:52px}
.figure{max-width:100%;margin:10px 0 18px 0;border-top:1px solid #eee;padding-top:6px}
.problem{color:#a12;font-weight:600}
ul.findings li{margin:4px 0}
ul.findings li.caveat{color:#8a5a00}
.note{color:#555;font-style:italic}
footer{color:#777;font-size:.85em;text-align:center;padding:12px}
"""


def build(
    results_dir: str | Path,
    out: str | Path | None = None,
    *,
    title: str | None = None,
    allow_incomplete: bool = False,
) -> Path:
    """Write one self-contained HTML report of the results in ``results_dir``.

    Reads the files of the results layout (``run.json``, ``attribution.safetensors``, ``pruning.json``,
    ``patching.safetensors``, ``faithfulness.json``, ``rerank.json``, ``stability.json``; see
    ``docs/cli.md``) that are present, and writes the run's metadata (model, collection, settings,
    versions, timings), the summary tables and every figure of each result. plotly.js is inlined once;
    the file loads nothing else, so it works offline. A file that cannot be read, or a figure that cannot
    be drawn, is named in the report (and warned about) instead of stopping it.

    Args:
        results_dir: the results folder (e.g. the ``--out`` of ``mechir-nig`` commands).
        out: the HTML file to write (default: ``results_dir/report.html``); its folder is created.
        title: the page title (default: ``mechir_nig report: <folder name>``).
        allow_incomplete: report an attribution that holds fewer pairs than its run planned (a stopped
            run), flagged as incomplete; without it such an attribution is refused.

    Each result's section names the command, model and collection that made it (from ``run.json``);
    results of different models or collections in one folder are flagged at the top.

    Returns:
        The path of the written file.

    Raises:
        InputError: ``results_dir`` is not a folder, or holds none of the files above; ``out`` is a
            folder; ``run.json`` is of an unknown layout version; the attribution is incomplete (without
            ``allow_incomplete``).

    Example:
        >>> from mechir_nig.report import build
        >>> import tempfile
        >>> from pathlib import Path
        >>> from mechir_nig.experiments.pruning import PruningResult
        >>> results = Path(tempfile.mkdtemp())  # a results folder, here with one pruning result
        >>> runs = [{"condition": "unpruned", "mode": "zero", "fraction": 0.0, "seed": 0, "n_neurons": 0, "nDCG@10": 0.7},
        ...         {"condition": "nig_top", "mode": "zero", "fraction": 0.01, "seed": 0, "n_neurons": 92, "nDCG@10": 0.55}]
        >>> pq = [{"q2": {"nDCG@10": 0.7}}, {"q2": {"nDCG@10": 0.55}}]  # per evaluated query
        >>> _ = PruningResult(["nDCG@10"], runs, pq, {}, ["q1"], ["q2"], {}).save(results / "pruning.json")
        >>> path = build(results, results / "report.html", title="MiniLM on vaswani")
        >>> "MiniLM on vaswani" in path.read_text(encoding="utf-8")
        True
    """
    import plotly
    from plotly.offline import get_plotlyjs

    from mechir_nig._io import atomic_write

    folder = Path(results_dir).expanduser()
    names = {**FILES, **CIRCUIT_FILES}
    expected = ", ".join(FILES.values())
    if not folder.is_dir():
        raise InputError(
            f"{folder} is not a folder; pass the results folder the commands wrote (it holds {expected})"
        )
    found = {key: folder / name for key, name in names.items() if (folder / name).is_file()}
    from mechir_nig.experiments.compare import COMPARE_NAME

    if not found and not (folder / COMPARE_NAME).is_file():
        raise InputError(
            f"{folder} holds no results: expected at least one of {expected} (written by the mechir-nig "
            "commands with --out, see docs/cli.md)"
        )
    out_path = Path(out).expanduser() if out is not None else folder / REPORT_NAME
    if out_path.is_dir():
        raise InputError(
            f"{out_path} is a folder; pass the HTML file to write, e.g. {out_path / REPORT_NAME}"
        )
    doc = _Doc()
    loaders = _loaders()
    unreadable: dict[str, str] = {}
    loaded: dict[str, Any] = {}
    for key in _ORDER:
        if key not in found:
            continue
        path = found[key]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. an old attribution without a checksum
                loaded[key] = loaders[key](path)
        except Exception as exc:  # a damaged file is reported, the others still are
            unreadable[key] = f"{type(exc).__name__}: {exc}"
            message = f"{path.name} could not be read: {unreadable[key]}"
            doc.problems.append(message)
            warnings.warn(message, UserWarning, stacklevel=2)
    run = loaded.get("run")
    if isinstance(run, Mapping):
        check_layout(run, found["run"])
    if "attribution" in loaded and not allow_incomplete:
        incomplete = attribution_incomplete(loaded["attribution"])
        if incomplete is not None:
            raise InputError(
                f"{found['attribution']} is incomplete: it holds {incomplete} (its run was stopped). Finish "
                f"it (mechir-nig attribute --resume --out {folder}), or pass allow_incomplete=True to report "
                "on it, flagged as incomplete"
            )
    doc.loaded = loaded
    provenance = _provenance(
        run if isinstance(run, Mapping) else {}, [names[k] for k in loaded if k != "run"]
    )
    for key, value in loaded.items():
        path = found[key]
        n_before = len(doc.sections)
        try:
            _SECTIONS[key](doc, value)
        except Exception as exc:
            message = f"the {_TITLES[key]} section of {path.name} failed: {type(exc).__name__}: {exc}"
            warnings.warn(message, UserWarning, stacklevel=2)
            if doc.sections and doc.sections[-1][0] == key:
                doc.problem(doc.sections[-1][2], message)
            else:
                doc.problems.append(message)
        if key != "run" and len(doc.sections) > n_before:
            doc.sections[-1][2].insert(0, provenance.line(path.name))
    if provenance.mixed:
        doc.problems.append(provenance.mixed)
    from mechir_nig.findings import results_findings

    found_sentences = results_findings({k: v for k, v in loaded.items() if k in _SECTIONS})
    compared = _load_compare(folder, doc)
    if compared is not None:
        try:
            _compare_section(doc, compared)
            found_sentences += [("compare", sentence) for sentence in compared.findings()]
        except Exception as exc:
            message = f"the {COMPARE_TITLE} section of {COMPARE_NAME} failed: {type(exc).__name__}: {exc}"
            warnings.warn(message, UserWarning, stacklevel=2)
            doc.problems.append(message)
    title = title or f"mechir_nig report: {folder.resolve().name}"
    now = _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")
    files = []
    for key, name in names.items():
        if key in CIRCUIT_FILES and key not in found:
            continue  # listed only when present
        if key in unreadable:
            files.append(
                f'<li class="missing"><code>{_e(name)}</code>: could not be read ({_e(unreadable[key])})</li>'
            )
        elif key in found:
            files.append(f'<li class="found"><code>{_e(name)}</code>: {_e(_TITLES[key])}</li>')
        else:
            files.append(f'<li class="missing"><code>{_e(name)}</code>: not in the folder</li>')
    n_found = len([k for k in found if k in FILES and k not in unreadable])
    n_circuits = len([k for k in found if k in CIRCUIT_FILES and k not in unreadable])
    circuits = f", {n_circuits} circuit result{'s' if n_circuits > 1 else ''}" if n_circuits else ""
    body = [
        "<header>",
        f"<h1>{_e(title)}</h1>",
        f"<p>Results folder <code>{_e(folder.resolve())}</code>; report written {_e(now)}.</p>",
        f'<p id="summary">{n_found} of {len(FILES)} result files found{circuits}, '
        f'<span id="figure-count">{doc.n_figures}</span> figures.</p>',
        "</header>",
        "<nav>"
        + ('<a href="#findings">Findings</a>' if found_sentences else "")
        + "".join(f'<a href="#{_e(key)}">{_e(t)}</a>' for key, t, _ in doc.sections)
        + "</nav>",
        "<main>",
        _findings_html(found_sentences, {key for key, _, _ in doc.sections}),
        '<section id="files"><h2>Files</h2><ul class="files">' + "".join(files) + "</ul>",
    ]
    if doc.problems:
        body.append(
            '<div class="problem">Problems:<ul>'
            + "".join(f"<li>{_e(p)}</li>" for p in doc.problems)
            + "</ul></div>"
        )
    body.append("</section>")
    for key, sec_title, parts in doc.sections:
        body.append(f'<section id="{_e(key)}"><h2>{_e(sec_title)}</h2>{"".join(parts)}</section>')
    body.append("</main>")
    body.append(
        f"<footer>mechir_nig report; figures drawn with plotly {_e(plotly.__version__)} (inlined, no network "
        "access needed).</footer>"
    )
    page = "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<meta name="generator" content="mechir_nig.report">',
            f'<meta name="mechir-nig-figures" content="{doc.n_figures}">',
            f"<title>{_e(title)}</title>",
            f"<style>{_CSS}</style>",
            "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>",
            f'<script type="text/javascript">{get_plotlyjs()}</script>',
            "</head>",
            f'<body data-figures="{doc.n_figures}">',
            *body,
            "</body>",
            "</html>",
        ]
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out_path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return out_path
