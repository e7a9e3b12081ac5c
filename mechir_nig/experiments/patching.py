"""Patching sharded over the ranks of a ``torchrun`` launch: :func:`patch_study`.

:func:`mechir_nig.interventions.patching.patch` patches exactly the pairs it is given, in this process.
:func:`patch_study` takes the same arguments and, under a launch of several processes, splits the pairs
across the ranks by cost (each pair's span squared: the patched rows times their length) with
:meth:`~mechir_nig.runtime.distributed.Context.map`; each rank sweeps its share (trimmed to its
longest pair) and every rank returns the whole result, equal to the single-process one.

Example:
    >>> from mechir_nig.interventions import align, tfc1
    >>> al = align(ce, queries, docs, tfc1)
    >>> res = patch_study(ce, al, sites=["resid_pre", "heads"])  # under torchrun: every rank, every pair
    >>> sorted(res.values), res["heads"].shape  # [batch, layer, head]
    (['heads', 'resid_pre'], torch.Size([2, 6, 12]))
"""

from __future__ import annotations

from typing import Any

from mechir_nig.interventions import patching
from mechir_nig.interventions.patching import PatchingResult
from mechir_nig.models.protocol import HookedModel
from mechir_nig.runtime.distributed import context

__all__ = ["patch_study"]


def patch_study(
    model: HookedModel, clean: Any, corrupted: Any = None, *, distributed: bool | str = "auto", **options: Any
) -> PatchingResult:
    """:func:`~mechir_nig.interventions.patching.patch`, with the pairs sharded over the ranks.

    Args:
        model: a ``HookedCrossEncoder`` or ``HookedBiEncoder`` (as ``patch``).
        clean: an ``Alignment``, or the clean batch (as ``patch``).
        corrupted: the corrupted batch with a batch ``clean`` (as ``patch``).
        distributed: ``"auto"`` (default): under a ``torchrun`` launch of several processes the pairs are
            sharded across the ranks by cost (``runtime.distributed.shard_by_cost`` on each pair's span
            squared) and every rank returns the whole result (gathered); ``False``: this process does
            all; ``True``: require a launch. Under a launch every rank must pass the same inputs
            (checked: ``DistributedError`` otherwise).
        **options: the keywords of ``patch`` (``sites``, ``direction``, ``metric``, ``layers``,
            ``chunk_size``, ``eps``, ``skip_unchanged``, ``query_embeddings``, ``joint``).

    Returns:
        The :class:`~mechir_nig.interventions.patching.PatchingResult` of every pair, on every rank.

    Raises:
        InputError: what ``patch`` refuses.
        DistributedError: the ranks were given other inputs, or another rank failed.

    Example:
        >>> from mechir_nig.interventions import align, tfc1
        >>> al = align(ce, queries[:1], docs[:1], tfc1)
        >>> res = patch_study(ce, al, sites=["heads"], distributed=False)  # as patch(ce, al, ...)
        >>> res["heads"].shape  # [batch, layer, head]
        torch.Size([1, 6, 12])
    """
    ctx = context(distributed, model.device)
    if not ctx.grouped:
        return patching.patch(model, clean, corrupted, **options)
    job = patching._prepare(model, clean, corrupted, **options)
    base, source = job.base, job.source
    rows = ctx.map(
        range(len(base)),
        job.sweep_rows,
        cost=(base.lengths.double().cpu() ** 2).tolist(),  # patched rows x their length ~ span^2
        what="patching",
        fingerprint=(base.input_ids, base.attention_mask, source.input_ids, source.attention_mask),
    )
    return job.result(*job.assemble(rows))
