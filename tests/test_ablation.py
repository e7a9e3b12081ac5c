"""Ablation through hooks (issue 9): exact equivalence with hand-written hooks, scoping, validation."""

from __future__ import annotations

import pytest
import torch
from conftest import DOCS, QUERIES

from mechir_nig.errors import InputError
from mechir_nig.interventions import AblationReference, ablate, ablation_hooks, baseline_active
from mechir_nig.models.tokenization import DOC, QUERY
from mechir_nig.sets import ComponentSet, NeuronSet


@pytest.fixture(scope="module")
def batch(tiny_ce):
    return tiny_ce.tokenize(QUERIES, DOCS)


def neurons(model, pairs):
    return NeuronSet(pairs, n_layers=model.cfg.n_layers, d_mlp=model.cfg.d_mlp)


def set_by_hand(model, batch, name, index, value_fn):
    def fn(act, hook):
        act = act.clone()
        act[..., index] = value_fn(act)
        return act

    return model.run_with_hooks(batch, fwd_hooks=[(name, fn)])


def test_context_restores_model_also_after_exception(tiny_ce, batch):
    clean = tiny_ce(batch)
    s = neurons(tiny_ce, [(0, 3), (1, 5)])
    with ablate(tiny_ce, s, mode="zero"):
        inside = tiny_ce(batch)
    assert not torch.equal(inside, clean)
    assert torch.equal(tiny_ce(batch), clean)
    with pytest.raises(RuntimeError, match="boom"), ablate(tiny_ce, s, mode="baseline", positions="doc"):
        tiny_ce(batch)
        raise RuntimeError("boom")
    assert torch.equal(tiny_ce(batch), clean)
    assert "forward" not in vars(tiny_ce)
    assert all(not hp.fwd_hooks for hp in tiny_ce.hook_dict.values())


def test_zero_ablation_equals_hand_zeroing(tiny_ce, batch):
    s = neurons(tiny_ce, [(1, 7)])
    expected = set_by_hand(tiny_ce, batch, "blocks.1.mlp.hook_post", 7, lambda a: 0.0)
    with ablate(tiny_ce, s, mode="zero"):
        got = tiny_ce(batch)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    hooked = tiny_ce.run_with_hooks(batch, fwd_hooks=ablation_hooks(tiny_ce, s, mode="zero"))
    torch.testing.assert_close(hooked, expected, atol=1e-6, rtol=0)


def test_baseline_ablation_of_a_whole_layer_gives_the_baseline_activations(tiny_ce, batch):
    from mechir_nig.attribution.baselines import baseline_embeddings

    d = tiny_ce.cfg.d_mlp
    name = "blocks.0.mlp.hook_post"
    emb = baseline_embeddings(tiny_ce, batch.input_ids, batch.groups, "pad")
    _, base = tiny_ce.run_with_cache(
        None, batch.token_type_ids, batch.attention_mask, input_embeds=emb, names_filter=[name]
    )
    whole = neurons(tiny_ce, [(0, n) for n in range(d)])
    with ablate(tiny_ce, whole, mode="baseline"):
        _, cache = tiny_ce.run_with_cache(batch, names_filter=[name])
    # at every attended position (padding, which no score reads, is left at 0)
    attended = batch.attention_mask.bool().unsqueeze(-1)
    torch.testing.assert_close(cache[name] * attended, base[name] * attended, atol=1e-6, rtol=0)
    # and the scores equal a run where layer 0's MLP output is the baseline's
    hooks = ablation_hooks(tiny_ce, whole, mode="baseline", batch=batch)
    expected = tiny_ce.run_with_hooks(batch, fwd_hooks=[(name, lambda a, hook: base[name])])
    torch.testing.assert_close(tiny_ce.run_with_hooks(batch, fwd_hooks=hooks), expected, atol=1e-6, rtol=0)


