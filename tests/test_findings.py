"""The Findings sentences (mechir_nig.findings) of fixed small results, and the report's Findings section."""

from __future__ import annotations

import json

import pytest
import torch

from mechir_nig.experiments.faithfulness import FaithfulnessResult
from mechir_nig.experiments.pruning import PruningResult
from mechir_nig.findings import (
    faithfulness_findings,
    folder_findings,
    format_p,
    patching_findings,
    pruning_findings,
)
from mechir_nig.interventions.patching import PatchingResult


def _pruning() -> PruningResult:
    """20 held-out queries; at 1 % the NIG set drops nDCG@10 by 0.1 on every query against 0.01 for the
    random sets; at 0.1 % it is no different from the random sets."""
    qids = [f"q{i:02d}" for i in range(20)]
    base = [0.5 + 0.02 * i for i in range(20)]
    runs = [{"condition": "unpruned", "mode": "none", "fraction": 0.0, "seed": 0, "n_neurons": 0}]
    per_query = [dict(zip(qids, base))]
    for frac, n, nig_drop in ((0.001, 9, None), (0.01, 92, 0.1)):
        for cond, seed in (("nig_top", 0), ("random", 0), ("random", 1)):
            if cond == "nig_top" and nig_drop is not None:
                vals = [b - nig_drop for b in base]
            else:  # +-0.01 alternating: the random sets' (and the small NIG set's) noise
                sign = 1 if seed == 0 else -1
                vals = [
                    b - 0.01 * sign * (1 if i % 2 else -1) - (0.003 if cond == "random" else 0.0)
                    for i, b in enumerate(base)
                ]
            runs.append(
                {"condition": cond, "mode": "baseline", "fraction": frac, "seed": seed, "n_neurons": n}
            )
            per_query.append(dict(zip(qids, vals)))
    for r, pq in zip(runs, per_query):
        r["nDCG@10"] = sum(pq.values()) / len(pq)
    pq = [{q: {"nDCG@10": v} for q, v in p.items()} for p in per_query]
    return PruningResult(["nDCG@10"], runs, pq, {}, ["s1"], qids, {"scheme": "relevant"})


def _faithfulness() -> FaithfulnessResult:
    per = {"baseline": {"nig": [0.9, 0.5, 0.7, 0.2, 0.6, 0.8], "act_x_grad": [0.4, 0.1, 0.5, 0.3, 0.2, 0.6]}}
    spear = {m: {p: sum(v) / len(v) for p, v in d.items()} for m, d in per.items()}
    curve = {
        "baseline": {
            "nig": [0.1, 0.2],
            "random": [0.0, 0.01],
            "random_std": [0.0, 0.0],
            "nig_at_k": [0.3, 0.2, 0.25, 0.1, 0.4, 0.2],
            "random_at_k": [0.0, 0.01, 0.02, 0.0, 0.01, 0.0],
        }
    }
    return FaithfulnessResult(2, spear, per, torch.zeros(6, 2, 2, dtype=torch.long), {}, curve, {})


def _patching() -> PatchingResult:
    clean = torch.tensor([1.0, 2.0, -1.0, 0.5])
    corrupted = torch.tensor([1.5, 2.004, -0.2, 1.5])  # pair 1 barely moves: a tiny denominator
    patched = corrupted[:, None, None].repeat(1, 2, 3)  # [batch, layer, pos]
    patched[:, 1, 2] = corrupted + 0.5 * (clean - corrupted)  # layer 1, position 2: half the way back
    patched[1, 1, 2] = 5.0  # the tiny pair: recovery (5 - 2.004) / -0.004 = -749
    changed = torch.zeros(4, 3, dtype=torch.bool)
    changed[:, 2] = True
    res = PatchingResult(
        values={"resid_pre": torch.zeros(4, 2, 3)},
        patched={"resid_pre": patched},
        clean_scores=clean,
        corrupted_scores=corrupted,
        layers=[0, 1],
        direction="denoise",
        metric="recovery",
        eps=1e-6,
        base_mask=torch.ones(4, 3, dtype=torch.long),
        groups=torch.zeros(4, 3, dtype=torch.long),
        changed=changed,
    )
    res.values["resid_pre"] = res.recovery("resid_pre")
    return res


def test_format_p() -> None:
    assert [format_p(p) for p in (0.0001, 0.6, 0.0312)] == ["p < 0.001", "p = 0.6", "p = 0.031"]


