"""The doctest namespace: the offline models and inputs the package's docstring examples use.

``pytest mechir_nig --doctest-modules`` (part of ``make test``) runs every example with these names
defined, so an example that needs only a model runs instead of being skipped: ``ce`` is
all-MiniLM-L6-v2's real body under a seeded relevance head (the shape of
``cross-encoder/ms-marco-MiniLM-L-6-v2``: 6 layers, 12 heads, 1536 MLP neurons), ``be`` the
all-MiniLM-L6-v2 bi-encoder, ``queries`` / ``docs`` two pairs, ``batch`` their ``PairBatch``, ``col``
the embedded collection, ``halves`` two collections made of it (its queries split into ``"odd"`` and
``"even"``, as the ``compare_collections`` example builds them), ``top`` 20 MLP neurons, and the
functions most examples call. ``+SKIP`` is left only for hub and ir_datasets downloads, files a machine may not have (a user's data folder, the demo's output) and a ``torchrun`` launch (14 lines in all).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def _doctest_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import torch

    from mechir_nig import load_model, neuron_integrated_gradients
    from mechir_nig.data import Collection, bm25_candidates, judged_pairs, load_collection
    from mechir_nig.sets import NeuronSet
    from mechir_nig.testing import minilm_cross_encoder, minilm_path

    ce = load_model(minilm_cross_encoder(tmp_path_factory.mktemp("doctest_ce")))
    be = load_model("all-MiniLM-L6-v2", pooling="mean")
    queries = ["what is a neuron", "how do black holes form"]
    docs = [
        "A neuron is a cell of the nervous system that signals.",
        "Black holes form when massive stars collapse at the end of their life.",
    ]
    col = load_collection("embedded")
    ids = sorted(col.queries)
    halves = {}
    for name, qs in (("odd", ids[::2]), ("even", ids[1::2])):
        qrels = [r for r in col.qrels if r.query_id in qs]
        halves[name] = Collection(col.docs, {q: col.queries[q] for q in qs}, qrels, name=name)
    return {
        "torch": torch,
        "ce": ce,
        "be": be,
        "model": ce,
        "queries": queries,
        "docs": docs,
        "batch": ce.tokenize(queries, docs),
        "col": col,
        "halves": halves,
        "minilm_path": minilm_path,
        "top": NeuronSet([(layer, n) for layer in (4, 5) for n in range(10)], n_layers=6, d_mlp=1536),
        "neuron_integrated_gradients": neuron_integrated_gradients,
        "bm25_candidates": bm25_candidates,
        "judged_pairs": judged_pairs,
        "load_collection": load_collection,
    }


@pytest.fixture(autouse=True)
def _add_doctest_names(request: pytest.FixtureRequest) -> None:
    """Fill ``doctest_namespace`` for doctest items only (the models are built on first use)."""
    if request.node.__class__.__name__ != "DoctestItem":
        return
    namespace = request.getfixturevalue("doctest_namespace")
    namespace.update(request.getfixturevalue("_doctest_models"))
