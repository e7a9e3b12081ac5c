"""``attribute_collection``: stream judged pairs through NIG into per-label statistics, checkpointed.

An orchestrator (data, checkpoints, progress) over ``mechir_nig.attribution``: pairs are processed
longest first (a deterministic order), each batch's per-group NIG is added to a
``CollectionAttribution``. A checkpoint is one safetensors file (statistics plus, in its metadata, how
many pairs are done, a fingerprint of the pair list, the NIG settings and a hash of the model's config
and weights, and a sha256 checksum of it all), written to a per-process temporary file, fsynced and
renamed, so a crash never leaves a half-written or double-counted state; ``resume=True`` continues
after the last checkpoint without counting a pair twice, and refuses a checkpoint made with other
pairs, settings or weights, or one that is truncated, corrupt or foreign (``CheckpointError``). Before
any work the checkpoint's folder is probed for writing and ``<checkpoint>.lock`` is taken, so a second
process writing the same file is refused (``CheckpointLockedError``); a lock left by a killed process
is taken over. The guarantees are in docs/nig.md ("Checkpoints and crash safety").

Under ``torchrun`` (``distributed="auto"``) the pairs are sharded across the ranks by token count
(``mechir_nig.runtime.distributed``), each rank checkpoints its own part beside a manifest
(``mechir_nig.runtime.shards``), the ranks' statistics are gathered and merged and rank 0 writes the result; such a run
resumes on any number of ranks, or in one plain process (docs/distributed.md).

Example:
    >>> import os, tempfile
    >>> from mechir_nig.data import judged_pairs, load_collection
    >>> pairs = judged_pairs(load_collection("embedded"), max_relevant_per_query=1)[:4]
    >>> ckpt = os.path.join(tempfile.mkdtemp(), "nig.ckpt")
    >>> stats = attribute_collection(model, pairs, n_steps=4, checkpoint=ckpt, resume=True, progress=False)
    >>> stats.mean("relevant").shape  # [layer, d_mlp]
    torch.Size([6, 1536])
    >>> auto = attribute_collection(model, pairs[:2], settings=NIGSettings(n_steps="auto", tol=0.5),
    ...                             progress=False)
    >>> len(auto.n_steps_used())  # [n_pairs] steps each pair needed
    2
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mechir_nig._io import OutputLock, probe_writable
from mechir_nig._validate import check_int
from mechir_nig.attribution.settings import NIGSettings, model_fingerprint
from mechir_nig.attribution.stats import LABELS, CollectionAttribution
from mechir_nig.errors import DistributedError, InputError
from mechir_nig.models.protocol import HookedModel
from mechir_nig.models.tokenization import doc_budget, n_special_tokens, truncation_summary
from mechir_nig.runtime.distributed import Context
from mechir_nig.runtime.distributed import context as distributed_context
from mechir_nig.runtime.shards import manifest_path


def _pair_fields(p: Any, i: int) -> tuple[str, str, str, str]:
    try:
        q, d, label = p.query, p.doc, p.label
    except AttributeError as exc:
        raise InputError(
            f"pairs[{i}] has no query/doc/label; pass JudgedPair records (mechir_nig.data.judged_pairs)"
        ) from exc
    if label not in LABELS:
        raise InputError(f"pairs[{i}].label is {label!r}; labels must be one of {LABELS}")
    key = f"{getattr(p, 'query_id', '')}\t{getattr(p, 'doc_id', '')}\t{label}\t{hashlib.sha1((q + d).encode()).hexdigest()}"
    return q, d, label, key


def _check_tokenizable(model: HookedModel, fields_: list, pairs: Sequence[Any], max_length: int) -> list[int]:
    """Fail before any work (not after hours) on pairs the model cannot take, naming them; return each
    pair's token count (special tokens included, after truncation: the cost sharding balances)."""
    tok = model.tokenizer
    if tok is None:
        raise InputError("the model has no tokenizer; pass tokenizer= to from_pretrained")

    def lengths(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tok(texts, add_special_tokens=False, verbose=False)["input_ids"]]

    q_lens, d_lens = lengths([f[0] for f in fields_]), lengths([f[1] for f in fields_])
    n_special = n_special_tokens(tok, pair=True)
    bad = []
    for i, (nq, nd) in enumerate(zip(q_lens, d_lens)):
        if nq == 0 or nd == 0:
            bad.append((i, "a text with no tokens"))
        elif model.pairwise and doc_budget(max_length, nq, n_special) < 1:
            bad.append((i, f"a query of {nq} tokens, no room for the document in max_length={max_length}"))
    if bad:
        examples = [
            f"pairs[{i}] (query_id={getattr(pairs[i], 'query_id', '?')}, doc_id={getattr(pairs[i], 'doc_id', '?')}): {why}"
            for i, why in bad[:3]
        ]
        raise InputError(
            f"{len(bad)} of {len(pairs)} pairs cannot be attributed: {'; '.join(examples)}; "
            "remove them from pairs (or raise max_length) and run again"
        )
    if model.pairwise:
        return [min(max_length, nq + nd + n_special) for nq, nd in zip(q_lens, d_lens)]
    n_single = n_special_tokens(tok, pair=False)
    return [min(max_length, nq + n_single) + min(max_length, nd + n_single) for nq, nd in zip(q_lens, d_lens)]


