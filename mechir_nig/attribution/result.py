"""``NeuronAttribution``: per-token NIG of every MLP neuron, with aggregation and save/load."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechir_nig.models.tokenization import GROUPS, PAD

CONTENT_GROUPS = GROUPS[:4]  # cls, query, sep, doc (padding excluded)
_TENSORS = (
    "values",
    "groups",
    "input_ids",
    "scores",
    "baseline_scores",
    "convergence_delta",
    "head_values",
    "point_scores",
    "truncated",
)


@dataclass
class NeuronAttribution:
    """Neuron Integrated Gradients of a batch of pairs.

    Shapes:
        values: ``[batch, layer, pos, d_mlp]`` — total conductance of each MLP neuron at each token
            (``layer`` indexes ``layers``; padding positions are 0).
        head_values: ``[batch, layer, pos, n_heads]`` when heads were asked for, else ``None``.
        scores / baseline_scores: ``[batch]`` — ``F(x)`` and ``F(x')``.
        convergence_delta: ``[batch]`` — summed input-level IG minus ``F(x) − F(x')`` (when asked).
    """

    values: Float[Tensor, "batch layer pos d_mlp"]
    layers: list[int]
    groups: Int[Tensor, "batch pos"]
    input_ids: Int[Tensor, "batch pos"]
    scores: Float[Tensor, " batch"]
    baseline_scores: Float[Tensor, " batch"]
    convergence_delta: Float[Tensor, " batch"] | None = None
    head_values: Float[Tensor, "batch layer pos n_heads"] | None = None
    tokens: list[list[str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    point_scores: Tensor | None = None
    truncated: Tensor | None = None  # [batch] bool: documents cut to max_length (reported, never silent)

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def mask(self) -> Tensor:
        return self.groups != PAD

    def by_group(self) -> Float[Tensor, "batch layer group d_mlp"]:
        """Sum over the tokens of each group ``(cls, query, sep, doc)``; padding excluded."""
        onehot = torch.nn.functional.one_hot(self.groups, len(GROUPS))[..., : len(CONTENT_GROUPS)]
        return torch.einsum("blpf,bpg->blgf", self.values, onehot.to(self.values.dtype))

    def per_neuron(self) -> Float[Tensor, "batch layer d_mlp"]:
        """Sum over tokens (padding excluded): one NIG value per pair, layer and neuron."""
        return (self.values * self.mask[:, None, :, None]).sum(2)

    def per_head(self) -> Float[Tensor, "batch layer n_heads"]:
        if self.head_values is None:
            raise ValueError("no head attributions: call with heads=True")
        return (self.head_values * self.mask[:, None, :, None]).sum(2)

    def top_neurons(self, k: int = 10, *, pair: int | None = None) -> list[tuple[int, int, float]]:
        """The ``k`` (layer, neuron, value) with the largest NIG, for one pair or summed over pairs."""
        pn = self.per_neuron()
        v = pn[pair] if pair is not None else pn.sum(0)
        vals, idx = v.flatten().topk(min(k, v.numel()))
        d = v.shape[-1]
        return [
            (self.layers[i // d], i % d, float(x)) for i, x in zip(idx.tolist(), vals.tolist(), strict=True)
        ]

    # -- persistence -------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``path`` (safetensors tensors) and ``path.json`` (layers, tokens, settings)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {n: getattr(self, n).contiguous().cpu() for n in _TENSORS if getattr(self, n) is not None}
        side = {"layers": self.layers, "tokens": self.tokens, "meta": self.meta}
        json_path = path.with_suffix(path.suffix + ".json")
        for target, write in (
            (json_path, lambda tmp: tmp.write_text(json.dumps(side))),
            (path, lambda tmp: save_file(tensors, str(tmp))),
        ):  # each written to a temporary name, then renamed: never half-written
            tmp = target.with_name(target.name + ".tmp")
            write(tmp)
            os.replace(tmp, target)
        return path

    @classmethod
    def load(cls, path: str | Path) -> NeuronAttribution:
        from safetensors.torch import load_file

        path = Path(path)
        tensors = load_file(str(path))
        side = json.loads(path.with_suffix(path.suffix + ".json").read_text())
        return cls(**tensors, layers=side["layers"], tokens=side["tokens"], meta=side["meta"])
