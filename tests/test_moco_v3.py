"""MoCo v3 on 2D slices: loss against a plain InfoNCE, momentum schedule and EMA, no gradient into the
momentum branch, seeded views, an overfit run, and the one training loop on slices."""

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from kit.models import create_model
from kit.ssl import create_objective
from kit.ssl.moco_v3 import contrastive_loss, make_view, momentum_at


def _objective(total_steps=20, **cfg):
    torch.manual_seed(0)
    net = create_model("resnet18_2d", in_channels=2, widen_factor=0.125)
    return create_objective("moco_v3", net, dim=16, mlp_dim=32, temperature=0.5, total_steps=total_steps, **cfg)


def _slices(n=6, size=32, seed=0):
    """Blobs of different sizes and positions on a zero background, 2 contrasts."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, 2, size, size), np.float32)
    for i in range(n):
        cy, cx, r = rng.uniform(10, 22), rng.uniform(10, 22), rng.uniform(5, 11)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        out[i, 0][inside] = rng.normal(1.0, 0.5, inside.sum())
        out[i, 1][inside] = rng.normal(-0.5, 0.8, inside.sum()) + (xx[inside] - cx) / r
    return torch.from_numpy(out)


def _plain_infonce(q, k, t):
    """-mean_i log(exp(q_i.k_i / t) / sum_j exp(q_i.k_j / t)) on L2-normalised rows, times 2t, in float64."""
    def unit(row):
        norm = math.sqrt(sum(v * v for v in row))
        return [v / norm for v in row]

    q, k = [unit(row) for row in q.double().tolist()], [unit(row) for row in k.double().tolist()]
    total = 0.0
    for i, qi in enumerate(q):
        sims = [sum(a * b for a, b in zip(qi, kj)) / t for kj in k]
        total += -(sims[i] - math.log(sum(math.exp(s) for s in sims)))
    return 2 * t * total / len(q)


def test_contrastive_loss_equals_plain_infonce():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    for t in (0.2, 1.0):
        assert float(contrastive_loss(q, k, t)) == pytest.approx(_plain_infonce(q, k, t), rel=1e-5)


def test_forward_is_symmetric_infonce_of_queries_and_momentum_keys():
    obj = _objective()
    x, seeds = _slices(), torch.arange(6) + 100
    out = obj(x, seeds)
    # recompute from the same views: base -> projector -> predictor, momentum -> projector (BN in train mode)
    v1, v2 = obj.make_views(x, seeds)
    with torch.no_grad():
        q1, q2, k1, k2 = obj.queries(v1), obj.queries(v2), obj.keys(v1), obj.keys(v2)
    expected = _plain_infonce(q1, k2, 0.5) + _plain_infonce(q2, k1, 0.5)
    assert float(out["loss"].detach()) == pytest.approx(expected, rel=1e-4)
    assert float(out["contrast"]) == float(out["loss"]) and out["loss"].requires_grad


def test_momentum_schedule_half_cosine_from_099_to_1():
    assert momentum_at(0, 100) == 0.99 and momentum_at(100, 100) == 1.0
    assert momentum_at(50, 100) == pytest.approx(0.995)
    assert momentum_at(25, 100) == pytest.approx(1 - 0.01 * (1 + math.cos(math.pi / 4)) / 2)
    values = [momentum_at(s, 40) for s in range(41)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    obj = _objective(total_steps=None)
    with pytest.raises(ValueError, match="total_steps"):
        obj.on_step_end(1)


def test_momentum_branch_gets_no_gradient_and_follows_the_ema():
    obj = _objective(total_steps=10)
    moving = [p for n, p in obj.named_parameters() if n.startswith("momentum_")]
    base = [*obj.model.parameters(), *obj.projector.parameters()]
    assert moving and len(moving) == len(base) and not any(p.requires_grad for p in moving)
    assert all(torch.equal(m, b) for m, b in zip(moving, base))  # starts as a copy
    out = obj(_slices(), torch.arange(6))
    out["loss"].backward()
    assert all(p.grad is None for p in moving)
    trained = [p for p in obj.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trained)  # every trainable parameter gets a gradient (DDP)
    assert not obj.model.fc.weight.requires_grad  # the classifier layer is not part of the SSL model
    optimizer = torch.optim.SGD(trained, lr=0.5)
    optimizer.step()
    before = [m.detach().clone() for m in moving]
    obj.on_step_end(3)
    m = momentum_at(3, 10)
    assert obj.momentum == m
    for new, old, b in zip(moving, before, base):
        torch.testing.assert_close(new, m * old + (1 - m) * b.detach(), rtol=0, atol=1e-6)
    assert any(not torch.equal(new, old) for new, old in zip(moving, before))


def test_views_are_seeded_per_sample_and_only_flip_left_right():
    x = _slices(n=1)[0]
    a = make_view(x, 11, 0, view_size=32)
    assert torch.equal(a, make_view(x, 11, 0, view_size=32))
    assert not torch.equal(a, make_view(x, 12, 0, view_size=32))
    # no crop, no jitter, no blur: the view is the slice or its left-right (first in-plane axis) mirror
    plain = dict(view_size=32, crop_scale=(1.0, 1.0), jitter_prob=0.0, blur_prob=(0.0, 0.0))
    views = [make_view(x, s, 0, **plain) for s in range(12)]
    assert all(torch.allclose(v, x, atol=1e-5) or torch.allclose(v, x.flip(1), atol=1e-5) for v in views)
    assert any(torch.allclose(v, x.flip(1), atol=1e-5) for v in views)
    assert all(torch.allclose(make_view(x, s, 0, lr_dim=None, **plain), x, atol=1e-5) for s in range(6))
    # a sample's views do not depend on the rest of the batch
    obj = _objective()
    batch = _slices(n=4)
    v1, _ = obj.make_views(batch, torch.tensor([5, 6, 7, 8]))
    w1, _ = obj.make_views(batch[2:], torch.tensor([7, 8]))
    assert torch.equal(v1[2:], w1)


def test_overfits_a_fixed_batch_on_cpu():
    obj = _objective(total_steps=30)
    x, seeds = _slices(n=8, seed=3), torch.arange(8)
    params = [p for p in obj.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    losses = []
    for step in range(30):
        out = obj(x, seeds)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        obj.on_step_end(step + 1)
        losses.append(float(out["loss"]))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def test_training_loop_runs_moco_v3_on_slices_and_checkpoints_the_momentum_branch(tmp_path):
    from kit.train import TrainConfig, train

    class Slices(torch.utils.data.Dataset):
        def __init__(self):
            self.x = _slices(n=6)

        def __len__(self):
            return len(self.x)

        def __getitem__(self, key):
            return self.x[key[0]]

    config = TrainConfig(steps=3, batch_size=4, lr=1e-3, warmup_steps=1, progress=False, ckpt_every=2, device="cpu")
    obj = _objective(total_steps=3)
    summary = train(obj, Slices(), config, tmp_path / "run")
    assert summary["steps"] == 3 and math.isfinite(summary["final"]["loss"])
    assert obj.momentum == 1.0  # the last step reaches the end of the schedule
    from kit.models import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["model_config"]["name"] == "resnet18_2d"
    assert any(k.startswith("momentum_model.") for k in ckpt["extra"]["ssl_state"])


_RANK_SCRIPT = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from kit.ssl.moco_v3 import contrastive_loss
    rank, world, init, data, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    dist.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=world)
    q, k = torch.load(data)
    b = q.shape[0] // world
    mine = q[rank * b:(rank + 1) * b].clone().requires_grad_(True)
    loss = contrastive_loss(mine, k[rank * b:(rank + 1) * b], 0.5)
    loss.backward()
    torch.save({"loss": loss.detach(), "grad": mine.grad}, out)
    dist.destroy_process_group()
""")


