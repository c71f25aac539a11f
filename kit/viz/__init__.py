"""kit.viz: static orthogonal views and curation plots (widgets and 3D viewers come later)."""

from kit.viz.static import BRATS_COLORS, STROKE_COLORS, label_colors_for, plot_entropy, plot_kept_dropped, plot_loss_curves, plot_orthogonal, plot_retained_fraction, plot_ssl_preview, plot_subjects

__all__ = ["BRATS_COLORS", "STROKE_COLORS", "label_colors_for", "plot_entropy", "plot_kept_dropped", "plot_loss_curves", "plot_orthogonal", "plot_retained_fraction", "plot_ssl_preview", "plot_subjects"]
