"""Component sets keyed by site: MLP neurons and attention heads, their selection and chance levels.

* ``components``: ``ComponentSet`` (kind ``"mlp"`` at ``blocks.{l}.mlp.hook_post`` or ``"head"`` at
  ``blocks.{l}.attn.hook_z``), ``NeuronSet`` (the MLP case), set algebra, masks, hook names, JSON;
* ``selection``: ``select_top``, ``rank_fusion`` / ``fuse_scores``, ``random_like``;
* ``chance``: ``expected_overlap``, ``chance_pool``, ``overlap_report`` (chance over the candidate pool).

Every set records the layers it was selected from (``pool_layers``); chance levels and random baselines use
that pool. See ``docs/sets.md``.

Example:
    >>> import torch
    >>> from mechir_nig.sets import select_top
    >>> nig = torch.tensor([[0.1, 0.9, 0.3], [0.5, -0.2, 0.7]])  # [n_layers, d_mlp], e.g. mean NIG
    >>> top = select_top(nig, k=2, name="top")
    >>> list(top), top.to_hook_names()
    ([(0, 1), (1, 2)], {'blocks.0.mlp.hook_post': [1], 'blocks.1.mlp.hook_post': [2]})
    >>> head_scores = torch.tensor([[3.0, 1.0], [0.0, 2.0]])  # [n_layers, n_heads], e.g. per_head().sum(0)
    >>> select_top(head_scores, k=1, kind="head").to_hook_names()
    {'blocks.0.attn.hook_z': [0]}
"""

from mechir_nig.sets.chance import chance_pool, expected_overlap, overlap_report
from mechir_nig.sets.components import KINDS, SITES, ComponentSet, NeuronSet, intersection, union
from mechir_nig.sets.selection import FUSION_METHODS, fuse_scores, random_like, rank_fusion, select_top

__all__ = [
    "FUSION_METHODS",
    "KINDS",
    "SITES",
    "ComponentSet",
    "NeuronSet",
    "chance_pool",
    "expected_overlap",
    "fuse_scores",
    "intersection",
    "overlap_report",
    "random_like",
    "rank_fusion",
    "select_top",
    "union",
]
