"""kit.ssl: self-supervised objectives, one module each, all driven by the same training loop.

Example:
    >>> from kit.ssl import list_objectives
    >>> list_objectives()
    ['anatomy_hierarchy', 'cross_contrast', 'mim', 'moco_v3', 'swin_trio']
"""

from kit.ssl.base import (
    SSLObjective,
    check_batch,
    create_objective,
    gather_across_ranks,
    list_objectives,
    register_objective,
    sample_rng,
)
from kit.ssl import swin_trio  # noqa: F401  (registers 'swin_trio')
from kit.ssl import cross_contrast  # noqa: F401  (registers 'cross_contrast')
from kit.ssl import mim  # noqa: F401  (registers 'mim')
from kit.ssl import anatomy_hierarchy  # noqa: F401  (registers 'anatomy_hierarchy')
from kit.ssl import moco_v3  # noqa: F401  (registers 'moco_v3')
from kit.ssl.moco_v3 import MoCoV3
from kit.ssl.swin_trio import SwinTrio, make_views

__all__ = [
    "SSLObjective",
    "check_batch",
    "create_objective",
    "gather_across_ranks",
    "list_objectives",
    "register_objective",
    "sample_rng",
    "MoCoV3",
    "SwinTrio",
    "make_views",
]
