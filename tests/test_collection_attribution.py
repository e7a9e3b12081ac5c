"""Collection-scale attribution: streaming statistics, checkpoints, resume, invariance."""

from __future__ import annotations

import pytest
import torch

from mechir_nig import InputError
from mechir_nig.attribution import neuron_integrated_gradients
from mechir_nig.attribution.stats import CollectionAttribution, top_neuron_set
from mechir_nig.data import judged_pairs, load_collection
from mechir_nig.experiments.attribute import attribute_collection


@pytest.fixture(scope="module")
def pairs():
    col = load_collection("embedded")
    ps = judged_pairs(col, max_relevant_per_query=1, max_nonrelevant_per_query=1)
    ps = type(ps)(ps[:10], ps.report)
    assert {p.label for p in ps} == {"relevant", "nonrelevant"}
    return ps


KW = dict(n_steps=4, progress=False)


def test_statistics_equal_direct_nig(tiny_ce, pairs):
    stats = attribute_collection(tiny_ce, pairs, batch_size=3, **KW)
    direct = neuron_integrated_gradients(tiny_ce, pairs.queries(), pairs.docs(), n_steps=4)
    per = direct.per_neuron().double()  # [n, layer, d_mlp]
    by_group = direct.by_group().double()
    for label in ("relevant", "nonrelevant"):
        rows = [i for i, p in enumerate(pairs) if p.label == label]
        assert stats.counts[label] == len(rows)
        assert torch.allclose(stats.mean(label), per[rows].mean(0), atol=1e-6)
        assert torch.allclose(stats.mean(label, "doc"), by_group[rows][:, :, 3].mean(0), atol=1e-6)
        assert torch.allclose(stats.std(label), per[rows].std(0, unbiased=False), atol=1e-6)
    diff = stats.scheme_scores("difference")
    assert torch.allclose(diff, stats.mean("relevant") - stats.mean("nonrelevant"))
    assert stats.n_done == len(pairs)


def test_interrupted_and_resumed_equals_uninterrupted(tiny_ce, pairs, tmp_path):
    full = attribute_collection(tiny_ce, pairs, batch_size=2, **KW)
    ckpt = tmp_path / "run.ckpt"

    class Crash(Exception):
        pass

    def crash_after_5(n_done):
        if n_done >= 5:
            raise Crash

    with pytest.raises(Crash):
        attribute_collection(
            tiny_ce, pairs, batch_size=2, checkpoint=ckpt, checkpoint_every=2, on_batch=crash_after_5, **KW
        )
    saved = CollectionAttribution.load(ckpt)
    assert saved.n_done == 6 and sum(saved.counts.values()) == 6  # nothing counted beyond the checkpoint
    with pytest.raises(InputError, match="resume=True"):
        attribute_collection(tiny_ce, pairs, batch_size=2, checkpoint=ckpt, **KW)
    seen = []
    resumed = attribute_collection(
        tiny_ce,
        pairs,
        batch_size=2,
        checkpoint=ckpt,
        checkpoint_every=2,
        resume=True,
        on_batch=seen.append,
        **KW,
    )
    assert seen[0] == 8  # continued after the 6 checkpointed pairs
    assert resumed.counts == full.counts
    for label in ("relevant", "nonrelevant"):
        assert (resumed.sums[label] - full.sums[label]).abs().max() <= 1e-6
        assert (resumed.sums_sq[label] - full.sums_sq[label]).abs().max() <= 1e-6
    again = CollectionAttribution.load(ckpt)
    assert again.n_done == len(pairs) and torch.equal(again.sums["relevant"], resumed.sums["relevant"])


def test_batch_and_chunk_sizes_do_not_change_it(tiny_ce, pairs):
    a = attribute_collection(tiny_ce, pairs, batch_size=10, **KW)
    b = attribute_collection(tiny_ce, pairs, batch_size=3, internal_batch_size=4, **KW)
    for label in ("relevant", "nonrelevant"):
        assert (a.sums[label] - b.sums[label]).abs().max() <= 1e-6


