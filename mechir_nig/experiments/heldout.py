"""Re-ranking held-out queries under an intervention: the evaluation shared by the studies that change the
model and measure the effectiveness lost (``interaction_study``; ``pruning_study`` evaluates the same way).

:class:`HeldOutRerank` takes the evaluation queries (by default the evaluation half of
``pruning.split_queries``: the same split as the pruning study), checks that they are judged
(``pruning.JUDGED``) and have candidates, and holds the (query, candidate) pairs and their texts once. For
a bi-encoder whose document side is intervened on, the unchanged query embeddings are computed once.
:meth:`~HeldOutRerank.score` scores every pair inside a context (any intervention: ``ablate``,
``block_attention``...), :meth:`~HeldOutRerank.measure` turns scores into ir_measures values (mean and
per query).

Example:
    >>> from mechir_nig.interventions import block_attention
    >>> ev = HeldOutRerank.prepare(ce, col, bm25_candidates(col, k=3))
    >>> with block_attention(ce, "query", "doc"):
    ...     means, per_query = ev.measure(ev.score())
    >>> sorted(means), sorted(per_query) == sorted(ev.queries)
    (['RR@10', 'nDCG@10'], True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor

from mechir_nig.errors import InputError
from mechir_nig.models.protocol import BiEncoderModel, HookedModel

__all__ = ["HeldOutRerank"]


@dataclass
class HeldOutRerank:
    """The pairs of the held-out queries' candidates and how to score and evaluate them (module docstring).

    Example:
        >>> from mechir_nig.experiments.pruning import split_queries
        >>> candidates = bm25_candidates(col, k=3)
        >>> _, held_out = split_queries(col, seed=0)
        >>> ev = HeldOutRerank.prepare(ce, col, candidates, eval_queries=held_out[:2])
        >>> means, per_query = ev.measure(ev.score())
        >>> len(ev.pairs) == sum(len(candidates[q]) for q in held_out[:2]), len(per_query)
        (True, 2)
    """

    model: HookedModel
    collection: Any
    queries: list[str]
    pairs: list[tuple[str, str]]
    q_texts: list[str]
    d_texts: list[str]
    measures: list[str]
    side: str = "doc"
    batch_size: int = 32
    _bi: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def prepare(
        cls,
        model: HookedModel,
        collection: Any,
        candidates: Mapping[str, Mapping[str, float]],
        *,
        eval_queries: Iterable[str] | None = None,
        measures: Sequence[str] = ("nDCG@10", "RR@10"),
        side: str = "doc",
        batch_size: int = 32,
        split_seed: int = 0,
        what: str = "study",
    ) -> HeldOutRerank:
        """The evaluation of ``eval_queries`` (default: the evaluation half of ``split_queries(collection,
        seed=split_seed)``), refusing unknown measures and warning about unjudged queries.

        Args:
            model: a cross- or bi-encoder.
            collection: the collection (texts, qrels).
            candidates: first-stage run ``{query_id: {doc_id: score}}``.
            eval_queries: the queries evaluated.
            measures: ir_measures names.
            side: bi-encoders: the side intervened on (``"doc"``: the query embeddings computed once
                without the intervention; ``"query"`` or ``"both"``).
            batch_size: texts or pairs per forward.
            split_seed: the seed of the default split.
            what: the study's name, for messages.

        Raises:
            InputError: no evaluation query is judged and has candidates; a bad side or measure.
        """
        from mechir_nig._validate import check_int
        from mechir_nig.evaluation import _parse_measures, candidate_pairs
        from mechir_nig.experiments.pruning import evaluable_queries, split_queries

        check_int(batch_size, "batch_size", minimum=1)
        if side not in ("doc", "query", "both"):
            raise InputError(f"side must be 'doc', 'query' or 'both', got {side!r}")
        if model.pairwise and side != "doc":
            raise InputError("side applies to bi-encoders only")
        _parse_measures(list(measures))
        ev = list(split_queries(collection, seed=split_seed)[1] if eval_queries is None else eval_queries)
        ev = evaluable_queries(collection, candidates, ev, what=what, stacklevel=3)
        pairs, docs = candidate_pairs(collection, candidates, ev)
        return cls(
            model,
            collection,
            ev,
            pairs,
            [collection.queries[q] for q, _ in pairs],
            [docs[d] for _, d in pairs],
            list(measures),
            side,
            batch_size,
        )

    def _bi_inputs(self) -> dict[str, Any]:
        """A bi-encoder's unique texts, their rows and (once) the unchanged embeddings."""
        if not self._bi:
            be = cast(BiEncoderModel, self.model)
            uq, ud = list(dict.fromkeys(self.q_texts)), list(dict.fromkeys(self.d_texts))
            qi, di = {t: i for i, t in enumerate(uq)}, {t: i for i, t in enumerate(ud)}
            with torch.no_grad():
                self._bi.update(
                    uq=uq,
                    ud=ud,
                    q_row=torch.tensor([qi[t] for t in self.q_texts]),
                    d_row=torch.tensor([di[t] for t in self.d_texts]),
                    q_clean=be.encode(uq, batch_size=self.batch_size),
                    d_clean=be.encode(ud, batch_size=self.batch_size),
                )
        return self._bi

    def score(
        self, intervention: Callable[[], contextlib.AbstractContextManager[Any]] | None = None
    ) -> Tensor:
        """``[n_pairs]`` float64 scores on the CPU, every forward inside ``intervention()`` (a context
        manager factory; ``None``: the model as it is). A bi-encoder encodes the intervened side(s) inside
        it and reuses the unchanged embeddings of the other."""
        ctx = intervention if intervention is not None else contextlib.nullcontext
        with torch.no_grad():
            if self.model.pairwise:
                with ctx():
                    out = self.model.score(self.q_texts, self.d_texts, batch_size=self.batch_size)
            else:
                be, b = cast(BiEncoderModel, self.model), self._bi_inputs()
                if intervention is None:
                    qe, de = b["q_clean"], b["d_clean"]
                else:
                    with ctx():
                        qe = be.encode(b["uq"], batch_size=self.batch_size) if self.side != "doc" else None
                        de = be.encode(b["ud"], batch_size=self.batch_size) if self.side != "query" else None
                    qe = b["q_clean"] if qe is None else qe
                    de = b["d_clean"] if de is None else de
                out = be.similarity_fn(qe[b["q_row"]], de[b["d_row"]])
        return out.detach().to("cpu", torch.float64)

    def measure(self, values: Tensor) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        """``(mean per measure, {query_id: {measure: value}})`` of the ranking the scores ``values`` give."""
        from mechir_nig.evaluation import evaluate

        run: dict[str, dict[str, float]] = {q: {} for q in self.queries}
        for (q, d), v in zip(self.pairs, values.tolist(), strict=True):
            run[q][d] = v
        res = evaluate(run, self.collection, self.measures, per_query=True, query_ids=self.queries)
        return {m: float(res[m]) for m in res}, res.per_query or {}
