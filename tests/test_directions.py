"""direction_intervention and idf_edit against the same edits written by hand on the HF model."""

from __future__ import annotations

import hf_hooks
import pytest
import torch
from conftest import DOCS, QUERIES

from mechir_nig.errors import InputError
from mechir_nig.interventions.directions import direction_hooks, direction_intervention
from mechir_nig.interventions.perturb import query_terms
from mechir_nig.models.tokenization import DOC, QUERY


def _unit(n: int, seed: int) -> torch.Tensor:
    u = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return u / u.norm()


def _captured(model, batch, name):
    got = {}

    def keep(act, hook):
        got["a"] = act.detach().clone()
        return act

    with model.hooks(fwd_hooks=[(name, keep)]):
        scores = model(batch)
    return scores, got["a"]


def test_project_out_removes_the_component_and_add_moves_it(ce64):
    batch = ce64.tokenize(QUERIES[:3], DOCS[:3])
    u = _unit(ce64.cfg.d_model, 0) * 3.0  # normalised inside
    name = "blocks.1.hook_resid_pre"
    _, clean = _captured(ce64, batch, name)
    with direction_intervention(ce64, "resid_pre", u, layers=[1], positions="doc"):
        _, out = _captured(ce64, batch, name)
    doc = batch.groups == DOC
    along = out @ (u / u.norm())
    assert along[doc].abs().max() < 1e-12
    assert (clean @ (u / u.norm()))[doc].abs().min() > 1e-4  # there was a component to remove
    torch.testing.assert_close(out[~doc], clean[~doc], atol=0, rtol=0)  # other positions untouched
    with direction_intervention(ce64, "resid_pre", u, mode="add", scale=2.5, layers=[1]):
        _, moved = _captured(ce64, batch, name)
    torch.testing.assert_close(
        (moved - clean) @ (u / u.norm()), torch.full(doc.shape, 2.5, dtype=torch.float64)
    )
    # orthogonal components unchanged
    rest = (moved - clean) - 2.5 * (u / u.norm())
    assert rest.abs().max() < 1e-12


@pytest.mark.parametrize(
    ("site", "layer", "kw", "width"),
    [
        ("resid_pre", 1, {"mode": "project_out", "positions": "doc"}, "d_model"),
        ("mlp_out", 0, {"mode": "add", "scale": 4.0}, "d_model"),
        ("mlp_post", 0, {"mode": "project_out", "positions": "query"}, "d_mlp"),
        ("z", 0, {"mode": "add", "scale": -3.0, "heads": [1]}, "d_head"),
    ],
)
def test_score_equals_a_hand_hf_hook(ce64, hf64, site, layer, kw, width):
    batch = ce64.tokenize(QUERIES, DOCS)
    u = _unit(getattr(ce64.cfg, width), 1)
    mode, scale = kw["mode"], kw.get("scale", 1.0)
    group = {"doc": DOC, "query": QUERY}.get(kw.get("positions", "all"))
    rows = (batch.groups == group) if group is not None else torch.ones(batch.groups.shape, dtype=torch.bool)

    def hand(t):  # the site's TL layout: [batch, pos, d] or [batch, pos, n_heads, d_head]
        edit = t + scale * u if mode == "add" else t - (t @ u)[..., None] * u
        m = rows[:, :, None] if t.ndim == 3 else rows[:, :, None, None]
        if "heads" in kw:
            on = torch.zeros(t.shape[2], dtype=torch.bool)
            on[kw["heads"]] = True
            m = m & on[None, None, :, None]
        return torch.where(m, edit, t)

    with torch.no_grad(), hf_hooks.edits(hf64, [(site, layer, hand)]):
        want = hf_hooks.score(hf64, batch)
    with direction_intervention(ce64, site, u, layers=[layer], **kw):
        got = ce64(batch)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert (got - ce64(batch)).abs().max() > 1e-4  # the edit changes the score, and is gone after the block
    hooks = direction_hooks(ce64, site, u, layers=[layer], **kw)
    torch.testing.assert_close(ce64.run_with_hooks(batch, fwd_hooks=hooks), got)


def test_composes_with_ablate(ce64, hf64):
    from mechir_nig.interventions.ablation import ablate
    from mechir_nig.sets import NeuronSet

    batch = ce64.tokenize(QUERIES[:2], DOCS[:2])
    u = _unit(ce64.cfg.d_model, 2)
    neurons = NeuronSet([(0, 3), (1, 5)], n_layers=2, d_mlp=ce64.cfg.d_mlp)

    def zero(layer_n):
        def fn(t):
            t = t.clone()
            t[..., layer_n] = 0
            return t

        return fn

    def proj(t):
        return t - (t @ u)[..., None] * u

    with (
        torch.no_grad(),
        hf_hooks.edits(hf64, [("mlp_post", 0, zero(3)), ("mlp_post", 1, zero(5)), ("resid_pre", 1, proj)]),
    ):
        want = hf_hooks.score(hf64, batch)
    with ablate(ce64, neurons), direction_intervention(ce64, "resid_pre", u, layers=[1]):
        got = ce64(batch)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_bad_inputs_say_what_to_fix(ce64):
    u = torch.ones(ce64.cfg.d_model)
    with pytest.raises(InputError, match="length 32"):
        direction_intervention(ce64, "resid_post", torch.ones(5))
    with pytest.raises(InputError, match="attention pattern"):
        direction_intervention(ce64, "pattern", u)
    with pytest.raises(InputError, match="heads= applies"):
        direction_intervention(ce64, "resid_post", u, heads=[0])
    with pytest.raises(InputError, match="non-zero"):
        direction_intervention(ce64, "resid_post", torch.zeros(ce64.cfg.d_model))
    with pytest.raises(InputError, match="scale applies"):
        direction_intervention(ce64, "resid_post", u, scale=2.0)
    with pytest.raises(InputError, match="mode"):
        direction_intervention(ce64, "resid_post", u, mode="flip")
    with pytest.raises(InputError, match="layers"):
        direction_intervention(ce64, "resid_post", u, layers=[7])


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), float("-inf")])
def test_a_scale_that_is_not_a_finite_number_is_refused(ce64, scale):
    # a NaN or infinite scale wrote NaN into every score silently
    u = torch.ones(ce64.cfg.d_model)
    with pytest.raises(InputError, match="scale must be a finite number"):
        direction_intervention(ce64, "resid_post", u, mode="add", scale=scale)


