"""Path patching against hand-written two-pass computations on the Hugging Face model (BERT) and with the
model's own hooks on full forwards (ModernBERT: rotary positions, aligned inputs)."""

from __future__ import annotations

import hf_hooks
import pytest
import test_decoder
import torch
from conftest import DOCS, QUERIES

from mechir_nig.errors import InputError
from mechir_nig.interventions import perturb
from mechir_nig.interventions.patching import patch
from mechir_nig.interventions.path_patching import PathPatchingResult, path_patch
from mechir_nig.sets import ComponentSet
from mechir_nig.sites import hook_name

# test_decoder's fixture ``tok_dir`` (a byte-level BPE tokenizer), under this name
decoder_tokenizer = test_decoder.tok_dir


def _edit(q: str, d: str) -> str:
    return perturb.tfc1(q, d, where="start") if q.startswith(("what", "how")) else d.replace("water", "milk")


@pytest.fixture(scope="module")
def al64(ce64):
    return perturb.align(ce64, QUERIES[:3], DOCS[:3], _edit)


def _set_head(src: torch.Tensor, head: int):
    def fn(t):
        t = t.clone()
        t[:, :, head] = src[:, :, head]
        return t

    return fn


def _set_pos(src: torch.Tensor, pos: int):
    def fn(t):
        t = t.clone()
        t[:, pos] = src[:, pos]
        return t

    return fn


def _const(value: torch.Tensor):
    return lambda t: value


def _record(store: dict, key, then=None):
    """Keep the activation (before ``then`` replaces it: the freeze runs after the recording)."""

    def fn(t):
        store[key] = t.detach().clone()
        return t if then is None else then(t)

    return fn


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_score_receiver_is_the_ordinary_patch(ce64, al64, direction):
    """(a) and (c): every path from the sender ends at the score, so nothing is frozen."""
    sites = ["heads", "mlp_out"]
    res = path_patch(ce64, al64, senders=sites, receivers="score", direction=direction, layers=[0, 1])
    ref = patch(ce64, al64, sites=sites, direction=direction)
    for s in sites:
        torch.testing.assert_close(res["score"][s], ref[s], atol=1e-6, rtol=0, equal_nan=True)
        torch.testing.assert_close(res["score"].patched[s], ref.patched[s], atol=1e-6, rtol=0)
    assert (ref.patched["heads"] != ref.base_scores[:, None, None]).any()


@pytest.mark.parametrize("rkind", ["q", "v"])
def test_head_into_a_heads_input_equals_a_hand_two_pass_on_hf(ce64, hf64, al64, rkind):
    """(b) head (0, h1) into the q/k/v input of head (1, h2): pass 1 patches the sender, freezes layer 1's
    heads and both MLPs at the base run and records the receiver's projection; pass 2 writes it."""
    base, source = al64.perturbed, al64.clean
    n_heads = ce64.cfg.n_heads
    keys = [(s, layer) for s in ("z", "mlp_out") for layer in (0, 1)]
    _, src = hf_hooks.capture(hf64, source, [("z", 0)])
    _, bas = hf_hooks.capture(hf64, base, keys)
    recv = [(rkind, 1, h2) for h2 in range(n_heads)]
    res = path_patch(ce64, al64, senders="heads", receivers=recv, metric="raw")
    small = path_patch(ce64, al64, senders="heads", receivers=recv[:1], metric="raw", chunk_size=1)
    torch.testing.assert_close(small[recv[0]]["heads"], res[recv[0]]["heads"], atol=1e-12, rtol=0)
    moved = 0.0
    for h1 in range(n_heads):
        seen: dict = {}
        frozen = [
            ("z", 0, _set_head(src[("z", 0)], h1)),
            ("z", 1, _const(bas[("z", 1)])),
            ("mlp_out", 0, _const(bas[("mlp_out", 0)])),
            ("mlp_out", 1, _const(bas[("mlp_out", 1)])),
            (rkind, 1, _record(seen, "recv")),
        ]
        with torch.no_grad(), hf_hooks.edits(hf64, frozen):
            hf_hooks.score(hf64, base)
        for h2 in range(n_heads):
            with torch.no_grad(), hf_hooks.edits(hf64, [(rkind, 1, _set_head(seen["recv"], h2))]):
                hand = hf_hooks.score(hf64, base)
            got = res[(rkind, 1, h2)]
            assert got["heads"].shape == (len(base), 1, n_heads)  # senders: layer 0 only
            torch.testing.assert_close(got.patched["heads"][:, 0, h1].double(), hand, atol=1e-5, rtol=0)
            moved = max(moved, float((hand - got.base_scores.double()).abs().max()))
    assert moved > 1e-3  # the paths carry something: the comparison is not of base scores


