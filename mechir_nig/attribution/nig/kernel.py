"""The NIG kernel: one forward and one backward per window, each layer's conductance inside the backward.

``PathKernel.run`` walks a ``WindowPlan`` (``plan.py``). Per window it builds the interpolated word
embeddings ``x' + α (x − x')`` of its rows (in the accumulation dtype), runs one forward that keeps every
requested activation (any per-token site of ``mechir_nig.sites`` at each requested layer:
``blocks.{l}.mlp.hook_post`` by default, ``blocks.{l}.attn.hook_z`` for heads, ``blocks.{l}.hook_resid_pre``
...) and one backward with parameters frozen (no weight gradients). Without the input gradient, the
latest activation of the first requested layer that every site depends on (``leaf_hook``: the MLP
pre-activation for MLP sites, ``attn.hook_z`` with heads, ``hook_resid_pre`` for the residual stream or
q/k/v) is made a leaf, so nothing below it is kept for backward and the backward stops there. A tensor hook on each activation hands it, with its gradient, to an
*accumulator* as soon as the gradient arrives, so the activation and its gradient are freed at once and
peak memory is that of a plain forward + backward. On CUDA the next window's index tensors are
copied from pinned memory on a side stream while the current window runs (``staged``); on the CPU
the loop is unchanged.

What is done with activations and gradients is the accumulator's business:

- ``GridConductance``: the conductance ``Σ_k ∂F/∂a(α_k)·(a(α_{k+1}) − a(α_k))`` over each pair's consecutive
  points, carrying the last point of a window into the next (Captum's ``LayerConductance``, all layers).
- ``MidpointConductance``: the correction that turns the conductance on a grid into the one on the grid
  with every interval halved, from the new midpoints and the stored points (``n_steps="auto"``).

Both hand per-token window sums to a ``Conductance``, which sums each site to its units (neurons, heads,
or positions for the residual stream) and adds them up per token, per token group or per unit (``reduce``), so the result never holds per-token values unless asked to. ``PathScalars`` keeps
``F`` and ``dF/dα = ∇_x F · (x − x')`` at every evaluated point (the completeness check).

Shapes:
    activations handed to ``consume``: ``[rows, pos, *site_shape]`` (``[rows, pos, d_mlp]`` for
    ``hook_post``, ``[rows, pos, n_heads, d_head]`` for ``hook_z``); ``Conductance.sites`` as ``reduce`` says.

Example (what ``api.py`` does for a fixed rule):
    >>> from mechir_nig.attribution.baselines import baseline_embeddings
    >>> from mechir_nig.attribution.nig.plan import WindowPlan
    >>> model = ce
    >>> base = baseline_embeddings(model, batch.input_ids, batch.groups, "pad")
    >>> alphas = torch.linspace(0, 1, 5, dtype=torch.float32)  # n_steps = 4
    >>> kernel = PathKernel(model, batch, base, None, alphas, [4, 5], ["mlp_post"])
    >>> target = Conductance("group", batch.groups, [4, 5], model.cfg, ["mlp_post"], torch.float32)
    >>> scalars = PathScalars(len(batch), len(alphas), torch.float32, model.device)
    >>> with frozen(model), torch.enable_grad():
    ...     _ = kernel.run(WindowPlan.grid(batch.lengths, len(alphas), 64),
    ...                    GridConductance(target, site_names([4, 5], ["mlp_post"])), scalars, input_grad=False)
    >>> target.sites["mlp_post"].shape  # [batch, 2, 4, d_mlp]
    torch.Size([2, 2, 4, 1536])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechir_nig.attribution.nig.plan import Window, WindowPlan
from mechir_nig.attribution.target import Target, TargetArgs, call_target, output_hook
from mechir_nig.models.checkpointing import checkpointed_blocks
from mechir_nig.models.protocol import AttributionModel
from mechir_nig.models.tokenization import PAD, content_groups, group_weights
from mechir_nig.sites import hook_name, site, site_of_hook, unit_width

REDUCE = ("token", "group", "neuron")
"""What the result holds per (pair, layer): every token, the token groups cls/query/sep/doc (+ prompt for a
templated family), or the sum."""


@contextmanager
def frozen(model: torch.nn.Module | AttributionModel) -> Iterator[None]:
    """Parameters without gradients for the duration (restored afterwards)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


