"""kit.ssl: self-supervised objectives, one module each, all driven by the same training loop.

Example:
    >>> from kit.ssl import list_objectives
    >>> list_objectives()
    ['anatomy_hierarchy', 'cross_contrast', 'mim', 'moco_v3', 'swin_trio']
"""

from importlib import import_module

from kit.ssl.base import (
    SSLObjective,
    check_batch,
    create_objective,
    gather_across_ranks,
    list_objectives,
    register_objective,
    sample_rng,
)
# The built-in objectives, each the name of the module that registers it. A plain literal: the command line
# reads it from this file's source without importing torch (kit.cli.constants).
OBJECTIVES = ("swin_trio", "cross_contrast", "mim", "anatomy_hierarchy", "moco_v3")

for _name in OBJECTIVES:
    import_module(f"kit.ssl.{_name}")  # registers the objective
from kit.ssl.moco_v3 import MoCoV3
from kit.ssl.swin_trio import SwinTrio, make_views

__all__ = [
    "OBJECTIVES",
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
