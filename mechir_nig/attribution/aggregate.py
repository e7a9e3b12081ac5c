"""Collection-scale NIG: streamed per-label statistics with atomic checkpoints and resume.

``attribute_collection`` streams judged pairs through the NIG kernel in batches and keeps, per label
(``relevant`` / ``nonrelevant``) and per (layer, token group, neuron), running sums, sums of squares and
pair counts in float64 — memory is flat in the number of pairs. Token groups are ``cls``, ``query``,
``sep``, ``doc`` and ``all`` (the pair's total over its tokens). A checkpoint is one safetensors file
(statistics plus, in its metadata, how many pairs are done and a fingerprint of the pair list and the
settings), written to a temporary file and renamed, so a crash never leaves a half-written or
double-counted state; ``resume=True`` continues after the last checkpoint without counting a pair twice.

Example:
    >>> from mechir_nig.data import judged_pairs, load_collection
    >>> pairs = judged_pairs(load_collection("embedded"), max_relevant_per_query=2)
    >>> stats = attribute_collection(model, pairs, n_steps=32, checkpoint="nig.ckpt", resume=True)
    >>> stats.mean("relevant").shape  # [layer, d_mlp]
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechir_nig.errors import InputError
from mechir_nig.models.tokenization import doc_budget, n_special_tokens

LABELS = ("relevant", "nonrelevant")
GROUP_AXIS = ("cls", "query", "sep", "doc", "all")
SCHEMES = ("relevant", "nonrelevant", "difference", "absolute")


@dataclass
class CollectionAttribution:
    """Running NIG statistics of a collection, per label.

    Shapes:
        ``sums[label]``, ``sums_sq[label]``: ``[layer, group, d_mlp]`` (float64), groups ``GROUP_AXIS``;
        ``mean(label, group)``, ``std(label, group)``: ``[layer, d_mlp]``.
    """

    layers: list[int]
    n_layers: int
    d_mlp: int
    sums: dict[str, Tensor] = field(default_factory=dict)
    sums_sq: dict[str, Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    n_done: int = 0

    def __post_init__(self) -> None:
        shape = (len(self.layers), len(GROUP_AXIS), self.d_mlp)
        for label in LABELS:
            self.sums.setdefault(label, torch.zeros(shape, dtype=torch.float64))
            self.sums_sq.setdefault(label, torch.zeros(shape, dtype=torch.float64))
            self.counts.setdefault(label, 0)

    def update(self, label: str, by_group: Float[Tensor, "n layer 4 d_mlp"]) -> None:
        """Add pairs of one label (their per-group NIG, ``NeuronAttribution.by_group()``)."""
        if label not in LABELS:
            raise InputError(f"label must be one of {LABELS}, got {label!r}")
        v = by_group.to(torch.float64)
        v = torch.cat([v, v.sum(2, keepdim=True)], dim=2)  # + the "all" group
        self.sums[label] += v.sum(0)
        self.sums_sq[label] += (v * v).sum(0)
        self.counts[label] += v.shape[0]

    def _group(self, group: str) -> int:
        if group not in GROUP_AXIS:
            raise InputError(f"group must be one of {GROUP_AXIS}, got {group!r}")
        return GROUP_AXIS.index(group)

    def _count(self, label: str) -> int:
        if label not in LABELS:
            raise InputError(f"label must be one of {LABELS}, got {label!r}")
        n = self.counts[label]
        if n == 0:
            raise InputError(f"no {label} pairs were attributed; attribute some or use another label")
        return n

    def mean(self, label: str, group: str = "all") -> Float[Tensor, "layer d_mlp"]:
        """Mean NIG per pair of ``label`` (summed over the tokens of ``group``)."""
        return self.sums[label][:, self._group(group)] / self._count(label)

    def std(self, label: str, group: str = "all") -> Float[Tensor, "layer d_mlp"]:
        """Population standard deviation over the pairs of ``label``."""
        n = self._count(label)
        g = self._group(group)
        m = self.sums[label][:, g] / n
        return (self.sums_sq[label][:, g] / n - m * m).clamp(min=0).sqrt()

    def scheme_scores(self, scheme: str, group: str = "all") -> Float[Tensor, "n_layers d_mlp"]:
        """Scores of every neuron of the model under a selection scheme (zeros for unattributed layers).

        ``relevant`` / ``nonrelevant``: mean NIG over that label's pairs; ``difference``: relevant minus
        non-relevant mean; ``absolute``: |mean| over all pairs of both labels.
        """
        if scheme == "relevant" or scheme == "nonrelevant":
            s = self.mean(scheme, group)
        elif scheme == "difference":
            s = self.mean("relevant", group) - self.mean("nonrelevant", group)
        elif scheme == "absolute":
            n = sum(self.counts.values())
            if n == 0:
                raise InputError("no pairs were attributed")
            g = self._group(group)
            s = (sum(self.sums[lab][:, g] for lab in LABELS) / n).abs()
        else:
            raise InputError(f"unknown scheme {scheme!r}; use one of {SCHEMES}")
        full = torch.zeros(self.n_layers, self.d_mlp, dtype=torch.float64)
        full[self.layers] = s
        return full

    # -- persistence -------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        tensors = {}
        for label in LABELS:
            tensors[f"{label}.sum"] = self.sums[label].contiguous()
            tensors[f"{label}.sum_sq"] = self.sums_sq[label].contiguous()
        info = {
            "layers": self.layers,
            "n_layers": self.n_layers,
            "d_mlp": self.d_mlp,
            "counts": self.counts,
            "n_done": self.n_done,
            "meta": self.meta,
        }
        return tensors, {"mechir_nig": json.dumps(info)}

    def save(self, path: str | Path) -> Path:
        """Write atomically: a temporary file renamed over ``path`` (and a readable ``path.json``)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors, metadata = self.state()
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=metadata)
        _fsync(tmp)  # the data is on disk before the rename makes it the checkpoint
        os.replace(tmp, path)
        side = path.with_name(path.name + ".json")
        tmp_side = side.with_name(side.name + ".tmp")
        tmp_side.write_text(json.dumps(json.loads(metadata["mechir_nig"]), indent=1))
        os.replace(tmp_side, side)
        return path

    @classmethod
    def load(cls, path: str | Path) -> CollectionAttribution:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise InputError(f"no collection attribution at {path}")
        with safe_open(str(path), framework="pt") as f:
            info = json.loads(f.metadata()["mechir_nig"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        return cls(
            layers=info["layers"],
            n_layers=info["n_layers"],
            d_mlp=info["d_mlp"],
            sums={lab: tensors[f"{lab}.sum"] for lab in LABELS},
            sums_sq={lab: tensors[f"{lab}.sum_sq"] for lab in LABELS},
            counts=info["counts"],
            meta=info["meta"],
            n_done=info["n_done"],
        )

    def __repr__(self) -> str:
        return (
            f"CollectionAttribution(layers={self.layers}, counts={self.counts}, n_done={self.n_done}, "
            f"collection={self.meta.get('collection')!r})"
        )


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _check_tokenizable(model: Any, fields_: list, pairs: Sequence[Any], max_length: int) -> None:
    """Fail before any work (not after hours) on pairs the model cannot take, naming them."""
    tok = model.tokenizer
    if tok is None:
        raise InputError("the model has no tokenizer; pass tokenizer= to from_pretrained")
    q_lens = [
        len(ids) for ids in tok([f[0] for f in fields_], add_special_tokens=False, verbose=False)["input_ids"]
    ]
    d_lens = [
        len(ids) for ids in tok([f[1] for f in fields_], add_special_tokens=False, verbose=False)["input_ids"]
    ]
    is_cross = model.pairwise
    n_special = n_special_tokens(tok, pair=True)
    bad = []
    for i, (nq, nd) in enumerate(zip(q_lens, d_lens)):
        if nq == 0 or nd == 0:
            bad.append((i, "a text with no tokens"))
        elif is_cross and doc_budget(max_length, nq, n_special) < 1:
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


def attribute_collection(
    model: Any,
    pairs: Sequence[Any],
    *,
    n_steps: int = 32,
    baseline: str = "pad",
    method: str = "riemann_trapezoid",
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    internal_batch_size: int | None = None,
    max_length: int | None = None,
    side: str | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 256,
    resume: bool = False,
    progress: bool = True,
    collection: str | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> CollectionAttribution:
    """Stream judged pairs through NIG and keep per-label statistics (see the module docstring).

    Args:
        model: a ``HookedCrossEncoder`` or ``HookedBiEncoder``.
        pairs: ``JudgedPair`` records (``query``, ``doc``, ``label``, ideally ``query_id``/``doc_id``).
        batch_size: pairs per NIG call (each is split into windows of ``internal_batch_size`` points).
        checkpoint: file to write every ``checkpoint_every`` pairs and at the end.
        resume: continue from ``checkpoint`` if it exists (it must match the pairs and settings).
        collection: a name recorded in the metadata.
        on_batch: called with the number of pairs done after each batch.

    Pairs are processed longest first (a deterministic order, so a resumed run continues exactly).
    """
    from mechir_nig.attribution.baselines import check_baseline
    from mechir_nig.attribution.nig import check_layers, neuron_integrated_gradients
    from mechir_nig.attribution.rules import check_n_steps, check_rule

    if not isinstance(baseline, str):
        raise InputError(
            "attribute_collection takes a baseline name; tensors are per batch (use the NIG API)"
        )
    check_baseline(baseline)
    check_rule(method)
    check_n_steps(n_steps)
    layer_list = check_layers(layers, model.cfg.n_layers)
    for name, v in (("batch_size", batch_size), ("checkpoint_every", checkpoint_every)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be an int >= 1, got {v!r}")
    if len(pairs) == 0:
        raise InputError("pairs is empty; pass judged pairs (mechir_nig.data.judged_pairs)")
    fields_ = [_pair_fields(p, i) for i, p in enumerate(pairs)]
    order = sorted(range(len(fields_)), key=lambda i: -(len(fields_[i][0]) + len(fields_[i][1])))
    fingerprint = hashlib.sha256("\n".join(fields_[i][3] for i in order).encode()).hexdigest()
    effective_max_length = max_length or model.max_length
    _check_tokenizable(model, fields_, pairs, effective_max_length)
    settings = {
        "model": model.cfg.model_name,
        "dtype": str(model.cfg.dtype),
        "n_steps": n_steps,
        "baseline": baseline,
        "method": method,
        "layers": layer_list,
        "side": side,
        "max_length": effective_max_length,
        "pairs_fingerprint": fingerprint,
        "n_pairs": len(pairs),
    }
    ckpt = Path(checkpoint) if checkpoint is not None else None
    stats = None
    if ckpt is not None and ckpt.exists():
        if not resume:
            raise InputError(f"checkpoint {ckpt} exists; pass resume=True to continue it, or remove it")
        stats = CollectionAttribution.load(ckpt)
        old = {k: stats.meta.get(k) for k in settings}
        if old != settings:
            diff = {k: (old[k], settings[k]) for k in settings if old[k] != settings[k]}
            raise InputError(
                f"checkpoint {ckpt} was made with other pairs or settings {diff}; use another file"
            )
    if stats is None:
        stats = CollectionAttribution(layers=layer_list, n_layers=model.cfg.n_layers, d_mlp=model.cfg.d_mlp)
        stats.meta.update(settings)
        stats.meta["collection"] = collection
        stats.meta["truncated"] = dict.fromkeys(LABELS, 0)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pairs), initial=stats.n_done, desc="attributing pairs", unit="pair")
    last_ckpt = stats.n_done
    for s in range(stats.n_done, len(order), batch_size):
        idx = order[s : s + batch_size]
        attr = neuron_integrated_gradients(
            model,
            [fields_[i][0] for i in idx],
            [fields_[i][1] for i in idx],
            n_steps=n_steps,
            baseline=baseline,
            method=method,
            layers=layer_list,
            internal_batch_size=internal_batch_size,
            side=side,
            max_length=max_length,
        )
        groups = attr.by_group()
        labels = [fields_[i][2] for i in idx]
        for label in LABELS:
            rows = [j for j, lab in enumerate(labels) if lab == label]
            if rows:
                stats.update(label, groups[rows])
                stats.meta["truncated"][label] += int(attr.truncated[rows].sum())
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


def top_neurons(
    attribution: CollectionAttribution,
    scheme: str = "relevant",
    *,
    k: int | None = None,
    fraction: float | None = None,
    group: str = "all",
):
    """The neuron set selected by ``scheme`` (``SCHEMES``) among the attributed layers.

    Example:
        >>> rel = top_neurons(stats, "relevant", fraction=0.01)
        >>> overlap_report(rel, top_neurons(stats, "nonrelevant", fraction=0.01))
    """
    from mechir_nig.attribution.neurons import select_top

    return select_top(
        attribution.scheme_scores(scheme, group),
        k=k,
        fraction=fraction,
        layers=attribution.layers,
        name=f"{scheme}:{group}",
    )