def test_mean_ablation_uses_the_reference_mean(tiny_ce, batch):
    ref = AblationReference.compute(tiny_ce, QUERIES[:3], DOCS[1:4], batch_size=2)
    name = "blocks.1.mlp.hook_post"
    # the reference mean is the mean over every attended token of the reference pairs
    rb = tiny_ce.tokenize(QUERIES[:3], DOCS[1:4])
    _, c = tiny_ce.run_with_cache(rb, names_filter=[name])
    mask = rb.attention_mask.bool()
    torch.testing.assert_close(ref.mean(name).float(), c[name][mask].mean(0), atol=1e-5, rtol=0)
    s = neurons(tiny_ce, [(1, 2), (1, 9)])
    m = ref.mean(name)
    expected = set_by_hand(tiny_ce, batch, name, [2, 9], lambda a: m[[2, 9]].to(a.dtype))
    with ablate(tiny_ce, s, mode="mean", reference=ref):
        got = tiny_ce(batch)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_reference_save_load_and_resample(tiny_ce, batch, tmp_path):
    ref = AblationReference.compute(tiny_ce, QUERIES, DOCS)
    back = AblationReference.load(ref.save(tmp_path / "ref.pt"))
    name = "blocks.0.mlp.hook_post"
    torch.testing.assert_close(back.mean(name), ref.mean(name))
    s = neurons(tiny_ce, [(0, 1)])
    with ablate(tiny_ce, s, mode="resample", reference=ref, seed=3):
        a = tiny_ce(batch)
    with ablate(tiny_ce, s, mode="resample", reference=back, seed=3):
        b = tiny_ce(batch)
    torch.testing.assert_close(a, b)
    rows = torch.randint(len(ref), (len(batch),), generator=torch.Generator().manual_seed(3))
    vals = ref.per_input[name][rows][:, 1]
    expected = set_by_hand(
        tiny_ce, batch, name, 1, lambda act: vals.to(act.dtype)[:, None].expand(act.shape[:2])
    )
    torch.testing.assert_close(a, expected, atol=1e-6, rtol=0)


def test_head_ablation_equals_zeroing_hook_z(tiny_ce, batch):
    heads = ComponentSet([(1, 1)], kind="head", n_layers=tiny_ce.cfg.n_layers, width=tiny_ce.cfg.n_heads)

    def fn(z, hook):
        z = z.clone()
        z[:, :, 1] = 0.0
        return z

    expected = tiny_ce.run_with_hooks(batch, fwd_hooks=[("blocks.1.attn.hook_z", fn)])
    with ablate(tiny_ce, heads, mode="zero"):
        got = tiny_ce(batch)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_doc_positions_touch_only_doc_tokens(tiny_ce, batch):
    name = "blocks.0.mlp.hook_post"
    s = neurons(tiny_ce, [(0, n) for n in range(tiny_ce.cfg.d_mlp)])
    _, clean = tiny_ce.run_with_cache(batch, names_filter=[name])
    with ablate(tiny_ce, s, mode="zero", positions="doc"):
        _, cache = tiny_ce.run_with_cache(batch, names_filter=[name])
    doc = batch.groups == DOC
    assert torch.all(cache[name][doc] == 0)
    assert torch.equal(cache[name][~doc], clean[name][~doc])
    # a tensor mask equal to the doc group does the same
    with ablate(tiny_ce, s, mode="zero", positions=doc):
        _, same = tiny_ce.run_with_cache(batch, names_filter=[name])
    assert torch.equal(same[name], cache[name])


def test_empty_set_changes_nothing(tiny_ce, batch):
    empty = neurons(tiny_ce, [])
    with ablate(tiny_ce, empty, mode="baseline"):
        assert torch.equal(tiny_ce(batch), tiny_ce.run_with_hooks(batch, fwd_hooks=[]))


def test_bad_inputs_say_what_to_fix(tiny_ce, batch):
    other = NeuronSet([(0, 1)], n_layers=tiny_ce.cfg.n_layers + 1, d_mlp=tiny_ce.cfg.d_mlp)
    with pytest.raises(InputError, match="select the set from this model"):
        ablate(tiny_ce, other)
    s = neurons(tiny_ce, [(0, 1)])
    with pytest.raises(InputError, match="mode must be one of"):
        ablate(tiny_ce, s, mode="erase")
    with pytest.raises(InputError, match="needs reference="):
        ablate(tiny_ce, s, mode="mean")
    with pytest.raises(InputError, match="reference is empty"):
        AblationReference.compute(tiny_ce, [], [])
    with pytest.raises(InputError, match="positions must be one of"):
        ablate(tiny_ce, s, positions="title")
    with pytest.raises(InputError, match="bi-encoders only"):
        ablate(tiny_ce, s, side="doc")
    bad = torch.ones(len(batch), batch.input_ids.shape[1] + 1, dtype=torch.bool)
    clean = tiny_ce(batch)
    with pytest.raises(InputError, match="shaped like the batch"), ablate(tiny_ce, s, positions=bad):
        tiny_ce(batch)
    assert torch.equal(tiny_ce(batch), clean)  # nothing left behind after the error
    with pytest.raises(InputError, match="pass batch="):
        tiny_ce.run_with_hooks(batch, fwd_hooks=ablation_hooks(tiny_ce, s, mode="baseline"))


