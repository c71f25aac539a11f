"""Pretext metrics on held-out crops: has pretraining done its job?

A pretraining loss that falls says little on its own (it may fall because the heads fit the
training crops). These metrics are measured on crops and views the loop never drew (sample seeds of
a separate stream, :func:`held_out_keys`), for the trained objective and for the same objective at
its random initialisation, so every number comes with its baseline:

* every objective: the held-out ``loss`` (trained vs untrained);
* ``swin_trio`` adds ``rot_acc`` (4-way rotation accuracy, chance 0.25), ``contrast_top1`` (the
  first view's nearest second view is its own partner, chance 1/B), and ``recon_l1`` on the masked
  voxels against two baselines that need no network: ``recon_l1_identity`` (the masked input
  itself, i.e. the noise) and ``recon_l1_mean`` (each crop's own mean intensity).

Example:
    >>> from kit.models import create_model
    >>> from kit.ssl import create_objective
    >>> from kit.train.sampling import ArrayCropDataset
    >>> data = ArrayCropDataset([np.random.default_rng(i).random((1, 36, 36, 36), dtype=np.float32) for i in range(3)], 32)
    >>> obj = create_objective("swin_trio", create_model("segresnet_small", 1, init_filters=8), contrast_dim=16)
    >>> m = pretext_metrics(obj, data, n_crops=4, batch_size=2)
    >>> sorted(m)[:4], m["rot_chance"]
    (['contrast_chance', 'contrast_top1', 'loss', 'recon_l1'], 0.25)
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kit.tensors import eval_mode

__all__ = ["held_out_keys", "pretext_metrics", "objective_from_checkpoint", "pretext_table"]

#: Added to the run seed for held-out sample seeds: the loop's stream (kit.train.sampling, kit.seeds) uses the run seed.
HELD_OUT_SEED_OFFSET = 7_919_000


def held_out_keys(n_items: int, n_crops: int, seed: int = 0) -> list[tuple[int, int]]:
    """``n_crops`` dataset keys ``(index, sample_seed)`` cycling over ``n_items``, from a seed stream the
    training loop of run ``seed`` never uses.

    Example:
        >>> held_out_keys(3, 4)[3][0], len(set(k[1] for k in held_out_keys(3, 4)))
        (0, 4)
    """
    from kit.seeds import sample_seed

    return [(p % n_items, sample_seed(seed + HELD_OUT_SEED_OFFSET, p)) for p in range(n_crops)]


def _swin_trio_metrics(objective, x: torch.Tensor, seeds: torch.Tensor) -> dict[str, float]:
    batch = x.shape[0]
    v = objective.views(x, seeds)
    features = objective.model.encode(v["views"])
    heads = objective.heads
    out = {"rot_acc": float((heads.rotation_logits(features).argmax(1) == v["rot_labels"]).float().mean()),
           "rot_chance": 0.25}
    z = F.normalize(heads.projection(features).float(), dim=1)
    match = (z[:batch] @ z[batch:].T).argmax(1) == torch.arange(batch, device=z.device)
    out.update(contrast_top1=float(match.float().mean()), contrast_chance=1.0 / batch)
    mask = v["masks"].expand_as(v["targets"]).bool()
    if mask.any():
        target = v["targets"].float()
        recon = heads.reconstruct(features).float()
        crop_mean = target.mean(dim=(2, 3, 4), keepdim=True).expand_as(target)
        out.update(recon_l1=float((recon - target).abs()[mask].mean()),
                   recon_l1_identity=float((v["views"].float() - target).abs()[mask].mean()),
                   recon_l1_mean=float((crop_mean - target).abs()[mask].mean()))
    return out


@torch.no_grad()
def pretext_metrics(objective, dataset, n_crops: int = 32, batch_size: int = 8, seed: int = 0) -> dict[str, float]:
    """Pretext metrics of ``objective`` on ``n_crops`` held-out crops of ``dataset`` (means over batches).

    Args:
        objective: an SSL objective (``kit.ssl.create_objective``), on any device.
        dataset: the stage's keyed dataset (``dataset[(index, sample_seed)]`` -> (C, d, h, w) tensor).
        n_crops: crops evaluated (a multiple of ``batch_size`` is used in full; the rest is dropped).
        batch_size: crops per batch (>= 2: the contrastive metric needs partners).
        seed: the run seed whose training stream is avoided.

    Returns:
        ``{"loss": ..., ...}``: see the module docstring for the objective-specific keys.
    """
    if batch_size < 2:
        raise ValueError(f"pretext_metrics: batch_size must be >= 2, got {batch_size}")
    keys = held_out_keys(len(dataset), max(n_crops, batch_size), seed)
    device = next(objective.parameters()).device
    sums: dict[str, list[float]] = {}
    with eval_mode(objective):
        for start in range(0, len(keys) - batch_size + 1, batch_size):
            part = keys[start : start + batch_size]
            x = torch.stack([dataset[k] for k in part]).to(device)
            seeds = torch.tensor([k[1] % 2**62 for k in part], dtype=torch.int64)
            values = {"loss": float(objective(x, seeds)["loss"])}
            if objective.name == "swin_trio":
                values.update(_swin_trio_metrics(objective, x, seeds))
            for k, v in values.items():
                sums.setdefault(k, []).append(v)
    return {k: float(np.mean(v)) for k, v in sums.items()}


def objective_from_checkpoint(path: str | Path, trained: bool = True):
    """The SSL objective (backbone and heads) a pretraining checkpoint was saved from; with
    ``trained=False`` the same objective at the random initialisation the run started from (seed of
    the run's config), the baseline of :func:`pretext_table`.

    Example:
        >>> obj = objective_from_checkpoint("runs/smoke/02_stage1/checkpoint.pt")  # doctest: +SKIP
    """
    from kit.models import create_model
    from kit.models.checkpoints import load_checkpoint
    from kit.ssl import create_objective
    from kit.ssl.base import objective_class

    checkpoint = load_checkpoint(path, map_location="cpu")
    extra = checkpoint.get("extra") or {}
    if "ssl_objective" not in extra:
        raise ValueError(f"{path}: not a pretraining checkpoint of the kit (no 'ssl_objective' in extra)")
    options: dict[str, Any] = dict(extra["ssl_objective"])
    name = options.pop("name")
    # the saved config also holds derived values (e.g. mim's mode, set by the backbone): keep the options
    accepted = inspect.signature(objective_class(name).__init__).parameters
    options = {k: v for k, v in options.items() if k in accepted}
    seed = int((extra.get("config") or {}).get("seed", 0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(**checkpoint["model_config"])
        objective = create_objective(name, model, **options)
    if trained:
        model.load_state_dict(checkpoint["state_dict"])
        objective.load_checkpoint_extra(extra)
    return objective


def pretext_table(checkpoint: str | Path, dataset, n_crops: int = 64, batch_size: int = 8, seed: int = 0) -> list[dict]:
    """Rows ``{"metric", "trained", "untrained"}`` for a pretraining checkpoint on held-out crops.

    Example:
        >>> rows = pretext_table("runs/smoke/02_stage1/checkpoint.pt", dataset)  # doctest: +SKIP
    """
    trained = pretext_metrics(objective_from_checkpoint(checkpoint), dataset, n_crops, batch_size, seed)
    untrained = pretext_metrics(objective_from_checkpoint(checkpoint, trained=False), dataset, n_crops, batch_size, seed)
    return [{"metric": k, "trained": v, "untrained": untrained.get(k, float("nan"))} for k, v in trained.items()]