def attribute_collection(
    model: HookedModel,
    pairs: Sequence[Any],
    *,
    settings: NIGSettings | None = None,
    batch_size: int = 8,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 256,
    resume: bool = False,
    progress: bool = True,
    collection: str | None = None,
    meta: dict[str, Any] | None = None,
    on_batch: Callable[[int], None] | None = None,
    distributed: bool | str = "auto",
    **options: Any,
) -> CollectionAttribution:
    """Stream judged pairs through NIG and keep per-label statistics (see the module docstring).

    Args:
        model: a hooked model with the attribution protocol (``HookedCrossEncoder``, ``HookedBiEncoder``).
        pairs: ``JudgedPair`` records (``query``, ``doc``, ``label``, ideally ``query_id``/``doc_id``).
        settings: the NIG options (``NIGSettings``: ``n_steps`` incl. ``"auto"``, ``baseline``, ``method``,
            ``layers``, ``side``, ``max_length``, ``internal_batch_size``, ``target`` ...); the statistics
            are per MLP neuron and token group (``sites=("mlp_post",)``, sums per group). With
            ``n_steps="auto"`` each pair's steps are kept in ``stats.meta["n_steps_used"]`` (input order of
            ``pairs``; ``stats.n_steps_used()``), checkpoint included. A ``target`` gets ``t.pair`` as the
            index into ``pairs``.
        **options: the same options as keywords (``NIGSettings(**options)``), instead of ``settings``.
        batch_size: pairs per NIG call (each is split into windows of ``internal_batch_size`` points).
        checkpoint: file to write every ``checkpoint_every`` pairs and at the end.
        resume: continue from ``checkpoint`` if it exists (same pairs, settings and model weights).
        collection: a name recorded in the metadata.
        meta: more of the run's plan to record in the metadata from the first checkpoint on (e.g.
            ``{"query_ids": [...]}``, the queries the pairs were drawn from), so that a stopped run's
            checkpoint says what it was for. Every checkpoint also records the planned pairs: ``n_pairs``
            and ``planned`` (pairs per label); ``n_done < n_pairs`` marks an incomplete one.
        on_batch: called with the number of pairs done after each batch (in a sharded run: the pairs
            this rank's part holds).
        distributed: ``"auto"`` (default): under a ``torchrun`` launch of more than one process the pairs
            are sharded across the ranks (balanced by token count), the statistics gathered and merged and rank 0
            writes ``checkpoint``; ``True``: shard under any launch (even of one process); ``False``:
            ignore a launch (every rank does everything). See "Distributed runs" in docs/distributed.md.

    Returns:
        ``CollectionAttribution`` (``mean(label, group)``: ``[layer, d_mlp]``); in a sharded run every rank
        returns the statistics of all pairs.

    Pairs are processed longest first (a deterministic order, so a resumed run continues exactly).
    A sharded run checkpoints per rank (``<checkpoint>.rank{r}of{w}.g{g}.safetensors`` and
    ``<checkpoint>.manifest.json``, ``mechir_nig.runtime.shards``); it resumes on the same or another
    number of ranks, and a single-process ``resume=True`` continues it too. Rank 0 holds
    ``<checkpoint>.lock`` for the whole run; each rank writes only its own part.

    Raises:
        CheckpointError: before any work, when ``checkpoint`` cannot be written; when it exists but is
            truncated, corrupt or not a collection attribution (``resume=True``).
        CheckpointLockedError: another live process is writing ``checkpoint`` (``checkpoint.lock``).
        DistributedError: ``distributed=True`` without a launch; another rank failed (all ranks stop).

    Example:
        >>> from mechir_nig.data import judged_pairs, load_collection
        >>> pairs = judged_pairs(load_collection("embedded"), max_relevant_per_query=2)
        >>> sorted({p.label for p in pairs})
        ['nonrelevant', 'relevant']
        >>> import os, tempfile
        >>> ckpt = os.path.join(tempfile.mkdtemp(), "nig.ckpt")
        >>> stats = attribute_collection(
        ...     ce, pairs[:4], settings=NIGSettings(n_steps=4), checkpoint=ckpt, resume=True, progress=False
        ... )
        >>> stats.mean("relevant", "doc").shape  # [layer, d_mlp]
        torch.Size([6, 1536])
    """
    cfg = NIGSettings.of(settings, options, "attribute_collection").resolved(model)
    check_int(batch_size, "batch_size", minimum=1)
    check_int(checkpoint_every, "checkpoint_every", minimum=1)
    if len(pairs) == 0:
        raise InputError("pairs is empty; pass judged pairs (mechir_nig.data.judged_pairs)")
    fields_ = [_pair_fields(p, i) for i, p in enumerate(pairs)]
    taken = sorted(
        set(meta or {}) & {"planned", "n_pairs", "pairs_fingerprint", "model", "collection", "shard"}
    )
    if taken:
        raise InputError(f"meta cannot set {taken}: attribute_collection records them itself")
    plan_meta = {"planned": {lab: sum(f[2] == lab for f in fields_) for lab in LABELS}, **(meta or {})}
    ckpt = Path(checkpoint) if checkpoint is not None else None
    ctx = distributed_context(distributed, getattr(model, "device", None))
    if ctx.grouped or (ckpt is not None and manifest_path(ckpt).exists()):
        with contextlib.ExitStack() as stack:
            stack.enter_context(truncation_summary())  # one TruncationWarning for all batches
            return _attribute_sharded(
                model,
                pairs,
                fields_,
                cfg,
                ctx=ctx,
                stack=stack,
                batch_size=batch_size,
                ckpt=ckpt,
                checkpoint_every=checkpoint_every,
                resume=resume,
                progress=progress,
                collection=collection,
                plan_meta=plan_meta,
                on_batch=on_batch,
            )
    with contextlib.ExitStack() as stack:
        stack.enter_context(truncation_summary())  # one TruncationWarning for all batches
        if ckpt is not None:  # before any work: an unwritable path or a second writer fails now
            probe_writable(ckpt, "checkpoint")
            stack.enter_context(OutputLock(ckpt))
        return _attribute(
            model,
            pairs,
            fields_,
            cfg,
            batch_size=batch_size,
            ckpt=ckpt,
            checkpoint_every=checkpoint_every,
            resume=resume,
            progress=progress,
            collection=collection,
            plan_meta=plan_meta,
            on_batch=on_batch,
        )