def test_baseline_active_report(tiny_ce):
    s = neurons(tiny_ce, [(0, 1), (1, 2), (1, 3)])
    report = baseline_active(tiny_ce, QUERIES, DOCS, s, threshold=0.0)
    assert report.neurons == [(0, 1), (1, 2), (1, 3)]
    assert report.input_mean.shape == report.baseline_mean.shape == (3,)
    assert len(report.active_set) + len(report.filtered) == 3
    strict = baseline_active(tiny_ce, QUERIES, DOCS, s, threshold=1e9)
    assert len(strict.active_set) == 0 and strict.filtered == s
    assert len(report.to_dict()["neurons"]) == 3


def test_bi_encoder_side(minilm_be):
    s = NeuronSet([(2, n) for n in range(50)], n_layers=minilm_be.cfg.n_layers, d_mlp=minilm_be.cfg.d_mlp)
    q_clean = minilm_be.encode(QUERIES[:2])
    with ablate(minilm_be, s, mode="baseline", side="doc") as ab:
        q = ab.encode(QUERIES[:2], side="query")
        d = ab.encode(DOCS[:2], side="doc")
        scores = ab.score(QUERIES[:2], DOCS[:2])
    torch.testing.assert_close(q, q_clean)
    assert not torch.allclose(d, minilm_be.encode(DOCS[:2]))
    torch.testing.assert_close(scores, (q * d).sum(-1), atol=1e-6, rtol=0)


def test_rerank_under_a_doc_side_ablation(minilm_be):
    """evaluation.rerank(ab, ...) ablates only the ablation's side of a bi-encoder."""
    from mechir_nig.data import bm25_candidates, load_collection
    from mechir_nig.evaluation import rerank

    col = load_collection("embedded")
    cands = bm25_candidates(col, k=5)
    s = NeuronSet([(1, n) for n in range(200)], n_layers=minilm_be.cfg.n_layers, d_mlp=minilm_be.cfg.d_mlp)
    pairs = [(q, d) for q in cands for d in cands[q]]
    docs = col.get_docs(d for _, d in pairs)
    q_clean = minilm_be.encode([col.queries[q] for q, _ in pairs])
    with ablate(minilm_be, s, mode="zero", side="doc") as ab:
        run = rerank(ab, col, cands)
        d_abl = ab.encode([docs[d] for _, d in pairs], side="doc")
    expected = (q_clean * d_abl).sum(-1)
    got = torch.tensor([run[q][d] for q, d in pairs])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    clean = rerank(minilm_be, col, cands)
    assert any(abs(clean[q][d] - run[q][d]) > 1e-4 for q, d in pairs)  # the ablation moved scores


def test_baseline_pass_runs_once_per_distinct_baseline_input(tiny_ce):
    """Pairs with the same query and document lengths have the same [PAD] baseline: the baseline pass runs
    on the distinct rows only, and the ablated run equals one whose baseline pass saw every row."""
    from mechir_nig.attribution.baselines import baseline_embeddings

    queries = ["cat", "dog", "cat", "neurons fire"]
    docs = ["the cat sat", "a dog ran", "neurons pass signals along axons", "brains"]
    batch = tiny_ce.tokenize(queries, docs)
    lengths = [(int((r == QUERY).sum()), int((r == DOC).sum())) for r in batch.groups]
    assert lengths[0] == lengths[1] and len(set(lengths)) == 3  # rows 0 and 1 share their baseline input
    name = "blocks.1.mlp.hook_post"
    emb = baseline_embeddings(tiny_ce, batch.input_ids, batch.groups, "pad")
    _, base = tiny_ce.run_with_cache(
        None, batch.token_type_ids, batch.attention_mask, input_embeds=emb, names_filter=[name]
    )
    whole = neurons(tiny_ce, [(1, n) for n in range(tiny_ce.cfg.d_mlp)])
    rows_seen = []
    spy = ("blocks.0.hook_resid_pre", lambda a, hook: rows_seen.append(a.shape[0]))
    with tiny_ce.hooks(fwd_hooks=[spy]), ablate(tiny_ce, whole, mode="baseline"):
        _, cache = tiny_ce.run_with_cache(batch, names_filter=[name])
        _, again = tiny_ce.run_with_cache(batch.select([3, 0]), names_filter=[name])
    # the baseline pass on 3 distinct rows, then the batch; the second batch reuses the kept rows
    assert rows_seen == [3, 4, 2]
    attended = batch.attention_mask.bool().unsqueeze(-1)
    torch.testing.assert_close(cache[name] * attended, base[name] * attended, atol=1e-6, rtol=0)
    n3 = int(batch.attention_mask[3].sum())
    torch.testing.assert_close(again[name][0, :n3], base[name][3, :n3], atol=1e-6, rtol=0)
    n0 = int(batch.attention_mask[0].sum())
    torch.testing.assert_close(again[name][1, :n0], base[name][0, :n0], atol=1e-6, rtol=0)
