"""Every toolkit feature on every non-BERT family (issue 16): ModernBERT, DeBERTa-v3, a Qwen3 causal LM
with the qwen3-reranker template, a Qwen2 sequence classifier and monoT5 v1.0.

Each family runs, on tiny seeded random checkpoints (tests/family_checkpoints.py) and a tiny in-memory
collection: ``score``, ``run_with_cache``, NIG with completeness, ``ablate`` (zero, mean, baseline),
``patch`` (resid_pre, heads) of an aligned perturbation, ``pruning_study``, ``faithfulness``,
``attribute_collection`` with a resume, the CLI (``attribute --template`` then ``report``) and bf16.
Values are asserted (completeness, hand-made hook runs, resumed = one run), not only that it runs.
"""

from __future__ import annotations

import pytest
import torch
from family_checkpoints import (
    DEBERTA_VARIANTS,
    T5_DOCS,
    T5_QUERIES,
    deberta_tokenizer,
    decoder_tokenizer,
    make_deberta,
    make_decoder,
    make_modernbert,
    make_t5,
    t5_tokenizer,
    wordpiece_tokenizer,
)

from mechir_nig import load_model
from mechir_nig.attribution import baseline_embeddings
from mechir_nig.models.tokenization import DOC, PROMPT, QUERY

