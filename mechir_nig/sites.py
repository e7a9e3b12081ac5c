"""The site vocabulary: one table from a site name to its TransformerLens hook and the axis of its units.

Every part of the package that names an activation (NIG, ablation, patching, component sets, the CLI,
the report) takes its hook names from here, as TransformerLens's ``utils.get_act_name`` does.

=================  =================================  ===============================  ================
site               hook (``.format(layer=l)``)        activation                       unit (axis)
=================  =================================  ===============================  ================
``resid_pre``      ``blocks.{layer}.hook_resid_pre``  ``[batch, pos, d_model]``        position (1)
``resid_mid``      ``blocks.{layer}.hook_resid_mid``  ``[batch, pos, d_model]``        position (1)
``resid_post``     ``blocks.{layer}.hook_resid_post`` ``[batch, pos, d_model]``        position (1)
``attn_out``       ``blocks.{layer}.hook_attn_out``   ``[batch, pos, d_model]``        position (1)
``mlp_out``        ``blocks.{layer}.hook_mlp_out``    ``[batch, pos, d_model]``        position (1)
``mlp_pre``        ``blocks.{layer}.mlp.hook_pre``    ``[batch, pos, d_mlp]``          neuron (-1)
``mlp_post``       ``blocks.{layer}.mlp.hook_post``   ``[batch, pos, d_mlp]``          neuron (-1)
``z``              ``blocks.{layer}.attn.hook_z``     ``[batch, pos, n_heads, d_head]`` head (2)
``q`` ``k`` ``v``  ``blocks.{layer}.attn.hook_q`` ...  ``[batch, pos, n_heads, d_head]`` head (2)
``pattern``        ``blocks.{layer}.attn.hook_pattern`` ``[batch, n_heads, q, k]``     head (1)
``attn_scores``    ``blocks.{layer}.attn.hook_attn_scores`` ``[batch, n_heads, q, k]`` head (1)
``ln1_scale``      ``blocks.{layer}.ln1.hook_scale``  ``[batch, pos, 1]``              position (1)
``ln1_normalized`` ``blocks.{layer}.ln1.hook_normalized`` ``[batch, pos, d_model]``    position (1)
``ln2_scale``      ``blocks.{layer}.ln2.hook_scale``  ``[batch, pos, 1]``              position (1)
``ln2_normalized`` ``blocks.{layer}.ln2.hook_normalized`` ``[batch, pos, d_model]``    position (1)
=================  =================================  ===============================  ================

The LayerNorm sites: ``scale`` is ``1/sqrt(var + eps)`` of each position's vector (the mean of squares
for an RMSNorm), the multiplier of the centred input (TransformerLens' ``hook_scale`` holds the divisor
``sqrt(var + eps)``); ``normalized`` is the norm's output, after its weight and bias. In a post-LN
encoder (BERT-like, DeBERTa) ``ln1`` normalises ``resid_mid`` and ``ln2`` ``resid_post`` (its output is
the block's); in a pre-LN one (ModernBERT, decoders, monoT5) ``ln1`` feeds the attention and ``ln2`` the
MLP (ModernBERT's first block has no ``ln1``). The final norm (``ln_final.hook_scale``,
``ln_final.hook_normalized``) is not per layer and is read by its hook name.

TransformerLens's short names are accepted as aliases (``post`` = ``mlp_post``, ``pre`` = ``mlp_pre``,
``scores`` = ``attn_scores``), and so are the component-set kinds (``mlp`` = ``mlp_post``, ``head`` = ``z``)
and the patching site names of earlier releases (``neurons`` = ``mlp_post``, ``heads`` = ``z``).

Example:
    >>> hook_name("mlp_post", 3)
    'blocks.3.mlp.hook_post'
    >>> hook_name("head", 0), hook_name("resid_pre", 2)
    ('blocks.0.attn.hook_z', 'blocks.2.hook_resid_pre')
    >>> site("post").unit, site("z").unit_axis
    ('neuron', 2)
    >>> site_of_hook("blocks.4.attn.hook_z")
    ('z', 4)
    >>> hook_name("ln1_scale", 2), site("ln2_normalized").unit
    ('blocks.2.ln1.hook_scale', 'position')
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from mechir_nig._validate import check_int
from mechir_nig.errors import InputError

__all__ = ["ALIASES", "SITES", "Site", "hook_name", "site", "site_of_hook", "unit_width"]


@dataclass(frozen=True)
class Site:
    """One site: its canonical name, hook template, activation axes and the axis its units index.

    ``unit`` names what one index of ``unit_axis`` is (``"position"``, ``"neuron"``, ``"head"``);
    ``width`` the config field that sizes it (``None`` for positions: the batch's length).
    """

    name: str
    template: str
    axes: tuple[str, ...]
    unit: str
    unit_axis: int
    width: str | None

    def hook(self, layer: int) -> str:
        """The hook name at ``layer``."""
        return self.template.format(layer=layer)


def _resid(name: str, hook: str, last: str = "d_model") -> Site:
    return Site(name, f"blocks.{{layer}}.{hook}", ("batch", "pos", last), "position", 1, None)


def _heads(name: str, hook: str) -> Site:
    return Site(
        name, f"blocks.{{layer}}.attn.{hook}", ("batch", "pos", "n_heads", "d_head"), "head", 2, "n_heads"
    )


def _pattern(name: str, hook: str) -> Site:
    axes = ("batch", "n_heads", "query_pos", "key_pos")
    return Site(name, f"blocks.{{layer}}.attn.{hook}", axes, "head", 1, "n_heads")


def _mlp(name: str, hook: str) -> Site:
    return Site(name, f"blocks.{{layer}}.mlp.{hook}", ("batch", "pos", "d_mlp"), "neuron", -1, "d_mlp")


SITES: Mapping[str, Site] = MappingProxyType(
    {
        s.name: s
        for s in (
            _resid("resid_pre", "hook_resid_pre"),
            _resid("resid_mid", "hook_resid_mid"),
            _resid("resid_post", "hook_resid_post"),
            _resid("attn_out", "hook_attn_out"),
            _resid("mlp_out", "hook_mlp_out"),
            _mlp("mlp_pre", "hook_pre"),
            _mlp("mlp_post", "hook_post"),
            _heads("z", "hook_z"),
            _heads("q", "hook_q"),
            _heads("k", "hook_k"),
            _heads("v", "hook_v"),
            _pattern("pattern", "hook_pattern"),
            _pattern("attn_scores", "hook_attn_scores"),
            *(
                _resid(f"{ln}_{what}", f"{ln}.hook_{what}", axis)
                for ln in ("ln1", "ln2")
                for what, axis in (("scale", "1"), ("normalized", "d_model"))
            ),
        )
    }
)
"""Canonical site name -> :class:`Site`."""

ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "post": "mlp_post",
        "pre": "mlp_pre",
        "scores": "attn_scores",
        "mlp": "mlp_post",
        "head": "z",
        "neurons": "mlp_post",
        "heads": "z",
    }
)
"""Other accepted names -> canonical site name (TransformerLens short names, set kinds, patching sites)."""

_BY_TEMPLATE = {
    re.compile("^" + re.escape(s.template).replace(re.escape("{layer}"), r"(\d+)") + "$"): s.name
    for s in SITES.values()
}


def site(name: Any) -> Site:
    """The :class:`Site` called ``name`` (canonical or an alias), else an InputError listing the names."""
    if isinstance(name, str):
        found = SITES.get(ALIASES.get(name, name))
        if found is not None:
            return found
    raise InputError(f"unknown site {name!r}: use one of {sorted(SITES)} (or an alias in {sorted(ALIASES)})")


def hook_name(name: str, layer: int, stack: str | None = None) -> str:
    """The hook name of site ``name`` at ``layer`` (as TransformerLens ``utils.get_act_name``).

    ``stack`` names one stack of an encoder-decoder model (monoT5: ``"encoder"``, ``"decoder"``) by its
    full hook name. Without it the name is the plain ``blocks.{l}...`` one, which such a model resolves
    to the stack it addresses (``HookedMonoT5.set_stack``; the encoder by default), so NIG, ablation and
    patching need no stack argument.

    Example:
        >>> hook_name("pattern", 1)
        'blocks.1.attn.hook_pattern'
        >>> hook_name("mlp_post", 0, stack="decoder")
        'decoder.blocks.0.mlp.hook_post'
    """
    check_int(layer, "layer", minimum=0)
    if stack is None:
        return site(name).hook(layer)
    if not isinstance(stack, str) or not stack.isidentifier():
        raise InputError(f"stack must be a stack's name such as 'encoder' or 'decoder', got {stack!r}")
    return f"{stack}.{site(name).hook(layer)}"


def site_of_hook(hook: str) -> tuple[str, int]:
    """``(site name, layer)`` of a hook name of the table, else an InputError.

    Example:
        >>> site_of_hook("blocks.0.hook_resid_pre")
        ('resid_pre', 0)
    """
    for pattern, name in _BY_TEMPLATE.items():
        m = pattern.match(hook)
        if m:
            return name, int(m.group(1))
    raise InputError(
        f"{hook!r} is not a per-layer site hook; known templates: {[s.template for s in SITES.values()]}"
    )


def unit_width(name: str, cfg: Any) -> int | None:
    """How many units site ``name`` has per layer for a model config (``None`` for positions).

    Example:
        >>> from types import SimpleNamespace
        >>> unit_width("mlp_post", SimpleNamespace(d_mlp=8, n_heads=2)), unit_width("resid_pre", None)
        (8, None)
    """
    s = site(name)
    return None if s.width is None else int(getattr(cfg, s.width))