def _order(fields_: list[tuple[str, str, str, str]]) -> tuple[list[int], str]:
    """The processing order (longest first by characters, stable) and the pair list's fingerprint."""
    order = sorted(range(len(fields_)), key=lambda i: -(len(fields_[i][0]) + len(fields_[i][1])))
    return order, hashlib.sha256("\n".join(fields_[i][3] for i in order).encode()).hexdigest()


def _record(model: HookedModel, cfg: NIGSettings, fingerprint: str, n_pairs: int) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the weights, the settings and the pairs."""
    return {
        "model": model_fingerprint(model),
        "dtype": str(model.cfg.dtype),
        **cfg.record(),
        "layers": list(cfg.layers or ()),
        "pairs_fingerprint": fingerprint,
        "n_pairs": n_pairs,
    }


def _fresh(
    model: HookedModel,
    cfg: NIGSettings,
    record: dict[str, Any],
    collection: str | None,
    plan_meta: dict[str, Any],
) -> CollectionAttribution:
    """Empty statistics carrying the run's metadata and ``plan_meta`` (what the run is to attribute)."""
    stats = CollectionAttribution(  # a templated family's pairs have a prompt group: its own row
        layers=list(cfg.layers or ()),
        n_layers=model.cfg.n_layers,
        d_mlp=model.cfg.d_mlp,
        prompt=getattr(model, "template", None) is not None,
    )
    stats.meta.update(record)
    stats.meta["model_name"] = model.cfg.model_name
    stats.meta["collection"] = collection
    stats.meta["truncated"] = dict.fromkeys(LABELS, 0)
    stats.meta.update(plan_meta)
    return stats


