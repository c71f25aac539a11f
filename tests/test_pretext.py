"""Pretext metrics on held-out crops (kit.ssl.pretext): held-out keys, checkpoint round trip, learning shows."""

import numpy as np
import pytest
import torch

from kit.models import create_model
from kit.ssl import create_objective
from kit.ssl.pretext import held_out_keys, objective_from_checkpoint, pretext_metrics, pretext_table
from kit.train.loop import TrainConfig, train
from kit.train.sampling import ArrayCropDataset, GlobalBatchSampler


def _volumes(n=3):
    rng = np.random.default_rng(0)
    vols = []
    for _ in range(n):
        v = np.zeros((1, 36, 36, 36), np.float32)
        v[:, 6:30, 8:28, 10:26] = 1.0 + 0.1 * rng.standard_normal((1, 24, 20, 16))  # an asymmetric "brain"
        vols.append(v)
    return vols


def test_held_out_keys_never_drawn_by_the_training_stream():
    sampler = GlobalBatchSampler(5, batch_size=4, seed=0, steps=200)
    training = {sampler.key_at(p)[1] for p in range(800)}
    held_out = {k[1] for k in held_out_keys(5, 200, seed=0)}
    assert len(held_out) == 200 and not training & held_out
    assert [k[0] for k in held_out_keys(5, 7)] == [0, 1, 2, 3, 4, 0, 1]


def test_checkpoint_round_trip_and_untrained_baseline(tmp_path):
    torch.manual_seed(0)
    data = ArrayCropDataset(_volumes(), 32)
    objective = create_objective("swin_trio", create_model("segresnet_small", 1, init_filters=8), contrast_dim=16)
    train(objective, data, TrainConfig(steps=30, batch_size=4, lr=3e-3, warmup_steps=2, device="cpu", progress=False,
                                       ckpt_every=30), tmp_path)
    live = pretext_metrics(objective, data, n_crops=8, batch_size=4)
    reloaded = pretext_metrics(objective_from_checkpoint(tmp_path / "checkpoint.pt"), data, n_crops=8, batch_size=4)
    assert live == pytest.approx(reloaded, abs=1e-5)  # the checkpoint holds everything the metrics need
    rows = {r["metric"]: r for r in pretext_table(tmp_path / "checkpoint.pt", data, n_crops=8, batch_size=4)}
    assert {"loss", "rot_acc", "contrast_top1", "recon_l1", "recon_l1_identity", "recon_l1_mean"} <= set(rows)
    # network-free baselines do not depend on the weights; 30 steps on 3 volumes do lower the held-out loss
    assert rows["recon_l1_identity"]["trained"] == rows["recon_l1_identity"]["untrained"]
    assert rows["loss"]["trained"] < rows["loss"]["untrained"]


def test_batch_size_one_is_refused():
    data = ArrayCropDataset(_volumes(1), 32)
    objective = create_objective("mim", create_model("segresnet_small", 1, init_filters=8))
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        pretext_metrics(objective, data, batch_size=1)