def test_mlp_out_sender_into_the_direct_score_and_the_next_mlp_on_hf(ce64, hf64, al64):
    """(c) mlp_out of layer 0, one position: the direct path into the score (layer 1's heads and MLP
    frozen) and into layer 1's MLP (its output recomputed from the pass-1 input, recorded before the
    freeze, written in pass 2)."""
    base, source = al64.perturbed, al64.clean
    keys = [("z", 1), ("mlp_out", 1)]
    _, src = hf_hooks.capture(hf64, source, [("mlp_out", 0)])
    _, bas = hf_hooks.capture(hf64, base, keys)
    res = path_patch(ce64, al64, senders="mlp_out", receivers=["score_direct", ("mlp", 1)], metric="raw")
    direct, into_mlp = res["score_direct"].patched["mlp_out"], res[("mlp", 1)].patched["mlp_out"]
    assert direct.shape == (len(base), 1, base.input_ids.shape[1])
    n_changed = 0
    for pos in range(0, base.input_ids.shape[1], 3):  # every third position: the test's time
        seen: dict = {}
        frozen = [
            ("mlp_out", 0, _set_pos(src[("mlp_out", 0)], pos)),
            ("z", 1, _const(bas[("z", 1)])),
            ("mlp_out", 1, _record(seen, "mlp1", _const(bas[("mlp_out", 1)]))),
        ]
        with torch.no_grad(), hf_hooks.edits(hf64, frozen):
            hand_direct = hf_hooks.score(hf64, base)
        with torch.no_grad(), hf_hooks.edits(hf64, [("mlp_out", 1, _const(seen["mlp1"]))]):
            hand_mlp = hf_hooks.score(hf64, base)
        m = base.attention_mask[:, pos].bool()  # masked slots are not patched: the base score
        torch.testing.assert_close(direct[m, 0, pos].double(), hand_direct[m], atol=1e-5, rtol=0)
        torch.testing.assert_close(into_mlp[m, 0, pos].double(), hand_mlp[m], atol=1e-5, rtol=0)
        n_changed += int((hand_direct - res["score_direct"].base_scores.double()).abs().gt(1e-4).sum())
    assert n_changed > 0


def test_direct_paths_reduce_to_the_patch_where_nothing_is_downstream(ce64, al64):
    """A last-layer MLP has nothing downstream: its direct path is the patch. A last-layer head with the
    MLPs left unfrozen (``freeze_mlps=False``) likewise; a set sender equals its members' entries."""
    last = ce64.cfg.n_layers - 1
    ref = patch(ce64, al64, sites=["heads", "mlp_out"], layers=[last], metric="raw")
    mlp = path_patch(ce64, al64, senders="mlp_out", receivers="score_direct", layers=[last], metric="raw")
    torch.testing.assert_close(mlp["score_direct"]["mlp_out"], ref["mlp_out"], atol=1e-9, rtol=0)
    heads = path_patch(
        ce64, al64, senders="heads", receivers="score_direct", layers=[last], metric="raw", freeze_mlps=False
    )
    torch.testing.assert_close(heads["score_direct"]["heads"], ref["heads"], atol=1e-9, rtol=0)
    frozen = path_patch(ce64, al64, senders="heads", receivers="score_direct", layers=[last], metric="raw")
    assert not torch.allclose(frozen["score_direct"]["heads"], ref["heads"])  # the MLP path is cut
    members = [(0, 1), (1, 0)]
    hs = ComponentSet(members, kind="head", n_layers=ce64.cfg.n_layers, width=ce64.cfg.n_heads)
    both = path_patch(ce64, al64, senders=["heads", hs], receivers="score_direct", metric="raw")
    r = both["score_direct"]
    for j, (layer, h) in enumerate(r.members):
        torch.testing.assert_close(r["head_set"][:, j], r["heads"][:, layer, h])