def test_resume_refuses_other_settings(tiny_ce, pairs, tmp_path):
    ckpt = tmp_path / "c.ckpt"
    attribute_collection(tiny_ce, pairs[:4], batch_size=2, checkpoint=ckpt, **KW)
    with pytest.raises(InputError, match="other pairs or settings"):
        attribute_collection(
            tiny_ce, pairs[:4], batch_size=2, checkpoint=ckpt, resume=True, n_steps=5, progress=False
        )
    with pytest.raises(InputError, match="other pairs or settings"):
        attribute_collection(tiny_ce, pairs[:5], batch_size=2, checkpoint=ckpt, resume=True, **KW)


def test_save_load_roundtrip_and_metadata(tiny_ce, pairs, tmp_path):
    stats = attribute_collection(tiny_ce, pairs[:4], layers=[1], collection="embedded", **KW)
    path = stats.save(tmp_path / "stats.safetensors")
    back = CollectionAttribution.load(path)
    assert back.layers == [1] and back.counts == stats.counts
    assert (
        back.meta["collection"] == "embedded"
        and back.meta["n_steps"] == 4
        and back.meta["method"] == "riemann_trapezoid"
    )
    assert torch.equal(back.sums["relevant"], stats.sums["relevant"])
    full = back.scheme_scores("relevant")
    assert full.shape == (2, tiny_ce.cfg.d_mlp) and full[0].abs().sum() == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"batch_size": 0}, "batch_size must be an int >= 1"),
        ({"baseline": "blank"}, "unknown baseline"),
        ({"layers": [7]}, "out of range"),
    ],
)
def test_bad_input(tiny_ce, pairs, kwargs, match):
    with pytest.raises(InputError, match=match):
        attribute_collection(tiny_ce, pairs, progress=False, **kwargs)


def test_empty_and_unlabelled_pairs(tiny_ce):
    with pytest.raises(InputError, match="pairs is empty"):
        attribute_collection(tiny_ce, [], progress=False)
    with pytest.raises(InputError, match="no query/doc/label"):
        attribute_collection(tiny_ce, [("q", "d")], progress=False)
    stats = CollectionAttribution(layers=[0], n_layers=2, d_mlp=4)
    with pytest.raises(InputError, match="no relevant pairs"):
        stats.mean("relevant")
    with pytest.raises(InputError, match="unknown scheme"):
        stats.scheme_scores("best")


def test_top_neurons_by_scheme(tiny_ce, pairs):
    stats = attribute_collection(tiny_ce, pairs, layers=[1], **KW)
    rel = top_neuron_set(stats, "relevant", k=5)
    mean = stats.mean("relevant")[0]  # layer 1
    assert sorted(n for _, n in rel) == sorted(mean.topk(5).indices.tolist())
    assert all(layer == 1 for layer, _ in rel)  # only attributed layers are candidates
    diff = top_neuron_set(stats, "difference", fraction=0.1)
    assert len(diff) == round(0.1 * tiny_ce.cfg.d_mlp)
    abs_mean = top_neuron_set(stats, "abs_mean", k=3)
    pooled = (stats.sums["relevant"] + stats.sums["nonrelevant"])[0, 4] / len(pairs)
    assert sorted(n for _, n in abs_mean) == sorted(pooled.abs().topk(3).indices.tolist())
    with pytest.warns(DeprecationWarning, match="abs_mean"):
        assert top_neuron_set(stats, "absolute", k=3) == abs_mean


def test_mean_abs_scheme_is_the_mean_of_absolute_pair_nig(tiny_ce, pairs):
    stats = attribute_collection(tiny_ce, pairs, batch_size=4, **KW)
    per = neuron_integrated_gradients(tiny_ce, pairs.queries(), pairs.docs(), n_steps=4).per_neuron().double()
    assert torch.allclose(stats.scheme_scores("mean_abs"), per.abs().mean(0), atol=1e-6)
    assert torch.allclose(stats.scheme_scores("abs_mean"), per.mean(0).abs(), atol=1e-6)
    # signs cancel in abs_mean, never in mean_abs
    assert (stats.scheme_scores("mean_abs") >= stats.scheme_scores("abs_mean") - 1e-12).all()