def test_keys_gathered_across_two_ranks_give_the_global_batch_loss(tmp_path):
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    torch.save((q, k), tmp_path / "data.pt")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _RANK_SCRIPT, str(r), "2", str(tmp_path / "init"),
                               str(tmp_path / "data.pt"), str(tmp_path / f"rank{r}.pt")], env=env, cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    for proc in procs:
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output[-2000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    full = q.clone().requires_grad_(True)
    loss = contrastive_loss(full, k, 0.5)  # one process, the whole batch
    loss.backward()
    # DDP averages the ranks' gradients: the mean of the rank losses is the global-batch loss
    assert float(sum(r["loss"] for r in ranks)) / 2 == pytest.approx(float(loss.detach()), rel=1e-5)
    torch.testing.assert_close(torch.cat([r["grad"] for r in ranks]) / 2, full.grad, rtol=1e-4, atol=1e-6)


def test_momentum_branch_restarts_from_loaded_weights_but_resumes_as_saved():
    obj = _objective()
    with torch.no_grad():  # as a later stage initialised from another checkpoint: new base weights
        for param in obj.model.parameters():
            param.add_(0.1)
    obj(_slices(), torch.arange(6))
    assert all(torch.equal(m, b) for m, b in zip(obj.momentum_model.parameters(), obj.model.parameters()))
    assert "momentum_synced" not in obj.state_dict()
    saved = obj.checkpoint_extra()
    with torch.no_grad():
        obj.momentum_model.conv1.weight.mul_(0.5)
    resumed = _objective()
    resumed.model.load_state_dict(obj.model.state_dict())
    resumed.load_checkpoint_extra(saved)
    resumed(_slices(), torch.arange(6))  # no re-sync: the saved momentum branch is kept
    torch.testing.assert_close(resumed.momentum_model.conv1.weight, saved["ssl_state"]["momentum_model.conv1.weight"])
    assert not torch.equal(resumed.momentum_model.conv1.weight, resumed.model.conv1.weight)


def test_profiles_select_the_2d_stage_for_moco_v3():
    from kit.pipeline import PROFILES, profile_config
    from kit.train.pretrain import stage_for_objective

    for profile in PROFILES:
        stage = stage_for_objective(profile_config(profile)["stage1"], "moco_v3")
        assert stage["objective"] == "moco_v3" and stage["backbone"] in ("resnet18_2d", "resnet50_2d")
        assert stage["slices"]["axis"] == profile_config(profile)["slice_filter"]["axis"] and stage["slices"]["curated"]
        default = stage_for_objective(profile_config(profile)["stage1"], None)
        assert "slices" not in default and default["backbone"] == profile_config(profile)["stage1"]["backbone"]