# where each per-token site sits in a block's forward (post-LN BERT: resid_pre -> attention -> resid_mid ->
# MLP -> resid_post): the leaf of a graph without the input gradient must be an ancestor of every site
_LEAF = {
    "resid_pre": "resid_pre",
    "q": "resid_pre",
    "k": "resid_pre",
    "v": "resid_pre",
    "z": "z",
    "attn_out": "z",
    "resid_mid": "z",
    "mlp_pre": "mlp_pre",
    "mlp_post": "mlp_pre",
    "mlp_out": "mlp_pre",
    "resid_post": "mlp_pre",
    # LayerNorm sites sit after the attention (post-LN) or before it (pre-LN families): the block's input
    **{f"{ln}_{w}": "resid_pre" for ln in ("ln1", "ln2") for w in ("scale", "normalized")},
}
_DEPTH = {name: i for i, name in enumerate(("resid_pre", "z", "mlp_pre"))}


def site_names(layers: list[int], sites: Sequence[str]) -> list[str]:
    """Hook names whose conductance is computed: each site (``mechir_nig.sites`` names) at each layer.

    Example:
        >>> site_names([0, 1], ("mlp_post", "z"))
        ['blocks.0.mlp.hook_post', 'blocks.1.mlp.hook_post', 'blocks.0.attn.hook_z', 'blocks.1.attn.hook_z']
    """
    return [hook_name(name, layer) for name in sites for layer in layers]


def site_shape(cfg: Any, hook: str) -> tuple[int, ...]:
    """Per-token shape of a site's activation, e.g. ``(d_mlp,)``, ``(n_heads, d_head)``, ``(d_model,)``."""
    axes = site(site_of_hook(hook)[0]).axes[2:]
    return tuple(int(axis) if axis.isdigit() else int(getattr(cfg, axis)) for axis in axes)


def unit_shape(cfg: Any, name: str) -> tuple[int, ...]:
    """What one token of site ``name`` reduces to: ``(d_mlp,)``, ``(n_heads,)``, or ``()`` (positions)."""
    width = unit_width(name, cfg)
    return () if width is None else (width,)


def to_units(name: str, sums: Tensor) -> Tensor:
    """Per-token sums ``[n, p, *site_shape]`` summed to the site's units ``[n, p, *unit_shape]``."""
    s = site(name)
    if s.unit == "position":
        return sums.flatten(2).sum(-1)
    if s.unit == "head":  # [n, p, n_heads, d_head]
        return sums.flatten(3).sum(-1)
    return sums


def leaf_hook(layers: list[int], sites: Sequence[str]) -> str:
    """The hook made a leaf when the input gradient is not needed: the latest activation of the first
    requested layer that every requested site depends on (the backward stops there)."""
    leaf = min((_LEAF[name] for name in sites), key=_DEPTH.__getitem__)
    return hook_name(leaf, layers[0])


