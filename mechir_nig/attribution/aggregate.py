"""Former home of collection-scale NIG; kept so existing imports work.

The statistics (``CollectionAttribution``, ``top_neurons``) live in ``mechir_nig.attribution.stats``,
the orchestrator ``attribute_collection`` in ``mechir_nig.experiments.attribute``.
"""

from mechir_nig.attribution.stats import (
    GROUP_AXIS,
    LABELS,
    SCHEMES,
    CollectionAttribution,
    top_neurons,
)
from mechir_nig.experiments.attribute import attribute_collection

__all__ = ["GROUP_AXIS", "LABELS", "SCHEMES", "CollectionAttribution", "attribute_collection", "top_neurons"]