def test_plot_and_namespace(ce64, al64):
    import mechir_nig
    from mechir_nig.interventions import path_patch as from_interventions
    from mechir_nig.plotting import path_patching_heatmaps

    assert mechir_nig.path_patch is path_patch is from_interventions
    res = path_patch(ce64, al64, senders="heads", receivers=[("q", 1), "score_direct"])
    assert isinstance(res, PathPatchingResult) and res.receivers == ["q:L1", "score_direct"]
    fig = res.plot("heads", pair=1)
    assert [len(t.z) for t in fig.data] == [1, 1]  # one heatmap per receiver, senders of layer 0
    torch.testing.assert_close(torch.tensor(fig.data[0].z), res["q:L1"]["heads"][1].double(), equal_nan=True)
    mean = path_patching_heatmaps(res, receivers=["score_direct"])
    torch.testing.assert_close(
        torch.tensor(mean.data[0].z), torch.nanmean(res["score_direct"]["heads"].double(), 0)
    )
    assert res["q:L1"].meta["path_patching"]["receiver"] == "q:L1"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"senders": "heads", "layers": [1], "receivers": ("q", 1, 0)}, "does not feed receiver"),
        ({"senders": "mlp_out", "layers": [1], "receivers": ("mlp", 1)}, "does not feed receiver"),
        ({"senders": "heads", "receivers": ("q", 0)}, "no layer holds a sender"),
        ({"senders": "heads", "receivers": ("x", 1)}, "unknown receiver"),
        ({"senders": "heads", "receivers": "logits"}, "unknown receiver"),
        ({"senders": "heads", "receivers": ("q", 5, 0)}, "receiver layer"),
        ({"senders": "heads", "receivers": ("q", 1, 9)}, "receiver head"),
        ({"senders": "heads", "receivers": ("mlp", 1, 0)}, "an MLP receiver is"),
        ({"senders": "heads", "receivers": ["score", "score"]}, "repeat a receiver"),
        ({"senders": "q", "receivers": "score"}, "not a path-patching sender"),
        ({"senders": "bogus", "receivers": "score"}, "unknown site"),
        ({"senders": "heads", "receivers": []}, "non-empty list"),
    ],
)
def test_bad_inputs_are_refused(ce64, al64, kwargs, message):
    """(d)"""
    with pytest.raises(InputError, match=message):
        path_patch(ce64, al64, **kwargs)


def _tl(fn):
    """A ``(act, hook)`` hook of an ``act -> act`` edit."""
    return lambda act, hook: fn(act)


def _two_pass_on_full_forwards(model, al, layer, rkind, rlayer, rhead):
    """Path patch every head of ``layer`` into the ``rkind`` input of head ``(rlayer, rhead)`` and into the
    direct score, written with the model's own hooks on full forwards (no run started inside the blocks):
    ``(direct [batch, n_heads], into the receiver [batch, n_heads])``."""
    base, source = al.perturbed, al.clean
    n = model.cfg.n_layers
    names = [hook_name(s, m) for s in ("z", "mlp_out") for m in range(n)]
    with torch.no_grad():
        _, src = model.run_with_cache(source, names_filter=names, return_cache_object=False)
        _, bas = model.run_with_cache(base, names_filter=names, return_cache_object=False)
    recv = hook_name(rkind, rlayer)
    direct, into = [], []
    for h1 in range(model.cfg.n_heads):
        seen: dict = {}
        hooks = [(hook_name("z", layer), _tl(_set_head(src[hook_name("z", layer)], h1)))]
        hooks += [(recv, _tl(_record(seen, "recv")))]
        hooks += [(hook_name("z", m), _tl(_const(bas[hook_name("z", m)]))) for m in range(layer + 1, n)]
        hooks += [
            (hook_name("mlp_out", m), _tl(_const(bas[hook_name("mlp_out", m)]))) for m in range(layer, n)
        ]
        with torch.no_grad():
            direct.append(model.run_with_hooks(base, fwd_hooks=hooks))
            into.append(model.run_with_hooks(base, fwd_hooks=[(recv, _tl(_set_head(seen["recv"], rhead)))]))
    return torch.stack(direct, 1), torch.stack(into, 1)