class _Workspace:
    """One reusable scratch buffer for the step differences (no fresh large allocation per layer)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.buf: Tensor | None = None

    def take(self, n: int, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        numel = n * int(torch.Size(shape).numel())
        if self.buf is None or self.buf.numel() < numel or self.buf.dtype != dtype:
            self.buf = torch.empty(numel, dtype=dtype, device=self.device)
        return self.buf[:numel].view(n, *shape)


class Conductance:
    """The result being accumulated: per (pair, layer, site) every token, the token groups or the sum.

    Shapes:
        ``sites[name]``: ``[batch, layer, pos, *unit]`` (``reduce="token"``), ``[batch, layer, 4, *unit]``
        (``"group"``: cls, query, sep, doc; padding excluded) or ``[batch, layer, *unit]`` (``"neuron"``),
        where ``unit`` is ``(d_mlp,)`` (``mlp_post``), ``(n_heads,)`` (``z``) or ``()`` (residual sites).
    """

    def __init__(
        self,
        reduce: str,
        groups: Int[Tensor, "batch pos"],
        layers: list[int],
        cfg: Any,
        sites: Sequence[str],
        dtype: torch.dtype,
    ):
        self.reduce = reduce
        self.dtype = dtype
        self.device = groups.device
        n, n_pos = groups.shape
        where = {"token": (n_pos,), "group": (len(content_groups(groups)),), "neuron": ()}[reduce]
        kw: dict[str, Any] = {"dtype": dtype, "device": groups.device}
        self.sites = {
            name: torch.zeros(n, len(layers), *where, *unit_shape(cfg, name), **kw) for name in sites
        }
        # hook name -> (its site's values, layer index)
        self.dest = {hook_name(name, layer): (name, li) for name in sites for li, layer in enumerate(layers)}
        if reduce == "group":  # [batch, pos, group]; the pad group is dropped
            self.weights = group_weights(groups, dtype)
        elif reduce == "neuron":
            self.weights = (groups != PAD).to(dtype)  # [batch, pos]

    def add(self, name: str, pairs: Tensor, sums: Tensor) -> None:
        """Add per-token window sums ``sums`` ``[n_local, p, *site_shape]`` of ``pairs`` at hook ``name``."""
        site_name, li = self.dest[name]
        sums = to_units(site_name, sums)
        dest = self.sites[site_name]
        p = sums.shape[1]
        if self.reduce == "token":
            dest[pairs, li, :p] += sums
        elif self.reduce == "group":
            dest[pairs, li] += torch.einsum("np...,npg->ng...", sums, self.weights[pairs, :p])
        else:
            dest[pairs, li] += torch.einsum("np...,np->n...", sums, self.weights[pairs, :p])

    def reset(self, pairs: Tensor) -> None:
        """Forget what was accumulated for ``pairs`` (their conductance is computed again)."""
        for values in self.sites.values():
            values[pairs] = 0


class PointBank:
    """Activations and gradients of computed points, kept so a refinement reuses them.

    ``slot_of[pair, point]`` (on the CPU; ``-1``: not kept) addresses rows of ``a[name]`` / ``g[name]``
    ``[slots, pos, *site_shape]`` (on the model's device, in its dtype: exactly what the forward and
    backward gave). Slots are looked up on the CPU, so keeping points never waits for the device.
    """

    def __init__(
        self,
        shapes: dict[str, tuple[int, ...]],
        slot_of: Int[Tensor, "batch n_table"],
        n_pos: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        self.slot_of = slot_of.cpu()
        self.device = device
        n_slots = int(self.slot_of.max()) + 1 if self.slot_of.numel() else 0
        kw: dict[str, Any] = {"dtype": dtype, "device": device}
        self.a = {k: torch.zeros(n_slots, n_pos, *s, **kw) for k, s in shapes.items()}
        self.g = {k: torch.zeros(n_slots, n_pos, *s, **kw) for k, s in shapes.items()}

    @staticmethod
    def bytes_per_point(shapes: dict[str, tuple[int, ...]], n_pos: int, dtype: torch.dtype) -> int:
        """Memory one kept point costs (activation and gradient of every site)."""
        item = torch.empty((), dtype=dtype).element_size()
        return sum(2 * n_pos * int(torch.Size(s).numel()) * item for s in shapes.values())

    def slots(self, pair_of_row: Tensor, points: Tensor) -> tuple[Tensor, Tensor | None]:
        """Device slots of the kept rows, and which rows those are (``None``: all of them)."""
        s = self.slot_of[pair_of_row.cpu(), points.cpu()]
        keep = s >= 0
        if bool(keep.all()):
            return s.to(self.device), None
        rows = keep.nonzero().flatten()
        return s[rows].to(self.device), rows.to(self.device)

    def put(self, name: str, slots: tuple[Tensor, Tensor | None], a: Tensor, g: Tensor) -> None:
        """Keep rows of ``a``/``g`` at ``slots`` (from ``PointBank.slots``)."""
        where, rows = slots
        if rows is not None:
            a, g = a[rows], g[rows]
        p = a.shape[1]
        self.a[name][where, :p] = a
        self.g[name][where, :p] = g

    def moved(self, slot_of: Int[Tensor, "batch n_table"]) -> PointBank:
        """A bank with slots ``slot_of``; points kept in both are copied over.

        This bank is emptied site by site as the new one fills, so memory peaks at about the larger of
        the two plus one site, not at both.
        """
        slot_of = slot_of.cpu()
        both = (slot_of >= 0) & (self.slot_of >= 0)
        src, dst = self.slot_of[both].to(self.device), slot_of[both].to(self.device)
        n_slots = int(slot_of.max()) + 1 if slot_of.numel() else 0
        new = PointBank({}, slot_of, 0, torch.float32, self.device)
        for k in list(self.a):
            for old, store in ((self.a, new.a), (self.g, new.g)):
                t = old.pop(k)
                store[k] = t.new_zeros(n_slots, *t.shape[1:])
                store[k][dst] = t[src]
                del t
        return new


@runtime_checkable
class Accumulator(Protocol):
    """What ``PathKernel.run`` hands activations and gradients to."""

    names: list[str]

    def begin(self, window: Window, pairs: Tensor, local: Tensor, points: Tensor) -> None: ...

    def consume(self, name: str, a: Tensor, g: Tensor) -> None: ...


def _pair_sums(weights: Tensor, x: Tensor) -> Tensor:
    """``[n_local, rows] @ [rows, ...]``: per-pair sums of rows (one GEMM; 0/1 weights select rows)."""
    inner = int(torch.Size(x.shape[1:]).numel())
    return (weights @ x.reshape(x.shape[0], inner)).view(weights.shape[0], *x.shape[1:])


class GridConductance:
    """Conductance over each pair's consecutive points: ``Σ_k ∂F/∂a(α_k) · (a(α_{k+1}) − a(α_k))``.

    A window that ends inside a pair leaves its last activation and gradient in ``carry``; the next
    window (``Window.continues``) closes that interval first, so window sizes never change results.
    With a ``bank``, the rows of pairs with a slot are also kept (for ``MidpointConductance``).
    """

    def __init__(self, target: Conductance, names: list[str], bank: PointBank | None = None):
        self.target = target
        self.names = names
        self.bank = bank
        self.carry: dict[str, tuple[Tensor, Tensor]] = {}
        self.workspace: _Workspace | None = None

    def begin(self, window: Window, pairs: Tensor, local: Tensor, points: Tensor) -> None:
        self.window, self.pairs = window, pairs
        rows = window.rows
        dtype = self.target.dtype
        # interval r (rows r, r + 1) counts for its pair unless r is the pair's last row here
        same = local[1:] == local[:-1]
        sel = torch.zeros(len(pairs), max(rows - 1, 0), dtype=dtype, device=pairs.device)
        sel[local[:-1], torch.arange(rows - 1, device=pairs.device)] = same.to(dtype)
        self.select = sel
        if self.bank is not None:
            self.slots = self.bank.slots(window.pair_of_row, window.points)
        if self.workspace is None:
            self.workspace = _Workspace(pairs.device)

    def consume(self, name: str, a: Tensor, g: Tensor) -> None:
        """Conductance of one site's window, called from the backward as soon as its gradient arrives."""
        acc = self.target.dtype
        w = self.window
        # step differences in the accumulation dtype (bf16/fp16 activations: exact differences)
        workspace: Any = self.workspace
        diff = workspace.take(a.shape[0] - 1, a.shape[1:], acc)
        if a.dtype == acc:
            torch.sub(a[1:], a[:-1], out=diff)
        else:
            diff.copy_(a[1:]).sub_(a[:-1])
        diff.mul_(g[:-1])
        sums = _pair_sums(self.select, diff)  # [n_local, p, *site]
        if w.continues:  # the window starts inside a pair: close its interval with the carried point
            a_prev, g_prev = self.carry[name]
            n = w.first_length
            sums[0, :n] += (a[0, :n].to(acc) - a_prev[:n].to(acc)) * g_prev[:n].to(acc)
        self.carry[name] = (a[-1].clone(), g[-1].clone())
        if self.bank is not None:
            self.bank.put(name, self.slots, a, g)
        self.target.add(name, self.pairs, sums)