def _nig_into(
    model: HookedModel, stats: CollectionAttribution, fields_: list, idx: list[int], cfg: NIGSettings
) -> None:
    """Attribute the pairs ``idx`` and add their per-group NIG to ``stats`` (and, with
    ``n_steps="auto"``, each pair's steps to ``stats.meta["n_steps_used"]``)."""
    from mechir_nig.attribution.nig import neuron_integrated_gradients

    if cfg.target is not None:  # the target's t.pair indexes `pairs`, not this batch
        user, where = cfg.target, torch.tensor(idx)
        cfg = replace(cfg, target=lambda t: user(replace(t, pair=where.to(t.pair.device)[t.pair])))
    attr = neuron_integrated_gradients(  # per-group sums only (cfg.reduce): memory independent of the length
        model, [fields_[i][0] for i in idx], [fields_[i][1] for i in idx], settings=cfg
    )
    groups = attr.by_group()
    labels = [fields_[i][2] for i in idx]
    for label in LABELS:
        rows = [j for j, lab in enumerate(labels) if lab == label]
        if rows:
            stats.update(label, groups[rows])
            if attr.truncated is not None:
                stats.meta["truncated"][label] += int(attr.truncated[rows].sum())
    if cfg.n_steps == "auto" and attr.n_steps_used is not None:
        stats.record_steps(idx, attr.n_steps_used.tolist(), len(fields_))


def _attribute(
    model: HookedModel,
    pairs: Sequence[Any],
    fields_: list[tuple[str, str, str, str]],
    cfg: NIGSettings,
    *,
    batch_size: int,
    ckpt: Path | None,
    checkpoint_every: int,
    resume: bool,
    progress: bool,
    collection: str | None,
    plan_meta: dict[str, Any],
    on_batch: Callable[[int], None] | None,
) -> CollectionAttribution:
    """The body of ``attribute_collection`` once its arguments are checked (and its output locked)."""
    order, fingerprint = _order(fields_)
    _check_tokenizable(model, fields_, pairs, int(cfg.max_length or model.max_length))
    record = _record(model, cfg, fingerprint, len(pairs))
    stats = None
    if ckpt is not None and ckpt.exists():
        if not resume:
            raise InputError(f"checkpoint {ckpt} exists; pass resume=True to continue it, or remove it")
        stats = CollectionAttribution.load(ckpt)
        old = {k: stats.meta.get(k) for k in record}
        if old != record:
            diff = {k: (old[k], record[k]) for k in record if old[k] != record[k]}
            what = "another model (its weights differ)" if "model" in diff else "other pairs or settings"
            raise InputError(f"checkpoint {ckpt} was made with {what} {diff}; use another file")
    if stats is None:
        stats = _fresh(model, cfg, record, collection, plan_meta)
    else:
        stats.meta.update(plan_meta)  # a checkpoint of an older version may lack the plan
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pairs), initial=stats.n_done, desc="attributing pairs", unit="pair")
    last_ckpt = stats.n_done
    for s in range(stats.n_done, len(order), batch_size):
        idx = order[s : s + batch_size]
        _nig_into(model, stats, fields_, idx, cfg)
        stats.n_done = s + len(idx)
        if bar is not None:
            bar.update(len(idx))
        if ckpt is not None and (stats.n_done - last_ckpt >= checkpoint_every or stats.n_done == len(order)):
            stats.save(ckpt)
            last_ckpt = stats.n_done
        if on_batch is not None:
            on_batch(stats.n_done)
    if bar is not None:
        bar.close()
    return stats


