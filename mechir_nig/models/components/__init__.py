"""Components of a post-LN encoder, one per file, every activation behind a TransformerLens ``HookPoint``.

Weights are stored in ``nn.Linear`` layout (``[d_out, d_in]``) so each projection is one fused GEMM;
the TransformerLens layouts (``W_Q: [n_heads, d_model, d_head]``, ``W_in: [d_model, d_mlp]`` ...) are
exposed as einops views of the same storage, so editing them edits the model.
"""

from mechir_nig.models.components.attention import Attention
from mechir_nig.models.components.block import EncoderBlock
from mechir_nig.models.components.embed import Embed
from mechir_nig.models.components.heads import ClassifierHead
from mechir_nig.models.components.layer_norm import LayerNorm
from mechir_nig.models.components.mlp import MLP
from mechir_nig.models.components.pooler import Pooler

__all__ = ["MLP", "Attention", "ClassifierHead", "Embed", "EncoderBlock", "LayerNorm", "Pooler"]