class MidpointConductance:
    """Refine each pair's grid by its midpoints, reusing the kept points (``n_steps="auto"``).

    Halving interval ``[p, q]`` at ``m`` changes the conductance by
    ``∂F/∂a(p)·(a(m) − a(p)) + ∂F/∂a(m)·(a(q) − a(m)) − ∂F/∂a(p)·(a(q) − a(p))
    = (∂F/∂a(m) − ∂F/∂a(p)) · (a(q) − a(m))``: the gradient at the left end ``p`` and the activation at the
    right end ``q`` come from the ``bank``, the midpoint's own from the window, which is then kept too.
    A pass adds this for every midpoint, so a grid of ``n`` intervals becomes exactly the one of ``2n``.
    """

    def __init__(self, target: Conductance, names: list[str], bank: PointBank, half: Int[Tensor, " batch"]):
        self.target = target
        self.names = names
        self.bank = bank
        self.half = half.cpu()  # per pair: table positions from a midpoint to its neighbours

    def begin(self, window: Window, pairs: Tensor, local: Tensor, points: Tensor) -> None:
        self.pairs = pairs
        pair_of_row, at = window.pair_of_row, window.points  # on the CPU
        h = self.half[pair_of_row]
        slot_of, dev = self.bank.slot_of, self.bank.device
        self.left = slot_of[pair_of_row, at - h].to(dev)
        self.right = slot_of[pair_of_row, at + h].to(dev)
        self.own = self.bank.slots(pair_of_row, at)
        dtype = self.target.dtype
        sel = torch.zeros(len(pairs), window.rows, dtype=dtype, device=pairs.device)
        sel[local, torch.arange(window.rows, device=pairs.device)] = 1
        self.select = sel

    def consume(self, name: str, a: Tensor, g: Tensor) -> None:
        acc = self.target.dtype
        p = a.shape[1]
        right = self.bank.a[name][self.right, :p].to(acc)  # gathered copies
        right.sub_(a)
        right.mul_(g.to(acc) - self.bank.g[name][self.left, :p].to(acc))
        self.bank.put(name, self.own, a, g)
        sums = _pair_sums(self.select, right)
        self.target.add(name, self.pairs, sums)


