"""kit.viz: static orthogonal views, curation and result plots, the ipywidgets explorer, optional 3D viewers."""

from kit.viz.static import (BRATS_COLORS, STROKE_COLORS, label_colors_for, plot_entropy, plot_first_layer,
                            plot_heatmap_over_anatomy, plot_kept_dropped, plot_loss_curves, plot_orthogonal,
                            plot_retained_fraction, plot_slice_heatmap, plot_ssl_preview, plot_subjects)

__all__ = ["BRATS_COLORS", "STROKE_COLORS", "label_colors_for", "plot_entropy", "plot_first_layer",
           "plot_heatmap_over_anatomy", "plot_kept_dropped", "plot_loss_curves", "plot_orthogonal",
           "plot_retained_fraction", "plot_slice_heatmap", "plot_ssl_preview", "plot_subjects"]
