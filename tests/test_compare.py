"""The cross-collection study: exact chance levels of core / OOD neurons, fused schemes, transfer pruning
provenance, and ``mechir-nig compare`` end to end on the embedded collection split into two named
collections (whose query ids collide on purpose: both are numbered from 1)."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import hypergeom

from mechir_nig.cli import main
from mechir_nig.errors import InputError
from mechir_nig.experiments.compare import (
    COMPARE_NAME,
    CollectionComparison,
    core_chance,
    intersection_pmf,
    ood_chance,
    ood_pmf,
    scheme_scores,
)

EMBEDDED = Path(__file__).resolve().parents[1] / "mechir_nig" / "data" / "embedded"


# -- exact chance levels -------------------------------------------------------------------------------
def _enumerate(n: int, sizes: list[int], in_domain: int | None = None) -> np.ndarray:
    """The law of |∩ sets| (or of |∩ sets \\ A| with ``in_domain = |A|``) by enumerating every draw."""
    draws = [list(itertools.combinations(range(n), s)) for s in sizes]
    extra = [list(itertools.combinations(range(n), in_domain))] if in_domain is not None else [[()]]
    counts: dict[int, int] = {}
    total = 0
    for combo in itertools.product(*draws, *extra):
        sets = [set(c) for c in combo[: len(sizes)]]
        inter = set.intersection(*sets)
        if in_domain is not None:
            inter -= set(combo[-1])
        counts[len(inter)] = counts.get(len(inter), 0) + 1
        total += 1
    out = np.zeros(max(counts) + 1)
    for k, c in counts.items():
        out[k] = c / total
    return out


def test_intersection_law_is_exact():
    for sizes in ([3, 3], [3, 3, 2], [2, 4, 3]):
        got, want = intersection_pmf(sizes, 6), _enumerate(6, sizes)
        np.testing.assert_allclose(got[: len(want)], want, atol=1e-12)
        assert got[len(want) :].sum() < 1e-12
    # two sets: the hypergeometric law of overlap_report, and scipy's tail
    np.testing.assert_allclose(
        intersection_pmf([30, 40], 200), hypergeom(200, 30, 40).pmf(np.arange(31)), atol=1e-13
    )
    rep = core_chance([30, 40], 200, observed=12)
    assert rep["expected"] == pytest.approx(30 * 40 / 200, rel=1e-12)
    assert rep["p_value"] == pytest.approx(hypergeom(200, 30, 40).sf(11), rel=1e-10)
    assert core_chance([3, 3, 3], 6)["expected"] == pytest.approx(27 / 36, rel=1e-12)


def test_ood_law_is_exact():
    for ood_sizes, a in (([3], 2), ([3, 4], 2), ([2, 3], 3)):
        want = _enumerate(6, ood_sizes, in_domain=a)
        got = ood_pmf(ood_sizes, a, 6)
        np.testing.assert_allclose(got[: len(want)], want, atol=1e-12)
    # one OOD collection: |B \ A| = b − |A ∩ B|, so P(Y >= y) = P(X <= b − y)
    got = ood_chance([40], 30, 200, observed=35)
    assert got["p_value"] == pytest.approx(hypergeom(200, 30, 40).cdf(40 - 35), rel=1e-10)
    assert got["expected"] == pytest.approx(40 * (1 - 30 / 200), rel=1e-12)


def test_fused_scheme_and_unknown_scheme():
    from mechir_nig.attribution.stats import CollectionAttribution
    from mechir_nig.sets import fuse_scores

    stats = CollectionAttribution(layers=[0, 1], n_layers=3, d_mlp=4)
    g = torch.Generator().manual_seed(0)
    stats.update("relevant", torch.randn(3, 2, 4, 4, generator=g))
    stats.update("nonrelevant", torch.randn(2, 2, 4, 4, generator=g))
    fused = scheme_scores(stats, "rrf(relevant,difference)")
    want = fuse_scores([stats.scheme_scores("relevant")[:2], stats.scheme_scores("difference")[:2]])
    torch.testing.assert_close(fused[:2], want)
    assert fused[2].abs().sum() == 0  # a layer that was not attributed is never a candidate
    with pytest.raises(InputError, match="unknown scheme 'relevance'"):
        scheme_scores(stats, "relevance")
    with pytest.raises(InputError, match="unknown scheme 'rrf\\(relevant,foo\\)'"):
        scheme_scores(stats, "rrf(relevant,foo)")


# -- two collections with colliding query ids ----------------------------------------------------------
def _split_embedded(root: Path) -> dict[str, Path]:
    """The embedded collection as two folders (odd and even queries), each numbering its queries 1, 2, ..."""
    queries = [line.split("\t") for line in (EMBEDDED / "queries.tsv").read_text().splitlines()]
    qrels = [line.split() for line in (EMBEDDED / "qrels.txt").read_text().splitlines()]
    out = {}
    for name, part in (("odd", queries[::2]), ("even", queries[1::2])):
        folder = root / name
        folder.mkdir()
        (folder / "docs.tsv").write_text((EMBEDDED / "docs.tsv").read_text())
        ids = {q: str(i + 1) for i, (q, _) in enumerate(part)}
        (folder / "queries.tsv").write_text("".join(f"{ids[q]}\t{t}\n" for q, t in part))
        (folder / "qrels.txt").write_text(
            "".join(f"{ids[r[0]]} 0 {r[2]} {r[3]}\n" for r in qrels if r[0] in ids)
        )
        out[name] = folder
    return out


@pytest.fixture(scope="module")
def two_collections(tmp_path_factory) -> dict[str, Path]:
    return _split_embedded(tmp_path_factory.mktemp("split"))


def test_transfer_pruning_records_its_source_and_ids_do_not_collide(tiny_ce, two_collections):
    from mechir_nig.data import bm25_candidates, load_collection
    from mechir_nig.experiments.pruning import pruning_study, split_queries

    odd, even = (load_collection(str(two_collections[n])) for n in ("odd", "even"))
    _, ev = split_queries(even)
    sel_odd, _ = split_queries(odd)
    assert set(sel_odd) & set(ev)  # both number their queries from 1: the ids collide
    cfg = tiny_ce.cfg
    ranking = torch.randn(cfg.n_layers, cfg.d_mlp, generator=torch.Generator().manual_seed(0))
    cands = bm25_candidates(even, k=5, query_ids=ev)
    kw = dict(
        fractions=(0.1,), seeds=1, modes="zero", conditions=("nig_top",), eval_queries=ev, progress=False
    )
    with pytest.raises(InputError, match="both selection and evaluation queries"):
        pruning_study(tiny_ce, even, cands, ranking, select_queries=sel_odd, **kw)
    result = pruning_study(
        tiny_ce,
        even,
        cands,
        ranking,
        scheme="difference",
        select_queries=sel_odd,
        source_collection="odd",
        **kw,
    )
    assert result.settings["source_collection"] == "odd" and result.settings["transfer"] is True
    assert result.settings["scheme"] == "difference" and result.settings["ranking"] == "tensor"
    assert result.select_queries == sorted(sel_odd) and result.eval_queries == ev
    assert "selected on collection 'odd'" in result.settings["split"]
    own = pruning_study(tiny_ce, even, cands, ranking, **kw)
    assert own.settings["transfer"] is False and own.settings["source_collection"] == "even"


def test_compare_command(minilm_ce_dir, two_collections, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = [
        "compare",
        "--model",
        str(minilm_ce_dir),
        "--out",
        str(out),
        "--collections",
        f"odd={two_collections['odd']}",
        f"even={two_collections['even']}",
        "--in-domain",
        "odd",
        "--max-relevant",
        "1",
        "--max-nonrelevant",
        "1",
        "--n-steps",
        "2",
        "--schemes",
        "relevant,difference",
        "--fractions",
        "0.01",
        "--seeds",
        "2",
        "--depth",
        "5",
        "--resamples",
        "500",
        "--no-progress",
    ]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "Findings:" in said and "own set (difference" in said and "(core)" in said and "(OOD)" in said
    for f in (
        "compare.json",
        "compare.md",
        "run.json",
        "odd/attribution.safetensors",
        "even/attribution.safetensors",
    ):
        assert (out / f).is_file(), f
    for target, source in itertools.product(("odd", "even"), repeat=2):
        assert (out / target / f"pruning-from-{source}.json").is_file()
    cmp = CollectionComparison.load(out / COMPARE_NAME)
    assert sorted(cmp.sets) == sorted(
        f"{s}@{c}|{f}" for s in ("relevant", "difference") for c in ("odd", "even") for f in ("0.01",)
    )
    n = 6 * 1536  # MiniLM: 6 layers x 1536 neurons, every layer attributed
    for row in cmp.overlaps:  # by hand: the members of the saved sets
        a = {
            tuple(m)
            for m in cmp.sets[f"{row['scheme']}@{row['collection_a']}|{row['fraction']:g}"]["neurons"]
        }
        b = {
            tuple(m)
            for m in cmp.sets[f"{row['scheme']}@{row['collection_b']}|{row['fraction']:g}"]["neurons"]
        }
        k = len(a & b)
        assert (row["name_a"], row["name_b"]) == (f"{row['scheme']}@odd", f"{row['scheme']}@even")
        assert row["intersection"] == k and row["pool_size"] == n
        assert row["expected_intersection"] == pytest.approx(len(a) * len(b) / n, rel=1e-12)
        assert row["p_value"] == pytest.approx(hypergeom(n, len(a), len(b)).sf(k - 1), rel=1e-9, abs=1e-300)
        shared = {
            r["kind"]: r
            for r in cmp.shared
            if (r["scheme"], r["fraction"]) == (row["scheme"], row["fraction"])
        }
        assert shared["core"]["size"] == k and sorted(map(tuple, shared["core"]["members"])) == sorted(a & b)
        assert shared["core"]["p_value"] == pytest.approx(row["p_value"], rel=1e-9, abs=1e-300)
        ood = b - a  # in the OOD collection's set (even), not the in-domain one (odd)
        assert shared["ood"]["size"] == len(ood) and sorted(map(tuple, shared["ood"]["members"])) == sorted(
            ood
        )
        want = hypergeom(n, len(a), len(b)).cdf(len(b) - len(ood))
        assert shared["ood"]["p_value"] == pytest.approx(want, rel=1e-9)
    rows = {(r["target"], r["source"]): r for r in cmp.transfer}
    assert set(rows) == set(itertools.product(("odd", "even"), repeat=2))
    for (target, source), r in rows.items():
        study = json.loads((out / target / f"pruning-from-{source}.json").read_text())
        assert study["settings"]["source_collection"] == source
        assert study["settings"]["transfer"] is (source != target)
        assert (r["vs_own"] is None) == (source == target)
        lo, hi = r["drop_ci"]
        assert lo <= r["drop"] <= hi and 0 < r["p_holm"] <= 1
        per_query = r["per_query"]
        own = rows[(target, target)]["per_query"]
        if source != target:  # transfer − own, per held-out query
            diff = np.mean([per_query[q] - own[q] for q in per_query])
            assert r["vs_own"]["difference"] == pytest.approx(diff, abs=1e-12)
    md = (out / "compare.md").read_text()
    assert "relevant@odd" in md and "| even | odd | baseline |" in md
    # the report's section, and a second run reuses every attribution and pruning study
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert 'id="compare"' in page and "Collections compared" in page and "relevant@even" in page
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/pruning-from-*.json")}
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "odd: attribution reused" in said and "even: attribution reused" in said
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/pruning-from-*.json")} == before
    assert CollectionComparison.load(out / COMPARE_NAME).overlaps == cmp.overlaps
    # other NIG settings over the same folder: refused, naming what differs (no silent reuse)
    assert main([*argv[:-1], "--n-steps", "3", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "collection 'odd'" in err and re.search("n.steps", err) and "remove" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--collections", "a=embedded"], "at least two"),
        (["--collections", "a=embedded", "a=embedded"], "names \\['a'\\] more than once"),
        (["--collections", "a=embedded", "b=embedded", "--in-domain", "c"], "--in-domain c: not one of"),
        (["--collections", "a=embedded", "b=/no/such/folder"], "no such folder"),
        (["--collections", "a", "b=embedded"], "is not NAME=SPEC"),
        (
            ["--collections", "a=embedded", "b=embedded", "--schemes", "relevance"],
            "unknown scheme 'relevance'",
        ),
    ],
)
def test_compare_refuses_bad_options_before_any_work(tmp_path, capsys, extra, message):
    assert main(["compare", "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert "mechir-nig compare: error:" in err
    assert re.search(message, err), err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