def _check_family(model, al, layer, receiver):
    res = path_patch(
        model, al, senders="heads", receivers=[receiver, "score_direct"], layers=[layer], metric="raw"
    )
    direct, into = _two_pass_on_full_forwards(model, al, layer, *receiver)
    torch.testing.assert_close(res["score_direct"].patched["heads"][:, 0].double(), direct, atol=1e-5, rtol=0)
    torch.testing.assert_close(res[receiver].patched["heads"][:, 0].double(), into, atol=1e-5, rtol=0)
    assert (into - res[receiver].base_scores.double()[:, None]).abs().max() > 1e-4


def test_modernbert_path_equals_a_two_pass_with_full_forwards(tmp_path_factory):
    """ModernBERT (rotary positions, an aligned TFC1 input with explicit position ids): the vectorised
    path patch (runs started inside the blocks) equals the two passes written with the model's hooks on
    full forwards."""
    from test_modernbert import make_modernbert, wordpiece_tokenizer

    from mechir_nig import load_model

    tok = wordpiece_tokenizer()
    ce = load_model(make_modernbert(tmp_path_factory.mktemp("pp_mb"), tok, seed=5), dtype=torch.float64)
    al = perturb.align(ce, QUERIES[:2], DOCS[:2], lambda q, d: perturb.tfc1(q, d, where="start"))
    _check_family(ce, al, 1, ("k", 2, 1))


def test_decoder_path_equals_a_two_pass_with_full_forwards(decoder_tokenizer, tmp_path_factory):
    """A Qwen2 reranker (decoder, rotary, grouped-query attention: 4 query heads, 2 key/value heads): a
    head into a key/value head's input, as above."""
    from test_decoder import _save

    from mechir_nig import load_model

    model = load_model(_save(decoder_tokenizer, tmp_path_factory, "qwen2", 1), dtype=torch.float64)
    al = perturb.align(model, QUERIES[:2], DOCS[:2], lambda q, d: perturb.tfc1(q, d, where="start"))
    _check_family(model, al, 0, ("v", 1, 1))
    with pytest.raises(InputError, match="receiver head"):  # keys and values have 2 heads here
        path_patch(model, al, receivers=("k", 1, 2))


def test_bi_encoder_document_side(tmp_path_factory, tokenizer):
    """A bi-encoder (document side patched, query embeddings fixed): ``score`` is the patch, the last
    layer's MLP has nothing downstream, and a head's path into the next layer's queries equals the two
    passes written with the model's hooks on full forwards (scored against the fixed query embeddings)."""
    from mechir_nig import HookedBiEncoder
    from mechir_nig.testing import make_tiny_checkpoint

    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("pp_be"), "bert", tokenizer, n_labels=0)
    be = HookedBiEncoder.from_pretrained(folder, pooling="mean", similarity="dot", dtype=torch.float64)
    al = perturb.align(be, QUERIES[:2], DOCS[:2], _edit)
    res = path_patch(be, al, senders=["heads", "mlp_out"], receivers=["score", "score_direct"], metric="raw")
    ref = patch(be, al, sites=["heads", "mlp_out"], metric="raw")
    torch.testing.assert_close(res["score"]["heads"], ref["heads"], atol=1e-6, rtol=0)
    torch.testing.assert_close(res["score_direct"]["mlp_out"][:, 1], ref["mlp_out"][:, 1], atol=1e-6, rtol=0)
    q = al.query_embeddings
    recv = path_patch(be, al, senders="heads", receivers=("q", 1, 0), metric="raw")[("q", 1, 0)]
    direct, into = _two_pass_on_full_forwards(be, al, 0, "q", 1, 0)
    assert direct.shape[:2] == (2, be.cfg.n_heads)
    assert ref["heads"].abs().max() > 1e-4 and recv["heads"].abs().max() > 1e-5  # the patches move the score
    torch.testing.assert_close(
        recv.patched["heads"][:, 0].double(), (into * q[:, None]).sum(-1), atol=1e-5, rtol=0
    )