def test_merge_of_two_halves_equals_the_whole(tiny_ce, pairs):
    # one pair per NIG call, so each pair's float32 NIG is the same in every run (batch composition
    # changes padding, hence float32 rounding at ~1e-7); what is left is the merge: exact to 1e-9
    whole = attribute_collection(tiny_ce, pairs, batch_size=1, **KW)
    half = len(pairs) // 2
    a = attribute_collection(tiny_ce, type(pairs)(pairs[:half]), batch_size=1, **KW)
    b = attribute_collection(tiny_ce, type(pairs)(pairs[half:]), batch_size=1, **KW)
    merged = a.merge(b)
    assert merged.counts == whole.counts and merged.n_done == whole.n_done
    for label in ("relevant", "nonrelevant"):
        for table in ("sums", "sums_sq", "sums_abs"):
            assert (getattr(merged, table)[label] - getattr(whole, table)[label]).abs().max() <= 1e-9
        assert torch.allclose(merged.std(label), whole.std(label), atol=1e-9)
    assert merged.meta["merged_from"] == [a.meta["pairs_fingerprint"], b.meta["pairs_fingerprint"]]
    other_layers = attribute_collection(tiny_ce, type(pairs)(pairs[half:]), layers=[0], **KW)
    with pytest.raises(InputError, match="same model and layers"):
        a.merge(other_layers)
    other_steps = attribute_collection(tiny_ce, type(pairs)(pairs[half:]), n_steps=2, progress=False)
    with pytest.raises(InputError, match="n_steps"):
        a.merge(other_steps)


def test_resume_is_keyed_on_the_weights_not_the_name(tmp_path, tokenizer, pairs):
    import shutil

    from mechir_nig import HookedCrossEncoder
    from mechir_nig.testing import make_tiny_cross_encoder

    folder = make_tiny_cross_encoder(tmp_path / "model", tokenizer, seed=3)
    ckpt = tmp_path / "run.ckpt"

    class Crash(Exception):
        pass

    def crash(n_done):
        raise Crash

    with pytest.raises(Crash):
        attribute_collection(
            HookedCrossEncoder.from_pretrained(folder),
            pairs,
            batch_size=2,
            checkpoint=ckpt,
            checkpoint_every=2,
            on_batch=crash,
            **KW,
        )
    # the same weights under another path resume
    moved = tmp_path / "elsewhere"
    shutil.copytree(folder, moved)
    resumed = attribute_collection(
        HookedCrossEncoder.from_pretrained(moved), pairs, batch_size=2, checkpoint=ckpt, resume=True, **KW
    )
    assert resumed.n_done == len(pairs)
    # a different model saved under the same name (same path, other weights) is refused
    make_tiny_cross_encoder(folder, tokenizer, seed=4)
    with pytest.raises(InputError, match="another model"):
        attribute_collection(
            HookedCrossEncoder.from_pretrained(folder),
            pairs,
            batch_size=2,
            checkpoint=ckpt,
            resume=True,
            **KW,
        )


def test_checkpoint_file_modes_match(tiny_ce, pairs, tmp_path):
    import os
    import stat

    ckpt = tmp_path / "run.ckpt"
    attribute_collection(tiny_ce, pairs, checkpoint=ckpt, **KW)
    mode = stat.S_IMODE(os.stat(ckpt).st_mode)
    assert mode == stat.S_IMODE(os.stat(ckpt.with_name(ckpt.name + ".json")).st_mode)
    assert mode & stat.S_IRGRP  # readable like any file written under the usual umask


def test_untokenizable_pairs_fail_before_any_work(tiny_ce, pairs):
    from mechir_nig.data import JudgedPair

    bad = JudgedPair("qx", "dx", "a query", "\u200b", 0, "nonrelevant")  # a zero-width space: no tokens
    long_q = JudgedPair("qy", "dy", " ".join(["word"] * 40), "doc", 1, "relevant")
    with pytest.raises(InputError, match=r"2 of 12 pairs cannot be attributed: .*query_id=qx.*no tokens.*qy"):
        attribute_collection(tiny_ce, [*pairs, bad, long_q], max_length=32, **KW)


def test_truncation_is_counted_per_label(tiny_ce, pairs):
    long_doc = pairs[0]._replace(doc=" ".join(["neurons"] * 80))
    with pytest.warns(Warning):
        stats = attribute_collection(tiny_ce, [long_doc, *pairs[1:4]], max_length=48, **KW)
    assert stats.meta["truncated"][long_doc.label] == 1
    assert sum(stats.meta["truncated"].values()) == 1
    assert stats.meta["max_length"] == 48 and stats.meta["dtype"] == "torch.float32"