class PathScalars:
    """``F`` and ``dF/dα = ∇_x F · (x − x')`` at every evaluated point, by pair and table position."""

    def __init__(self, n_pairs: int, n_table: int, dtype: torch.dtype, device: torch.device):
        self.score = torch.zeros(n_pairs, n_table, dtype=dtype, device=device)
        self.slope = torch.zeros(n_pairs, n_table, dtype=dtype, device=device)
        self.seen = torch.zeros(n_pairs, n_table, dtype=torch.bool, device=device)

    def record(self, pair_of_row: Tensor, points: Tensor, score: Tensor, slope: Tensor | None) -> None:
        self.score[pair_of_row, points] = score.detach().to(self.score.dtype)
        if slope is not None:
            self.slope[pair_of_row, points] = slope.to(self.slope.dtype)
            self.seen[pair_of_row, points] = True


def staged(
    windows: Iterable[Window], device: torch.device
) -> Iterator[tuple[Window, Tensor, Tensor, Tensor]]:
    """Each window with its ``pairs``, ``local`` and ``points`` on ``device``.

    On CUDA the next window's indices are copied from pinned host memory on a side stream
    (``non_blocking``) while the current window runs, so the host never waits on a pageable copy
    between windows; the compute stream waits on the copy's event only when it uses them. Elsewhere
    (CPU) it is the plain loop: ``.to(device)`` returns the plan's own tensors, nothing is copied.
    """
    if device.type != "cuda":
        for w in windows:
            yield w, w.pairs.to(device), w.local.to(device), w.points.to(device)
        return
    side = torch.cuda.Stream(device)

    def issue(w: Window) -> tuple[Window, tuple[Tensor, ...], Any]:
        with torch.cuda.stream(side):
            moved = tuple(t.pin_memory().to(device, non_blocking=True) for t in (w.pairs, w.local, w.points))
            done = torch.cuda.Event()
            done.record(side)
        return w, moved, done

    it = iter(windows)
    first = next(it, None)
    pending = issue(first) if first is not None else None
    while pending is not None:
        w, moved, done = pending
        following = next(it, None)
        pending = issue(following) if following is not None else None  # overlaps window w
        compute = torch.cuda.current_stream(device)
        compute.wait_event(done)
        for t in moved:
            t.record_stream(compute)  # allocated on the side stream, used on the compute stream
        yield w, moved[0], moved[1], moved[2]


