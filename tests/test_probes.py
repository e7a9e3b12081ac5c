"""IR features (hand-computed), cross-validated probes (a planted feature, sklearn parity, folds) and the
embedding matrix's IDF directions (a planted IDF direction)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DOCS, QUERIES

from mechir_nig.analysis.embedding import embedding_directions, token_idf
from mechir_nig.analysis.features import collection_statistics, ir_features, token_words
from mechir_nig.analysis.probes import _cross_validate, _fold_ids, probe
from mechir_nig.errors import InputError
from mechir_nig.models.tokenization import DOC

TINY = {"d1": "cats purr", "d2": "dogs bark loudly", "d3": "cats"}


@pytest.fixture(scope="module")
def be64(tmp_path_factory, tokenizer):
    from mechir_nig import HookedBiEncoder
    from mechir_nig.testing import make_tiny_checkpoint

    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("probe_be"), "bert", tokenizer, n_labels=0)
    return HookedBiEncoder.from_pretrained(folder, dtype=torch.float64)


def test_ir_features_equal_a_hand_computation(ce64, be64):
    stats = collection_statistics(TINY)
    assert (stats.n_docs, stats.avgdl) == (3, 2.0)
    idf = {"cats": math.log(1 + 1.5 / 2.5), "purr": math.log(1 + 2.5 / 1.5), "nap": math.log(1 + 3.5 / 0.5)}
    feats = ir_features(ce64, stats, [("why do cats purr", "cats purr, cats nap")])
    tokens = ce64.tokenizer.convert_ids_to_tokens(feats.batch.input_ids[0].tolist())
    doc = (feats.batch.groups[0] == DOC).nonzero().flatten().tolist()
    assert [tokens[p] for p in doc] == ["cats", "pu", "##rr", ",", "cats", "nap"]
    # |d| = 4 words, avgdl = 2: BM25 normaliser k1 (1 - b + b |d| / avgdl) = 1.5 * 1.75
    norm = 1.5 * (0.25 + 0.75 * 4 / 2)

    def bm25(w, tf):
        return idf[w] * tf * 2.5 / (tf + norm)

    want = {  # per document token: cats pu ##rr , cats nap
        "match": [1, 1, 1, 0, 1, 0],
        "query_term": [1, 1, 1, 0, 1, 0],
        "tf": [2, 1, 1, 0, 2, 1],
        "idf": [idf["cats"], idf["purr"], idf["purr"], 0, idf["cats"], idf["nap"]],
        "bm25": [bm25("cats", 2), bm25("purr", 1), bm25("purr", 1), 0, bm25("cats", 2), bm25("nap", 1)],
        "query_tf": [2, 1, 1, 0, 2, 0],
        "query_bm25": [bm25("cats", 2), bm25("purr", 1), bm25("purr", 1), 0, bm25("cats", 2), 0],
    }
    for name, values in want.items():
        torch.testing.assert_close(feats.tokens[name][0, doc], torch.tensor(values, dtype=torch.float64))
        assert feats.tokens[name][0, [p for p in range(len(tokens)) if p not in doc]].abs().sum() == 0
    assert feats.mask[0, doc].tolist() == [True, True, True, False, True, True]
    assert feats.pairs["doc_length"].tolist() == [4.0]
    assert feats.pairs["matched_terms"].tolist() == [2.0]  # "why", "do" are stopwords
    assert feats.pairs["query_tf"].tolist() == [3.0]
    torch.testing.assert_close(
        feats.pairs["bm25"], torch.tensor([bm25("cats", 2) + bm25("purr", 1)], dtype=torch.float64)
    )
    # a bi-encoder reads the document side: the same per-token values on the document's own positions
    side = ir_features(be64, TINY, [("why do cats purr", "cats purr, cats nap")])
    bdoc = (side.batch.groups[0] == DOC).nonzero().flatten().tolist()
    torch.testing.assert_close(side.tokens["bm25"][0, bdoc], feats.tokens["bm25"][0, doc])


def test_token_words_and_bad_inputs(ce64):
    ids, words = token_words(ce64.tokenizer, "Cats purr!")
    assert words == ["cats", "purr", "purr", None] and len(ids) == 4
    with pytest.raises(InputError, match="non-empty list"):
        ir_features(ce64, TINY, [])
    with pytest.raises(InputError, match="unknown IR feature"):
        ir_features(ce64, TINY, [("cats", "cats")])["nope"]
    with pytest.raises(InputError, match="k1"):
        collection_statistics(TINY, k1=-1.0)


def _planted(ce64, pairs, seed=0):
    batch = ce64.tokenize([p[0] for p in pairs], [p[1] for p in pairs])
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(batch.input_ids.shape, generator=g, dtype=torch.float64)
    u = torch.randn(ce64.cfg.d_model, generator=g, dtype=torch.float64)
    return batch, f, u / u.norm()


def _pairs(n_rep=2):
    return [(f"{q} {i}", d) for i, (q, d) in enumerate([(q, d) for q in QUERIES for d in DOCS] * n_rep)]


def test_probe_recovers_a_planted_feature_and_the_control_does_not(ce64):
    pairs = _pairs()
    batch, f, u = _planted(ce64, pairs)
    offset = {}

    def plant(act, hook):  # f · u written into resid_pre of layer 1, at every position
        start = offset.setdefault("i", 0)
        offset["i"] = start + act.shape[0]
        return act + 3.0 * f[start : start + act.shape[0], : act.shape[1], None] * u

    with ce64.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", plant)]):
        res = probe(ce64, pairs, f, sites=["resid_pre", "resid_post"], batch_size=8)
    assert offset["i"] == len(pairs)
    assert res.metric == "r2" and res.score.shape == (2, 2) and res.per_fold.shape == (2, 2, 5)
    assert res.score[0, 1] > 0.9 and res.score[1, 1] > 0.9  # at and after the planted layer
    assert res.score[0, 0] < 0.1 and res.score[1, 0] < 0.1  # before it, nothing to find
    assert (res.control < 0.1).all() and (res.control > -0.3).all()
    assert res.n_rows == int((batch.groups == DOC).sum())
    rows = res.table()
    assert rows[1]["site"] == "resid_pre" and rows[1]["layer"] == 1 and rows[1]["r2"] > 0.9
    assert "shuffled control" in res.to_markdown()
    assert res.best()[:2] in (("resid_pre", 1), ("resid_post", 1))
    assert len(res.plot().data) == 4


def test_probe_of_a_pair_feature_and_logistic(ce64):
    pairs = _pairs(n_rep=4)
    batch, f, u = _planted(ce64, pairs, seed=1)
    label = (f[:, 0] > 0).to(torch.float64)  # a binary pair feature written at the first token

    def plant(act, hook):
        out = act.clone()
        out[:, 0] += 4.0 * (2 * label[: act.shape[0], None] - 1) * u
        return out

    with ce64.hooks(fwd_hooks=[("blocks.0.hook_resid_post", plant)]):
        res = probe(ce64, pairs, label, sites=["resid_post"], kind="logistic", folds=4, batch_size=64)
    assert res.metric == "accuracy" and res.settings["group"] == "first"
    assert res.score[0, 0] > 0.95 and res.score[0, 1] > 0.9
    assert res.chance is not None and (res.control < res.chance + 0.15).all()  # no better than chance
    with pytest.raises(InputError, match="0 or 1"):
        probe(ce64, pairs, f[:, 0], kind="logistic")


def test_ridge_equals_sklearn_and_folds_hold_out_queries():
    from sklearn.linear_model import Ridge

    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.0, 0.5, 0.0], dtype=torch.float64) + 0.3 * torch.randn(
        60, generator=g, dtype=torch.float64
    )
    fold = torch.arange(60) % 3
    pooled, per_fold = _cross_validate(x, y[:, None], fold, 3, "ridge", 0.1)
    pred = torch.empty(60, dtype=torch.float64)
    for f in range(3):
        tr = fold != f
        xc = x[tr] - x[tr].mean(0)
        lam = 0.1 * float(torch.trace(xc.T @ xc)) / 5
        pred[~tr] = torch.from_numpy(
            Ridge(alpha=lam).fit(x[tr].numpy(), y[tr].numpy()).predict(x[~tr].numpy())
        )
    want = 1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert abs(float(pooled[0]) - float(want)) < 1e-10
    te = fold == 0
    want0 = 1 - ((y[te] - pred[te]) ** 2).sum() / ((y[te] - y[te].mean()) ** 2).sum()
    assert abs(float(per_fold[0, 0]) - float(want0)) < 1e-10
    # folds: every pair of a query in one fold; seeded
    keys = ["a", "a", "b", "c", "c", "c", "d"]
    folds = _fold_ids(keys, 2, seed=3)
    assert folds[0] == folds[1] and folds[3] == folds[4] == folds[5]
    assert torch.equal(folds, _fold_ids(keys, 2, seed=3)) and set(folds.tolist()) == {0, 1}
    with pytest.raises(InputError, match="distinct hold-out groups"):
        _fold_ids(keys, 5, seed=0)


def test_probe_of_ir_features_runs_and_rejects_bad_inputs(ce64):
    pairs = list(zip(QUERIES, DOCS, strict=True)) * 2
    res = probe(ce64, pairs, "idf", collection=dict(enumerate(DOCS)), folds=2, hold_out="pair", layers=[1])
    assert res.feature == "idf" and res.score.shape == (1, 1) and math.isfinite(float(res.score[0, 0]))
    with pytest.raises(InputError, match="collection="):
        probe(ce64, pairs, "idf")
    with pytest.raises(InputError, match="position axis"):
        probe(ce64, pairs, "idf", collection=dict(enumerate(DOCS)), sites=["pattern"])
    with pytest.raises(InputError, match="shape"):
        probe(ce64, pairs, torch.zeros(3, 2))
    with pytest.raises(InputError, match="constant"):
        probe(ce64, pairs, torch.ones(len(pairs)), hold_out="pair", folds=2)
    with pytest.raises(InputError, match="kind"):
        probe(ce64, pairs, torch.arange(len(pairs)).double(), kind="lasso")


def test_a_bi_encoder_holds_out_documents(be64):
    # the same documents under four queries: folds by document, so no test document is seen in training
    pairs = [(q, d) for q in QUERIES for d in DOCS]
    feats = ir_features(be64, dict(enumerate(DOCS)), pairs)
    res = probe(be64, pairs, "idf", features=feats, folds=4, layers=[0])
    assert res.settings["hold_out"] == "doc" and math.isfinite(float(res.score[0, 0]))
    with pytest.raises(InputError, match="distinct hold-out groups"):
        probe(be64, pairs, "idf", features=feats, folds=5)  # 4 documents only
    with pytest.raises(InputError, match="hold_out"):
        probe(be64, pairs, "idf", features=feats, hold_out="token")


def test_token_idf_by_hand(ce64):
    tok = ce64.tokenizer
    table = token_idf(tok, TINY)
    cats, dogs = tok.convert_tokens_to_ids("cats"), tok.convert_tokens_to_ids("dogs")
    assert table[cats] == pytest.approx(math.log(1 + 1.5 / 2.5))
    assert table[dogs] == pytest.approx(math.log(1 + 2.5 / 1.5))
    assert tok.cls_token_id not in table
    terms = token_idf(tok, TINY, idf="terms")
    assert terms[cats] == pytest.approx(math.log(1 + 1.5 / 2.5)) and "purr" not in tok.get_vocab()
    assert set(terms) == {tok.convert_tokens_to_ids(w) for w in ("cats", "dogs", "bark", "loudly")}


def test_a_planted_idf_direction_is_found(tiny_ce_dir):
    from mechir_nig import HookedCrossEncoder

    ce = HookedCrossEncoder.from_pretrained(tiny_ce_dir, dtype=torch.float64)
    docs = {f"d{i}": text for i, text in enumerate(DOCS + QUERIES + ["rice rice neuron cell", "black stars"])}
    table = token_idf(ce.tokenizer, docs)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(ce.cfg.d_model, generator=g, dtype=torch.float64)
    u /= u.norm()
    ids = torch.tensor(sorted(table))
    idf = torch.tensor([table[int(t)] for t in ids], dtype=torch.float64)
    with torch.no_grad():
        w = ce.embed.W_E
        w.copy_(0.01 * torch.randn(w.shape, generator=g, dtype=torch.float64))
        w[ids] = 5.0 * (idf - idf.mean())[:, None] * u  # present tokens: along u, plus the same small noise
        w[ids] += 0.01 * torch.randn(len(ids), w.shape[1], generator=g, dtype=torch.float64)
    dirs = embedding_directions(ce, docs, k=3, n_resamples=200)
    assert dirs.components.shape == (3, ce.cfg.d_model)
    assert abs(float(dirs.components[0] @ u)) > 0.999
    r, low, high = dirs.pearson[0]
    assert abs(r) > 0.999 and low <= r <= high  # its sign: that of the largest loading, not of IDF
    # Spearman: the noise orders the many tokens of equal IDF (df = 1) at random, so below 1
    assert abs(dirs.spearman[0][0]) > 0.6 and dirs.spearman[0][0] * r > 0
    assert all(abs(p[0]) < 0.5 for p in dirs.pearson[1:])  # the other components: noise
    assert dirs.idf_component == 0 and float(dirs.idf_direction @ u) > 0.999  # oriented to higher IDF
    assert dirs.explained[0] > 0.5 and len(dirs.table()) == 3 and "Spearman" in dirs.to_markdown()
    # the same from a ready {token id: idf} table
    again = embedding_directions(ce, table, k=1, n_resamples=50)
    assert again.pearson[0][0] == pytest.approx(r)
    with pytest.raises(InputError, match="k must"):
        embedding_directions(ce, table, k=ce.cfg.d_model + 1)
