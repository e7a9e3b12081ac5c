"""Directions of the token embedding matrix and their relation to collection IDF (Lu, Chen & Eickhoff,
"Pathway to Relevance: How Cross-Encoders Implement a Semantic Variant of BM25", EMNLP 2025).

:func:`embedding_directions` takes the SVD of the **centred** token embedding matrix
``W_E − mean_v W_E[v]`` (``[d_vocab, d_embed]``, the mean over every vocabulary row removed, so no
component is the shared offset of all embeddings) and correlates each top component's token loadings
``(W_E[v] − mean) · V_i`` with the IDF of the tokens present in the collection. Token IDF is
``log(1 + (N − df + 0.5) / (df + 0.5))`` (Lucene's BM25 IDF, as ``term_idf``) with ``df`` the number of
documents whose model tokenization holds the token (``idf="tokens"``), or the IDF of the collection term
a whole-word token spells (``idf="terms"``: ``term_idf`` of the lowercased token; word pieces and special
tokens left out). Each correlation has a percentile bootstrap interval over tokens
(:func:`~mechir_nig.statistics.correlation_ci`). A component's sign is arbitrary in an SVD: each is
oriented so its largest-magnitude loading is positive (independent of IDF).

:func:`idf_edit` moves the word embeddings of a query's terms along a direction (e.g.
``EmbeddingDirections.idf_direction``, oriented towards higher IDF) by ``alpha`` on ``hook_embed`` and
returns the score change.

Example:
    >>> dirs = embedding_directions(ce, {"d1": "cats purr", "d2": "dogs bark", "d3": "cats"}, k=2,
    ...                             n_resamples=100)
    >>> dirs.components.shape, len(dirs.table())  # [k, d_embed]
    (torch.Size([2, 384]), 2)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechir_nig._validate import check_choice, check_int
from mechir_nig.analysis.features import split_pairs, token_words
from mechir_nig.data.collection import Collection, LazyDocs
from mechir_nig.errors import InputError
from mechir_nig.interventions.directions import unit_direction
from mechir_nig.interventions.perturb import query_terms, term_idf
from mechir_nig.models.protocol import HookedModel
from mechir_nig.models.tokenization import DOC, QUERY

__all__ = ["EmbeddingDirections", "embedding_directions", "idf_edit", "token_idf"]


def token_idf(tokenizer: Any, docs: Mapping | Collection, *, idf: str = "tokens") -> dict[int, float]:
    """``{token id: IDF}`` of the tokens present in ``docs`` (see the module docstring for ``idf``).

    Example:
        >>> table = token_idf(ce.tokenizer, {"d1": "cats purr", "d2": "cats"})
        >>> round(table[ce.tokenizer.convert_tokens_to_ids("cats")], 4)  # in both documents
        0.1823
    """
    check_choice(idf, "idf", ("tokens", "terms"))
    texts = docs.docs if isinstance(docs, Collection) else docs
    if isinstance(texts, LazyDocs):
        texts.require_in_memory("token IDF")
    if not isinstance(texts, Mapping) or not texts:
        raise InputError("docs must be a non-empty dict {doc_id: text} or a Collection")
    special = set(getattr(tokenizer, "all_special_ids", []))
    if idf == "terms":
        table = term_idf(texts)
        vocab = tokenizer.get_vocab()
        return {i: table[t.lower()] for t, i in vocab.items() if i not in special and t.lower() in table}
    bodies = [str(t) for t in texts.values()]
    df: Counter[int] = Counter()
    for start in range(0, len(bodies), 1024):
        enc = tokenizer(bodies[start : start + 1024], add_special_tokens=False, verbose=False)["input_ids"]
        for ids in enc:
            df.update(set(ids) - special)
    n = len(bodies)
    return {t: math.log(1.0 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}


@dataclass
class EmbeddingDirections:
    """The top singular directions of the centred embedding matrix and their correlation with IDF.

    Shapes:
        components: ``[k, d_embed]`` unit right-singular vectors (rows), oriented as the module says.
        singular_values, explained: ``[k]`` (``explained``: fraction of the centred matrix's variance).
        loadings: ``[n_tokens, k]`` the present tokens' coordinates along each component.
        token_ids, idf: ``[n_tokens]`` the tokens present in the collection and their IDF.

    Attributes:
        spearman: per component ``(r, low, high)``: the Spearman correlation of its loadings with IDF
            and its bootstrap interval.
        pearson: the same with Pearson's correlation.
        settings: ``k``, ``idf``, ``confidence``, ``n_resamples``, ``seed``.

    Example:
        >>> dirs = embedding_directions(ce, {"d1": "cats purr", "d2": "dogs bark", "d3": "cats"}, k=2, n_resamples=100)
        >>> dirs.idf_direction.shape  # [d_embed]
        torch.Size([384])
    """

    components: Float[Tensor, "k d_embed"]
    singular_values: Float[Tensor, " k"]
    explained: Float[Tensor, " k"]
    loadings: Float[Tensor, "n_tokens k"]
    token_ids: Int[Tensor, " n_tokens"]
    idf: Float[Tensor, " n_tokens"]
    spearman: list[tuple[float, float, float]]
    pearson: list[tuple[float, float, float]]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def idf_component(self) -> int:
        """The component whose loadings correlate most with IDF (largest ``|Pearson|``: robust to the many
        tokens of equal IDF, which Spearman orders by noise)."""
        return max(range(len(self.pearson)), key=lambda i: abs(self.pearson[i][0]))

    @property
    def idf_direction(self) -> Float[Tensor, " d_embed"]:
        """:attr:`idf_component`'s unit direction, oriented towards higher IDF."""
        i = self.idf_component
        return self.components[i] * (1.0 if self.pearson[i][0] >= 0 else -1.0)

    def table(self) -> list[dict[str, Any]]:
        """One row per component: singular value, explained variance, Spearman and Pearson with intervals.

        Example:
            >>> dirs = embedding_directions(ce, {"d1": "cats purr", "d2": "dogs bark", "d3": "cats"}, k=2, n_resamples=100)
            >>> dirs.table()[0]["component"]
            0
        """
        return [
            {
                "component": i,
                "singular_value": float(self.singular_values[i]),
                "explained": float(self.explained[i]),
                "spearman": s[0],
                "spearman_low": s[1],
                "spearman_high": s[2],
                "pearson": p[0],
                "pearson_low": p[1],
                "pearson_high": p[2],
            }
            for i, (s, p) in enumerate(zip(self.spearman, self.pearson, strict=True))
        ]

    def to_markdown(self, digits: int = 3) -> str:
        """:meth:`table` as markdown.

        Example:
            >>> dirs = embedding_directions(ce, {"d1": "cats purr", "d2": "dogs bark", "d3": "cats"}, k=2, n_resamples=100)
            >>> print(dirs.to_markdown())  # doctest: +ELLIPSIS
            | component | explained variance | Spearman [95% CI] | Pearson [95% CI] |
            |---|---|---|---|
            | 0 | ... |
            | 1 | ... |
            <BLANKLINE>
        """
        ci = int(round(100 * self.settings.get("confidence", 0.95)))
        out = f"| component | explained variance | Spearman [{ci}% CI] | Pearson [{ci}% CI] |\n|---|---|---|---|\n"
        for r in self.table():
            out += (
                f"| {r['component']} | {r['explained']:.{digits}f} | {r['spearman']:.{digits}f} "
                f"[{r['spearman_low']:.{digits}f}, {r['spearman_high']:.{digits}f}] | {r['pearson']:.{digits}f} "
                f"[{r['pearson_low']:.{digits}f}, {r['pearson_high']:.{digits}f}] |\n"
            )
        return out


def embedding_directions(
    model: HookedModel,
    collection: Mapping | Collection | Mapping[int, float],
    k: int = 10,
    *,
    idf: str = "tokens",
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> EmbeddingDirections:
    """The SVD of the centred token embedding matrix and each top component's correlation with IDF.

    Args:
        model: a ``HookedModel`` (its ``word_embeddings`` and ``tokenizer``).
        collection: a ``Collection`` or ``{doc_id: text}`` (the IDF is computed with :func:`token_idf`),
            or a ready ``{token id: idf}`` table.
        k: how many components.
        idf: ``"tokens"`` (document frequency of the model's tokens) or ``"terms"`` (whole-word tokens
            with the IDF of their collection term).
        confidence: of the bootstrap intervals.
        n_resamples: bootstrap resamples (tokens resampled).
        seed: of the bootstrap.

    Returns:
        :class:`EmbeddingDirections` (components ``[k, d_embed]``, correlations with intervals).

    Raises:
        InputError: ``k`` out of ``1 .. d_embed``; fewer than 3 tokens with an IDF.

    Example:
        >>> dirs = embedding_directions(ce, {"d1": "cats purr", "d2": "dogs bark", "d3": "cats"}, k=2, n_resamples=100)
        >>> [row["component"] for row in dirs.table()]  # one row per component, with its IDF correlations
        [0, 1]
    """
    from mechir_nig.statistics import correlation_ci

    ids = torch.arange(model.cfg.d_vocab, device=model.device)[None]
    with torch.no_grad():
        w = model.word_embeddings(ids)[0].to("cpu", torch.float64)  # [d_vocab, d_embed]
    check_int(k, "k", minimum=1, maximum=w.shape[1])
    if isinstance(collection, Mapping) and collection and isinstance(next(iter(collection)), int):
        table = {int(t): float(v) for t, v in collection.items()}
    else:
        table = token_idf(model.tokenizer, collection, idf=idf)
    present = sorted(t for t in table if 0 <= t < w.shape[0])
    if len(present) < 3:
        raise InputError(f"only {len(present)} vocabulary tokens have an IDF: correlations need at least 3")
    centred = w - w.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    comps = vh[:k]
    scores_all = centred @ comps.T  # [d_vocab, k]
    flip = torch.sign(scores_all.gather(0, scores_all.abs().argmax(0, keepdim=True)))[0]
    comps, scores_all = comps * flip[:, None], scores_all * flip
    token_ids = torch.tensor(present)
    loadings = scores_all[token_ids]
    idf_v = torch.tensor([table[t] for t in present], dtype=torch.float64)
    ci = {
        m: [
            correlation_ci(
                loadings[:, i].numpy(),
                idf_v.numpy(),
                method=m,
                confidence=confidence,
                n_resamples=n_resamples,
                seed=seed,
            )
            for i in range(k)
        ]
        for m in ("spearman", "pearson")
    }
    return EmbeddingDirections(
        comps,
        s[:k],
        (s[:k] ** 2) / (s**2).sum(),
        loadings,
        token_ids,
        idf_v,
        ci["spearman"],
        ci["pearson"],
        {"k": k, "idf": idf, "confidence": confidence, "n_resamples": n_resamples, "seed": seed},
    )


def _query_term_positions(model: HookedModel, batch: Any, queries: list[str], group: int) -> Tensor:
    """``[batch, pos]`` bool: the tokens of ``group`` (the query's tokens) that belong to a query term."""
    out = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
    for i, q in enumerate(queries):
        _, words = token_words(model.tokenizer, q)
        terms = set(query_terms(q))
        positions = (batch.groups[i] == group).nonzero().flatten().tolist()
        for p, w in zip(positions, words, strict=False):
            out[i, p] = w in terms
    return out


def idf_edit(
    model: HookedModel,
    pairs: Any,
    direction: Any,
    alpha: float,
    *,
    batch_size: int = 32,
) -> Float[Tensor, " batch"]:
    """The score change when every query-term token's word embedding moves by ``alpha`` along
    ``direction`` (unit-normalised): ``F(edited) − F(clean)`` per pair.

    Query terms are :func:`~mechir_nig.interventions.perturb.query_terms` (stopwords left unedited); the edit
    is on ``hook_embed`` (``[batch, pos, d_embed]``), before positions and token types are added. A
    bi-encoder edits the query side only.

    Args:
        model: a ``HookedModel``.
        pairs: ``(query, doc)`` tuples or ``JudgedPair`` records.
        direction: ``[d_embed]``, e.g. ``embedding_directions(...).idf_direction``.
        alpha: the step along the unit direction (negative: towards lower IDF).
        batch_size: pairs per forward.

    Returns:
        ``[batch]`` score changes, on CPU.

    Example:
        >>> delta = idf_edit(ce, [("what is a neuron", "A neuron is a cell.")], torch.ones(384), 1.0)
        >>> delta.shape  # [batch]
        torch.Size([1])
    """
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        raise InputError(f"alpha must be a number, got {alpha!r}")
    check_int(batch_size, "batch_size", minimum=1)
    queries, docs, _ = split_pairs(pairs)
    d_embed = model.word_embeddings(torch.zeros(1, 1, dtype=torch.long, device=model.device)).shape[-1]
    u = unit_direction(direction, int(d_embed))
    out = []
    for start in range(0, len(queries), batch_size):
        q, d = queries[start : start + batch_size], docs[start : start + batch_size]
        if model.pairwise:
            batch = model.tokenize(q, d)
            where = _query_term_positions(model, batch, q, QUERY)
        else:
            batch = model.tokenize(q)
            where = _query_term_positions(model, batch, q, DOC)
        if not bool(where.any(1).all()):
            bad = int((~where.any(1)).nonzero()[0, 0]) + start
            raise InputError(f"pairs[{bad}]: its query {queries[bad]!r} has no term to edit (only stopwords)")

        def hook(act: Tensor, hook: Any, where: Tensor = where) -> Tensor:  # [batch, pos, d_embed]
            m = where[:, : act.shape[1], None].to(act.device)
            return act + m * (alpha * u.to(act.device, act.dtype))

        with torch.no_grad():
            if model.pairwise:
                clean = model(batch.to(model.device))
                edited = model.run_with_hooks(batch.to(model.device), fwd_hooks=[("hook_embed", hook)])
            else:
                be: Any = model
                docs_emb = be.encode(d)
                q_clean = be(batch.to(model.device))
                q_edit = be.run_with_hooks(batch.to(model.device), fwd_hooks=[("hook_embed", hook)])
                clean = be.similarity_fn(q_clean.cpu(), docs_emb.cpu())
                edited = be.similarity_fn(q_edit.cpu(), docs_emb.cpu())
        out.append((edited - clean).detach().to("cpu", torch.float64))
    return torch.cat(out)