# -- path patching into heads (the receivers chosen by their direct effect) and persistence ------------------
def test_into_heads_chooses_the_top_direct_heads_and_equals_path_patch(ce64, al64):
    from mechir_nig.interventions.path_patching import path_patch_into_heads, top_direct_heads

    direct = path_patch(ce64, al64, senders="heads", receivers="score_direct")["score_direct"]
    mean = torch.nan_to_num(direct["heads"].double())[direct.summary_pairs()].mean(0)
    top = top_direct_heads(direct, 1)
    best = max(range(ce64.cfg.n_heads), key=lambda h: abs(float(mean[1, h])))  # layer 0 cannot receive
    assert top == [(1, best, pytest.approx(float(mean[1, best])))]
    assert [(lyr, h) for lyr, h, _ in top_direct_heads(direct, 5)] == sorted(
        [(1, h) for h in range(ce64.cfg.n_heads)], key=lambda c: -abs(float(mean[c]))
    )
    res = path_patch_into_heads(ce64, al64, receiver_heads=1)
    again = path_patch_into_heads(ce64, al64, receiver_heads=1, direct=direct)  # reused, not recomputed
    assert res.receivers == again.receivers == [f"{k}:L1H{best}" for k in ("q", "k", "v")]
    ref = path_patch(ce64, al64, senders="heads", receivers=[(k, 1, best) for k in ("q", "k", "v")])
    for key in res.receivers:
        torch.testing.assert_close(res[key]["heads"], ref[key]["heads"], atol=1e-12, rtol=0, equal_nan=True)
        torch.testing.assert_close(again[key]["heads"], ref[key]["heads"], atol=1e-12, rtol=0, equal_nan=True)
    assert res.meta["receivers_chosen"]["heads"] == [[1, best]]
    with pytest.raises(InputError, match="same direction and metric"):
        path_patch_into_heads(ce64, al64, direct=direct, metric="raw")
    with pytest.raises(InputError, match="in a layer >= 1"):
        top_direct_heads(direct, layers=[0])


@pytest.mark.parametrize(
    ("receivers", "message"),
    [
        ([("q", 0, 0)], "a head of layer 0 has no earlier head"),
        ([("mlp", 1)], "a receiver head input is"),
        ([("q", 1, 9)], "receiver head"),
        ([("q", 1, 0), ("q", 1, 0)], "listed twice"),
        ([], "non-empty list"),
    ],
)
def test_into_heads_refuses_bad_receivers(ce64, al64, receivers, message):
    from mechir_nig.interventions.path_patching import path_patch_into_heads

    with pytest.raises(InputError, match=message):
        path_patch_into_heads(ce64, al64, receivers=receivers)


def test_path_patching_result_round_trip_and_damage(ce64, al64, tmp_path):
    from safetensors import safe_open

    from mechir_nig.errors import CheckpointError
    from mechir_nig.interventions.patching import PatchingResult
    from mechir_nig.interventions.path_patching import path_patch_into_heads
    from mechir_nig.results import sidecar_path

    res = path_patch_into_heads(ce64, al64, receivers=[("v", 1, 1), ("q", 1, 0)])
    res.meta["note"] = "kept"
    path = res.save(tmp_path / "pp.safetensors")
    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
    assert {"v:L1H1.values.heads", "q:L1H0.patched.heads", "q:L1H0.clean_scores"} <= names
    back = PathPatchingResult.load(path)
    assert back.receivers == ["v:L1H1", "q:L1H0"] and back.meta == res.meta
    for key in res.receivers:
        a, b = res[key], back[key]
        for field in ("values", "patched"):
            assert getattr(a, field).keys() == getattr(b, field).keys()
            for site in a.sites:
                assert torch.equal(getattr(a, field)[site], getattr(b, field)[site])
        for field in ("clean_scores", "corrupted_scores", "base_mask", "groups", "changed"):
            assert torch.equal(getattr(a, field), getattr(b, field))
        assert (a.layers, a.direction, a.metric, a.meta, a.clean_tokens) == (
            b.layers,
            b.direction,
            b.metric,
            b.meta,
            b.clean_tokens,
        )
    with pytest.raises(CheckpointError, match="holds a PathPatchingResult"):
        PatchingResult.load(path)
    side = sidecar_path(path)
    text = side.read_text()
    side.write_text(text.replace('"direction": "denoise"', '"direction": "noise"', 1))
    with pytest.raises(CheckpointError, match="checksum does not match"):
        PathPatchingResult.load(path)
    side.write_text(text.replace('"receivers": ["v:L1H1", "q:L1H0"]', '"receivers": ["v:L1H1"]'))
    with pytest.raises(CheckpointError, match="receivers"):
        PathPatchingResult.load(path)
    side.write_text(text)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # a byte of the last tensor's data
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum does not match"):
        PathPatchingResult.load(path)
    path.write_bytes(bytes(raw[:200]))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        PathPatchingResult.load(path)


