"""kit.explain: saliency maps of 3D classifiers/segmenters and how well they sit on the lesion.

- :mod:`kit.explain.saliency`: :func:`saliency_map` (vanilla, smoothgrad, integrated_gradients,
  gradcam, gradcampp, occlusion), :class:`SegmentationScore`, :func:`default_target_layer`.
- :mod:`kit.explain.localisation`: mass in lesion, pointing game, random baselines, tables with
  bootstrap confidence intervals.
- :mod:`kit.explain.slices`: the same for the 2D slice classifiers of a run pretrained on slices
  (test slices, cases, maps on the classifier's grid).
"""

from kit.explain.localisation import (
    LOCALISATION_COLUMNS,
    dilate,
    localisation_figures,
    localisation_table,
    mass_in_region,
    pointing_game,
    random_baseline,
    score_saliency,
    summarise_localisation,
)
from kit.explain.saliency import SALIENCY_METHODS, SegmentationScore, default_target_layer, saliency_map

__all__ = [
    "LOCALISATION_COLUMNS",
    "SALIENCY_METHODS",
    "SegmentationScore",
    "default_target_layer",
    "dilate",
    "localisation_figures",
    "localisation_table",
    "mass_in_region",
    "pointing_game",
    "random_baseline",
    "saliency_map",
    "score_saliency",
    "summarise_localisation",
]
