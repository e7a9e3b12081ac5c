"""attention_by_group (issue 17): per layer x head shares of attention by token group, checked against the
Hugging Face model's attention weights summed by hand, token by token."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import hf_cross_encoder

from mechir_nig.errors import InputError
from mechir_nig.interventions.attention import (
    FROM_GROUPS,
    TO_CATEGORIES,
    AttentionGroups,
    attention_by_group,
)
from mechir_nig.models.tokenization import CLS, DOC, QUERY

# the query token "neuron" occurs twice in the first document, "rice" once in the second
PAIRS = [
    ("what is a neuron", "a neuron is a cell; every neuron fires"),
    ("cook rice", "boil the rice in plenty of water"),
    ("black holes", "stars collapse at the end of their life"),
]


def _by_hand(attn: list[torch.Tensor], batch, query_ids) -> torch.Tensor:
    """``[batch, layer, head, from, to]`` with plain loops over pairs, heads, rows and keys."""
    n_b, n_l, n_h = batch.input_ids.shape[0], len(attn), attn[0].shape[1]
    out = torch.full((n_b, n_l, n_h, len(FROM_GROUPS), len(TO_CATEGORIES)), math.nan, dtype=torch.float64)
    from_id = {"query": QUERY, "doc": DOC, "cls": CLS}
    for b in range(n_b):
        n = int(batch.attention_mask[b].sum())
        ids, g = batch.input_ids[b].tolist(), batch.groups[b].tolist()
        qset = set(query_ids[b])

        cat = [
            ("doc_match" if ids[k] in qset else "doc_other")
            if g[k] == DOC
            else ("query" if g[k] == QUERY else "special")
            for k in range(n)
        ]
        for li in range(n_l):
            for h in range(n_h):
                for fi, f in enumerate(FROM_GROUPS):
                    rows = [t for t in range(n) if g[t] == from_id[f]]
                    if not rows:
                        continue
                    for ci, c in enumerate(TO_CATEGORIES):
                        total = sum(
                            float(attn[li][b, h, t, k]) for t in rows for k in range(n) if cat[k] == c
                        )
                        out[b, li, h, fi, ci] = total / len(rows)
    return out


def test_shares_equal_hf_attention_summed_by_hand(ce64, tiny_ce_dir):
    hf = hf_cross_encoder(tiny_ce_dir).double()
    res = attention_by_group(ce64, PAIRS, batch_size=2)  # two forwards: batching never changes values
    batch = ce64.tokenize([q for q, _ in PAIRS], [d for _, d in PAIRS])
    with torch.no_grad():
        attn = hf(
            input_ids=batch.input_ids,
            token_type_ids=batch.token_type_ids,
            attention_mask=batch.attention_mask,
            output_attentions=True,
        ).attentions
    qids = [
        [i for i, gg in zip(batch.input_ids[b].tolist(), batch.groups[b].tolist()) if gg == QUERY]
        for b in range(3)
    ]
    expected = _by_hand(list(attn), batch, qids)
    assert res.values.shape == (3, ce64.cfg.n_layers, ce64.cfg.n_heads, 3, 4)
    torch.testing.assert_close(res.values, expected, atol=1e-10, rtol=0)
    # each group's attention is split over the four categories: they sum to 1
    torch.testing.assert_close(
        res.values.sum(-1), torch.ones(3, 2, 2, 3, dtype=torch.float64), atol=1e-10, rtol=0
    )
    # the matching tokens exist in the first two pairs only: the third puts no mass on them
    assert (res.values[:2, :, :, 0, 0] > 0).all() and (res.values[2, :, :, :, 0] == 0).all()
    # the kept pattern is pair 0's, over its attended positions, with its tokens
    n0 = int(batch.attention_mask[0].sum())
    assert res.pattern.shape == (2, 2, n0, n0) and res.view_pair == 0
    torch.testing.assert_close(res.pattern[1], attn[1][0, :, :n0, :n0], atol=1e-10, rtol=0)
    assert res.tokens[0] == "[CLS]" and res.tokens.count("##uron") == 3 and res.token_groups[1] == "query"
    assert res.tokens == ce64.tokenizer.convert_ids_to_tokens(batch.input_ids[0, :n0].tolist())
    # mean and share: nanmean over pairs
    torch.testing.assert_close(res.share("query", "doc_match"), expected[:, :, :, 0, 0].mean(0))
    rows = res.table("doc")
    assert len(rows) == 4 and rows[0]["query"] == pytest.approx(float(expected[:, 0, 0, 1, 2].mean()))


def test_layers_subset_and_save_load(ce64, tmp_path):
    full = attention_by_group(ce64, PAIRS, view_pair=None)
    one = attention_by_group(ce64, PAIRS, layers=[1], view_pair=2)
    torch.testing.assert_close(one.values[:, 0], full.values[:, 1])
    assert full.pattern is None and one.pattern.shape[:2] == (1, 2) and one.layers == [1]
    path = one.save(tmp_path / "attention_groups.safetensors")
    back = AttentionGroups.load(path)
    assert back.tokens == one.tokens and back.layers == [1] and back.view_pair == 2
    torch.testing.assert_close(back.values, one.values, equal_nan=True)
    torch.testing.assert_close(back.pattern, one.pattern)


def test_bi_encoder_reads_the_document_encoding(minilm_be):
    res = attention_by_group(minilm_be, PAIRS[:2], layers=[0, 5])
    assert res.values.shape == (2, 2, 12, 3, 4) and not res.meta["pairwise"]
    assert res.values[:, :, :, 0].isnan().all()  # no query token in a bi-encoder's document input
    from mechir_nig.findings import attention_group_findings

    (sentence,) = attention_group_findings(res)  # the query rows are empty: only doc -> matching doc tokens
    share = res.share("doc", "doc_match")
    j = int(share.flatten().argmax())
    assert sentence.startswith(
        f"Head L{res.layers[j // 12]}H{j % 12} puts the largest share of the doc tokens'"
    )
    assert f"{float(share.max()):.2f}" in sentence
    assert (res.values[:, :, :, 1:, 2] == 0).all()  # nor attention to query tokens
    torch.testing.assert_close(res.values[:, :, :, 1:].sum(-1), torch.ones(2, 2, 12, 2, dtype=torch.float64))
    # by hand: document pair 0, layer 5, head 3: the [CLS] row's weight on the "neuron" pieces
    batch = minilm_be.tokenize([PAIRS[0][1]])
    _, cache = minilm_be.run_with_cache(batch)
    pat = cache["blocks.5.attn.hook_pattern"][0, 3].double()
    q = set(minilm_be.tokenize([PAIRS[0][0]]).input_ids[0, 1:-1].tolist())
    ids = batch.input_ids[0].tolist()
    match = [k for k in range(1, len(ids) - 1) if ids[k] in q]
    assert match  # "a", "neuron" pieces occur in the document
    assert float(res.values[0, 1, 3, 2, 0]) == pytest.approx(float(pat[0, match].sum()), abs=1e-6)
    assert float(res.values[0, 1, 3, 2, 3]) == pytest.approx(float(pat[0, [0, len(ids) - 1]].sum()), abs=1e-6)


def test_figures(ce64):
    res = attention_by_group(ce64, PAIRS)
    from mechir_nig.findings import attention_group_findings

    lines = attention_group_findings(res)
    assert len(lines) == 2 and "matching document tokens" in lines[0] and "on query tokens" in lines[1]
    assert f"{float(res.share('query', 'doc_match').max()):.2f} (mean over 3 pairs" in lines[0]
    fig = res.plot("heads", from_group="query")
    assert len(fig.data) == 4 and fig.layout.coloraxis.cmin == 0 and fig.layout.coloraxis.cmax == 1
    assert fig.data[0].z.tolist() == res.share("query", "doc_match").tolist()
    view = res.plot("pattern", layer=1, head=1)
    assert len(view.data) == 4 and [t.visible for t in view.data] == [False, False, False, True]
    assert view.data[3].z.tolist() == res.pattern[1, 1].double().tolist()
    assert list(view.layout.xaxis.ticktext)[:2] == ["0:[CLS]", "1:what"]
    assert len(view.layout.sliders[0].steps) == 4
    html = view.to_html(include_plotlyjs=False, full_html=False)
    assert "<script src" not in html  # nothing loaded from outside


def test_errors_say_what_to_fix(ce64):
    with pytest.raises(InputError, match="pairs is empty"):
        attention_by_group(ce64, [])
    with pytest.raises(InputError, match="pair 0 must be"):
        attention_by_group(ce64, ["just a string"])
    with pytest.raises(InputError, match="view_pair"):
        attention_by_group(ce64, PAIRS, view_pair=3)
    res = attention_by_group(ce64, PAIRS[:1], view_pair=None)
    with pytest.raises(InputError, match="to must be one of"):
        res.share("query", "docs")
    with pytest.raises(InputError, match="no pattern"):
        res.plot("pattern")
