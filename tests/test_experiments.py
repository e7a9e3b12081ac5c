"""Collection studies: split-half stability (query subsets, resume accounting) and NIG settings."""

from __future__ import annotations

import pytest

from mechir_nig import InputError, NIGSettings
from mechir_nig.attribution.stats import CollectionAttribution
from mechir_nig.data import load_collection
from mechir_nig.experiments import split_half_stability


@pytest.fixture(scope="module")
def embedded():
    return load_collection("embedded")


def test_split_half_on_a_query_subset(tiny_ce, embedded):
    qids = sorted(embedded.queries)[:6]
    out = split_half_stability(
        tiny_ce,
        embedded,
        query_ids=qids,
        fraction=0.05,
        max_relevant_per_query=1,
        settings=NIGSettings(n_steps=2),
        progress=False,
    )
    assert [h["queries"] for h in out["halves"]] == [3, 3]
    assert out["settings"]["n_steps"] == 2 and out["n_steps"] == 2
    assert all(h["pairs_resumed"] == 0 and h["pairs_attributed"] == h["pairs"] for h in out["halves"])
    assert 0.0 <= out["overlap"]["jaccard"] <= 1.0
    with pytest.raises(InputError, match="not in the collection"):
        split_half_stability(tiny_ce, embedded, query_ids=["no-such-query", qids[0]], progress=False)
    with pytest.raises(InputError, match="at least two queries"):
        split_half_stability(tiny_ce, embedded, query_ids=qids[:1], progress=False)


def test_split_half_reports_resumed_pairs_apart(tiny_ce, embedded, tmp_path):
    qids = sorted(embedded.queries)[:4]
    kw = dict(query_ids=qids, fraction=0.05, max_relevant_per_query=1, n_steps=2, progress=False)
    first = split_half_stability(tiny_ce, embedded, checkpoint_dir=tmp_path, **kw)
    again = split_half_stability(tiny_ce, embedded, checkpoint_dir=tmp_path, **kw)
    for a, b in zip(first["halves"], again["halves"]):
        assert b["pairs_attributed"] == 0 and b["pairs_resumed"] == a["pairs"]
    assert again["overlap"] == first["overlap"]
    assert CollectionAttribution.load(tmp_path / "half0.ckpt").n_done == first["halves"][0]["pairs"]


def test_settings_validate_against_the_model(tiny_ce):
    s = NIGSettings(n_steps=8, layers=(1,)).resolved(tiny_ce)
    assert s.layers == (1,) and s.max_length == tiny_ce.max_length
    assert "internal_batch_size" not in s.record() and s.nig_kwargs()["layers"] == [1]
    for bad, match in [
        (NIGSettings(n_steps=0), "n_steps"),
        (NIGSettings(layers=(9,)), "out of range"),
        (NIGSettings(side="doc"), "bi-encoders"),
        (NIGSettings(internal_batch_size=0), "internal_batch_size"),
        (NIGSettings(method="simpson"), "simpson"),
    ]:
        with pytest.raises(InputError, match=match):
            bad.resolved(tiny_ce)


def test_runtime_path_does_not_import_testing():
    import subprocess
    import sys

    code = (
        "import sys, mechir_nig; from mechir_nig import load_model, neuron_integrated_gradients, "
        "attribute_collection, load_collection; m = load_model('all-MiniLM-L6-v2'); "
        "print('mechir_nig.testing' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
