"""Path patching: a sender's source activation propagated only along the paths into chosen receivers.

:func:`~mechir_nig.interventions.patching.patch` writes the source run's activation at a site and lets
it flow through every later component. Path patching (Wang et al. 2023, "Interpretability in the Wild";
Goldowsky-Dill et al. 2023; on a cross-encoder: Lu, Chen and Eickhoff, "Pathway to Relevance", EMNLP
2025) asks how much of that effect reaches a **receiver** through the residual stream alone, every other
component frozen at its base-run value. The standard two-pass algorithm, per sender index:

1. **pass 1**: the base run with the sender written from the source run (as ``patch`` writes it) and
   every attention head (``attn.hook_z``) and MLP (``hook_mlp_out``) downstream of the sender frozen at
   its base-run value; the receivers' inputs are recorded;
2. **pass 2**: the base run with only the receivers' inputs replaced by the recorded ones; its score is
   the path-patched score.

Receivers (each gives its own :class:`~mechir_nig.interventions.patching.PatchingResult`):

=========================  ===================================================================================
receiver                   what pass 2 replaces
=========================  ===================================================================================
``("q", layer, head)``     the head's queries ``attn.hook_q`` (likewise ``"k"``, ``"v"``); ``("q", layer)``:
                           every head of the layer
``("mlp", layer)``         the MLP's output ``hook_mlp_out``, recomputed from its pass-1 input
``("ln1_scale", layer)``   the LayerNorm's scale ``ln1.hook_scale`` (likewise ``"ln2_scale"``): the norm of
                           the base run frozen at the scale the sender's paths give it (pass 1)
``"score_direct"``         nothing: pass 1's score, the sender's direct path through the residual stream
``"score"``                nothing frozen: every path from the sender ends at the score, so this is the
                           ordinary ``patch`` of the sender (the check that path patching reproduces it)
=========================  ===================================================================================

The query/key/value *inputs* of a head have no hook of their own: writing the receiver head's
``hook_q``/``hook_k``/``hook_v`` (the projections of its input) with the values pass 1 computed is
replacing its input, as TransformerLens's path patching does. An MLP is a function of its input at each
position, so its pass-1 output (recorded before the freeze overwrites it) is the output it gives with
the pass-1 input: writing it is replacing the MLP's input, in every family (post-LN, pre-LN, gated MLPs).
LayerNorms are not frozen (they are recomputed, as in TransformerLens); ``freeze_mlps=False`` freezes
the heads only (MLPs are part of the path, the IOI paper's convention).

Senders are ``patch``'s sites: ``"heads"`` (one head, all positions), ``"head_pos"``, ``"resid_pre"``,
``"attn_out"``, ``"mlp_out"`` (one position), ``"neurons"``, or a ``ComponentSet`` (member by member).
A sender must lie before every receiver (``resid_pre`` of layer ``l`` feeds the heads of ``l``; a head of
``l`` the MLP of ``l`` and the heads of ``l + 1`` ...); ``layers`` (default: every layer that does) are
the senders' layers. Base and source are ``patch``'s (``direction="denoise"``: base = corrupted, source =
clean; ``"noise"``: the reverse), and so are the metric, ``values`` (``[batch, layer, ...]`` per sender
site) and the skipped indices (masked positions and indices where source and base agree get the base
score).

Cost: the base and source runs are cached once; each sender index costs one pass 1 (from the sender's
layer to the last receiver's layer, or to the score with ``"score_direct"``), one pass 2 per q/k/v/MLP
receiver (from the receiver's layer), and one ordinary patched run for ``"score"``; sender indices are
stacked along the batch axis (``chunk_size`` rows per forward) as in ``patch``.

Example:
    >>> from mechir_nig.interventions.perturb import align, tfc1
    >>> al = align(ce, queries, docs, tfc1)
    >>> res = path_patch(ce, al, senders="heads", receivers=[("q", 2, 0), "score_direct"])
    >>> res["q:L2H0"]["heads"].shape  # [batch, layer, n_heads]: senders in layers 0 and 1
    torch.Size([2, 2, 12])
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mechir_nig._validate import check_bool, check_int, check_layers
from mechir_nig.errors import InputError
from mechir_nig.interventions.engine import Engine, Intervention, Source, require_hooks
from mechir_nig.interventions.patching import (
    PatchingResult,
    _check_sites,
    _default_chunk,
    _empty,
    _grid,
    _patch_mask,
    _positions,
    _prepare,
    _run_rows,
    _site_info,
    pos_first,
)
from mechir_nig.models.protocol import HookedModel
from mechir_nig.results import Result
from mechir_nig.sites import hook_name

__all__ = [
    "HEAD_INPUTS",
    "RECEIVERS",
    "PathPatchingResult",
    "path_patch",
    "path_patch_heads_to_score",
    "path_patch_into_heads",
    "receiver_key",
    "top_direct_heads",
]

RECEIVERS = ("q", "k", "v", "mlp", "ln1_scale", "ln2_scale", "score", "score_direct")
"""Receiver kinds: a head's query/key/value input, an MLP's input, a LayerNorm's scale, the score (every
path) and the score's direct path."""
_LAYER_RECEIVERS = RECEIVERS[:6]