class PathKernel:
    """Forward + backward over the path points of a plan, activations and gradients to an accumulator.

    Args:
        model: the hooked model (parameters frozen by the caller: ``frozen``).
        batch: the tokenized batch on the model's device.
        base: baseline word embeddings ``[batch, pos, d_embed]``.
        other: bi-encoder: the fixed side's embeddings ``[batch, d_model]``; else ``None``.
        alpha_table: the interpolation coefficients plans point into (accumulation dtype).
        layers: requested layers (sorted); ``sites``: requested site names (``mechir_nig.sites``).
        target: a score other than ``F`` (``target.py``), or ``None``.
        checkpoint: checkpoint the blocks above the first requested layer (``models.checkpointing``):
            lower peak memory for deep models, one more forward of those blocks, the same values.
    """

    def __init__(
        self,
        model: AttributionModel,
        batch: Any,
        base: Float[Tensor, "batch pos d_embed"],
        other: Float[Tensor, "batch d_model"] | None,
        alpha_table: Float[Tensor, " n_table"],
        layers: list[int],
        sites: Sequence[str],
        target: Target | None = None,
        *,
        checkpoint: bool = False,
    ):
        self.model = model
        self.checkpoint = checkpoint
        self.first_layer = layers[0] if layers else -1
        self.batch = batch
        self.base = base
        self.other = other
        self.alpha = alpha_table
        self.acc = alpha_table.dtype
        self.target = target
        self.output_hook = output_hook(model) if target is not None else None
        # the earliest activation whose gradient is needed becomes a leaf (without the input gradient)
        self.leaf_name = leaf_hook(layers, sites)

    def _checkpointed(self) -> AbstractContextManager[None]:
        """The blocks above the first requested layer checkpointed (``checkpoint``), else nothing."""
        if not self.checkpoint:
            return nullcontext()
        return checkpointed_blocks(self.model, after=self.first_layer)  # type: ignore[arg-type]

    def score(
        self,
        emb: Float[Tensor, "rows pos d_embed"],
        token_type_ids: Tensor,
        attention_mask: Tensor,
        other: Tensor | None,
        pair: Int[Tensor, " rows"],
    ) -> Float[Tensor, " rows"]:
        """``F`` of the rows, or the target's value (one forward either way)."""
        m = self.model
        if self.target is None:
            return m.score_embeds(emb, token_type_ids, attention_mask, other)
        box: list[Tensor] = []
        hooks = [(self.output_hook, lambda x, hook: box.append(x))] if self.output_hook else []
        with m.hooks(fwd_hooks=hooks):
            f = m.score_embeds(emb, token_type_ids, attention_mask, other)
        return call_target(self.target, TargetArgs(f, box[-1] if box else None, other, pair))

    def run(
        self,
        plan: WindowPlan,
        accumulator: Any,  # an Accumulator, or None when only scores and input gradients are wanted
        scalars: PathScalars,
        *,
        input_grad: bool,
        progress: bool = False,
        desc: str = "NIG",
    ) -> int:
        """Evaluate every point of ``plan``; returns the number of points (forward + backward rows)."""
        m, batch, acc = self.model, self.batch, self.acc
        dev = m.device
        names = accumulator.names if accumulator is not None else []
        store: dict[str, Tensor] = {}
        leaf_box: list[Tensor] = []

        def make_leaf(x: Tensor, hook: Any) -> Tensor:
            leaf_box.append(x.detach().requires_grad_(True))
            return leaf_box[-1]

        def keep(x: Tensor, hook: Any) -> None:
            # a tensor hook, not autograd.grad(inputs=activations): capturing non-leaf inputs costs ~20%
            store[hook.name] = x
            x.register_hook(
                lambda grad, name=hook.name: accumulator.consume(name, store.pop(name).detach(), grad)
            )

        windows: Any = plan
        if progress:
            from tqdm.auto import tqdm

            windows = tqdm(plan, desc=desc, unit="window")
        for w, pairs, local, points in staged(windows, dev):
            p_w = w.length
            with torch.no_grad():
                x_w = m.word_embeddings(batch.input_ids[pairs, :p_w])
                b_w = self.base[pairs, :p_w]
                b_acc, d_acc = b_w.to(acc), (x_w - b_w).to(acc)
                # kept in the accumulation dtype: the model sums and normalises float32 word embeddings
                # in float32 (embed_tokens), so a bf16 model does not merge nearby alphas
                emb = b_acc[local] + self.alpha[points][:, None, None] * d_acc[local]
            tt = batch.token_type_ids[pairs, :p_w][local]
            mask = batch.attention_mask[pairs, :p_w][local]
            oth = self.other[pairs][local] if self.other is not None else None
            pair_rows = pairs[local]
            store.clear()
            if accumulator is not None:
                accumulator.begin(w, pairs, local, points)
            hooks = [(n, keep) for n in names]
            if input_grad:
                with m.hooks(fwd_hooks=hooks), self._checkpointed():
                    start = emb.requires_grad_(True)
                    f = self.score(start, tt, mask, oth, pair_rows)
            elif names:
                # the graph starts at the first requested layer's activation that every site depends on
                # (leaf_hook), made a leaf: nothing below it is saved for backward and the backward stops there
                with m.hooks(fwd_hooks=[(self.leaf_name, make_leaf)] + hooks), self._checkpointed():
                    f = self.score(emb, tt, mask, oth, pair_rows)
                start = leaf_box.pop()
            else:
                with torch.no_grad():
                    f = self.score(emb, tt, mask, oth, pair_rows)
                scalars.record(pair_rows, points, f, None)
                continue
            (g_start,) = torch.autograd.grad(f.sum(), start)
            for name in list(store):  # activations that got no gradient (do not reach the score)
                a = store.pop(name)
                accumulator.consume(name, a.detach(), torch.zeros_like(a))
            slope = (g_start.to(acc) * d_acc[local]).sum((1, 2)) if input_grad else None
            scalars.record(pair_rows, points, f, slope)
            del f, start, g_start, emb
        return plan.total
