"""jaxtyping aliases for the public tensors, with TransformerLens axis names."""

from __future__ import annotations

from jaxtyping import Float, Int
from torch import Tensor

Tokens = Int[Tensor, "batch pos"]
Mask = Int[Tensor, "batch pos"]
Resid = Float[Tensor, "batch pos d_model"]
Scores = Float[Tensor, " batch"]
Logits = Float[Tensor, "batch n_labels"]
Embeddings = Float[Tensor, "batch d_model"]

__all__ = ["Tokens", "Mask", "Resid", "Scores", "Logits", "Embeddings"]
