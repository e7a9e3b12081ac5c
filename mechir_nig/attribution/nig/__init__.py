"""Neuron Integrated Gradients (Vast et al., ICTIR 2024, arXiv:2406.19309), in parts.

- ``plan.py``: which (pair, point) items go into which forward/backward window (``WindowPlan``).
- ``kernel.py``: one forward + one backward per window; accumulators turn activations and gradients
  into conductances (``GridConductance``, ``MidpointConductance``), reduced per token, group or neuron.
- ``auto.py``: ``n_steps="auto"``, nested trapezoid grids refined per pair to a completeness tolerance.
- ``api.py``: ``NeuronIntegratedGradients`` and ``neuron_integrated_gradients``.

Example:
    >>> attr = neuron_integrated_gradients(ce, ["what is a neuron"], ["A neuron is a cell."], n_steps=8)
    >>> attr.per_neuron().shape  # [batch, layer, d_mlp]
    torch.Size([1, 6, 1536])
"""

from mechir_nig.attribution.nig.api import (
    NeuronIntegratedGradients,
    check_reduce,
    neuron_integrated_gradients,
)
from mechir_nig.attribution.nig.auto import ConvergenceWarning
from mechir_nig.attribution.nig.kernel import REDUCE, frozen
from mechir_nig.attribution.nig.plan import DEFAULT_WINDOW_TOKENS, Window, WindowPlan

__all__ = [
    "DEFAULT_WINDOW_TOKENS",
    "REDUCE",
    "ConvergenceWarning",
    "NeuronIntegratedGradients",
    "Window",
    "WindowPlan",
    "check_reduce",
    "frozen",
    "neuron_integrated_gradients",
]