FAMILIES = ("modernbert", "deberta", "qwen3", "qwen2-seq", "monot5")
TEMPLATES = {"qwen3": "qwen3-reranker", "monot5": "monot5"}  # the others read no prompt
Q, D = T5_QUERIES, T5_DOCS  # short pairs: few tokens for every tokenizer (ReLU kinks of T5 stay few)
EXTRA = ["rice is a cereal grain", "stars shine at night", "the heart pumps blood"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    mk = tmp_path_factory.mktemp
    _, dec_tok = decoder_tokenizer(mk("dectok"))
    return {
        "modernbert": make_modernbert(mk("mb"), wordpiece_tokenizer(), n_layers=2, seed=1),
        "deberta": make_deberta(mk("deb"), deberta_tokenizer(), **DEBERTA_VARIANTS["v3"]),
        "qwen3": make_decoder(mk("qwen3"), dec_tok, "qwen3", pad_row=True),
        "qwen2-seq": make_decoder(mk("qwen2"), dec_tok, "qwen2", pad_row=True),
        "monot5": make_t5(mk("t5"), t5_tokenizer(), "v1.0"),
    }


_MODELS: dict[tuple[str, torch.dtype], object] = {}


def model_of(folders, family, dtype=torch.float64):
    """The family's model, loaded once per dtype (float64: exact completeness and hook comparisons)."""
    key = (family, dtype)
    if key not in _MODELS:
        kw = {"template": TEMPLATES[family]} if family in TEMPLATES else {}
        _MODELS[key] = load_model(folders[family], dtype=dtype, **kw)
    return _MODELS[key]


@pytest.fixture(scope="module")
def collection():
    from ir_measures import Qrel

    from mechir_nig.data.collection import Collection

    docs = {f"d{i}": t for i, t in enumerate(D + EXTRA)}
    queries = {f"q{i}": t for i, t in enumerate(Q)}
    qrels = [Qrel(f"q{i}", f"d{i}", 1) for i in range(len(Q))]
    qrels += [Qrel(f"q{i}", f"d{(i + 1) % len(Q)}", 0) for i in range(len(Q))]
    return Collection(docs=docs, queries=queries, qrels=qrels, name="tiny")


def write_collection(col, folder):
    folder.mkdir()
    (folder / "docs.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in col.docs.items()))
    (folder / "queries.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in col.queries.items()))
    (folder / "qrels.txt").write_text(
        "".join(f"{r.query_id} 0 {r.doc_id} {r.relevance}\n" for r in col.qrels)
    )
    return folder


@pytest.mark.parametrize("family", FAMILIES)
def test_score_cache_and_nig_completeness(folders, family):
    from mechir_nig import neuron_integrated_gradients

    model = model_of(folders, family)
    batch = model.tokenize(Q, D)
    scores = model.score(Q, D)
    assert scores.shape == (3,) and torch.isfinite(scores).all() and scores.std() > 0
    torch.testing.assert_close(model(batch), scores, rtol=0, atol=1e-10)
    out, cache = model.run_with_cache(batch)
    torch.testing.assert_close(out, scores, rtol=0, atol=1e-10)
    seen = {}
    model.run_with_hooks(
        batch, fwd_hooks=[("blocks.1.mlp.hook_post", lambda a, hook: seen.setdefault("a", a))]
    )
    torch.testing.assert_close(cache["blocks.1.mlp.hook_post"], seen["a"], rtol=0, atol=1e-12)
    assert cache["blocks.1.mlp.hook_post"].shape[-1] == model.cfg.d_mlp

    # completeness: summed input IG = F(x) - F(x') within 2% (test_nig's trapezoid tolerance). monoT5 v1.0's
    # ReLU kinks need far finer grids than the smooth GELU/SiLU families (and its tokenizer's ids, so its
    # weights' rows, vary between trainings): n_steps="auto" doubles each pair's grid until it holds
    attr = neuron_integrated_gradients(model, Q, D, n_steps="auto", tol=0.02, max_steps=2048)
    torch.testing.assert_close(attr.scores, scores, rtol=0, atol=1e-8)
    gap = attr.scores - attr.baseline_scores
    assert gap.abs().min() > 1e-3  # a real score change to explain
    assert (attr.convergence_delta / gap).abs().max() <= 0.02
    assert (attr.n_steps_used >= 8).all() and (attr.n_steps_used <= 2048).all()
    # token groups: by_group sums to per_neuron; templated families have a prompt group
    templated = family in TEMPLATES
    assert bool((attr.groups == PROMPT).any()) == templated
    assert attr.group_names == (("cls", "query", "sep", "doc") + (("prompt",) if templated else ()))
    torch.testing.assert_close(attr.by_group().sum(2), attr.per_neuron(), rtol=1e-9, atol=1e-12)
    grouped = neuron_integrated_gradients(model, Q, D, n_steps=4, reduce="group")
    token = neuron_integrated_gradients(model, Q, D, n_steps=4)
    torch.testing.assert_close(grouped.by_group(), token.by_group(), rtol=1e-9, atol=1e-12)
    # the baseline replaces query and document tokens only (never the prompt or special tokens)
    xb = baseline_embeddings(model, batch.input_ids, batch.groups, "pad")
    replaced = (xb != model.word_embeddings(batch.input_ids)).any(-1) & batch.attention_mask.bool()
    assert torch.equal(replaced, (batch.groups == QUERY) | (batch.groups == DOC))


@pytest.mark.parametrize("family", FAMILIES)
def test_ablate_modes(folders, family):
    from mechir_nig.interventions.ablation import AblationReference, ablate
    from mechir_nig.sets import NeuronSet

    model = model_of(folders, family)
    batch = model.tokenize(Q, D)
    clean = model(batch)
    d_mlp = model.cfg.d_mlp
    units = {0: [1, 2], 1: [0, 3, 5]}
    ns = NeuronSet(
        [(layer, n) for layer, us in units.items() for n in us], n_layers=model.cfg.n_layers, d_mlp=d_mlp
    )
    ref = AblationReference.compute(model, Q, D)
    nothing = torch.zeros_like(batch.attention_mask, dtype=torch.bool)
    for mode in ("zero", "mean", "baseline"):
        kw = {"reference": ref} if mode == "mean" else {}
        with ablate(model, ns, mode=mode, positions=nothing, **kw):  # ablating no position: the clean score
            torch.testing.assert_close(model(batch), clean, rtol=0, atol=1e-10)
        with ablate(model, ns, mode=mode, **kw):
            out = model(batch)
        assert not torch.allclose(out, clean), mode

    def zero(act, hook, ns):
        act = act.clone()
        act[..., ns] = 0
        return act

    hooks = [
        (f"blocks.{layer}.mlp.hook_post", lambda a, hook, ns=us: zero(a, hook, ns))
        for layer, us in units.items()
    ]
    by_hand = model.run_with_hooks(batch, fwd_hooks=hooks)
    with ablate(model, ns, mode="zero"):
        torch.testing.assert_close(model(batch), by_hand, rtol=0, atol=1e-10)
    only = batch.groups == PROMPT  # the template's tokens: a position group of their own (none in encoders)
    hooks = [
        (
            f"blocks.{layer}.mlp.hook_post",
            lambda a, hook, ns=us: torch.where(only[..., None], zero(a, hook, ns), a),
        )
        for layer, us in units.items()
    ]
    with ablate(model, ns, mode="zero", positions="prompt"):
        got = model(batch)
    torch.testing.assert_close(got, model.run_with_hooks(batch, fwd_hooks=hooks), rtol=0, atol=1e-10)
    assert torch.equal(got, clean) == (family not in TEMPLATES)


@pytest.mark.parametrize("family", FAMILIES)
def test_patch_aligned_perturbation(folders, family):
    from mechir_nig.interventions import perturb
    from mechir_nig.interventions.patching import patch

    model = model_of(folders, family)
    al = perturb.align(model, Q, D, lambda q, d: "neuron " + d)
    assert (al.clean.attention_mask == 0).any()  # masked slots inserted on the clean side
    torch.testing.assert_close(model(al.clean), model.score(Q, D), rtol=0, atol=1e-6)
    pert = ["neuron " + d for d in D]
    torch.testing.assert_close(model(al.perturbed), model.score(Q, pert), rtol=0, atol=1e-6)

    res = patch(model, al, sites=("resid_pre", "heads"), metric="raw")
    n_pos = al.clean.input_ids.shape[1]
    assert res["resid_pre"].shape == (3, model.cfg.n_layers, n_pos)
    assert res["heads"].shape == (3, model.cfg.n_layers, model.cfg.n_heads)
    # denoise: run the perturbed pairs with one clean resid_pre position written in, by hand
    _, cache = model.run_with_cache(al.clean, names_filter=["blocks.1.hook_resid_pre"])
    src = cache["blocks.1.hook_resid_pre"]
    base = model(al.perturbed)
    v = res["resid_pre"][:, 1].nan_to_num()
    row, pos = divmod(int(v.abs().argmax()), n_pos)
    assert v[row, pos].abs() > 1e-6

    def put(act, hook):
        act = act.clone()
        act[row, pos] = src[row, pos]
        return act

    patched = model.run_with_hooks(al.perturbed, fwd_hooks=[("blocks.1.hook_resid_pre", put)])
    torch.testing.assert_close(
        res["resid_pre"][row, 1, pos].double(), (patched - base)[row], rtol=1e-5, atol=1e-7
    )


# each family's norms: the hook its input is, and whether it is an RMSNorm (mean of squares, no centring)
NORM_INPUTS = {
    "modernbert": ({"ln1": "hook_resid_pre", "ln2": "hook_resid_mid"}, False),
    "deberta": ({"ln1": "hook_resid_mid", "ln2": "hook_resid_post"}, False),
    "qwen3": ({"ln1": "hook_resid_pre", "ln2": "hook_resid_mid"}, True),
    "qwen2-seq": ({"ln1": "hook_resid_pre", "ln2": "hook_resid_mid"}, True),
    "monot5": ({"ln1": "hook_resid_pre", "ln2": "hook_resid_mid"}, True),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_norm_sites(folders, family):
    """``blocks.1.ln1/ln2.hook_scale`` is ``1/sqrt(var + eps)`` (RMSNorm: ``mean(x²)``) of the norm's input,
    reading it changes no score, and ``patch`` of the scale sites equals a hand-written hook run."""
    from mechir_nig import InputError
    from mechir_nig.interventions import perturb
    from mechir_nig.interventions.patching import patch

    model = model_of(folders, family)
    batch = model.tokenize(Q, D)
    inputs, rms = NORM_INPUTS[family]
    names = [f"blocks.1.{ln}.hook_{w}" for ln in inputs for w in ("scale", "normalized")]
    names += [f"blocks.1.{h}" for h in inputs.values()]
    out, cache = model.run_with_cache(batch, names_filter=names)
    torch.testing.assert_close(out, model(batch), rtol=0, atol=1e-10)
    for ln, h in inputs.items():
        x = cache[f"blocks.1.{h}"].float() if family == "monot5" else cache[f"blocks.1.{h}"]  # HF T5: float32
        var = x.pow(2).mean(-1, keepdim=True) if rms else x.var(-1, unbiased=False, keepdim=True)
        scale = cache[f"blocks.1.{ln}.hook_scale"]
        assert scale.shape == (*batch.input_ids.shape, 1)
        torch.testing.assert_close(
            scale, (1 / torch.sqrt(var + model.cfg.eps)).to(scale.dtype), rtol=1e-6, atol=0
        )
        assert cache[f"blocks.1.{ln}.hook_normalized"].shape == (*batch.input_ids.shape, model.cfg.d_model)

    al = perturb.align(model, Q, D, lambda q, d: "neuron " + d)
    if family == "modernbert":  # its first block has no ln1 (the embedding is normalised already)
        with pytest.raises(InputError, match=r"blocks\.0\.ln1\.hook_scale"):
            patch(model, al, sites="ln1_scale")
    res = patch(model, al, sites=["ln1_scale", "ln2_scale"], layers=[1], metric="raw")
    _, src = model.run_with_cache(al.clean, names_filter=["blocks.1.ln2.hook_scale"])
    v = res["ln2_scale"][:, 0].nan_to_num()
    row, pos = divmod(int(v.abs().argmax()), v.shape[1])
    assert v[row, pos].abs() > 1e-6 and res["ln1_scale"].abs().max() > 1e-6

    def put(act, hook):
        act = act.clone()
        act[row, pos] = src["blocks.1.ln2.hook_scale"][row, pos]
        return act

    patched = model.run_with_hooks(al.perturbed, fwd_hooks=[("blocks.1.ln2.hook_scale", put)])
    torch.testing.assert_close(
        v[row, pos].double(), (patched - model(al.perturbed))[row], rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_decompose_resid_with_frozen_norms(folders, family):
    """The encoder families' output is the sum of its frozen-LayerNorm decomposition (ModernBERT: pre-LN
    blocks, its final norm frozen; DeBERTa: post-LN), the decoders' final hidden states the sum of theirs
    (pre-RMSNorm blocks, the final RMSNorm's scale frozen, no bias); monoT5's stream is refused, saying
    where its score's decomposition is."""
    from mechir_nig.analysis import decompose_resid, decompose_score
    from mechir_nig.errors import UnsupportedArchitectureError

    model = model_of(folders, family)
    batch = model.tokenize(Q, D)
    if family == "monot5":  # its decoder's components: decompose_score (test_decomposition)
        with pytest.raises(UnsupportedArchitectureError, match=r"other blocks \(monoT5.*decompose_score"):
            decompose_resid(model, batch)
        assert decompose_score(model, batch).labels[0] == "dec_embed"
        return
    dec = decompose_resid(model, batch)
    with torch.no_grad():
        if family in ("modernbert", "deberta"):
            out = model.encoder_forward(batch.input_ids, batch.token_type_ids, batch.attention_mask)
        else:  # a decoder: the last block's output through the final RMSNorm
            out = model.ln_final(model(batch, stop_at_layer=model.cfg.n_layers))
    torch.testing.assert_close(dec.resid, out, rtol=0, atol=1e-12)
    torch.testing.assert_close(dec.components.sum(0), out, rtol=0, atol=1e-10)
    last = {"modernbert": "ln_final_bias", "deberta": "1_ln2_bias"}.get(family, "1_mlp_out")
    assert dec.labels[-1] == last


@pytest.mark.parametrize("family", FAMILIES)
def test_pruning_and_faithfulness(folders, family, collection):
    from mechir_nig.data import bm25_candidates
    from mechir_nig.evaluation import evaluate, rerank
    from mechir_nig.experiments.faithfulness import faithfulness
    from mechir_nig.experiments.pruning import pruning_study
    from mechir_nig.interventions.ablation import ablate
    from mechir_nig.sets import NeuronSet

    model = model_of(folders, family)
    cands = bm25_candidates(collection, k=3)
    sel, ev = ["q0"], ["q1", "q2"]
    ranking = torch.randn(model.cfg.n_layers, model.cfg.d_mlp, generator=torch.Generator().manual_seed(0))
    study = pruning_study(
        model, collection, cands, ranking, fractions=(0.1,), seeds=1, modes=("zero",),
        select_queries=sel, eval_queries=ev, progress=False,
    )  # fmt: skip
    unpruned = next(r for r in study.runs if r["condition"] == "unpruned")
    expected = evaluate(rerank(model, collection, cands, query_ids=ev), collection, ["nDCG@10"], query_ids=ev)
    assert unpruned["nDCG@10"] == pytest.approx(expected["nDCG@10"], abs=1e-9)
    top = next(r for r in study.runs if r["condition"] == "nig_top")
    assert top["n_neurons"] == round(0.1 * model.cfg.n_layers * model.cfg.d_mlp)

    faith = faithfulness(model, Q, D, k=3, curve_k=2, seeds=1, interventions=("zero",), n_steps=4)
    assert faith.drops["zero"].shape == (3, 3) and faith.neurons.shape == (3, 3, 2)
    batch = model.tokenize(Q[:1], D[:1])
    layer, neuron = (int(x) for x in faith.neurons[0, 0])
    with ablate(model, NeuronSet([(layer, neuron)], n_layers=model.cfg.n_layers, d_mlp=model.cfg.d_mlp)):
        after = model(batch)
    drop = float(faith.drops["zero"][0, 0])
    assert drop == pytest.approx(float(model(batch)[0] - after[0]), abs=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_attribute_collection_resumes_to_one_run(folders, family, collection, tmp_path):
    from mechir_nig import attribute_collection
    from mechir_nig.attribution.stats import CollectionAttribution
    from mechir_nig.data import judged_pairs

    model = model_of(folders, family)
    pairs = judged_pairs(collection)
    kw = dict(n_steps=4, progress=False, batch_size=2)
    full = attribute_collection(model, pairs, **kw)
    ckpt = tmp_path / "run.ckpt"

    class Stop(Exception):
        pass

    def stop_after_2(n_done):
        if n_done >= 2:
            raise Stop

    with pytest.raises(Stop):  # the first part: stopped (no process killed) after 2 pairs
        attribute_collection(model, pairs, checkpoint=ckpt, checkpoint_every=1, on_batch=stop_after_2, **kw)
    assert CollectionAttribution.load(ckpt).n_done == 2
    seen = []
    resumed = attribute_collection(
        model, pairs, checkpoint=ckpt, checkpoint_every=1, resume=True, on_batch=seen.append, **kw
    )
    assert seen[0] == 4  # continued after the 2 checkpointed pairs
    assert resumed.counts == full.counts and resumed.n_done == len(pairs) == 6
    for label in ("relevant", "nonrelevant"):
        torch.testing.assert_close(resumed.sums[label], full.sums[label], rtol=0, atol=1e-9)
        torch.testing.assert_close(resumed.sums_sq[label], full.sums_sq[label], rtol=0, atol=1e-9)
    # "all" holds every token's NIG: the prompt's share is all minus the four groups
    groups = sum(full.mean("relevant", g) for g in ("cls", "query", "sep", "doc"))
    prompt = full.mean("relevant", "all") - groups
    assert (prompt.abs().max() > 1e-9) == (family in TEMPLATES)


@pytest.mark.parametrize("family", ["qwen3", "monot5", "modernbert"])
def test_collection_statistics_carry_the_prompt_group(folders, family, collection, tmp_path):
    """A templated family's statistics have a prompt row: the per-label mean of each pair's NIG summed over
    its prompt tokens (by hand from per-token NIG), kept by save / load and merge, drawn by group_bars;
    an encoder's statistics keep their four groups and file layout."""
    from mechir_nig import attribute_collection, neuron_integrated_gradients
    from mechir_nig.attribution.stats import GROUP_AXIS, PROMPT_GROUP_AXIS, CollectionAttribution
    from mechir_nig.data import judged_pairs
    from mechir_nig.errors import InputError
    from mechir_nig.plotting import group_bars, neuron_heatmap

    model = model_of(folders, family)
    pairs = judged_pairs(collection)
    stats = attribute_collection(model, pairs, n_steps=4, progress=False, batch_size=2)
    templated = family in TEMPLATES
    assert stats.prompt == templated
    assert stats.group_axis == (PROMPT_GROUP_AXIS if templated else GROUP_AXIS)
    token = neuron_integrated_gradients(model, [p.query for p in pairs], [p.doc for p in pairs], n_steps=4)
    is_prompt = (token.groups == PROMPT).to(token.values.dtype)  # [pair, pos]
    per_pair = torch.einsum("blpf,bp->blf", token.values, is_prompt)  # each pair's prompt tokens, by hand
    for label in ("relevant", "nonrelevant"):
        rows = [i for i, p in enumerate(pairs) if p.label == label]
        assert stats.counts[label] == len(rows) == 3
        torch.testing.assert_close(
            stats.mean(label, "all"), token.per_neuron()[rows].mean(0), rtol=1e-9, atol=1e-12
        )
        if not templated:
            continue
        want = per_pair[rows].mean(0)
        assert want.abs().max() > 1e-6  # the prompt tokens matter
        torch.testing.assert_close(stats.mean(label, "prompt"), want, rtol=1e-9, atol=1e-12)
        rest = sum(stats.mean(label, g) for g in ("cls", "query", "sep", "doc", "prompt"))
        torch.testing.assert_close(rest, stats.mean(label, "all"), rtol=1e-9, atol=1e-12)
    path = tmp_path / "stats.safetensors"
    stats.save(path)
    loaded = CollectionAttribution.load(path)
    assert loaded.prompt == templated and loaded.counts == stats.counts
    for label in ("relevant", "nonrelevant"):
        assert torch.equal(loaded.sums[label], stats.sums[label])
    tensors, info = stats.to_parts()
    assert ("groups" in info) == templated  # an encoder's file keeps its layout
    assert tensors["relevant.sum"].shape == (2, 6 if templated else 5, model.cfg.d_mlp)
    half = attribute_collection(model, pairs[:3], n_steps=4, progress=False, batch_size=2)
    other = attribute_collection(model, pairs[3:], n_steps=4, progress=False, batch_size=2)
    merged = half.merge(other)
    assert merged.prompt == templated
    for label in ("relevant", "nonrelevant"):
        torch.testing.assert_close(merged.sums[label], stats.sums[label], rtol=1e-9, atol=1e-12)
    names = [t.name for t in group_bars(stats).data]
    assert names[: len(stats.group_names)] == list(stats.group_names) and ("prompt" in names) == templated
    if templated:
        z = neuron_heatmap(stats, group="prompt", panels=["relevant"]).data[0].z
        assert torch.allclose(torch.as_tensor(z), stats.mean("relevant", "prompt"))
        with pytest.warns(UserWarning, match="no prompt row"):  # a part saved before the prompt row
            old = merged._without_prompt().merge(merged)
        assert not old.prompt and torch.equal(old.sums["relevant"][:, 4], 2 * merged.sums["relevant"][:, 5])
    else:
        with pytest.raises(InputError, match="no prompt group"):
            stats.mean("relevant", "prompt")


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_attribute_and_report(folders, family, collection, tmp_path, capsys):
    from mechir_nig.attribution.stats import CollectionAttribution
    from mechir_nig.cli import main

    col = write_collection(collection, tmp_path / "col")

    def argv(out, template):
        cmd = ["attribute", "--model", str(folders[family]), "--collection", str(col), "--out", str(out)]
        cmd += ["--no-progress", "--n-steps", "4", "--max-relevant", "1", "--max-nonrelevant", "1"]
        return cmd + (["--template", template] if template else [])

    out = tmp_path / "out"
    assert main(argv(out, TEMPLATES.get(family))) == 0, capsys.readouterr().err
    stats = CollectionAttribution.load(out / "attribution.safetensors")
    assert stats.n_done == sum(stats.counts.values()) > 0 and stats.mean("relevant").abs().sum() > 0
    assert main(["report", str(out)]) == 0, capsys.readouterr().err
    assert any(out.rglob("*.html"))
    if family in ("modernbert", "deberta"):  # an encoder reads no prompt: --template is a bad option
        assert main(argv(tmp_path / "bad", "monot5")) == 2
        assert "is an encoder: drop --template" in capsys.readouterr().err


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_scores_close_to_float32(folders, family):
    f32 = model_of(folders, family, torch.float32).score(Q, D)
    bf16 = model_of(folders, family, torch.bfloat16)
    got = bf16.score(Q, D)
    assert bf16.cfg.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), f32, rtol=0.05, atol=0.05 * float(f32.abs().max()) + 0.02)


SHARDED = r"""
import os, sys
import torch
torch.set_num_threads(1)
from ir_measures import Qrel
from mechir_nig import attribute_collection, load_model
from mechir_nig.data import judged_pairs
from mechir_nig.data.collection import Collection
from mechir_nig.runtime import distributed

folder, template, out, q, d = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split("|"), sys.argv[5].split("|")
col = Collection(
    docs={f"d{i}": t for i, t in enumerate(d)},
    queries={f"q{i}": t for i, t in enumerate(q)},
    qrels=[Qrel(f"q{i}", f"d{i}", 1) for i in range(len(q))] + [Qrel(f"q{i}", f"d{(i + 1) % len(q)}", 0) for i in range(len(q))],
    name="tiny",
)
model = load_model(folder, dtype=torch.float64, template=template)
res = attribute_collection(model, judged_pairs(col), n_steps=4, batch_size=1, progress=False)
res.save(os.path.join(out, f"sharded{distributed.rank()}.safetensors"))
os.write(1, f"RANK {distributed.rank()} {distributed.world_size()}\n".encode())
"""


@pytest.mark.parametrize("family", ["qwen3", "monot5"])
def test_attribute_collection_on_two_gloo_ranks_equals_one_process(folders, family, collection, tmp_path):
    """Sharding (torchrun, 2 real gloo ranks) for a rotary causal decoder and an encoder-decoder: every
    rank returns the statistics one process computes."""
    from conftest import one_thread, torchrun

    from mechir_nig import attribute_collection
    from mechir_nig.attribution.stats import CollectionAttribution
    from mechir_nig.data import judged_pairs

    (tmp_path / "sharded.py").write_text(SHARDED)
    done = torchrun(
        str(tmp_path / "sharded.py"),
        str(folders[family]),
        TEMPLATES[family],
        str(tmp_path),
        "|".join(Q),
        "|".join(D + EXTRA),
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert sorted(done.stdout.split("RANK ")[1:]) == ["0 2\n", "1 2\n"], done.stdout
    model = model_of(folders, family)
    want = one_thread(
        attribute_collection, model, judged_pairs(collection), n_steps=4, batch_size=1, progress=False
    )
    for r in (0, 1):
        got = CollectionAttribution.load(tmp_path / f"sharded{r}.safetensors")
        assert got.counts == want.counts and got.meta["distributed"]["world_size"] == 2
        for label in ("relevant", "nonrelevant"):
            torch.testing.assert_close(got.sums[label], want.sums[label], rtol=0, atol=1e-9)