def _attribute_sharded(
    model: HookedModel,
    pairs: Sequence[Any],
    fields_: list[tuple[str, str, str, str]],
    cfg: NIGSettings,
    *,
    ctx: Context,
    stack: contextlib.ExitStack,
    batch_size: int,
    ckpt: Path | None,
    checkpoint_every: int,
    resume: bool,
    progress: bool,
    collection: str | None,
    plan_meta: dict[str, Any],
    on_batch: Callable[[int], None] | None,
) -> CollectionAttribution:
    """``attribute_collection`` over the ranks of ``ctx`` (or resuming a sharded run in one process):
    rank 0 prepares the generation (``mechir_nig.runtime.shards.prepare``), every rank attributes its
    shard of the pairs not done (balanced by token count) and checkpoints its part, the statistics are
    gathered and merged and rank 0 writes the result."""
    from mechir_nig.runtime import shards

    n = len(pairs)
    order, fingerprint = _order(fields_)
    ctx.agree("attribute_collection", fingerprint)
    with ctx.collective("checking the pairs"):
        costs = _check_tokenizable(model, fields_, pairs, int(cfg.max_length or model.max_length))
        record = _record(model, cfg, fingerprint, n)
    plan = None
    with ctx.collective("preparing the checkpoint"):
        if ckpt is not None:  # before any work: an unwritable path or a second run fails now, on every rank
            probe_writable(ckpt, "checkpoint")
            if ctx.rank == 0:  # rank 0 holds the output's lock for the run; each rank writes only its part
                stack.enter_context(OutputLock(ckpt))
                plan = shards.prepare(
                    ckpt,
                    record,
                    n_pairs=n,
                    world_size=ctx.world_size,
                    resume=resume,
                    fresh=lambda: _fresh(model, cfg, record, collection, plan_meta),
                )
    shared = ctx.broadcast(None if plan is None else plan.shared(n))
    if shared is not None and shared[0] == "complete":
        return shared[1]
    generation, done = (0, []) if shared is None else (shared[1], shards.decode_positions(shared[2], n))
    done_set = set(done)
    remaining = [p for p in range(n) if p not in done_set]  # positions in the longest-first order
    if ctx.rank == 0 and plan is not None and plan.base is not None:
        stats, held = plan.base, set(done)  # rank 0 carries what earlier generations did
    else:
        stats, held = _fresh(model, cfg, record, collection, plan_meta), set()
    part = shards.part_path(ckpt, ctx.rank, ctx.world_size, generation) if ckpt is not None else None

    def attribute(mine: list[int]) -> list[bool]:
        """This rank's pairs (positions in the longest-first order) into ``stats``, checkpointing its part."""
        bar = None
        if progress and ctx.is_main:
            from tqdm.auto import tqdm

            desc = "attributing pairs" + (f" (rank 0 of {ctx.world_size})" if ctx.world_size > 1 else "")
            bar = tqdm(total=len(held) + len(mine), initial=len(held), desc=desc, unit="pair")
        since = 0
        for s in range(0, len(mine), batch_size):
            chunk = mine[s : s + batch_size]
            _nig_into(model, stats, fields_, [order[p] for p in chunk], cfg)
            held.update(chunk)
            stats.n_done = len(held)
            since += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
            if part is not None and (since >= checkpoint_every or s + batch_size >= len(mine)):
                shards.save_part(
                    stats,
                    part,
                    rank=ctx.rank,
                    world_size=ctx.world_size,
                    generation=generation,
                    held=held,
                    n_pairs=n,
                )
                since = 0
            if on_batch is not None:
                on_batch(len(held))
        if bar is not None:
            bar.close()
        return [True] * len(mine)

    ctx.map(
        remaining,
        attribute,
        cost=[costs[order[p]] for p in remaining],
        what="attributing the pairs",
        fingerprint=[fingerprint, generation],
    )
    stats.meta.pop("shard", None)
    stats.n_done = len(held)
    parts = ctx.all_gather(stats)  # the union of the ranks' disjoint pairs: their merge
    stats = functools.reduce(CollectionAttribution.merge, parts)
    if len(parts) > 1:  # rank 0's record (the pairs, the settings), with the summed truncation counts
        merged = stats.meta
        stats.meta = {**parts[0].meta, "truncated": merged["truncated"]}
        if "n_steps_used" in merged:  # each rank recorded the steps of its own pairs
            stats.meta["n_steps_used"] = merged["n_steps_used"]
    if stats.n_done != n or sum(stats.counts.values()) != n:
        raise DistributedError(
            f"the ranks attributed {stats.n_done} of {n} pairs ({stats.counts}); every rank must be given "
            "the same pairs in the same order"
        )
    stats.meta["distributed"] = {"world_size": ctx.world_size, "generation": generation}
    with ctx.collective("writing the result"):
        if ckpt is not None and ctx.rank == 0:
            stats.save(ckpt)
            shards.finish(ckpt, plan)
    return stats