_SENDER_ORDER = {"resid_pre": 0, "z": 2, "attn_out": 3, "mlp_post": 4, "mlp_out": 5}
"""Where a sender site sits inside its block (q/k/v read ``resid_pre`` at 1, the MLP reads its input at
3.5): a sender feeds a receiver when ``(layer, order)`` is smaller."""
_RECEIVER_ORDER = {"q": 1.0, "k": 1.0, "v": 1.0, "mlp": 3.5}
_LN_ORDER = {True: {"ln1_scale": 3.25, "ln2_scale": 5.5}, False: {"ln1_scale": 0.5, "ln2_scale": 3.25}}
"""Where a LayerNorm reads the stream, post-LN (``True``: ``ln1`` after the attention, ``ln2`` after the
MLP) or pre-LN (``ln1`` before the attention, ``ln2`` before the MLP)."""


@dataclass(frozen=True)
class _Receiver:
    kind: str  # one of RECEIVERS
    layer: int | None = None
    head: int | None = None
    post_ln: bool = False  # where a LayerNorm receiver sits (the model's blocks)

    @property
    def key(self) -> str:
        if self.layer is None:
            return self.kind
        return f"{self.kind}:L{self.layer}" + ("" if self.head is None else f"H{self.head}")

    @property
    def order(self) -> tuple[float, float]:
        if self.layer is None:
            return (math.inf, math.inf)
        return (float(self.layer), {**_RECEIVER_ORDER, **_LN_ORDER[self.post_ln]}[self.kind])

    @property
    def hook(self) -> str:
        """The hook pass 1 records and pass 2 writes."""
        assert self.layer is not None
        return hook_name("mlp_out" if self.kind == "mlp" else self.kind, self.layer)


def receiver_key(receiver: Any) -> str:
    """The key of ``receiver`` in a :class:`PathPatchingResult` (``("q", 2, 1)`` -> ``"q:L2H1"``).

    Example:
        >>> receiver_key(("q", 2, 1)), receiver_key(("mlp", 0)), receiver_key("score")
        ('q:L2H1', 'mlp:L0', 'score')
    """
    return _parse_receiver(receiver, None).key


def _parse_receiver(r: Any, cfg: Any) -> _Receiver:
    """A receiver spec checked (against ``cfg`` when given): ``"score"``, ``"score_direct"``,
    ``(kind, layer)`` or ``(kind, layer, head)``."""
    what = (
        "a receiver is 'score', 'score_direct', ('q' | 'k' | 'v', layer[, head]), ('mlp', layer) or "
        "('ln1_scale' | 'ln2_scale', layer), "
        f"got {r!r}"
    )
    if isinstance(r, str):
        if r in ("score", "score_direct"):
            return _Receiver(r)
        raise InputError(f"unknown receiver {r!r}: {what}")
    if not isinstance(r, tuple | list) or not 2 <= len(r) <= 3 or r[0] not in _LAYER_RECEIVERS:
        raise InputError(f"unknown receiver {r!r}: {what}")
    kind = r[0]
    if kind == "mlp" and len(r) == 3:
        raise InputError(f"an MLP receiver is ('mlp', layer), got {r!r}")
    if kind in ("ln1_scale", "ln2_scale") and len(r) == 3:
        raise InputError(f"a LayerNorm receiver is ({kind!r}, layer): its scale at every position, got {r!r}")
    n_layers = None if cfg is None else cfg.n_layers - 1
    layer = check_int(r[1], "receiver layer", minimum=0, maximum=n_layers)
    head = None
    if len(r) == 3:
        n_heads = None if cfg is None else _n_heads(cfg, kind) - 1
        head = check_int(r[2], "receiver head", minimum=0, maximum=n_heads)
    return _Receiver(kind, layer, head)


def _n_heads(cfg: Any, kind: str) -> int:
    """The heads of hook ``kind`` (keys and values of grouped-query attention have fewer)."""
    kv = getattr(cfg, "n_key_value_heads", 0) or cfg.n_heads
    return int(kv if kind in ("k", "v") else cfg.n_heads)