def test_into_heads_reads_the_shared_key_value_head_under_grouped_query_attention(
    decoder_tokenizer, tmp_path_factory
):
    """A Qwen2 reranker (4 query heads, 2 key/value heads): a receiver head's key and value inputs are
    those of the key/value head its group reads (query head h -> h // 2), and equal path_patch's."""
    from test_decoder import _save

    from mechir_nig import load_model
    from mechir_nig.interventions.path_patching import path_patch_into_heads

    model = load_model(_save(decoder_tokenizer, tmp_path_factory, "qwen2", 1), dtype=torch.float64)
    al = perturb.align(model, QUERIES[:2], DOCS[:2], lambda q, d: perturb.tfc1(q, d, where="start"))
    res = path_patch_into_heads(model, al, receiver_heads=4)
    heads = res.meta["receivers_chosen"]["heads"]
    assert len(heads) == 4 and all(lyr == 1 for lyr, _ in heads)  # 2 layers: the receivers are in layer 1
    expected = []
    for lyr, h in heads:
        expected += [f"q:L{lyr}H{h}"] + [
            k for k in (f"k:L{lyr}H{h // 2}", f"v:L{lyr}H{h // 2}") if k not in expected
        ]
    assert res.receivers == list(dict.fromkeys(expected))
    ref = path_patch(model, al, senders="heads", receivers=[("v", 1, 1), ("k", 1, 0)])
    for key in ("v:L1H1", "k:L1H0"):
        torch.testing.assert_close(res[key]["heads"], ref[key]["heads"], atol=1e-12, rtol=0, equal_nan=True)


def test_into_heads_groups_each_head_with_the_key_value_head_it_reads(decoder_tokenizer, tmp_path_factory):
    """Under grouped-query attention a receiver head's k/v keys name its group's key/value head
    (``k:L1H0`` for head 1): the report's figure of head L1H1 shows q:L1H1 with k:L1H0 and v:L1H0 (not
    the k/v of head 2's group, ``k:L1H1``), and the findings name the shared key/value head and its readers."""
    import re

    from test_decoder import _save

    from mechir_nig import load_model
    from mechir_nig.findings import path_patching_heads_findings
    from mechir_nig.interventions.path_patching import path_patch_into_heads
    from mechir_nig.report import build

    model = load_model(_save(decoder_tokenizer, tmp_path_factory, "qwen2", 1), dtype=torch.float64)
    al = perturb.align(model, QUERIES[:2], DOCS[:2], lambda q, d: perturb.tfc1(q, d, where="start"))
    res = path_patch_into_heads(model, al, receiver_heads=4)  # every head of layer 1: 4 query, 2 k/v heads
    inputs = res.meta["receivers_chosen"]["inputs"]
    assert inputs == {f"L1H{h}": [f"q:L1H{h}", f"k:L1H{h // 2}", f"v:L1H{h // 2}"] for h in range(4)}
    assert list(inputs) == [f"L{lyr}H{h}" for lyr, h in res.meta["receivers_chosen"]["heads"]]
    readers = [head for head in inputs if "k:L1H0" in inputs[head]]
    assert sorted(readers) == ["L1H0", "L1H1"]
    sentences = path_patching_heads_findings(res, n_resamples=100)
    assert any("into the keys of key/value head 0 of layer 1 (read by L1H0, L1H1)" in s for s in sentences)
    assert any("into the queries of L1H1, " in s for s in sentences)
    assert not any("the keys of L1H" in s for s in sentences)
    folder = tmp_path_factory.mktemp("gqa_report")
    res.save(folder / "path_patching_heads.safetensors")
    page = build(folder).read_text()
    figures = dict(
        re.findall(r'data-figure="path patching into (L1H\d)"(.*?)(?=data-figure=|</section>)', page, re.S)
    )
    assert sorted(figures) == [f"L1H{h}" for h in range(4)]
    for h in range(4):
        shown = set(re.findall(r"[qkv]:L1H\d", figures[f"L1H{h}"]))
        assert shown == {f"q:L1H{h}", f"k:L1H{h // 2}", f"v:L1H{h // 2}"}, (h, shown)
    # given receivers keep the heads as written
    given = path_patch_into_heads(model, al, receivers=[("k", 1, 1), ("q", 1, 3)])
    assert given.meta["receivers_chosen"]["inputs"] == {"L1H1": ["k:L1H1"], "L1H3": ["q:L1H3"]}
    assert given.meta["receivers_chosen"]["kv_group"] == 2 and res.meta["receivers_chosen"]["kv_group"] == 2
    said = path_patching_heads_findings(given, n_resamples=100)
    assert any("into the keys of key/value head 1 of layer 1 (read by L1H2, L1H3)" in s for s in said)
    assert any("into the queries of L1H3, " in s for s in said)