def test_pruning_sentences() -> None:
    lines = pruning_findings(_pruning())
    assert lines == [
        "Returning the top 0.1 % NIG neurons (9) to their baseline values leaves nDCG@10 unchanged; at 0.1 % "
        "(baseline) the NIG set is indistinguishable from random (p = 0.21, 20 held-out queries).",
        "Returning the top 1 % NIG neurons (92) to their baseline values lowers nDCG@10 by 0.100 "
        "[95 % CI 0.100-0.100], 33x the random sets (p < 0.001, 20 held-out queries).",
        "p-values are Holm-adjusted across the study's fractions and modes; intervals are percentile "
        "bootstraps over the held-out queries (20).",
    ]
    # the p-values by hand: Holm over the two fractions of the sign-flip p of (random mean - NIG) per query
    from mechir_nig.statistics import holm, paired_permutation_test

    result = _pruning()
    d = {}
    for frac in (0.001, 0.01):
        idx = {r["condition"] + str(r["seed"]): i for i, r in enumerate(result.runs) if r["fraction"] == frac}
        d[frac] = [
            (result.per_query[idx["random0"]][q]["nDCG@10"] + result.per_query[idx["random1"]][q]["nDCG@10"])
            / 2
            - result.per_query[idx["nig_top0"]][q]["nDCG@10"]
            for q in result.eval_queries
        ]
    small, large = holm([paired_permutation_test(d[0.001])[0], paired_permutation_test(d[0.01])[0]])
    assert format_p(small) == "p = 0.21" and large == pytest.approx(2 / 10001)


def test_a_rise_is_stated_with_the_interval_of_the_rise() -> None:
    # pruning that *raises* the measure: the sentence names the rise, so its interval is the rise's
    # (the drop's interval negated), not the drop's (it printed "raises ... by 0.008 [CI -0.023 to 0.000]")
    qids = [f"q{i}" for i in range(6)]
    base = [0.5, 0.4, 0.6, 0.3, 0.7, 0.5]
    rise = [0.02, 0.0, 0.01, 0.03, 0.0, 0.02]
    runs = [
        {"condition": "unpruned", "mode": "none", "fraction": 0.0, "seed": 0, "n_neurons": 0},
        {"condition": "nig_top", "mode": "zero", "fraction": 0.01, "seed": 0, "n_neurons": 92},
    ]
    pq = [{q: {"nDCG@10": b} for q, b in zip(qids, base)}]
    pq.append({q: {"nDCG@10": b + r} for q, b, r in zip(qids, base, rise)})
    for r, values in zip(runs, pq):
        r["nDCG@10"] = sum(v["nDCG@10"] for v in values.values()) / len(values)
    result = PruningResult(["nDCG@10"], runs, pq, {}, ["s1"], qids, {"scheme": "relevant"})
    row = result.statistics("nDCG@10")[0]
    lo, hi = row["drop_ci"]
    assert row["drop"] == pytest.approx(-sum(rise) / 6) and hi <= 0 < -lo
    sentence = pruning_findings(result)[0]
    assert f"raises nDCG@10 by {sum(rise) / 6:.3f} [95 % CI {-hi:.3f}-{-lo:.3f}]" in sentence, sentence


def test_pruning_sentence_on_baseline_active_neurons() -> None:
    result = _pruning()
    result.baseline_activity = {
        "threshold": 0.1,
        "layers": [0, 1],
        "baseline_mean": [[0.5, 0.0, 0.3], [-0.2, 0.05, 0.0]],
    }
    set_of = lambda members: {"kind": "mlp", "n_layers": 2, "d_mlp": 3, "neurons": members}  # noqa: E731
    result.sets = {
        "nig_top|0.01|0": set_of([[0, 0], [0, 2], [1, 0], [1, 1]]),  # 3 of 4 above 0.1 in absolute value
        "random|0.01|0": set_of([[0, 1], [1, 1], [1, 2], [0, 0]]),  # 1 of 4
        "random|0.01|1": set_of([[0, 0], [0, 2], [1, 2], [0, 1]]),  # 2 of 4
    }
    lines = pruning_findings(result)
    assert (
        "3 of the 4 top 1 % NIG neurons are active on the NIG baseline input (random sets: 1-2 of 4): "
        "returning them to their baseline values does not silence them." in lines
    )
    assert not any("0.1 % NIG neurons are active" in line for line in lines)  # no set kept for 0.1 %


def test_pruning_ceiling_caveat() -> None:
    result = _pruning()
    result.per_query[0] = {q: {"nDCG@10": 1.0} for q in result.eval_queries}
    assert pruning_findings(result)[-2] == (
        "Caveat: the unpruned nDCG@10 is at its maximum (>= 0.95) on 20 of 20 evaluation queries: it can "
        "drop, not rise."
    )


def test_faithfulness_sentences() -> None:
    assert faithfulness_findings(_faithfulness()) == [
        "Under baseline ablation, NIG ranks each pair's 2 neurons by their score drop with a mean Spearman ρ "
        "of +0.62 [95 % CI 0.42-0.78] over 6 pairs (p = 0.031 against 0); activation x gradient +0.35 "
        "[95 % CI 0.22-0.48].",
        "Ablating each pair's top 2 NIG neurons together (baseline) changes the score by -0.2350 relative "
        "to 2 random neurons [95 % CI -0.3100 to -0.1650] (p = 0.031, 6 pairs).",  # exact: 2 / 2^6
        "Caveat: only 6 pairs: the intervals are wide.",
    ]


