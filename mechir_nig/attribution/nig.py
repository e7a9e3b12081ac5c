"""Neuron Integrated Gradients: total conductance of every MLP neuron, all layers in one pass.

Vast et al., "Which Neurons Matter in IR? Applying Integrated Gradients-based Methods to Understand
Cross-Encoders", ICTIR 2024 (arXiv:2406.19309). For a neuron with activation ``a`` (``hook_post``)
along the straight path ``γ(α) = x' + α (x − x')`` in word-embedding space, the NIG is
``∫ ∂F/∂a · da/dα dα ≈ Σ_{k<n} ∂F/∂a(α_k) · (a(α_{k+1}) − a(α_k))`` over the ``n + 1`` points of a rule
— exactly what ``captum.attr.LayerConductance`` computes for one layer.

The kernel flattens the (pair, step) points of many pairs into one batch, sorted by pair length so a
forward pads little, and walks them in windows of ``internal_batch_size`` points: one forward caches
every requested ``blocks.{l}.mlp.hook_post``, one backward (parameters frozen: no weight gradients;
it stops at the first requested layer) gives every gradient, and differences along the step axis
give the conductances. A window may end inside a pair: the last point's activation and gradient are
carried to the next window, so window sizes never change results and memory is bounded by the
window, not by ``n_steps``.

Example:
    >>> attr = neuron_integrated_gradients(ce, ["what is a neuron"], ["A neuron is a cell."], n_steps=32)
    >>> attr.per_neuron().shape  # [batch, layer, d_mlp]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechir_nig.attribution.baselines import baseline_embeddings, check_baseline
from mechir_nig.attribution.result import NeuronAttribution
from mechir_nig.attribution.rules import alphas as rule_alphas
from mechir_nig.attribution.rules import check_n_steps, check_rule
from mechir_nig.attribution.rules import weights as rule_weights
from mechir_nig.errors import InputError
from mechir_nig.models.protocol import AttributionModel
from mechir_nig.models.tokenization import DOC, QUERY, PairBatch, TextBatch

DEFAULT_WINDOW_TOKENS = 8192
"""Default window: ``max(1, 8192 // longest_pair)`` points (bounded memory, large enough GEMMs)."""


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """Parameters without gradients for the duration (restored afterwards)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


class _Workspace:
    """One reusable scratch buffer for the step differences (no fresh large allocation per layer)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.buf: Tensor | None = None

    def take(self, n: int, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:  # noqa: D102
        numel = n * int(torch.Size(shape).numel())
        if self.buf is None or self.buf.numel() < numel or self.buf.dtype != dtype:
            self.buf = torch.empty(numel, dtype=dtype, device=self.device)
        return self.buf[:numel].view(n, *shape)


def _reduce(kind: str, contrib: Tensor) -> Tensor:
    """Per-point conductance: neurons as they are, heads summed over ``d_head``."""
    if kind == "hook_z":
        return contrib.sum(-1)
    return contrib


def check_layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    if layers is None:
        return list(range(n_layers))
    if isinstance(layers, int):
        layers = [layers]
    out = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
            raise InputError(f"layer {layer!r} is out of range; layers must be ints in 0..{n_layers - 1}")
        out.append(layer)
    if len(set(out)) != len(out):
        raise InputError(f"layers {list(layers)} repeat a layer; give each layer once")
    if not out:
        raise InputError("layers is empty; pass None for all layers or a list of layer indices")
    return sorted(out)


class NeuronIntegratedGradients:
    """NIG for any model with the attribution protocol (``HookedCrossEncoder``, ``HookedBiEncoder``).

    Args:
        model: the hooked model (its parameters are frozen while attributing); it must implement
            ``mechir_nig.models.protocol.AttributionModel``.
    """

    def __init__(self, model: AttributionModel):
        if not isinstance(model, AttributionModel):
            raise InputError(
                f"model must be a hooked model with the attribution protocol (HookedCrossEncoder, "
                f"HookedBiEncoder), got {type(model).__name__}"
            )
        self.model = model
        self.is_bi = not model.pairwise

    # ------------------------------------------------------------------------------------------
    def _score(self, tt, mask, other, *, input_embeds) -> Tensor:
        return self.model.score_embeds(input_embeds, tt, mask, other)

    def attribute(
        self,
        batch: PairBatch | TextBatch,
        *,
        other: Float[Tensor, "batch d_model"] | None = None,
        n_steps: int = 50,
        baseline: str | Tensor = "pad",
        method: str = "riemann_trapezoid",
        layers: Sequence[int] | None = None,
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
        heads: bool = False,
        progress: bool = False,
    ) -> NeuronAttribution:
        """Attribute a tokenized batch.

        Args:
            batch: a ``PairBatch`` (cross-encoder) or the interpolated side's ``TextBatch`` (bi-encoder).
            other: bi-encoder only: the fixed side's embeddings ``[batch, d_model]``.
            n_steps: number of intervals (``n_steps + 1`` points).
            baseline: a name in ``baselines.BASELINES`` or a ``[batch, pos, d_model]`` tensor.
            method: integration rule (``rules.RULES``).
            layers: layers to attribute (default all).
            internal_batch_size: points per forward/backward (default ``8192 // longest pair``).
            return_convergence_delta: also integrate the input gradient for the completeness check:
                ``Σ_k w_k ∇_x F(γ(α_k))·(x − x') − (F(x) − F(x'))`` with the rule's quadrature weights.
            heads: also return attention-head conductance (``attn.hook_z`` summed over ``d_head``).
            progress: show a progress bar over windows.

        Returns:
            NeuronAttribution with ``values`` ``[batch, layer, pos, d_mlp]``.
        """
        m = self.model
        n_steps = check_n_steps(n_steps)
        method = check_rule(method)
        baseline = check_baseline(baseline)
        layer_list = check_layers(layers, m.cfg.n_layers)
        if internal_batch_size is not None and (
            isinstance(internal_batch_size, bool)
            or not isinstance(internal_batch_size, int)
            or internal_batch_size < 1
        ):
            raise InputError(f"internal_batch_size must be None or an int >= 1, got {internal_batch_size!r}")
        m.check_attribution_batch(batch, other)
        if other is not None:
            other = other.to(m.device, m.cfg.dtype)
        batch = batch.to(m.device)
        alphas = rule_alphas(method, n_steps + 1)
        if torch.is_inference_mode_enabled():
            raise InputError("NIG needs gradients: call it outside torch.inference_mode()")
        with torch.no_grad():
            base = baseline_embeddings(m, batch.input_ids, batch.groups, baseline)
        with frozen(m), torch.enable_grad():
            out = self._kernel(
                batch,
                base,
                other,
                alphas,
                method,
                layer_list,
                internal_batch_size,
                return_convergence_delta,
                heads,
                progress,
            )
        values, head_values, point_scores, ig_sum = out
        scores, base_scores = self._end_scores(batch, base, other, point_scores, alphas, internal_batch_size)
        delta = None
        if return_convergence_delta:
            delta = ig_sum - (scores - base_scores)
        tok = m.tokenizer
        tokens = (
            [
                tok.convert_ids_to_tokens(row[: int(n)].tolist())
                for row, n in zip(batch.input_ids, batch.lengths)
            ]
            if tok is not None
            else []
        )
        meta = {
            "model": m.cfg.model_name,
            "n_steps": n_steps,
            "method": method,
            "baseline": baseline if isinstance(baseline, str) else "tensor",
            "alphas": alphas,
        }
        return NeuronAttribution(
            values=values,
            layers=layer_list,
            groups=batch.groups.cpu(),
            input_ids=batch.input_ids.cpu(),
            scores=scores,
            baseline_scores=base_scores,
            convergence_delta=delta,
            head_values=head_values,
            tokens=tokens,
            meta=meta,
            point_scores=point_scores,
            truncated=batch.truncated.cpu(),
        )

    # ------------------------------------------------------------------------------------------
    def _end_scores(self, batch, base, other, point_scores, alphas, chunk):
        """``F(x)`` and ``F(x')``: read off the path when the rule has points at 0 and 1, else computed."""
        need = [a for a in (0.0, 1.0) if a not in (alphas[0], alphas[-1])]
        found = {}
        if alphas[0] == 0.0:
            found[0.0] = point_scores[:, 0]
        if alphas[-1] == 1.0:
            found[1.0] = point_scores[:, -1]
        if need:
            rows = max(1, (chunk or DEFAULT_WINDOW_TOKENS // batch.input_ids.shape[1]))
            with torch.no_grad():
                x = self.model.word_embeddings(batch.input_ids)
                for a in need:
                    emb = x if a == 1.0 else base
                    parts = []
                    for i in range(0, len(batch), rows):
                        sl = slice(i, i + rows)
                        o = other[sl] if other is not None else None
                        parts.append(
                            self._score(
                                batch.token_type_ids[sl], batch.attention_mask[sl], o, input_embeds=emb[sl]
                            )
                        )
                    found[a] = torch.cat(parts).to(point_scores.dtype).cpu()
        return found[1.0], found[0.0]

    def _kernel(self, batch, base, other, alphas, method, layers, chunk, want_delta, heads, progress):
        m, cfg = self.model, self.model.cfg
        n_pairs, n_pos = batch.input_ids.shape
        n_points = len(alphas)
        lengths = batch.lengths.cpu()
        order = torch.argsort(lengths, descending=True, stable=True)
        window = chunk or max(1, DEFAULT_WINDOW_TOKENS // int(lengths.max()))
        total = n_pairs * n_points
        dev = m.device
        acc = cfg.acc_dtype  # bf16/fp16 accumulate in fp32
        # path coefficients and weights in the accumulation dtype (bf16 would merge nearby alphas)
        alpha_t = torch.tensor(alphas, dtype=acc, device=dev)
        weight_t = torch.tensor(rule_weights(method, n_points), dtype=acc, device=dev)
        names = [f"blocks.{layer}.mlp.hook_post" for layer in layers]
        if heads:
            names += [f"blocks.{layer}.attn.hook_z" for layer in layers]
        n_l = len(layers)
        values = torch.zeros(n_pairs, n_l, n_pos, cfg.d_mlp, dtype=acc, device=dev)
        head_values = torch.zeros(n_pairs, n_l, n_pos, cfg.n_heads, dtype=acc, device=dev) if heads else None
        point_scores = torch.zeros(n_pairs, n_points, dtype=acc, device=dev)
        ig_sum = torch.zeros(n_pairs, dtype=acc, device=dev)
        workspace = _Workspace(dev)
        carry: dict[str, tuple[Tensor, Tensor]] = {}
        store: dict[str, Tensor] = {}

        win: dict[str, Any] = {}  # the current window's layout, read by `consume`
        # the earliest activation whose gradient is needed becomes a leaf (see below)
        leaf_name = f"blocks.{layers[0]}." + ("attn.hook_z" if heads else "mlp.hook_pre")
        leaf_box: list[Tensor] = []

        def make_leaf(x: Tensor, hook) -> Tensor:
            leaf_box.append(x.detach().requires_grad_(True))
            return leaf_box[-1]

        def consume(name: str, g: Tensor) -> None:
            """Conductance of one layer's window, as soon as its gradient arrives in the backward.

            Done inside the backward so the activation and its gradient are freed at once: peak memory
            stays that of a plain forward + backward (and the allocator reuses memory instead of faulting).
            """
            a = store.pop(name).detach()
            kind = name.rsplit(".", 1)[-1]
            dest = (head_values if kind == "hook_z" else values)[:, layers.index(int(name.split(".")[1]))]
            # step differences in the accumulation dtype (bf16/fp16 activations: exact differences)
            diff = workspace.take(a.shape[0] - 1, a.shape[1:], acc)
            if a.dtype == acc:
                torch.sub(a[1:], a[:-1], out=diff)
            else:
                diff.copy_(a[1:]).sub_(a[:-1])
            diff.mul_(g[:-1])
            row = 0
            for j, c in enumerate(win["counts"]):  # rows of local pair j; its intervals: all but its last row
                if c > 1:
                    dest[win["glob"][j], : win["p_w"]] += _reduce(
                        kind, diff[row : row + c - 1].sum(0, dtype=acc)
                    )
                row += c
            if win["continues"]:  # the window starts inside a pair: close its interval with the carried point
                a_prev, g_prev = carry[name]
                n_tok = win["n_tok"]
                c0 = (a[0, :n_tok].to(acc) - a_prev[:n_tok].to(acc)) * g_prev[:n_tok].to(acc)
                dest[win["glob"][0], :n_tok] += _reduce(kind, c0.to(acc))
            carry[name] = (a[-1].clone(), g[-1].clone())

        def keep(x: Tensor, hook) -> None:
            # a tensor hook, not autograd.grad(inputs=activations): capturing non-leaf inputs costs ~20%
            store[hook.name] = x
            x.register_hook(lambda grad, name=hook.name: consume(name, grad))

        starts = range(0, total, window)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="NIG", unit="window")
        for s in starts:
            e = min(s + window, total)
            idx = torch.arange(s, e)
            pj, k = idx // n_points, idx % n_points
            glob = order[int(pj[0]) : int(pj[-1]) + 1]
            lp = (pj - pj[0]).to(dev)
            p_w = int(lengths[glob].max())
            g_dev = glob.to(dev)
            win.update(
                glob=glob.tolist(),
                p_w=p_w,
                counts=torch.unique_consecutive(pj, return_counts=True)[1].tolist(),
                continues=int(k[0]) > 0,
                n_tok=int(lengths[glob[0]]),
            )
            with torch.no_grad():
                x_w = m.word_embeddings(batch.input_ids[g_dev, :p_w])
                b_w = base[g_dev, :p_w]
                b_acc, d_acc = b_w.to(acc), (x_w - b_w).to(acc)
                # kept in the accumulation dtype: the model sums and normalises float32 word embeddings
                # in float32 (embed_tokens), so a bf16 model does not merge nearby alphas
                emb = b_acc[lp] + alpha_t[k.to(dev)][:, None, None] * d_acc[lp]
            tt = batch.token_type_ids[g_dev, :p_w][lp]
            mask = batch.attention_mask[g_dev, :p_w][lp]
            oth = other[g_dev][lp] if other is not None else None
            store.clear()
            if want_delta:
                with m.hooks(fwd_hooks=[(n, keep) for n in names]):
                    start = emb.requires_grad_(True)
                    f = self._score(tt, mask, oth, input_embeds=emb)
            else:
                # the graph starts at the first requested layer's MLP pre-activation (attn.hook_z with
                # heads), made a leaf: nothing below it is saved for backward and the backward stops there
                with m.hooks(fwd_hooks=[(leaf_name, make_leaf)] + [(n, keep) for n in names]):
                    f = self._score(tt, mask, oth, input_embeds=emb)
                start = leaf_box.pop()
            (g_start,) = torch.autograd.grad(f.sum(), start)
            for name in list(store):  # activations that got no gradient (do not reach the score)
                consume(name, torch.zeros_like(store[name]))
            if want_delta:  # input-level IG: sum_k w_k grad_x F(x_k) . (x - x')
                per_point = (g_start.to(acc) * d_acc[lp]).sum((1, 2)) * weight_t[k.to(dev)]
                ig_sum.index_add_(0, g_dev[lp], per_point.to(acc))
            point_scores[g_dev[lp], k.to(dev)] = f.detach().to(acc)
            del f, start, g_start, emb
        if head_values is not None:
            head_values = head_values.cpu()
        return values.cpu(), head_values, point_scores.cpu(), ig_sum.cpu()


def neuron_integrated_gradients(
    model: AttributionModel,
    queries: Sequence[str],
    docs: Sequence[str],
    *,
    n_steps: int = 50,
    baseline: str | Tensor = "pad",
    method: str = "riemann_trapezoid",
    layers: Sequence[int] | None = None,
    internal_batch_size: int | None = None,
    return_convergence_delta: bool = False,
    heads: bool = False,
    side: str | None = None,
    max_length: int | None = None,
    progress: bool = False,
) -> NeuronAttribution:
    """NIG of every MLP neuron for each (query, document) pair.

    For a bi-encoder, ``side`` ("doc", the default, or "query") is the text interpolated from the
    baseline; the other side's embedding is held fixed. See ``NeuronIntegratedGradients.attribute``
    for the other arguments.

    Shapes:
        ``attr.values``: ``[batch, layer, pos, d_mlp]``; ``attr.by_group()``: ``[batch, layer, 4, d_mlp]``.
    """
    nig = NeuronIntegratedGradients(model)
    batch, other = model.attribution_inputs(queries, docs, side=side, max_length=max_length)
    attr = nig.attribute(
        batch,
        other=other,
        n_steps=n_steps,
        baseline=baseline,
        method=method,
        layers=layers,
        internal_batch_size=internal_batch_size,
        return_convergence_delta=return_convergence_delta,
        heads=heads,
        progress=progress,
    )
    if nig.is_bi:
        side = side or "doc"
        if side == "query":
            attr.groups = torch.where(attr.groups == DOC, QUERY, attr.groups)
        attr.meta["side"] = side
    return attr
