"""``NIGSettings``: every NIG option in one place, and the fingerprint of a run.

The same object configures ``neuron_integrated_gradients``, ``attribute_collection``, ``split_half_stability`` and the CLI, is recorded
in a checkpoint, and decides whether a checkpoint may be resumed: a run continues only with the same
settings, the same pairs and the same model — identified by a hash of its config and weights, not by
its name, so a different model saved under the same name is refused and the same weights under another
path are accepted.

Example:
    >>> s = NIGSettings(n_steps="auto", tol=0.02, layers=[4, 5], reduce="group")
    >>> s.nig_kwargs()["n_steps"], s.record()["tol"]
    ('auto', 0.02)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mechir_nig._validate import check_bool, check_int, check_number
from mechir_nig.attribution.target import Target, target_name
from mechir_nig.errors import InputError
from mechir_nig.models.protocol import AttributionModel, HookedModel
from mechir_nig.sets.components import ComponentSet
from mechir_nig.sites import SITES, site

if TYPE_CHECKING:
    from mechir_nig.attribution.nig.auto import AutoSteps

DEFAULT_WINDOW_TOKENS = 8192
"""Default window: ``max(1, 8192 // longest_pair)`` points (bounded memory, large enough GEMMs)."""


@dataclass(frozen=True)
class NIGSettings:
    """Every NIG option, in one object (``neuron_integrated_gradients``, ``attribute_collection``, the CLI).

    Construction only normalises (sequences become tuples); ``checked(model)`` validates every field
    against a model, and ``resolved(model)`` does so for a collection run (a baseline name, MLP neurons).

    Attributes:
        n_steps: intervals of the integration rule (``n_steps + 1`` points), or ``"auto"``: per pair,
            trapezoid grids doubled from ``min_steps`` until ``|convergence_delta| <= tol · |F(x) − F(x')|``
            (at most ``max_steps``); the steps used are in ``attr.n_steps_used``.
        baseline: a name in ``baselines.BASELINES`` or a ``[batch, pos, d_model]`` tensor (the NIG API only).
        method: the integration rule (``rules.RULES``); ``"auto"`` needs ``riemann_trapezoid``.
        layers: layers to attribute (``None``: all).
        sites: the activations attributed, names of ``mechir_nig.sites`` (any site whose activation is
            ``[batch, pos, ...]``), or a ``ComponentSet`` (the object ``ablate`` and ``patch`` take: its site
            is attributed, whole, at the layers holding its members, which become ``layers``; read the
            members' values with ``attr.members(the_set)``): ``"mlp_post"`` (MLP neurons, the default), ``"z"`` (attention heads),
            ``"resid_pre"``, ``"resid_mid"``, ``"resid_post"``, ``"attn_out"``, ``"mlp_out"``, ``"mlp_pre"``,
            ``"q"``/``"k"``/``"v"``. Each is summed to its units (neurons, heads, or positions for the
            residual-stream sites).
        heads: shorthand for adding ``"z"`` to ``sites``.
        reduce: what a result holds per (pair, layer): ``"token"``, ``"group"`` (cls/query/sep/doc sums)
            or ``"neuron"`` (summed over tokens). A collection run always sums per group.
        side: bi-encoders only: the interpolated side (``"doc"``, default, or ``"query"``).
        max_length: tokens per input (``None``: the model's).
        internal_batch_size: points per forward/backward window (memory only: never changes results).
        window_tokens: without ``internal_batch_size``, a window holds ``window_tokens // longest pair``
            points (memory only).
        window_padding: ``None`` (default) or a fraction in ``[0, 1)``: a window also ends before a pair
            shorter than ``1 - window_padding`` times its longest pair, so pairs of mixed lengths are not
            padded to the longest (cost only; results change by float round-off: the window shapes
            differ). ``0.125`` (``plan.MAX_PADDING``) is a good value on the CPU for mixed lengths.
        return_convergence_delta: also integrate the input gradient for the completeness check (always on
            with ``n_steps="auto"``).
        progress: a progress bar over windows.
        tol: ``"auto"``: the completeness target, a fraction of ``|F(x) − F(x')|`` (default 0.01).
        min_steps: ``"auto"``: the first, coarsest grid (default 8).
        max_steps: ``"auto"``: the cap, ``min_steps`` times a power of 2 (default 512).
        reuse_bytes: ``"auto"``: memory for reusing computed points when refining (default 2 GiB; memory
            only).
        target: a callable ``target(t: TargetArgs) -> [rows]`` attributing another score than ``F``, e.g.
            a pairwise margin ``lambda t: t.score - negatives[t.pair]`` (``mechir_nig.attribution.nig.target``).
        checkpoint_blocks: gradient checkpointing of the blocks above the first attributed layer
            (``torch.utils.checkpoint``): each keeps only its input for the backward and recomputes its
            activations there, so a window holds one block's activations at a time instead of all of
            them, for about one more forward of those blocks (memory only: never changes results; encoder
            and decoder rerankers and monoT5, where the blocks above the first attributed layer of the
            selected stack and, for the encoder stack, every decoder block are checkpointed). For large
            decoders attributed at a few layers.

    Example:
        >>> s = NIGSettings(n_steps=16, layers=[4, 5], internal_batch_size=64)
        >>> s.layers  # stored as a tuple (hashable)
        (4, 5)
        >>> sorted(s.record())  # what identifies the results: no memory-only option
        ['baseline', 'layers', 'max_length', 'method', 'n_steps', 'side']
        >>> NIGSettings(heads=True).site_names()
        ('mlp_post', 'z')
        >>> NIGSettings(sites=["resid_pre", "head"]).site_names()  # aliases become canonical names
        ('resid_pre', 'z')
        >>> s.resolved(ce).max_length  # validated for a model
        512
    """

    n_steps: int | str = 50
    baseline: str | Tensor = "pad"
    method: str = "riemann_trapezoid"
    layers: Sequence[int] | None = None
    sites: Sequence[str] | ComponentSet = ("mlp_post",)  # a set becomes its site name
    heads: bool = False
    reduce: str = "token"
    side: str | None = None
    max_length: int | None = None
    internal_batch_size: int | None = None
    window_tokens: int = DEFAULT_WINDOW_TOKENS
    window_padding: float | None = None
    return_convergence_delta: bool = False
    progress: bool = False
    tol: float | None = None
    min_steps: int | None = None
    max_steps: int | None = None
    reuse_bytes: int | None = None
    target: Target | None = None
    checkpoint_blocks: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.sites, ComponentSet):  # the set's site at the layers holding its members
            members, layers = self.sites, tuple(self.sites.by_layer())
            if (
                self.layers is not None
                and tuple(sorted([self.layers] if isinstance(self.layers, int) else self.layers)) != layers
            ):
                raise InputError(
                    f"sites is a ComponentSet with members in layers {list(layers)}; leave layers=None "
                    f"(got {self.layers!r}) or restrict the set"
                )
            object.__setattr__(self, "layers", layers)
            object.__setattr__(self, "sites", (site(members.kind).name,))
        if self.layers is not None and not isinstance(self.layers, (tuple, int)):  # hashable, JSON as a list
            object.__setattr__(self, "layers", tuple(self.layers))
        if isinstance(self.layers, int) and not isinstance(self.layers, bool):
            object.__setattr__(self, "layers", (self.layers,))
        if isinstance(self.sites, str):
            object.__setattr__(self, "sites", (self.sites,))
        elif not isinstance(self.sites, tuple):
            object.__setattr__(self, "sites", tuple(self.sites))

    @classmethod
    def of(cls, settings: NIGSettings | None, options: dict[str, Any], where: str) -> NIGSettings:
        """``settings``, or ``NIGSettings(**options)``: one list of options, given one way.

        Raises:
            InputError: ``settings`` is not a ``NIGSettings``; an option is not a field; both are given.

        Example:
            >>> NIGSettings.of(None, {"n_steps": 8}, "f").n_steps
            8
            >>> NIGSettings.of(NIGSettings(), {"n_steps": 8}, "f")
            Traceback (most recent call last):
            ...
            mechir_nig.errors.InputError: f takes the NIG options either as settings=NIGSettings(...) or as keywords, not both (got settings= and n_steps); change a field with dataclasses.replace(settings, n_steps=...)
        """
        if settings is not None and not isinstance(settings, NIGSettings):
            raise InputError(f"settings must be a NIGSettings, got {type(settings).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise InputError(f"{where} got unknown NIG option(s) {unknown}; the options are {sorted(names)}")
        if settings is not None and options:
            given = ", ".join(sorted(options))
            first = sorted(options)[0]
            raise InputError(
                f"{where} takes the NIG options either as settings=NIGSettings(...) or as keywords, not both "
                f"(got settings= and {given}); change a field with dataclasses.replace(settings, {first}=...)"
            )
        return settings if settings is not None else cls(**options)

    def site_names(self) -> tuple[str, ...]:
        """The canonical site names attributed (``sites``, plus ``"z"`` with ``heads``), each once."""
        out: list[str] = []
        for name in (*self.sites, *(("z",) if self.heads else ())):
            s = site(name)
            if s.axes[:2] != ("batch", "pos"):
                raise InputError(
                    f"site {name!r} ({s.template}) is not per token ({list(s.axes)}); NIG attributes sites "
                    f"shaped [batch, pos, ...]: {[n for n, x in SITES.items() if x.axes[:2] == ('batch', 'pos')]}"
                )
            if s.name not in out:
                out.append(s.name)
        if not out:
            raise InputError("sites is empty; name at least one site, e.g. sites=('mlp_post',)")
        return tuple(out)

    def auto(self) -> AutoSteps | None:
        """The validated ``n_steps="auto"`` settings, or ``None`` for an int ``n_steps`` (checked)."""
        from mechir_nig.attribution.nig.auto import check_auto
        from mechir_nig.attribution.rules import check_n_steps, check_rule

        extras: dict[str, Any] = {
            "tol": self.tol,
            "min_steps": self.min_steps,
            "max_steps": self.max_steps,
            "reuse_bytes": self.reuse_bytes,
        }
        if self.n_steps == "auto":
            return check_auto(
                check_rule(self.method), self.tol, self.min_steps, self.max_steps, self.reuse_bytes
            )
        check_n_steps(self.n_steps, allow_auto=True)
        given = [k for k, v in extras.items() if v is not None]
        if given:
            one = len(given) == 1
            raise InputError(
                f"{', '.join(given)} {'applies' if one else 'apply'} only to n_steps='auto'; "
                f"pass n_steps='auto' or leave {'it' if one else 'them'} out"
            )
        return None

    def checked(self, model: AttributionModel) -> NIGSettings:
        """Every field validated for ``model`` (``InputError`` saying what to fix); ``layers`` and ``sites``
        made explicit, ``heads`` folded into ``sites``."""
        from mechir_nig._validate import check_layers
        from mechir_nig.attribution.baselines import check_baseline
        from mechir_nig.attribution.nig.api import check_reduce
        from mechir_nig.attribution.rules import check_rule

        self.auto()
        check_rule(self.method)
        check_baseline(self.baseline)
        check_reduce(self.reduce)
        layers = tuple(
            check_layers(list(self.layers) if self.layers is not None else None, model.cfg.n_layers)
        )
        if self.side is not None and model.pairwise:
            raise InputError(
                "side= is for bi-encoders; a cross-encoder interpolates query and document together"
            )
        if self.side not in (None, "doc", "query"):
            raise InputError(f"side must be 'doc' or 'query', got {self.side!r}")
        for name in ("internal_batch_size", "max_length"):
            check_int(getattr(self, name), name, minimum=1, allow_none=True)
        check_int(self.window_tokens, "window_tokens", minimum=1)
        if self.window_padding is not None:
            check_number(self.window_padding, "window_padding", minimum=0)
            if not self.window_padding < 1:
                raise InputError(f"window_padding must be None or in [0, 1), got {self.window_padding!r}")
        check_bool(self.checkpoint_blocks, "checkpoint_blocks")
        if self.checkpoint_blocks:
            from mechir_nig.models.encoder import HookedEncoderBase
            from mechir_nig.models.t5 import HookedMonoT5

            if not isinstance(model, HookedEncoderBase | HookedMonoT5):
                raise InputError(
                    f"checkpoint_blocks is implemented for encoder and decoder rerankers (blocks run by "
                    f"HookedEncoderBase) and monoT5, not {type(model).__name__}: leave it False"
                )
        if self.target is not None and not callable(self.target):
            raise InputError(
                f"target must be a callable target(t: TargetArgs) -> [rows], got {type(self.target).__name__}"
            )
        return replace(self, layers=layers, sites=self.site_names(), heads=False)

    def resolved(self, model: HookedModel) -> NIGSettings:
        """``checked`` for a collection run: a baseline name, MLP neurons only, sums per token group;
        ``max_length`` and the ``"auto"`` options made explicit."""
        if not isinstance(self.baseline, str):
            raise InputError(
                "a collection run takes a baseline name; tensors are per batch (use the NIG API)"
            )
        out = self.checked(model)
        if out.sites != ("mlp_post",):
            raise InputError(
                f"collection statistics are per MLP neuron: sites must be ('mlp_post',) (got {out.sites}); "
                "attribute other sites with neuron_integrated_gradients"
            )
        if out.reduce == "neuron":
            raise InputError(
                "collection statistics are per token group: leave reduce out (a collection run sums per "
                "group), reduce='neuron' drops the groups"
            )
        auto = out.auto()
        if auto is not None:  # recorded explicitly: a checkpoint names the tolerance it was made with
            out = replace(out, tol=auto.tol, min_steps=auto.min_steps, max_steps=auto.max_steps)
        return replace(out, reduce="group", max_length=self.max_length or model.max_length)

    def nig_kwargs(self) -> dict[str, Any]:
        """The fields as keyword arguments (``layers`` as a list)."""
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        kw["layers"] = list(self.layers) if self.layers is not None else None
        kw["sites"] = list(self.sites)
        return kw

    def record(self) -> dict[str, Any]:
        """What identifies the results, JSON-ready: the rule, baseline, layers, side and length; the
        ``"auto"`` options and the target when used. Memory-only options are left out."""
        out: dict[str, Any] = {
            "n_steps": self.n_steps,
            "baseline": self.baseline if isinstance(self.baseline, str) else "tensor",
            "method": self.method,
            "layers": list(self.layers) if self.layers is not None else None,
            "side": self.side,
            "max_length": self.max_length,
        }
        if self.n_steps == "auto":
            out.update(tol=self.tol, min_steps=self.min_steps, max_steps=self.max_steps)
        if self.target is not None:
            out["target"] = target_name(self.target)
        return out


def model_fingerprint(model: HookedModel) -> str:
    """SHA-256 of the model's config (without its name) and of every weight.

    Two loads of the same weights (from any path) give the same fingerprint; any changed weight,
    dtype or shape gives another. Computed afresh each call (weights can be edited in place); about
    0.2 s for a 22M-parameter model.

    Returns:
        64 hexadecimal characters.

    Example:
        >>> import shutil, tempfile
        >>> from mechir_nig.models import HookedCrossEncoder
        >>> from mechir_nig.testing import minilm_cross_encoder
        >>> path = minilm_cross_encoder(tempfile.mkdtemp(), seed=7)
        >>> copy_of_path = shutil.copytree(path, tempfile.mkdtemp() + "/copy")
        >>> a = model_fingerprint(HookedCrossEncoder.from_pretrained(path))
        >>> a == model_fingerprint(HookedCrossEncoder.from_pretrained(copy_of_path))
        True
        >>> a == model_fingerprint(ce), len(a)  # another relevance head: another fingerprint
        (False, 64)
    """
    h = hashlib.sha256()
    cfg = model.cfg.to_dict()
    cfg.pop("model_name", None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