def test_idf_edit_equals_a_hand_hf_embedding_edit(ce64, hf64):
    from mechir_nig.analysis.embedding import idf_edit

    pairs = list(zip(QUERIES, DOCS, strict=True))
    u = _unit(ce64.cfg.d_model, 3)
    got = idf_edit(ce64, pairs, 5 * u, 2.0)
    batch = ce64.tokenize(QUERIES, DOCS)
    # by hand: the query-group tokens of each whitespace word that is a query term (stopwords left out)
    tok = ce64.tokenizer
    mask = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
    for i, q in enumerate(QUERIES):
        qpos = (batch.groups[i] == QUERY).nonzero().flatten()
        terms, k = set(query_terms(q)), 0
        for w in q.split():
            n = len(tok(w, add_special_tokens=False)["input_ids"])
            mask[i, qpos[k : k + n]] = w in terms
            k += n
        assert k == len(qpos)
    assert mask.sum() >= 4

    def embed_hook(module, args, out):
        return out + mask[:, :, None] * (2.0 * u)

    h = hf64.bert.embeddings.word_embeddings.register_forward_hook(embed_hook)
    try:
        with torch.no_grad():
            edited = hf_hooks.score(hf64, batch)
    finally:
        h.remove()
    with torch.no_grad():
        clean = hf_hooks.score(hf64, batch)
    torch.testing.assert_close(got, edited - clean, atol=1e-6, rtol=0)
    assert got.abs().max() > 1e-4
    torch.testing.assert_close(idf_edit(ce64, pairs, u, 0.0), torch.zeros(len(pairs), dtype=torch.float64))
    with pytest.raises(InputError, match="no term to edit"):
        idf_edit(ce64, [("what is a", "A cell.")], u, 1.0)


def test_idf_edit_on_a_bi_encoder_edits_the_query_side(minilm_be):
    from mechir_nig.analysis.embedding import idf_edit

    pairs = [("what is a neuron", "A neuron is a cell."), ("black holes", "Stars collapse.")]
    u = _unit(minilm_be.cfg.d_model, 4)
    delta = idf_edit(minilm_be, pairs, u, 3.0)
    assert delta.shape == (2,) and delta.abs().min() > 1e-5
    # by hand: the query embeddings with the term tokens' rows moved, the document side unchanged
    w = minilm_be.embed.W_E
    ids = minilm_be.tokenizer("neuron black holes", add_special_tokens=False)["input_ids"]  # ne ##uron ...
    with torch.no_grad():
        saved = w[ids].clone()
        w[ids] += 3.0 * u.to(w.dtype)
        try:
            q_edit = minilm_be.encode([p[0] for p in pairs])
        finally:
            w[ids] = saved
    d_emb = minilm_be.encode([p[1] for p in pairs])
    q_clean = minilm_be.encode([p[0] for p in pairs])
    want = (q_edit * d_emb).sum(-1) - (q_clean * d_emb).sum(-1)
    torch.testing.assert_close(delta, want.to(torch.float64), atol=1e-5, rtol=0)


def test_stacked_weights_equal_the_hf_weights(ce64, hf64):
    from mechir_nig.analysis.weights import stacked_weights

    w = stacked_weights(ce64)
    n_heads, d_head = ce64.cfg.n_heads, ce64.cfg.d_head
    for layer, blk in enumerate(hf64.bert.encoder.layer):
        for name, lin in (
            ("W_Q", blk.attention.self.query),
            ("W_K", blk.attention.self.key),
            ("W_V", blk.attention.self.value),
        ):
            for h in range(n_heads):  # HF: rows (head, d_head) of out_features x d_model
                torch.testing.assert_close(
                    getattr(w, name)[layer, h], lin.weight[h * d_head : (h + 1) * d_head].T
                )
        for h in range(n_heads):
            torch.testing.assert_close(
                w.W_O[layer, h], blk.attention.output.dense.weight[:, h * d_head : (h + 1) * d_head].T
            )
        torch.testing.assert_close(w.W_in[layer], blk.intermediate.dense.weight.T)
        torch.testing.assert_close(w.W_out[layer], blk.output.dense.weight.T)
    torch.testing.assert_close(w.QK.AB, w.W_Q @ w.W_K.transpose(-2, -1))
    torch.testing.assert_close(w.OV.AB, w.W_V @ w.W_O)
    assert w.QK.AB.shape == (2, n_heads, ce64.cfg.d_model, ce64.cfg.d_model)
    assert w.all_head_labels == ["L0H0", "L0H1", "L1H0", "L1H1"]
    # the OV circuit of a head is what it writes: z @ W_O for values z = x @ W_V
    x = torch.randn(3, ce64.cfg.d_model, dtype=torch.float64)
    torch.testing.assert_close(x @ w.OV.AB[1, 0], (x @ w.W_V[1, 0]) @ w.W_O[1, 0])
