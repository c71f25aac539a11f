"""What every objective owes the loop and the notebooks: gradients, a falling loss, a preview, checkpoints.

Objectives with their tiny test settings; the semantics of each live in its own test file.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kit.models import create_model
from kit.ssl import create_objective
from kit.viz import plot_ssl_preview

# name -> (backbone, backbone kwargs, objective kwargs, crop side)
CASES = {
    "cross_contrast": ("segresnet_small", {}, {}, 16),
    "cross_contrast_small_blocks": ("segresnet_small", {}, {"scheme": "small", "weights": {"recon_dropped": 1.0}}, 16),
    "mim": ("segresnet_small", {}, {"patch_size": 8, "mask_ratio": 0.6}, 16),
    "anatomy_hierarchy": ("segresnet_small", {}, {"queue_size": 16, "total_steps": 30, "momentum": 0.9}, 16),
}

# Overfit settings per case: (batch, lr, steps at the start whose highest loss is the reference). The
# anatomy-hierarchy run holds one 2x2x2 grid level and a queue of exactly one step's keys, so from
# step 1 on its negatives are the fixed batch's own keys. Its untrained encoder maps every crop to
# nearly the same embedding, so at first almost every negative is >= 0.8 and pruned (a near-zero
# loss); the loss rises as the embeddings spread, then falls as each sample's two views align.
OVERFIT = {"anatomy_hierarchy": (4, 1e-4, 5)}
OVERFIT_CFG = {"anatomy_hierarchy": {"queue_size": 8, "grid_sizes": (2,)}}


def build(case: str, channels: int = 2, **overrides):
    backbone, model_cfg, cfg, crop = CASES[case]
    cfg = {**cfg, **overrides}
    torch.manual_seed(0)
    name = case if case in ("cross_contrast", "mim", "anatomy_hierarchy") else case.rsplit("_", 2)[0]
    objective = create_objective(name, create_model(backbone, channels, **model_cfg), **cfg)
    return objective, crop


def smooth_batch(batch: int, channels: int, crop: int) -> torch.Tensor:
    """Smooth, asymmetric blobs (learnable in a few steps), one per sample and contrast."""
    grid = torch.linspace(-1, 1, crop)
    zz, yy, xx = torch.meshgrid(grid, grid, grid, indexing="ij")
    g = torch.Generator().manual_seed(0)
    out = torch.empty(batch, channels, crop, crop, crop)
    for b in range(batch):
        for c in range(channels):
            centre = torch.rand(3, generator=g) * 0.8 - 0.4
            out[b, c] = torch.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (zz - centre[2]) ** 2) / 0.3)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_trainable_parameter_gets_a_gradient(case):
    objective, crop = build(case)
    objective(torch.rand(2, 2, crop, crop, crop), torch.tensor([1, 2]))["loss"].backward()
    trainable = [n for n, p in objective.named_parameters() if p.requires_grad]
    assert trainable
    assert [n for n, p in objective.named_parameters() if p.requires_grad and p.grad is None] == []
    assert not any(p.requires_grad for p in objective.model.up_layers.parameters())  # segmentation decoder frozen


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_falls_on_a_fixed_batch(case):
    """Overfit: the same crops and seeds (so the same masks / views) for a few dozen AdamW steps."""
    batch, lr, start = OVERFIT.get(case, (2, 1e-3, 1))
    objective, crop = build(case, **OVERFIT_CFG.get(case, {}))
    x, seeds = smooth_batch(batch, 2, crop), torch.arange(5, 5 + batch)
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    losses, terms = [], []
    for step in range(30):
        optimizer.zero_grad()
        out = objective(x, seeds)
        out["loss"].backward()
        optimizer.step()
        objective.on_step_end(step + 1)
        losses.append(out["loss"].item())
        terms.append({k: v.item() for k, v in out.items()})
    first_step = int(np.argmax(losses[:start]))
    first, last = losses[first_step], float(np.mean(losses[-3:]))
    print(f"\n{case}: loss {first:.4f} (step {first_step + 1}) -> {last:.4f} (mean of the last 3 of {len(losses)} steps)")
    assert last < 0.6 * first, losses
    for term in terms[0]:  # every term falls, not only the easiest
        assert np.mean([t[term] for t in terms[-3:]]) < terms[first_step][term], (term, terms[first_step], terms[-1])
    if case == "anatomy_hierarchy":
        # what is left in the queue are this batch's keys: each query's own two (false negatives, cosine
        # >= 0.8 once the views agree) are pruned, the other samples' six are kept
        preview = objective.preview(x, seeds)
        assert np.allclose(preview["pruned_share"], 2 / 8) and (preview["similarity"] > 0.8).all(), (preview["pruned_share"], preview["similarity"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_preview_is_a_dict_of_volumes_the_viewer_plots(case):
    objective, crop = build(case)
    x, seeds = torch.rand(2, 2, crop, crop, crop), torch.tensor([3, 4])
    preview = objective.preview(x, seeds)
    assert objective.training  # mode restored
    assert all(isinstance(a, np.ndarray) for a in preview.values())
    volumes = {k: a for k, a in preview.items() if a.ndim == 5}
    assert "input" in volumes and np.array_equal(volumes["input"], x.numpy())
    assert all(a.shape[0] == 2 for a in volumes.values())
    fig = plot_ssl_preview(preview, channel=1, title=case)
    assert len(fig.axes) == len(volumes)


@pytest.mark.parametrize("case", sorted(CASES))
def test_checkpoint_extra_round_trip(case):
    objective, crop = build(case)
    extra = objective.checkpoint_extra()
    assert extra["ssl_objective"]["name"] == objective.name
    clone, _ = build(case)
    for p in clone.parameters():
        p.data.add_(1.0)
    clone.load_checkpoint_extra(extra)
    own = {k: v for k, v in objective.state_dict().items() if not k.startswith("model.")}
    assert all(torch.equal(clone.state_dict()[k], v) for k, v in own.items())


@pytest.mark.parametrize("objective", ["cross_contrast", "mim", "anatomy_hierarchy"])
def test_an_interrupted_run_resumes_to_the_same_weights_and_state(tmp_path, objective):
    """Crash after step 3 (checkpoint at 2), rerun: the same final weights, heads, teacher, queue and schedule."""
    import importlib.util
    from pathlib import Path

    from kit.models import load_checkpoint
    from kit.train import TrainConfig, train

    spec = importlib.util.spec_from_file_location("ddp_worker", Path(__file__).with_name("ddp_worker.py"))
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    config = TrainConfig(steps=4, batch_size=2, lr=1e-3, warmup_steps=1, ckpt_every=2, device="cpu", progress=False)

    def crash(step, record):
        if step == 3:
            raise KeyboardInterrupt

    straight = tmp_path / "straight"
    train(worker.build_run(objective=objective)[0], worker.build_run(objective=objective)[1], config, straight)
    interrupted = tmp_path / "interrupted"
    objective_a, dataset = worker.build_run(objective=objective)
    with pytest.raises(KeyboardInterrupt):
        train(objective_a, dataset, config, interrupted, callback=crash)
    assert load_checkpoint(interrupted / "checkpoint.pt")["extra"]["step"] == 2
    summary = train(worker.build_run(objective=objective)[0], dataset, config, interrupted)
    assert summary["resumed_from"] == 2
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(interrupted / "checkpoint.pt")
    for key, value in {**a["state_dict"], **a["extra"]["ssl_state"]}.items():
        other = {**b["state_dict"], **b["extra"]["ssl_state"]}[key]
        assert torch.allclose(value.double(), other.double(), atol=1e-6), key
    assert a["extra"].get("ssl_progress") == b["extra"].get("ssl_progress")