def test_into_heads_refuses_a_direct_result_of_other_pairs(ce64, al64):
    """``direct`` of 3 pairs with an alignment of 2 is refused before any work (it chose the receivers from
    the other pairs' direct effects)."""
    from mechir_nig.interventions.path_patching import path_patch_into_heads

    direct = path_patch(ce64, al64, senders="heads", receivers="score_direct")["score_direct"]
    fewer = perturb.align(ce64, QUERIES[:2], DOCS[:2], _edit)
    with pytest.raises(
        InputError, match="direct holds 3 pairs, this run 2: pass the score_direct result of the same pairs"
    ):
        path_patch_into_heads(ce64, fewer, receiver_heads=1, direct=direct)


def test_report_states_what_the_receiver_keys_mean(ce64, al64, tmp_path):
    """The report's path-patching-into-heads section says what q/k/v in a receiver key are."""
    from mechir_nig.interventions.path_patching import path_patch_into_heads
    from mechir_nig.report import build

    res = path_patch_into_heads(ce64, al64, receivers=[("v", 1, 1)])
    res.save(tmp_path / "path_patching_heads.safetensors")
    page = build(tmp_path).read_text()
    assert "receivers (q, k, v: a head&#x27;s query, key, value input)" in page  # html.escape'd


def test_score_direct_alone_equals_it_beside_the_score(ce64, al64):
    """The circuits command computes the direct paths alone (``receivers="score_direct"``, once, for both
    path-patching steps): the same values as ``path_patch_heads_to_score``'s ``score_direct``."""
    from mechir_nig.interventions.path_patching import path_patch_heads_to_score

    alone = path_patch(ce64, al64, senders="heads", receivers="score_direct")["score_direct"]
    both = path_patch_heads_to_score(ce64, al64)["score_direct"]
    torch.testing.assert_close(alone["heads"], both["heads"], atol=1e-12, rtol=0, equal_nan=True)
    torch.testing.assert_close(alone.patched["heads"], both.patched["heads"], atol=1e-12, rtol=0)
    assert alone.meta["path_patching"] == both.meta["path_patching"]


def test_findings_of_a_raw_metric_keep_their_digits(ce64, al64):
    """With ``metric="raw"`` the findings give the score changes to 4 decimals (they were rounded to 2,
    "+0.00", beside a "raw score change" repeating the same number)."""
    from mechir_nig.findings import path_patching_heads_findings
    from mechir_nig.interventions.path_patching import path_patch_into_heads

    res = path_patch_into_heads(ce64, al64, receivers=[("q", 1, 0)], metric="raw")
    part = res["q:L1H0"]
    mean = torch.nan_to_num(part["heads"].double())[part.summary_pairs()].mean(0).flatten()
    j = int(mean.abs().argmax())
    (sentence,) = [s for s in path_patching_heads_findings(res, n_resamples=100) if "queries of L1H0" in s]
    n = ce64.cfg.n_heads
    head = f"L{part.layers[j // n]}H{j % n}"
    assert f" is {head} (mean score change {float(mean[j]):+.4f} [95 % CI " in sentence
    assert "raw score change" not in sentence
