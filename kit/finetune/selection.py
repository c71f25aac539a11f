"""Model selection and early stopping on a fixed validation split (never the test set).

Fine-tuning with a fixed step budget either stops before convergence or overfits a few labelled
subjects; both bias a label-efficiency curve. :func:`kit.finetune.finetune` therefore
evaluates the model every ``val_every`` steps on validation subjects held out from training and
from the test set, keeps the best weights (:class:`ModelSelection`) and stops after ``patience``
validations without improvement. Validation uses the same inference as the test evaluation
(whole-volume at 3 mm), so one validation of a few subjects costs about as much as a few steps.

Scores are tuples compared lexicographically, higher is better:

- segmentation: ``(dice_mean,)`` over the validation subjects;
- classification: ``(auc, -loss)``: AUC first (accuracy when the split holds one class only),
  ties (common with 6-10 validation subjects, where AUC saturates at 1) broken by the lower
  validation cross-entropy, so the better calibrated model wins.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["ModelSelection", "segmentation_validator", "classification_validator", "binary_cross_entropy"]

Validator = Callable[[nn.Module], tuple[tuple[float, ...], dict]]


class ModelSelection:
    """Keeps the best weights seen so far and decides when to stop.

    Args:
        patience: validations without improvement before :attr:`should_stop` turns True (0 = never).
        min_delta: an improvement must beat the best first score component by more than this.
        min_steps: :attr:`should_stop` stays False while the last validation's step is below this
            (validations before it still count, as in Lightning's ``min_steps``).

    ``first_score`` keeps the first validation's score (the head start an initialisation gives
    before any fine-tuning has had time to act); ``last_step`` the step of the last validation.

    Example:
        >>> net = nn.Linear(2, 1)
        >>> sel = ModelSelection(patience=2)
        >>> [sel.update(net, step, (score,)) for step, score in [(10, 0.5), (20, 0.7), (30, 0.6), (40, 0.65)]]
        [True, True, False, False]
        >>> sel.best_step, sel.best_score, sel.should_stop, sel.first_score
        (20, (0.7,), True, (0.5,))
        >>> late = ModelSelection(patience=1, min_steps=50)
        >>> [late.update(net, step, (0.5,)) and late.should_stop for step in (10, 20)], late.should_stop
        ([False, False], False)
        >>> _ = late.update(net, 50, (0.5,)); late.should_stop
        True
    """

    def __init__(self, patience: int = 0, min_delta: float = 0.0, min_steps: int = 0) -> None:
        self.patience, self.min_delta, self.min_steps = int(patience), float(min_delta), int(min_steps)
        self.last_step: int | None = None
        self.first_score: tuple[float, ...] | None = None
        self.best_score: tuple[float, ...] | None = None
        self.best_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad = 0

    def _better(self, score: tuple[float, ...]) -> bool:
        if self.best_score is None:
            return True
        if not all(math.isfinite(v) for v in score):
            return False
        if not all(math.isfinite(v) for v in self.best_score):
            return True
        head, best_head = score[0], self.best_score[0]
        if head > best_head + self.min_delta:
            return True
        return len(score) > 1 and abs(head - best_head) <= self.min_delta and score[1:] > self.best_score[1:]

    def update(self, model: nn.Module, step: int, score: Sequence[float]) -> bool:
        """Record a validation at ``step``; copy the weights (to CPU) when it is the best so far.

        Returns:
            True when ``score`` is the new best.
        """
        score = tuple(float(v) for v in score)
        self.last_step = int(step)
        if self.first_score is None:
            self.first_score = score
        if self._better(score):
            self.best_score, self.best_step, self.bad = score, int(step), 0
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return True
        self.bad += 1
        return False

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` validations in a row brought no improvement, at ``min_steps`` or later."""
        reached = self.last_step is not None and self.last_step >= self.min_steps
        return self.patience > 0 and self.bad >= self.patience and reached

    def restore(self, model: nn.Module) -> None:
        """Load the best weights back into ``model`` (no-op before the first validation)."""
        if self.best_state is not None:
            model.load_state_dict(copy.deepcopy(self.best_state))


def binary_cross_entropy(y_true: Sequence[int], scores: Any) -> float:
    """Mean cross-entropy of class probabilities: binary (N,) positive-class scores or (N, K).

    Example:
        >>> round(binary_cross_entropy([0, 1], [0.5, 0.5]), 4)
        0.6931
    """
    y = np.asarray(y_true, dtype=np.int64)
    s = np.clip(np.asarray(scores, dtype=np.float64), 1e-7, 1 - 1e-7)
    if s.ndim == 1:
        return float(-np.mean(y * np.log(s) + (1 - y) * np.log(1 - s)))
    return float(-np.mean(np.log(s[np.arange(len(y)), y])))


def segmentation_validator(cache, indices: Sequence[int], regions: Mapping[str, Sequence[int]], roi, *,
                           inference: str = "auto", overlap: float = 0.5, amp: str = "auto") -> Validator:
    """A function ``model -> ((dice_mean,), metrics)`` on the validation subjects ``indices``.

    Example:
        >>> validate = segmentation_validator(cache, [5, 6], {"WT": [1, 2, 4]}, 32)  # doctest: +SKIP
        >>> validate(model)[0]  # doctest: +SKIP
        (0.71,)
    """
    from kit.finetune.evaluate import evaluate_segmentation

    indices = [int(i) for i in indices]

    def validate(model: nn.Module) -> tuple[tuple[float, ...], dict]:
        ev = evaluate_segmentation(model, cache, indices, regions, roi, overlap=overlap, amp=amp, inference=inference)
        dice = float(ev.summary["dice_mean"])
        return (dice,), {"val_dice_mean": dice}

    return validate


def classification_validator(cache, indices: Sequence[int], target: str, classes: Sequence[Any], input_size, *,
                             amp: str = "auto") -> Validator:
    """A function ``model -> ((auc or accuracy, -loss), metrics)`` on the validation subjects.

    Example:
        >>> validate = classification_validator(cache, [5, 6, 7], "tumor_present", [0, 1], 48)  # doctest: +SKIP
    """
    from kit.finetune.evaluate import evaluate_classification

    indices = [int(i) for i in indices]

    def validate(model: nn.Module) -> tuple[tuple[float, ...], dict]:
        ev = evaluate_classification(model, cache, indices, target, classes, input_size, amp=amp, batch_size=4)
        table = ev.per_subject
        scores = table["score"].to_numpy() if "score" in table else table[[f"score_{c}" for c in classes]].to_numpy()
        loss = binary_cross_entropy(table["y_true"].to_numpy(), scores)
        auc = float(ev.summary["auc"])
        head = auc if math.isfinite(auc) else float(ev.summary["accuracy"])
        return (head, -loss), {"val_auc": auc, "val_accuracy": float(ev.summary["accuracy"]), "val_loss": loss}

    return validate
