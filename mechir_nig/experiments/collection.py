"""Collection studies: BM25 vs neural re-ranking, and split-half stability of NIG neuron rankings.

``split_half_stability`` follows the paper's question "are the relevance neurons a property of the model
or of the queries?": the queries are split into two disjoint halves (seeded), the relevant pairs of each
half are attributed, and the top-``fraction`` neuron sets of the two halves are compared (Jaccard) with
the overlap expected of random sets of the same sizes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechir_nig.errors import CheckpointError, InputError
from mechir_nig.models.protocol import HookedModel, Scorer

if TYPE_CHECKING:
    from mechir_nig.data.collection import Collection, Run


def rerank_sharded(
    model: HookedModel | Scorer,
    collection: Collection,
    candidates: Mapping[str, Mapping[str, float]],
    *,
    batch_size: int = 32,
    query_ids: Iterable[str] | None = None,
    progress: bool = False,
    distributed: bool | str = "auto",
) -> Run:
    """:func:`~mechir_nig.evaluation.rerank`, with the queries sharded over the ranks of a launch.

    ``model``, ``collection``, ``candidates``, ``batch_size``, ``query_ids`` and ``progress`` are
    ``rerank``'s (the progress bar on rank 0 only).

    Args:
        distributed: ``"auto"`` (default): under a ``torchrun`` launch of more than one process the
            queries are sharded over the ranks (:meth:`~mechir_nig.runtime.distributed.Context.map`, each
            query costing the characters of its query and candidate texts), each rank scores its queries'
            pairs and every rank returns the whole run; ``True``: shard under any launch (even of one
            process); ``False``: ignore a launch (this process scores every pair). Under a launch every
            rank must pass the same candidates (checked: ``DistributedError`` otherwise).

    Returns:
        The run of ``rerank``: a sharded run returns the single-process run on every rank (a
        cross-encoder's scores up to float rounding of the batch composition).

    Raises:
        InputError: what ``rerank`` refuses. DistributedError: other candidates on another rank, or
            another rank failed.

    Example:
        >>> cands = bm25_candidates(col, k=3)
        >>> run = rerank_sharded(ce, col, cands)  # under torchrun: sharded over the ranks
        >>> all(set(run[q]) == set(cands[q]) for q in cands)  # every candidate re-scored
        True
    """
    from mechir_nig.data.collection import select_query_ids
    from mechir_nig.evaluation import rerank
    from mechir_nig.runtime.distributed import context

    ctx = context(distributed, getattr(model, "device", None))
    if not ctx.grouped:
        return rerank(
            model, collection, candidates, batch_size=batch_size, query_ids=query_ids, progress=progress
        )
    with ctx.collective("checking the candidates"):
        if not isinstance(candidates, Mapping):
            raise InputError(
                "candidates must be a run dict {query_id: {doc_id: score}} (e.g. bm25_candidates)"
            )
        ids = select_query_ids(candidates, query_ids, "candidates")
        texts = collection.get_docs(d for q in ids for d in candidates[q])
        queries = collection.queries
        costs = [
            sum(len(queries[q] if q in queries else "") + len(texts.get(d, "")) for d in candidates[q])
            for q in ids
        ]

    def score(share: list[str]) -> list[dict[str, float]]:
        run = rerank(
            model,
            collection,
            candidates,
            batch_size=batch_size,
            query_ids=share,
            progress=progress and ctx.is_main,
        )
        return [run[q] for q in share]

    ranked = ctx.map(
        ids,
        score,
        cost=costs,
        what="re-ranking the candidates",
        fingerprint=[(q, list(candidates[q])) for q in ids],
    )
    return dict(zip(ids, ranked, strict=True))


def rerank_study(
    model: HookedModel | Scorer,
    collection: Any,
    *,
    k: int = 100,
    measures: tuple[str, ...] = ("nDCG@10", "RR@10"),
    batch_size: int = 64,
    progress: bool = False,
    distributed: bool | str = "auto",
) -> dict[str, Any]:
    """BM25 top-``k`` and the model re-ranking it, evaluated with ir_measures on the collection's qrels.

    ``distributed`` goes to :func:`rerank_sharded`: under a ``torchrun`` launch the queries
    are sharded over the ranks and every rank returns the whole study (BM25 runs on every rank).

    Returns:
        ``{"collection", "queries", "k", "bm25": {measure: value}, "reranked": {measure: value},
        "seconds": {"bm25", "rerank"}}``.

    Example:
        >>> study = rerank_study(ce, load_collection("embedded"), k=3)
        >>> sorted(study["bm25"]), 0.0 <= study["reranked"]["nDCG@10"] <= 1.0
        (['RR@10', 'nDCG@10'], True)
    """
    from mechir_nig.data import bm25_candidates
    from mechir_nig.evaluation import evaluate

    t0 = time.perf_counter()
    bm25 = bm25_candidates(collection, k=k)
    t1 = time.perf_counter()
    reranked = rerank_sharded(
        model, collection, bm25, batch_size=batch_size, progress=progress, distributed=distributed
    )
    t2 = time.perf_counter()
    qrels = collection  # the collection itself: its grade map and relevance threshold apply
    return {
        "collection": collection.name,
        "queries": len(bm25),
        "k": k,
        "bm25": dict(evaluate(bm25, qrels, measures)),
        "reranked": dict(evaluate(reranked, qrels, measures)),
        "seconds": {"bm25": round(t1 - t0, 2), "rerank": round(t2 - t1, 2)},
    }


def split_half_stability(
    model: HookedModel,
    collection: Any,
    *,
    fraction: float = 0.01,
    max_relevant_per_query: int = 3,
    n_steps: int = 32,
    settings: Any = None,
    query_ids: Any = None,
    batch_size: int = 8,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    distributed: bool | str = "auto",
) -> dict[str, Any]:
    """Overlap of the top-``fraction`` relevant-label neuron sets of two disjoint query halves.

    Args:
        settings: NIG options (``NIGSettings``); ``n_steps`` is used when it is not given.
        query_ids: restrict the study to these queries (default: every query with a relevant document).
        checkpoint_dir: one resumable checkpoint per half (``half0.ckpt``, ``half1.ckpt``).
        distributed: goes to ``attribute_collection`` for each half: ``"auto"`` (default) shards each
            half's pairs over the ranks of a ``torchrun`` launch of more than one process (balanced by
            token count), each rank checkpoints only its own part and rank 0 writes ``halfN.ckpt``;
            every rank returns the whole study (the sets are selected from the merged statistics).
            ``True``: shard under any launch; ``False``: ignore a launch (every rank does everything, so
            pass it only without ``checkpoint_dir`` or with one folder per rank).

    Returns:
        A dict with the halves (queries, pairs, ``seconds`` spent attributing in this call,
        ``pairs_attributed`` in this call and ``pairs_resumed`` from a checkpoint), the overlap report
        (Jaccard vs chance over the attributed layers) and the halves' layer profiles.

    Example:
        >>> from mechir_nig.attribution.settings import NIGSettings
        >>> col = load_collection("embedded")
        >>> few = sorted(col.queries)[:4]
        >>> settings = NIGSettings(n_steps=4, layers=[4, 5])
        >>> study = split_half_stability(
        ...     ce, col, fraction=0.01, max_relevant_per_query=1, settings=settings, query_ids=few,
        ...     progress=False,
        ... )
        >>> overlap = study["overlap"]  # Jaccard of the two halves' sets vs the chance level
        >>> 0.0 <= overlap["jaccard"] <= 1.0, 0.0 <= overlap["expected_jaccard"] <= 1.0
        (True, True)
    """
    from mechir_nig.attribution.settings import NIGSettings
    from mechir_nig.data import judged_pairs
    from mechir_nig.experiments.attribute import attribute_collection
    from mechir_nig.runtime.distributed import context
    from mechir_nig.sets import overlap_report, select_top

    settings = settings or NIGSettings(n_steps=n_steps)
    ctx = context(distributed, getattr(model, "device", None))
    from mechir_nig.experiments.pruning import JUDGED, judged_queries

    eligible = set(judged_queries(collection))  # the library's one definition of a judged query
    if query_ids is not None:
        wanted = [str(q) for q in query_ids]
        unknown = sorted(set(wanted) - set(collection.queries))
        if unknown:
            raise InputError(
                f"query_ids name {len(unknown)} queries not in the collection, e.g. {unknown[:3]}"
            )
        eligible &= set(wanted)
    qids = sorted(eligible)
    if len(qids) < 2:
        raise InputError(
            "the study needs at least two queries with relevant documents"
            + (" among query_ids" if query_ids is not None else "")
        )
    random.Random(seed).shuffle(qids)
    halves = [sorted(qids[: len(qids) // 2]), sorted(qids[len(qids) // 2 :])]
    out: dict[str, Any] = {
        "fraction": fraction,
        "n_steps": settings.n_steps,
        "settings": settings.record(),
        "seed": seed,
        "judged_queries": JUDGED,
        "halves": [],
    }
    sets = []
    for h, ids in enumerate(halves):
        pairs = judged_pairs(
            collection,
            query_ids=ids,
            max_relevant_per_query=max_relevant_per_query,
            max_nonrelevant_per_query=0,
            seed=seed,
        )
        ckpt = Path(checkpoint_dir) / f"half{h}.ckpt" if checkpoint_dir is not None else None
        resumed = 0
        if ckpt is not None:  # read on rank 0 before any rank's attribute_collection can change the files
            with ctx.collective("reading the checkpoint"):
                resumed = _pairs_done(ckpt, len(pairs)) if ctx.is_main else 0
            resumed = ctx.broadcast(resumed)
        t0 = time.perf_counter()
        stats = attribute_collection(
            model,
            pairs,
            settings=settings,
            batch_size=batch_size,
            checkpoint=ckpt,
            resume=ckpt is not None,
            progress=progress,
            collection=collection.name,
            distributed=distributed,
        )
        secs = time.perf_counter() - t0
        top = select_top(
            stats.scheme_scores("relevant"), fraction=fraction, layers=stats.layers, name=f"half{h}"
        )
        sets.append(top)
        out["halves"].append(
            {
                "queries": len(ids),
                "pairs": stats.counts["relevant"],
                "pairs_attributed": stats.n_done - resumed,
                "pairs_resumed": resumed,
                "seconds": round(secs, 1),
                "set_size": len(top),
            }
        )
    out["overlap"] = overlap_report(sets[0], sets[1])
    out["layer_profiles"] = [s.layer_profile() for s in sets]
    return out


def _pairs_done(ckpt: Path, n_pairs: int) -> int:
    """How many of a half's ``n_pairs`` a previous run left done: the checkpoint's ``n_done`` (a
    single-process run, or a complete one), or the pairs a sharded run's parts hold (``runtime.shards``)."""
    import json

    from mechir_nig.attribution.stats import CollectionAttribution
    from mechir_nig.runtime.shards import manifest_path

    done = CollectionAttribution.load(ckpt).n_done if ckpt.exists() else 0
    manifest = manifest_path(ckpt)
    if done == n_pairs or not manifest.exists():
        return done
    try:  # the parts hold disjoint pairs (rank 0's part carries the earlier generations' and the checkpoint's)
        parts = json.loads(manifest.read_text())["parts"]
        files = [ckpt.with_name(str(p["file"])) for p in parts]
        return sum(CollectionAttribution.load(f).n_done for f in files if f.exists())
    except (OSError, ValueError, KeyError, TypeError, CheckpointError):
        return 0  # attribute_collection refuses a broken manifest or part, naming it
