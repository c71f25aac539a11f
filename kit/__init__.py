"""brainfm-kit: self-supervised 3D foundation models of brain MRI, notebook first.

Subpackages: ``kit.data`` (synthetic cohorts, manifests, curation, cache), ``kit.models``
(backbones by name, heads, checkpoints, weight transfer, inference), ``kit.ssl`` (one module per
objective), ``kit.train`` (one training loop: pretraining and fine-tuning), ``kit.finetune``
(fine-tuning tasks, evaluation, the label-efficiency study), ``kit.devices``,
``kit.explain`` (saliency), ``kit.viz`` (figures and widgets) and
``kit.pipeline`` (papermill runner behind ``kit reproduce``).
"""

__version__ = "0.1.0"