@dataclass
class PathPatchingResult(Result):
    """Path-patching effects, one :class:`~mechir_nig.interventions.patching.PatchingResult` per receiver.

    ``result[receiver]`` (a key such as ``"q:L2H1"``, ``"mlp:L1"``, ``"score"``, or the receiver as given,
    e.g. ``("q", 2, 1)``) is a ``PatchingResult`` whose ``values[site]`` are ``[batch, layer, ...]`` per
    sender site, exactly as ``patch``'s (``layers``: the senders' layers), so its plots, summaries and
    ``save``/``load`` work; its ``meta["path_patching"]`` names the receiver and the algorithm. ``meta``:
    how the receivers were chosen (:func:`path_patch_into_heads`) and the run's provenance.

    ``save(path)`` writes every receiver's tensors into one safetensors file (``<receiver>.<tensor>``,
    e.g. ``q:L2H1.values.heads``) and their JSON parts into the sidecar ``path.json``, checksummed as every
    result (``mechir_nig.results``); ``load(path)`` reads them back and refuses a damaged file.

    Example:
        >>> import os, tempfile
        >>> from mechir_nig.interventions.perturb import align, tfc1
        >>> al = align(ce, queries, docs, tfc1)
        >>> res = path_patch(ce, al, senders="heads", receivers=["score", ("q", 1)])
        >>> res.receivers
        ['score', 'q:L1']
        >>> res["q:L1"]["heads"].mean(0).shape  # [layer, n_heads]: the heads of layer 0
        torch.Size([1, 12])
        >>> path = os.path.join(tempfile.mkdtemp(), "path.safetensors")
        >>> PathPatchingResult.load(res.save(path)).receivers
        ['score', 'q:L1']
    """

    KIND = "PathPatchingResult"
    WHAT = "path-patching result"

    results: dict[str, PatchingResult]
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, receiver: Any) -> PatchingResult:
        key = receiver if isinstance(receiver, str) and receiver in self.results else receiver_key(receiver)
        if key not in self.results:
            raise InputError(f"no receiver {key!r} in this result; it holds {self.receivers}")
        return self.results[key]

    def __len__(self) -> int:
        return len(next(iter(self.results.values())))

    @property
    def receivers(self) -> list[str]:
        return list(self.results)

    def plot(self, site: str | None = None, **kw: Any) -> Any:
        """A figure of sender ``site`` into every receiver, one heatmap each
        (:func:`mechir_nig.plotting.path_patching_heatmaps`).

        Example:
            >>> from mechir_nig.interventions.perturb import align, tfc1
            >>> res = path_patch(ce, align(ce, queries, docs, tfc1), receivers=[("q", 1), "score_direct"], layers=[0])
            >>> fig = res.plot("heads", pair=None)  # fig.show() opens it in a browser
            >>> len(fig.data)  # one heatmap per receiver
            2
        """
        from mechir_nig.plotting.patching import path_patching_heatmaps

        return path_patching_heatmaps(self, site, **kw)

    # -- persistence (``mechir_nig.results.Result``: save, load) -------------------------------------
    def to_parts(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Each receiver's ``PatchingResult.to_parts()``: its tensors under the prefix ``<receiver>.``, its
        JSON part under ``results[<receiver>]``; ``receivers`` keeps their order."""
        tensors: dict[str, Tensor] = {}
        parts: dict[str, Any] = {}
        stored: set[int] = set()  # receivers share their score tensors, which safetensors refuses: copy those
        for key, res in self.results.items():
            t, info = res.to_parts()
            for name, v in t.items():
                ptr = v.untyped_storage().data_ptr()
                tensors[f"{key}.{name}"] = v.clone() if ptr in stored else v
                stored.add(ptr)
            parts[key] = info
        return tensors, {"receivers": list(self.results), "results": parts, "meta": self.meta}

    @classmethod
    def from_parts(cls, tensors: dict[str, Tensor], info: dict[str, Any]) -> PathPatchingResult:
        """The receivers' ``PatchingResult`` pieces split back (each checked as a file of its own would
        be: ``Result.from_nested_parts``)."""
        keys, parts = info["receivers"], info["results"]
        if (
            not isinstance(keys, list)
            or not keys
            or not all(isinstance(k, str) and "." not in k for k in keys)
        ):
            raise TypeError(f"receivers is {keys!r}, not a non-empty list of receiver keys")
        if sorted(parts) != sorted(keys) or len(set(keys)) != len(keys):
            raise ValueError(
                f"the JSON part lists the receivers {keys} but holds the results {sorted(parts)}"
            )
        split: dict[str, dict[str, Tensor]] = {k: {} for k in keys}
        for name, t in tensors.items():
            key, _, rest = name.partition(".")
            if key not in split:
                raise ValueError(f"the tensor {name!r} belongs to no receiver of {keys}")
            split[key][rest] = t
        results = {}
        for key in keys:
            try:
                results[key] = PatchingResult.from_nested_parts(split[key], parts[key])
            except (KeyError, TypeError, ValueError) as exc:
                raise type(exc)(f"receiver {key!r}: {exc}") from exc
        meta = info.get("meta") or {}
        return cls(results, meta)

    @classmethod
    def tensor_names(cls) -> tuple[set[str], Callable[[str], bool]]:
        """No name is required at the top level; every name is ``<receiver>.<tensor>`` (checked per
        receiver by ``from_parts``)."""
        return set(), lambda name: "." in name


def _check_order(job: Any, receivers: list[_Receiver]) -> None:
    """Every sender (site and layer, or a set's members) lies before every receiver, else an InputError."""
    for site, nset in job.site_list:
        name = _site_info(site, nset)[0]
        layer_ids = sorted({m[0] for m in job.members}) if nset is not None else job.layer_list
        for r in receivers:
            bad = [lyr for lyr in layer_ids if (lyr, _SENDER_ORDER[name]) >= r.order]
            if bad:
                raise InputError(
                    f"sender {site!r} of layers {bad} does not feed receiver {r.key!r}: a sender must lie "
                    "before its receiver (resid_pre of layer l feeds the heads of l, a head or attn_out of "
                    "l the MLP of l, anything of l the heads of l + 1); choose earlier senders (layers=) "
                    "or later receivers"
                )


def _default_layers(
    model: HookedModel, site_list: list[tuple[str, Any]], receivers: list[_Receiver]
) -> list[int]:
    names = [_site_info(s, ns)[0] for s, ns in site_list if ns is None]
    out = [
        lyr
        for lyr in range(model.cfg.n_layers)
        if all((lyr, _SENDER_ORDER[n]) < r.order for n in names for r in receivers)
    ]
    if not out:
        raise InputError(
            f"no layer holds a sender {names} that lies before every receiver {[r.key for r in receivers]}; "
            "a sender must lie before its receiver (a head of layer l feeds the heads of l + 1)"
        )
    return out


def _frozen(site_name: str, layer: int, n_layers: int, freeze_mlps: bool) -> list[tuple[str, int]]:
    """The (site, layer) of every head and MLP downstream of a sender at ``site_name`` of ``layer``: what
    pass 1 freezes at its base value (the sender's own channel excepted)."""
    o = _SENDER_ORDER[site_name]
    heads = [("z", m) for m in range(n_layers) if m > layer or (m == layer and o < 2)]
    mlps = [("mlp_out", m) for m in range(n_layers) if m > layer or (m == layer and o < 4)]
    return heads + (mlps if freeze_mlps else [])


@torch.no_grad()
def path_patch(
    model: HookedModel,
    clean: Any,
    corrupted: Any = None,
    *,
    senders: Any = "heads",
    receivers: Any = "score_direct",
    direction: str = "denoise",
    metric: str = "recovery",
    layers: Sequence[int] | None = None,
    chunk_size: int | None = None,
    eps: float = 1e-6,
    skip_unchanged: bool = True,
    query_embeddings: Tensor | None = None,
    freeze_mlps: bool = True,
) -> PathPatchingResult:
    """Path-patch every sender index into every receiver (see the module docstring for the algorithm).

    Args:
        model: a ``HookedModel`` (cross-encoder of any family, or bi-encoder with fixed query embeddings).
        clean: an ``Alignment`` (``perturb.align``), or the clean batch.
        corrupted: the corrupted batch of the same shape (with a batch ``clean``).
        senders: ``patch``'s sites: a name (``heads``, ``head_pos``, ``resid_pre``, ``attn_out``,
            ``mlp_out``, ``neurons``), a ``ComponentSet`` or a list of them.
        receivers: one receiver or a list: ``("q" | "k" | "v", layer, head)``, ``("q" | "k" | "v",
            layer)`` (every head of the layer together), ``("mlp", layer)``, ``("ln1_scale" |
            "ln2_scale", layer)`` (a LayerNorm's scale, every position), ``"score_direct"``, ``"score"``.
        direction: ``"denoise"`` (base corrupted, source clean) or ``"noise"``, as ``patch``.
        metric: ``"recovery"`` or ``"raw"``, as ``patch``.
        layers: the senders' layers (default: every layer whose senders lie before every receiver).
        chunk_size: sender rows per forward (default about 65k tokens); never changes results.
        eps: ``|source − base|`` below this makes the recovery NaN.
        skip_unchanged: give sender indices whose source and base activations agree the base score.
        query_embeddings: a bi-encoder's fixed query embeddings when ``clean`` is a batch.
        freeze_mlps: freeze the MLPs as well as the heads in pass 1 (``False``: paths through MLPs count
            as direct, the IOI convention).

    Returns:
        A :class:`PathPatchingResult`: one ``PatchingResult`` per receiver.

    Raises:
        InputError: ``patch``'s errors; an unknown receiver or sender site; a sender that does not lie
            before a receiver.

    Example:
        >>> from mechir_nig.interventions import perturb
        >>> al = perturb.align(ce, queries, docs, perturb.tfc1)
        >>> res = path_patch(ce, al, senders="heads", receivers=[("q", 1, 0), "score"], metric="raw")
        >>> res.receivers, res["q:L1H0"]["heads"].shape  # [batch, layer, n_heads]: the senders of layer 0
        (['q:L1H0', 'score'], torch.Size([2, 1, 12]))
    """
    freeze_mlps = check_bool(freeze_mlps, "freeze_mlps")
    items = [receivers] if isinstance(receivers, str | tuple) else receivers
    if not isinstance(items, Sequence) or isinstance(items, str | bytes) or not items:
        raise InputError(f"receivers must be a receiver or a non-empty list of them, got {receivers!r}")
    from mechir_nig.models.components.block import EncoderBlock

    post_ln = isinstance((getattr(model, "blocks", None) or [None])[0], EncoderBlock)
    recv = [dataclasses.replace(_parse_receiver(r, model.cfg), post_ln=post_ln) for r in items]
    require_hooks(model, {r.hook for r in recv if r.layer is not None})
    keys = [r.key for r in recv]
    if len(set(keys)) != len(keys):
        raise InputError(f"receivers {keys} repeat a receiver; list each once")
    site_list = _check_sites(model, senders)
    for site, nset in site_list:
        if _site_info(site, nset)[0] not in _SENDER_ORDER:
            raise InputError(
                f"{site!r} is not a path-patching sender; senders are heads, head_pos, resid_pre, attn_out, "
                "mlp_out, neurons or a ComponentSet of them"
            )
    if layers is None:
        layers = _default_layers(model, site_list, recv)
    job = _prepare(
        model,
        clean,
        corrupted,
        sites=senders,
        direction=direction,
        metric=metric,
        layers=layers,
        chunk_size=chunk_size,
        eps=eps,
        skip_unchanged=skip_unchanged,
        query_embeddings=query_embeddings,
    )
    _check_order(job, recv)
    base_scores, source_scores, patched = _sweep(model, job, recv, freeze_mlps)
    results: dict[str, PatchingResult] = {}
    for i, r in enumerate(recv):
        with warnings.catch_warnings():
            if i:  # a pair whose score does not move: warned once, not once per receiver
                warnings.simplefilter("ignore")
            res = job.result(base_scores, source_scores, patched[r.key])
        res.meta["path_patching"] = {
            "receiver": r.key,
            "freeze_mlps": freeze_mlps,
            "algorithm": "ordinary patch (every path)"
            if r.kind == "score"
            else "two passes: sender patched and downstream heads/MLPs frozen, receiver inputs recorded; "
            "then the base run with only the receivers' inputs replaced",
        }
        results[r.key] = res
    return PathPatchingResult(results)


def _sweep(
    model: HookedModel, job: Any, recv: list[_Receiver], freeze_mlps: bool
) -> tuple[Tensor, Tensor, dict[str, dict[str, Tensor]]]:
    """Base and source scores ``[batch]`` and, per receiver, the patched scores per sender site."""
    base, source, q_emb = job.base, job.source, job.q_emb
    n_layers = model.cfg.n_layers

    def score(out: Tensor, rows: Tensor) -> Tensor:  # a bi-encoder's output is an embedding
        return out if q_emb is None else (out * q_emb[rows]).sum(-1)

    sender_names = {
        _site_info(s, ns)[1].format(layer=layer) for s, ns in job.site_list for layer in job.layer_list
    }
    frozen = {hook_name(s, m) for s in ("z", "mlp_out") for m in range(n_layers)}
    resid = {hook_name("resid_pre", m) for m in range(n_layers)}
    base_out, base_cache = model.run_with_cache(
        base, names_filter=lambda n: n in sender_names | frozen | resid, return_cache_object=False
    )
    source_out, source_cache = model.run_with_cache(
        source, names_filter=lambda n: n in sender_names, return_cache_object=False
    )
    all_rows = torch.arange(len(base), device=model.device)
    base_scores, source_scores = score(base_out, all_rows), score(source_out, all_rows)
    n_pos = base.input_ids.shape[1]
    two_pass = [r for r in recv if r.layer is not None]
    direct = any(r.kind == "score_direct" for r in recv)
    stop = None if direct or not two_pass else max(r.layer for r in two_pass if r.layer is not None) + 1
    n_members = len(job.members)
    patched: dict[str, dict[str, Tensor]] = {r.key: {} for r in recv}
    for site, nset in job.site_list:
        site_name, template, kind = _site_info(site, nset)
        outs = {
            r.key: _empty(
                "set" if nset is not None else kind,
                model.cfg,
                len(base),
                len(job.layer_list),
                n_pos,
                n_members,
                base_scores,
            )
            for r in recv
        }
        offset = 0
        for li, layer in enumerate(job.layer_list):
            if nset is not None and layer not in job.member_idx:
                continue
            name = template.format(layer=layer)
            b_act, s_act = pos_first(site_name, base_cache[name]), pos_first(site_name, source_cache[name])
            mem = job.member_idx.get(layer) if nset is not None else None
            valid = _grid(kind, b_act, s_act if job.skip_unchanged else None, base.attention_mask, mem)
            rows = valid.nonzero()
            step = job.chunk_size or _default_chunk(n_pos)
            width = 1 if kind == "pos" else b_act.shape[-1 if kind == "neuron" else 2]
            freeze = _frozen(site_name, layer, n_layers, freeze_mlps)
            for c in range(0, rows.shape[0], step):
                r = rows[c : c + step]
                b = r[:, 0]
                got = _run_chunk(
                    model, job, base_cache, source_cache, site_name, layer, kind, r, width, mem,
                    freeze, recv, stop,
                )  # fmt: skip
                for key, out in got.items():
                    scores = score(out, b).to(outs[key].dtype)
                    if nset is not None:
                        outs[key][b, offset + r[:, 1]] = scores
                    else:
                        outs[key][(b, torch.full_like(b, li), *r[:, 1:].unbind(1))] = scores
            if mem is not None:
                offset += len(mem)
        for key, out in outs.items():
            patched[key][site] = out.cpu()
    return base_scores.float().cpu(), source_scores.float().cpu(), patched


def _run_chunk(
    model: HookedModel,
    job: Any,
    base_cache: dict[str, Tensor],
    source_cache: dict[str, Tensor],
    site_name: str,
    layer: int,
    kind: str,
    rows: Tensor,
    width: int,
    members: Tensor | None,
    freeze: list[tuple[str, int]],
    recv: list[_Receiver],
    stop: int | None,
) -> dict[str, Tensor]:
    """The model's outputs per receiver key for the sender rows ``rows`` (``[n, 1 + index]``)."""
    base = job.base
    b = rows[:, 0]
    span = int(base.lengths[b].max())
    out: dict[str, Tensor] = {}
    if any(r.kind == "score" for r in recv):  # every path: the ordinary patch, through patch's own runner
        resid = base_cache[hook_name("resid_pre", layer)]
        out["score"] = _run_rows(
            model, base, resid, source_cache, site_name, layer, kind, rows, width, members
        )
    two_pass = [r for r in recv if r.layer is not None]
    if not two_pass and not any(r.kind == "score_direct" for r in recv):
        return out

    def run(
        start: int, writers: list[Intervention], record: list[tuple[str, Callable[..., Tensor]]], **kw: Any
    ) -> Tensor:
        result: Tensor = model.run_with_hooks(
            None,
            base.token_type_ids[b, :span],
            base.attention_mask[b, :span],
            residual=base_cache[hook_name("resid_pre", start)][b, :span],
            start_at_layer=start,
            **_positions(base, b, span),
            fwd_hooks=record + Engine(model, writers).hooks(),
            **kw,
        )
        return result

    # pass 1: the sender from the source run, every head and MLP downstream frozen at the base run
    mask = _patch_mask(kind, rows, span, width, members)
    frozen_base = Source(base_cache, b)
    writers = [Intervention(site_name, layer, Source(source_cache, b), mask=mask)]
    writers += [Intervention(s, m, frozen_base) for s, m in freeze]
    recorded: dict[str, Tensor] = {}

    def keep(act: Tensor, hook: Any) -> Tensor:  # runs before the freeze at the same hook
        recorded[hook.name] = act.detach()
        return act

    record = [(h, keep) for h in sorted({r.hook for r in two_pass})]
    pass1 = run(layer, writers, record, **({} if stop is None else {"stop_at_layer": stop}))
    if stop is None:
        out["score_direct"] = pass1
    # pass 2: the base run with only the receiver's input replaced by its pass-1 value
    for r in two_pass:
        assert r.layer is not None
        units = None if r.head is None else torch.tensor([r.head], device=model.device)
        rkind = "mlp_out" if r.kind == "mlp" else r.kind
        out[r.key] = run(r.layer, [Intervention(rkind, r.layer, Source(recorded), units=units)], [])
    return out


def path_patch_heads_to_score(
    model: HookedModel,
    clean: Any,
    corrupted: Any = None,
    *,
    direction: str = "denoise",
    metric: str = "recovery",
    query_embeddings: Tensor | None = None,
) -> PathPatchingResult:
    """Every head path-patched into the score: ``"score"`` (all paths: the ordinary head patch) and
    ``"score_direct"`` (the direct path), what a ``circuits`` command reports.

    Args:
        model: a ``HookedModel``.
        clean: an ``Alignment`` or the clean batch.
        corrupted: the corrupted batch (with a batch ``clean``).
        direction: ``"denoise"`` or ``"noise"``.
        metric: ``"recovery"`` or ``"raw"``.
        query_embeddings: a bi-encoder's fixed query embeddings when ``clean`` is a batch.

    Returns:
        A :class:`PathPatchingResult` with receivers ``score`` and ``score_direct``.

    Example:
        >>> from mechir_nig.interventions.perturb import align, tfc1
        >>> res = path_patch_heads_to_score(ce, align(ce, queries[:1], docs[:1], tfc1))
        >>> res.receivers, res["score_direct"]["heads"].shape  # [batch, layer, n_heads]
        (['score', 'score_direct'], torch.Size([1, 6, 12]))
    """
    return path_patch(
        model,
        clean,
        corrupted,
        senders="heads",
        receivers=["score", "score_direct"],
        direction=direction,
        metric=metric,
        query_embeddings=query_embeddings,
    )


HEAD_INPUTS = ("q", "k", "v")
"""The inputs of a head a receiver head is path-patched into (:func:`path_patch_into_heads`)."""


def top_direct_heads(
    direct: PatchingResult, k: int = 2, *, min_layer: int = 1, layers: Sequence[int] | None = None
) -> list[tuple[int, int, float]]:
    """The ``k`` heads of layer ``>= min_layer`` with the largest ``|mean|`` direct-path effect on the score.

    The mean is over the pairs the patching summaries keep (``PatchingResult.summary_pairs``: pairs with a
    tiny perturbation left out), NaN counted as 0: the ranking of the report's "largest mean over pairs"
    table. Ties go to the earlier layer, then head.

    Args:
        direct: the ``"score_direct"`` result of ``path_patch(..., senders="heads")`` (e.g.
            ``path_patch_heads_to_score(...)["score_direct"]``).
        k: how many heads (fewer when fewer heads qualify).
        min_layer: the first layer a head may come from (a head of layer 0 has no earlier head).
        layers: only heads of these layers (default: every layer of ``direct``).

    Returns:
        ``[(layer, head, mean effect), ...]``, largest ``|mean|`` first.

    Raises:
        InputError: ``direct`` has no ``heads`` site, or no head of its layers qualifies.

    Example:
        >>> from mechir_nig.interventions.perturb import align, tfc1
        >>> al = align(ce, queries[:1], docs[:1], tfc1)
        >>> direct = path_patch(ce, al, receivers="score_direct", layers=[4, 5])["score_direct"]
        >>> heads = top_direct_heads(direct, 2)  # [(layer, head, mean effect), ...]
        >>> [(layer, head) for layer, head, _ in heads]
        [(5, 3), (5, 7)]
        >>> abs(heads[0][2]) >= abs(heads[1][2])  # largest |mean| first
        True
    """
    k = check_int(k, "k", minimum=1)
    min_layer = check_int(min_layer, "min_layer", minimum=0)
    if "heads" not in direct.values:
        raise InputError(
            f"the direct-path result holds the sites {direct.sites}, not 'heads': pass the 'score_direct' "
            "result of path_patch(..., senders='heads')"
        )
    keep = direct.summary_pairs()
    mean = torch.nan_to_num(direct["heads"].double())[keep].mean(0)  # [layer, n_heads]
    cands = [
        (float(mean[li, h]), lyr, h)
        for li, lyr in enumerate(direct.layers)
        if lyr >= min_layer and (layers is None or lyr in layers)
        for h in range(mean.shape[1])
    ]
    if not cands:
        raise InputError(
            f"no head of the layers {list(direct.layers)} is in a layer >= {min_layer}"
            + ("" if layers is None else f" among {list(layers)}")
            + ": a receiver head needs earlier heads to receive from; study a later layer"
        )
    cands.sort(key=lambda c: (-abs(c[0]), c[1], c[2]))
    return [(lyr, h, v) for v, lyr, h in cands[:k]]


def _head_receivers(model: HookedModel, receivers: Any) -> list[tuple[str, int, int]]:
    """``receivers`` checked: ``(kind, layer, head)`` with kind ``q``/``k``/``v`` and layer >= 1."""
    items = [receivers] if isinstance(receivers, tuple) else receivers
    if not isinstance(items, Sequence) or isinstance(items, str | bytes) or not items:
        raise InputError(f"receivers must be a non-empty list of (kind, layer, head), got {receivers!r}")
    out: list[tuple[str, int, int]] = []
    for r in items:
        if not (isinstance(r, tuple | list) and len(r) == 3 and r[0] in HEAD_INPUTS):
            raise InputError(
                f"a receiver head input is ('q' | 'k' | 'v', layer, head), got {r!r}; use path_patch for "
                "other receivers"
            )
        item = (
            r[0],
            check_int(r[1], "receiver layer", minimum=0),
            check_int(r[2], "receiver head", minimum=0),
        )
        key = receiver_key(item)
        problem = head_receiver_problem(model.cfg, *item)
        if problem:
            raise InputError(f"receiver {key!r}: {problem}")
        if item in out:
            raise InputError(f"receiver {key!r} is listed twice; list each once")
        out.append(item)
    return out


def head_receiver_problem(cfg: Any, kind: str, layer: int, head: int) -> str | None:
    """What is wrong with the receiver head input ``(kind, layer, head)`` of a model of config ``cfg``
    (a layer of 0 or out of range, a head out of range; grouped-query attention has fewer key/value
    heads), or ``None``: the one check behind :func:`path_patch_into_heads` and ``mechir-nig circuits
    --receivers``.

    Example:
        >>> head_receiver_problem(ce.cfg, "q", 0, 1)
        'a head of layer 0 has no earlier head to receive from; give a layer in 1..5'
        >>> head_receiver_problem(ce.cfg, "v", 3, 1) is None
        True
    """
    last = int(cfg.n_layers) - 1
    if layer == 0:
        return f"a head of layer 0 has no earlier head to receive from; give a layer in 1..{last}"
    if not 0 < layer <= last:
        return (
            f"layer {layer} is out of range; the model's layers are 0..{last} and a receiver needs earlier "
            f"heads, so give a layer in 1..{last}"
        )
    n = _n_heads(cfg, kind)
    if not 0 <= head < n:
        what = "key/value heads" if n != cfg.n_heads else "heads"
        return f"receiver head {head} is out of range; the model has {n} {what} (0..{n - 1})"
    return None


def _input_head(cfg: Any, kind: str, head: int) -> int:
    """The ``kind`` head that query head ``head`` reads (grouped-query attention shares keys and values)."""
    return head * _n_heads(cfg, kind) // int(cfg.n_heads)


@torch.no_grad()
def path_patch_into_heads(
    model: HookedModel,
    clean: Any,
    corrupted: Any = None,
    *,
    receivers: Any = None,
    receiver_heads: int = 2,
    direct: PatchingResult | None = None,
    layers: Sequence[int] | None = None,
    direction: str = "denoise",
    metric: str = "recovery",
    chunk_size: int | None = None,
    query_embeddings: Tensor | None = None,
) -> PathPatchingResult:
    """Every earlier head path-patched into the query, key and value inputs of the heads that matter most.

    As in "Pathway to Relevance" (Lu, Chen and Eickhoff, EMNLP 2025): find the heads with the largest
    direct effect on the score (:func:`top_direct_heads` of the ``"score_direct"`` path, computed here
    unless ``direct`` is given), then the earlier heads whose path into those heads' queries, keys and
    values carries the effect. Each receiver head ``(layer, head)`` gives the receivers ``("q", layer,
    head)``, ``("k", layer, head')`` and ``("v", layer, head')`` (``head'`` the key/value head it reads:
    itself, or its group's under grouped-query attention); the senders are every head of the layers
    before it (``path_patch(senders="heads")``, one call per receiver layer).

    Args:
        model: a ``HookedModel``.
        clean: an ``Alignment`` or the clean batch.
        corrupted: the corrupted batch (with a batch ``clean``).
        receivers: explicit receivers ``[("q" | "k" | "v", layer, head), ...]`` (layer >= 1) instead of
            the top heads.
        receiver_heads: without ``receivers``: how many heads of layer >= 1 receive (largest
            ``|mean|`` direct-path effect first).
        direct: the ``"score_direct"`` result of the same pairs, direction and metric, when already
            computed (e.g. ``path_patch_heads_to_score(...)["score_direct"]``); otherwise computed here.
        layers: without ``receivers``: choose the receiver heads among these layers (default all).
        direction: ``"denoise"`` or ``"noise"``, as ``patch``.
        metric: ``"recovery"`` or ``"raw"``, as ``patch``.
        chunk_size: sender rows per forward (never changes results).
        query_embeddings: a bi-encoder's fixed query embeddings when ``clean`` is a batch.

    Returns:
        A :class:`PathPatchingResult` with one receiver per head input (``"q:L3H1"``, ...), senders
        ``heads`` (``[batch, layer, n_heads]``, the layers before the receiver's), and
        ``meta["receivers_chosen"]``: ``by`` (``"score_direct"`` or ``"given"``), ``heads`` (``[layer,
        head]`` of each receiver head), ``inputs`` (each receiver head ``"L3H1"``'s receiver keys: under
        grouped-query attention its ``k``/``v`` keys name the key/value head it reads, e.g. ``"k:L3H0"``),
        ``kv_group`` (query heads per key/value head: 1 without grouped-query attention) and, when
        chosen, ``direct_effect`` (their mean direct-path effect) and ``pairs_used``.

    Raises:
        InputError: a bad receiver (kind, layer or head out of the model's range, a head of layer 0,
            listed twice), ``receiver_heads < 1``, a ``direct`` result of another direction or metric or
            another number of pairs, or no head of layer >= 1 among ``layers``; ``path_patch``'s errors.

    Example:
        >>> from mechir_nig.interventions.perturb import align, tfc1
        >>> al = align(ce, queries[:1], docs[:1], tfc1)
        >>> direct = path_patch(ce, al, receivers="score_direct", layers=[3])["score_direct"]
        >>> res = path_patch_into_heads(ce, al, receiver_heads=1, direct=direct)  # the top head of layer 3
        >>> res.receivers
        ['q:L3H11', 'k:L3H11', 'v:L3H11']
        >>> res["q:L3H11"]["heads"].shape  # [batch, layer, n_heads]: the senders of layers 0-2
        torch.Size([1, 3, 12])
    """
    chosen: dict[str, Any]
    if receivers is not None:
        recv = _head_receivers(model, receivers)
        heads = list(dict.fromkeys((lyr, h) for _, lyr, h in recv))
        chosen = {"by": "given", "heads": [list(x) for x in heads]}
        inputs = {f"L{lyr}H{h}": [receiver_key(r) for r in recv if r[1:] == (lyr, h)] for lyr, h in heads}
    else:
        k = check_int(receiver_heads, "receiver_heads", minimum=1)
        if layers is not None:
            layers = check_layers(layers, model.cfg.n_layers)
        if direct is None:
            direct = path_patch(
                model,
                clean,
                corrupted,
                senders="heads",
                receivers="score_direct",
                direction=direction,
                metric=metric,
                chunk_size=chunk_size,
                query_embeddings=query_embeddings,
            )["score_direct"]
        elif (direct.direction, direct.metric) != (direction, metric):
            raise InputError(
                f"direct is a {direct.direction}/{direct.metric} result, this run is {direction}/{metric}: "
                "pass the score_direct result of the same direction and metric, or leave direct out"
            )
        elif len(direct) != len(clean):
            raise InputError(
                f"direct holds {len(direct)} pairs, this run {len(clean)}: pass the score_direct result of "
                "the same pairs, or leave direct out"
            )
        top = top_direct_heads(direct, k, layers=layers)
        reads = {
            f"L{lyr}H{h}": [(kind, lyr, _input_head(model.cfg, kind, h)) for kind in HEAD_INPUTS]
            for lyr, h, _ in top
        }
        recv = list(dict.fromkeys(r for rs in reads.values() for r in rs))
        inputs = {head: [receiver_key(r) for r in rs] for head, rs in reads.items()}
        chosen = {
            "by": "score_direct",
            "heads": [[lyr, h] for lyr, h, _ in top],
            "direct_effect": [v for _, _, v in top],
            "pairs_used": int(direct.summary_pairs().sum()),
            "metric": direct.metric,
        }
    results: dict[str, PatchingResult] = {}
    for layer in sorted({lyr for _, lyr, _ in recv}):
        res = path_patch(
            model,
            clean,
            corrupted,
            senders="heads",
            receivers=[r for r in recv if r[1] == layer],
            direction=direction,
            metric=metric,
            chunk_size=chunk_size,
            query_embeddings=query_embeddings,
        )
        results |= res.results
    chosen["inputs"] = inputs  # each receiver head's receivers (its group's k/v head under GQA)
    chosen["kv_group"] = int(model.cfg.n_heads) // _n_heads(model.cfg, "k")  # query heads per k/v head
    order = [receiver_key(r) for r in recv]  # the receivers' order, head by head
    return PathPatchingResult({key: results[key] for key in order}, meta={"receivers_chosen": chosen})
