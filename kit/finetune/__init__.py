"""kit.finetune: fine-tuning and its evaluation, apart from the training loop (kit.train) it runs on.

- :mod:`kit.finetune.finetune`: :func:`finetune` (one call per run; the steps run in
  :func:`kit.train.train`) and :class:`FinetuneResult`;
- :mod:`kit.finetune.config`, :mod:`kit.finetune.data`, :mod:`kit.finetune.task`: its settings, data,
  model and loss;
- :mod:`kit.finetune.selection`: validation, model selection and early stopping;
- :mod:`kit.finetune.evaluate`: test metrics (Dice, HD95, AUC ...);
- :mod:`kit.finetune.study`, :mod:`kit.finetune.stats`, :mod:`kit.finetune.probes`: the
  label-efficiency study, its statistics and the linear probes;
- :mod:`kit.finetune.slice_task`: the 2D task on curated slices.

Example:
    >>> from kit.finetune import FinetuneConfig
    >>> FinetuneConfig(task="classification", target="tumor_present").task
    'classification'
"""

from kit.finetune.config import TASKS, FinetuneConfig
from kit.finetune.data import (
    ClassificationVolumeDataset,
    LabelledCropDataset,
    class_table,
    classification_input,
    is_missing,
)
from kit.finetune.finetune import FinetuneResult, finetune
from kit.finetune.task import DiceBCELoss, build_finetune_model, freeze_encoder
from kit.models.finetuned import ClassificationModel, load_finetuned

__all__ = [
    "TASKS",
    "FinetuneConfig",
    "FinetuneResult",
    "finetune",
    "build_finetune_model",
    "freeze_encoder",
    "DiceBCELoss",
    "LabelledCropDataset",
    "ClassificationVolumeDataset",
    "classification_input",
    "class_table",
    "is_missing",
    "ClassificationModel",
    "load_finetuned",
]
