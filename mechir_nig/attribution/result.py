"""``NeuronAttribution``: the NIG of every MLP neuron of a batch of pairs, with aggregation and save/load.

One result type for every ``reduce``: ``values`` holds per-token NIG (``reduce="token"``), sums over the
token groups cls/query/sep/doc, and prompt for a templated family (``"group"``) or over all tokens (``"neuron"``); ``reduce`` says which.
``by_group()``, ``per_neuron()`` and ``per_head()`` work from whatever is held and raise ``InputError``
(saying which ``reduce`` to use) when it was summed too far.

Example:
    >>> attr = neuron_integrated_gradients(ce, queries, docs, reduce="group", n_steps=8)
    >>> attr.reduce, attr.values.shape      # ("group", [batch, layer, 4, d_mlp])
    ('group', torch.Size([2, 6, 4, 1536]))
    >>> attr.per_neuron().shape             # [batch, layer, d_mlp]
    torch.Size([2, 6, 1536])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechir_nig.errors import InputError
from mechir_nig.models.tokenization import GROUPS, PAD, content_groups, group_weights
from mechir_nig.results import Result

if TYPE_CHECKING:
    from mechir_nig.sets.components import ComponentSet

CONTENT_GROUPS = GROUPS[:4]  # cls, query, sep, doc (padding excluded)
PROMPT_GROUPS = (*CONTENT_GROUPS, "prompt")  # a templated family's groups: + the template text
REDUCED = ("token", "group", "neuron")


@dataclass
class NeuronAttribution(Result):
    """Neuron Integrated Gradients of a batch of pairs.

    ``save(path)`` writes the tensors to ``path`` (safetensors) and ``layers``, ``tokens``, ``meta``,
    ``reduce`` to the sidecar ``path.json``, checksummed; ``load(path)`` reads them back exactly and
    refuses a damaged or foreign file (``mechir_nig.results``).

    Shapes:
        values: the total conductance of each MLP neuron (``layer`` indexes ``layers``), by ``reduce``:
            ``"token"``: ``[batch, layer, pos, d_mlp]`` (padding positions are 0);
            ``"group"``: ``[batch, layer, group, d_mlp]``, summed over the tokens of each of
            ``group_names`` (cls, query, sep, doc; and prompt for a templated family: 5 groups);
            ``"neuron"``: ``[batch, layer, d_mlp]``, summed over tokens.
        head_values: the same with ``n_heads`` for ``d_mlp`` when heads were asked for, else ``None``.
        scores / baseline_scores: ``[batch]`` — ``F(x)`` and ``F(x')``.
        convergence_delta: ``[batch]`` — summed input-level IG minus ``F(x) − F(x')`` (when asked, and
            always with ``n_steps="auto"``).
        n_steps_used: ``[batch]`` — intervals of each pair's grid (all equal unless ``n_steps="auto"``).
        site_values: every attributed site (``NIGSettings.sites``, canonical ``mechir_nig.sites`` names) to
            its values, reduced like ``values``, with the site's units last: ``mlp_post`` (``values``
            itself) ``d_mlp``, ``z`` (``head_values``) ``n_heads``, residual-stream sites none (one value
            per position), e.g. ``site_values["resid_pre"]``: ``[batch, layer, pos]``. ``values`` is
            ``[..., 0]`` (no neurons) when ``mlp_post`` was not asked for.
        point_scores: ``[batch, points]`` — ``F`` at each point of the pair's grid (``n_steps="auto"``:
            NaN after the pair's ``n_steps_used + 1`` points).
        groups / input_ids: ``[batch, pos]`` (kept for every ``reduce``: they are small).

    Example:
        >>> groups = torch.tensor([[0, 1, 2, 3, 2, 4]])  # [batch, pos]: cls, query, sep, doc, sep, pad
        >>> attr = NeuronAttribution(
        ...     values=torch.arange(6.0).reshape(1, 2, 1, 3).expand(1, 2, 6, 3),  # [batch, layer, pos, d_mlp]
        ...     layers=[4, 5],
        ...     groups=groups,
        ...     input_ids=torch.zeros(1, 6, dtype=torch.long),
        ...     scores=torch.tensor([1.5]),
        ...     baseline_scores=torch.tensor([0.5]),
        ... )
        >>> attr.by_group().shape  # [batch, layer, 4, d_mlp]
        torch.Size([1, 2, 4, 3])
        >>> attr.per_neuron().tolist()  # [batch, layer, d_mlp]: summed over the 5 non-padding tokens
        [[[0.0, 5.0, 10.0], [15.0, 20.0, 25.0]]]
        >>> attr.top_neurons(2)  # (layer, neuron, value)
        [(5, 2, 25.0), (5, 1, 20.0)]
    """

    values: Float[Tensor, "batch layer *where d_mlp"]
    layers: list[int]
    groups: Int[Tensor, "batch pos"]
    input_ids: Int[Tensor, "batch pos"]
    scores: Float[Tensor, " batch"]
    baseline_scores: Float[Tensor, " batch"]
    convergence_delta: Float[Tensor, " batch"] | None = None
    head_values: Float[Tensor, "batch layer *where n_heads"] | None = None
    tokens: list[list[str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    point_scores: Float[Tensor, "batch points"] | None = None
    truncated: Tensor | None = None  # [batch] bool: documents cut to max_length (reported, never silent)
    reduce: str = "token"
    n_steps_used: Int[Tensor, " batch"] | None = None
    site_values: dict[str, Tensor] = field(default_factory=dict)  # site name -> values of that site

    def __post_init__(self) -> None:
        if self.reduce not in REDUCED:
            raise InputError(f"reduce must be one of {REDUCED}, got {self.reduce!r}")
        want = {"token": 4, "group": 4, "neuron": 3}[self.reduce]
        if self.values.dim() != want:
            raise InputError(
                f"values has {self.values.dim()} dims; reduce={self.reduce!r} holds {want} "
                "([batch, layer, pos|group, d_mlp] or [batch, layer, d_mlp])"
            )

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def mask(self) -> Bool[Tensor, "batch pos"]:
        """Tokens that are not padding."""
        return self.groups != PAD

    def _needs(self, what: str, allowed: tuple[str, ...]) -> None:
        if self.reduce not in allowed:
            raise InputError(
                f"{what} needs values per {'token' if allowed == ('token',) else 'token group'}, but this "
                f"result holds them summed (reduce={self.reduce!r}); attribute with "
                + " or ".join(f"reduce={r!r}" for r in allowed)
            )

    def per_token(self) -> Float[Tensor, "batch layer pos d_mlp"]:
        """Per-token NIG (``values`` of a ``reduce="token"`` result)."""
        self._needs("per_token()", ("token",))
        return self.values

    @property
    def group_names(self) -> tuple[str, ...]:
        """The groups of ``by_group()``'s group axis: ``CONTENT_GROUPS`` (cls, query, sep, doc), and
        ``PROMPT_GROUPS`` (+ prompt) when the pairs hold template text (a templated family)."""
        return tuple(GROUPS[g] for g in content_groups(self.groups))

    def by_group(self) -> Float[Tensor, "batch layer group d_mlp"]:
        """Sum over the tokens of each group of ``group_names`` (cls, query, sep, doc; and prompt for a
        templated family); padding excluded, so the groups sum to ``per_neuron()``."""
        self._needs("by_group()", ("token", "group"))
        if self.reduce == "group":
            return self.values
        weights = group_weights(self.groups, self.values.dtype)
        return torch.einsum("blpf,bpg->blgf", self.values, weights.to(self.values.device))

    def per_neuron(self) -> Float[Tensor, "batch layer d_mlp"]:
        """Sum over tokens (padding excluded): one NIG value per pair, layer and neuron."""
        return self._summed(self.values)

    def site(self, name: str) -> Tensor:
        """The values of site ``name`` (a ``mechir_nig.sites`` name or alias), as attributed.

        Example:
            >>> attr = neuron_integrated_gradients(ce, queries, docs, sites=("resid_pre",), n_steps=8)
            >>> attr.site("resid_pre").shape  # [batch, layer, pos]
            torch.Size([2, 6, 22])
        """
        from mechir_nig.sites import site

        canonical = site(name).name
        if canonical not in self.site_values:
            raise InputError(
                f"site {canonical!r} was not attributed (this result has {sorted(self.site_values)}); "
                f"attribute with sites=(..., {canonical!r})"
            )
        return self.site_values[canonical]

    def members(self, components: ComponentSet) -> Tensor:
        """The values of a ``ComponentSet``'s members (the object ``ablate``, ``patch`` and ``sites=`` take),
        in the set's order (sorted by ``(layer, index)``): ``[batch, *where, n_members]``.

        ``*where`` is what ``reduce`` keeps: ``pos`` (``"token"``), the groups (``"group"``) or nothing
        (``"neuron"``). A position set (a residual-stream site) indexes the position axis, so it needs
        ``reduce="token"``: ``[batch, n_members]``.

        Raises:
            InputError: not a ``ComponentSet``; its site or a member's layer was not attributed; a
                position set of a summed result; a set of another width (another model, longer inputs).

        Example:
            >>> from mechir_nig.sets import NeuronSet
            >>> top = NeuronSet([(5, 2), (5, 5)], n_layers=6, d_mlp=1536)
            >>> attr = neuron_integrated_gradients(ce, queries, docs, sites=top, reduce="neuron", n_steps=4)
            >>> attr.members(top).shape  # [batch, 2]
            torch.Size([2, 2])
        """
        from mechir_nig.sets.components import ComponentSet
        from mechir_nig.sites import site

        if not isinstance(components, ComponentSet):
            raise InputError(f"members() takes a ComponentSet, got {type(components).__name__}")
        s = site(components.kind)
        values = self.site(s.name)
        absent = sorted(set(components.by_layer()) - set(self.layers))
        if absent:
            raise InputError(
                f"the set has members in layers {absent}, which this result did not attribute (layers "
                f"{self.layers}); attribute with sites=<the set> or layers including them"
            )
        if s.unit == "position":
            self._needs(f"members() of a {s.name} position set", ("token",))
        width = values.shape[-1]
        if s.unit != "position" and components.width != width:
            raise InputError(
                f"the set's universe has {components.width} {s.unit}s per layer, this result {width}: a set "
                "of another model"
            )
        beyond = [m for m in components if m[1] >= width]
        if beyond:
            raise InputError(
                f"{len(beyond)} members (e.g. {beyond[:3]}) are beyond this result's {width} {s.unit}s of "
                f"{s.name}: the set is of another model or longer inputs"
            )
        return torch.stack([values[:, self.layers.index(lyr), ..., unit] for lyr, unit in components], -1)

    def per_head(self) -> Float[Tensor, "batch layer n_heads"]:
        """Head conductance summed over tokens (padding excluded)."""
        if self.head_values is None:
            raise InputError("no head attributions: call with heads=True")
        return self._summed(self.head_values)

    def _summed(self, v: Tensor) -> Tensor:
        if self.reduce == "token":
            return (v * self.mask[:, None, :, None]).sum(2)
        if self.reduce == "group":
            return v.sum(2)
        return v

    def relabel_group(self, source: int, dest: int) -> None:
        """Move group ``source``'s tokens (and group sums) to group ``dest`` (an empty group).

        Used for a bi-encoder's query side, whose text is tokenized as ``doc``.
        """
        self.groups = torch.where(self.groups == source, dest, self.groups)
        if self.reduce == "group":
            perm = list(range(self.values.shape[2]))
            perm[source], perm[dest] = dest, source
            self.values = self.values[:, :, perm]
            if self.head_values is not None:
                self.head_values = self.head_values[:, :, perm]
            self.site_values = {k: v[:, :, perm] for k, v in self.site_values.items()}

    def top_neurons(self, k: int = 10, *, pair: int | None = None) -> list[tuple[int, int, float]]:
        """The ``k`` (layer, neuron, value) with the largest NIG, for one pair or summed over pairs."""
        pn = self.per_neuron()
        v = pn[pair] if pair is not None else pn.sum(0)
        vals, idx = v.flatten().topk(min(k, v.numel()))
        d = v.shape[-1]
        return [
            (self.layers[i // d], i % d, float(x)) for i, x in zip(idx.tolist(), vals.tolist(), strict=True)
        ]

    def plot(self, kind: str | None = None, **kw: Any) -> Any:
        """A plotly figure of this result (``mechir_nig.plotting.plot``); ``kind``: ``"heatmap"`` (default),
        ``"top"``, ``"tokens"`` or ``"groups"``; ``kw`` go to the figure function.

        Example:
            >>> attr = neuron_integrated_gradients(ce, queries, docs, n_steps=4, layers=[5])
            >>> fig = attr.plot("tokens", pair=0)  # fig.show() opens it
            >>> len(fig.data) > 0
            True
        """
        from mechir_nig.plotting import plot

        return plot(self, kind, **kw)

    # -- persistence (``mechir_nig.results.Result``: save, load) -------------------------------------
    KIND = "NeuronAttribution"
    WHAT = "neuron attribution"

    _ALIASES = (("mlp_post", "values"), ("z", "head_values"))  # site_values entries held by another field

    def to_parts(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """``Result.to_parts`` without the ``site_values`` entries that are ``values`` / ``head_values``
        (one tensor is stored once; ``from_parts`` puts them back)."""
        tensors, info = super().to_parts()
        for site_name, name in self._ALIASES:
            held = self.site_values.get(site_name)
            if held is not None and held is getattr(self, name):  # not when neither was attributed
                del tensors[f"site_values.{site_name}"]
                info.setdefault("site_values_aliases", []).append(site_name)
        return tensors, info

    @classmethod
    def from_parts(cls, tensors: dict[str, Tensor], info: dict[str, Any]) -> NeuronAttribution:
        """``Result.from_parts``, checking that ``values`` covers the listed ``layers``."""
        aliases = dict(cls._ALIASES)
        tensors = dict(tensors)
        for site_name in info.pop("site_values_aliases", []):
            tensors[f"site_values.{site_name}"] = tensors[aliases[site_name]]
        result = super().from_parts(tensors, info)
        if result.values.shape[1] != len(result.layers):
            raise ValueError(
                f"values has {result.values.shape[1]} layers but the sidecar lists {result.layers}"
            )
        return result