def test_patching_sentences_leave_out_tiny_changes() -> None:
    res = _patching()
    assert res.small_change().tolist() == [False, True, False, False]
    lines = patching_findings(res)
    assert lines[:2] == [
        "The perturbation changes the score by +0.5760 on average (perturbed - clean, 4 pairs).",
        "resid_pre: restoring the clean activations at the changed positions has its largest mean recovery "
        "+0.50 at layer 1 (raw score change -0.3833; 3 of 4 pairs).",
    ]
    assert lines[2].startswith("Caveat: 1 of 4 pairs move the score by less than 0.05 x the spread")
    assert "layer-0 value is 0 by construction" in lines[3]
    from mechir_nig.report import site_summaries

    # the tiny pair (recovery -749) is left out by default, kept on request: (3 x 0.5 - 749) / 4
    assert site_summaries(res) == [
        ("resid_pre", "at the changed positions, per layer", "L0 +0.000 (Δ +0.0000) L1 +0.500 (Δ -0.3833)")
    ]
    kept = site_summaries(res, include_small=True)[0][2]
    assert kept.startswith("L0 +0.000 (Δ +0.0000) L1 -186.8")


def test_report_has_a_findings_section(tmp_path) -> None:
    from mechir_nig.report import build

    study = _pruning()
    study.moved = [
        {"depth": 10, "changed": ["q00"], "docs": {"q00": {"up": [["d3", 3, 1]], "down": [["d1", 1, 3]]}}}
        for _ in study.runs
    ]
    study.save(tmp_path / "pruning.json")
    _faithfulness().save(tmp_path / "faithfulness.json")
    _patching().save(tmp_path / "patching.safetensors")
    found = folder_findings(tmp_path)
    assert [k for k, _ in found].count("pruning") == 3 and {k for k, _ in found} == {
        "pruning",
        "faithfulness",
        "patching",
    }
    page = build(tmp_path).read_text(encoding="utf-8")
    head, rest = page.split('<section id="findings"><h2>Findings</h2>', 1)
    assert '<a href="#findings">Findings</a>' in head  # first in the navigation
    section = rest.split("</section>", 1)[0]
    assert "33x the random sets (p &lt; 0.001, 20 held-out queries)." in section
    assert '<a href="#pruning">(Pruning study)</a>' in section
    assert '<a href="#patching">(Activation patching)</a>' in section
    assert rest.index('id="pruning"') > 0  # the findings come before every result's section
    assert '<li class="caveat">' in section
    # the pruning section: the statistics table (a CI cell, the rank, the changed queries) and the movers
    pruning = page.split('<section id="pruning">', 1)[1].split("</section>", 1)[0]
    assert "<h3>Statistics over the held-out queries" in pruning
    assert "<td>[+0.1000, +0.1000]</td>" in pruning and "<td>1 of 3</td>" in pruning
    assert "<td>1 of 20</td>" in pruning  # top-10 changed on q00 only
    assert "Documents that moved most for query q00 (nig_top, baseline, fraction 0.01; 1 of 20" in pruning
    assert "<tr><td>up</td><td>d3</td><td>3</td><td>1</td></tr>" in pruning
    faith = page.split('<section id="faithfulness">', 1)[1].split("</section>", 1)[0]
    assert "<td>nig</td><td>+0.617</td><td>[+0.4167, +0.7833]</td>" in faith


def test_old_pruning_files_still_load(tmp_path) -> None:
    """A pruning.json written before ``moved`` and ``statistics`` existed loads, with ``moved == []``."""
    result = _pruning()
    path = result.save(tmp_path / "pruning.json")
    doc = json.loads(path.read_text())
    for key in ("moved", "statistics", "mechir_nig"):
        doc.pop(key)
    path.write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="no checksum"):
        back = PruningResult.load(path)
    assert back.moved == [] and back.runs == result.runs
    top = [r for r in back.statistics() if r["condition"] == "nig_top" and r["fraction"] == 0.01]
    assert top[0]["vs_random"]["rank"] == 1


def test_patching_pairs_share_one_colour_scale(tmp_path) -> None:
    from mechir_nig.errors import InputError
    from mechir_nig.plotting import patching_heatmap
    from mechir_nig.report import _shared_range, build

    res = _patching()
    # the largest |recovery| of the kept pairs (0, 2, 3): 0.5 at layer 1; the tiny pair's -749 would swamp it
    assert _shared_range(res, "resid_pre", 4) == pytest.approx(0.5)
    figs = [patching_heatmap(res, "resid_pre", pair=i, zmax=0.5) for i in range(4)]
    assert {(f.data[0].zmin, f.data[0].zmax) for f in figs} == {(-0.5, 0.5)}
    assert patching_heatmap(res, "resid_pre", pair=0).data[0].zmin is None  # its own range by default
    with pytest.raises(InputError, match="zmax"):
        patching_heatmap(res, "resid_pre", pair=0, zmax=0.0)
    res.save(tmp_path / "patching.safetensors")
    page = build(tmp_path).read_text(encoding="utf-8")
    assert "resid_pre: one colour scale for every pair, ±0.5" in page
