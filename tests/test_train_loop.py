"""Tests of kit.train: sampling, the loop, checkpoints, metrics, resume after a kill, init from a stage."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kit.models import create_model, load_checkpoint
from kit.train import (
    ArrayCropDataset,
    GlobalBatchSampler,
    TrainConfig,
    epoch_permutation,
    resolve_amp,
    sample_seed,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("ddp_worker.py")
_spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def run_worker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run tests/ddp_worker.py as a plain python process from the repository root."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, str(WORKER), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: on a small shared CPU, 2 OpenMP threads per process can be 5-10x slower
    (oversubscription). The workers below get --threads 1 as well, so thread counts match."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------- sampling


def test_sample_seeds_are_deterministic_distinct_and_int64():
    seeds = [sample_seed(7, p) for p in range(1000)]
    assert seeds == [sample_seed(7, p) for p in range(1000)]
    assert len(set(seeds)) == 1000
    assert all(0 <= s < 2**63 for s in seeds)
    assert seeds[:10] != [sample_seed(8, p) for p in range(10)]


def test_epochs_are_permutations_that_change_with_seed_and_epoch():
    assert sorted(epoch_permutation(0, 0, 11).tolist()) == list(range(11))
    assert not np.array_equal(epoch_permutation(0, 0, 50), epoch_permutation(0, 1, 50))
    assert not np.array_equal(epoch_permutation(0, 0, 50), epoch_permutation(1, 0, 50))
    # Consecutive global batches walk through one epoch before repeating a sample.
    sampler = GlobalBatchSampler(12, batch_size=4, seed=3, steps=6)
    first_epoch = [i for batch in list(sampler)[:3] for i, _ in batch]
    assert sorted(first_epoch) == list(range(12))


@pytest.mark.parametrize("grad_accum", [1, 3])
def test_union_over_ranks_equals_one_process_global_batch(grad_accum):
    n, steps, global_micro = 10, 5, 4
    one = list(GlobalBatchSampler(n, global_micro, seed=1, steps=steps, grad_accum=grad_accum))
    for world_size in (2, 4):
        per_rank = [
            list(GlobalBatchSampler(n, global_micro // world_size, seed=1, steps=steps, grad_accum=grad_accum,
                                    world_size=world_size, rank=r))
            for r in range(world_size)
        ]
        assert all(len(batches) == steps * grad_accum for batches in per_rank)
        # Micro-batch by micro-batch, rank r holds the r-th contiguous slice: same keys, same seeds.
        joined = [sum(parts, []) for parts in zip(*per_rank)]
        assert joined == one


def test_start_step_equals_skipping_and_sampler_is_deterministic():
    kwargs = dict(batch_size=3, seed=5, steps=9, grad_accum=2, world_size=2, rank=1)
    full = list(GlobalBatchSampler(7, **kwargs))
    assert full == list(GlobalBatchSampler(7, **kwargs))
    for start in (0, 4, 9):
        resumed = GlobalBatchSampler(7, start_step=start, **kwargs)
        assert len(resumed) == (9 - start) * 2
        assert list(resumed) == full[start * 2:]


def test_sampler_rejects_bad_layouts():
    with pytest.raises(ValueError, match="empty"):
        GlobalBatchSampler(0, 2, seed=0, steps=1)
    with pytest.raises(ValueError, match="rank 2"):
        GlobalBatchSampler(5, 2, seed=0, steps=1, world_size=2, rank=2)
    with pytest.raises(ValueError, match="start_step"):
        GlobalBatchSampler(5, 2, seed=0, steps=3, start_step=4)


def test_array_crop_dataset_crops_by_seed_and_pads_small_volumes():
    rng = np.random.default_rng(0)
    volumes = [rng.random((2, 40, 36, 50), dtype=np.float32), torch.rand(2, 20, 40, 40)]
    ds = ArrayCropDataset(volumes, (32, 32, 32))
    assert len(ds) == 2 and ds.in_channels == 2
    a, b = ds[(0, 11)], ds[(0, 11)]
    assert a.dtype == torch.float32 and a.shape == (2, 32, 32, 32)
    assert torch.equal(a, b)
    assert not torch.equal(a, ds[(0, 12)])
    # The crop is a real window of the volume.
    corners = [(i, j, k) for i in range(9) for j in range(5) for k in range(19)]
    assert any(np.array_equal(a.numpy(), volumes[0][:, i:i + 32, j:j + 32, k:k + 32]) for i, j, k in corners)
    small = ds[(1, 3)]
    assert small.shape == (2, 32, 32, 32)
    assert torch.all(small[:, :6] == 0) and torch.all(small[:, -6:] == 0)  # 20 -> 32: 6 zeros each side
    with pytest.raises(ValueError, match="array 1 has 1 channels"):
        ArrayCropDataset([np.zeros((2, 8, 8, 8)), np.zeros((1, 8, 8, 8))], 4)
    with pytest.raises(ValueError, match=r"expected \(C, D, H, W\)"):
        ArrayCropDataset([np.zeros((8, 8, 8))], 4)
    with pytest.raises(TypeError, match="keys are"):
        ds[0]


# ---------------------------------------------------------------------------------------- config


def test_config_validation_and_amp_resolution():
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="grad_accum"):
        TrainConfig(grad_accum=0)
    with pytest.raises(ValueError, match="device"):
        TrainConfig(device="tpu")
    assert resolve_amp("auto", torch.device("cpu")) is None
    assert resolve_amp("bf16", torch.device("cpu")) is torch.bfloat16
    assert resolve_amp("off", torch.device("cpu")) is None


# ---------------------------------------------------------------------------------------- training


def small_config(**overrides) -> TrainConfig:
    values = dict(steps=6, batch_size=2, lr=1e-3, warmup_steps=2, ckpt_every=3, device="cpu", progress=False, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


def test_loss_decreases_on_synthetic_volumes(tmp_path):
    objective, dataset = worker.build_run(in_channels=1, n_volumes=6, mix_prob=0.5)
    summary = train(objective, dataset, small_config(steps=30, warmup_steps=3, lr=2e-3, ckpt_every=100), tmp_path)
    records = json.loads((tmp_path / "metrics.json").read_text())["records"]
    losses = np.array([r["loss"] for r in records])
    assert len(losses) == 30 and np.all(np.isfinite(losses))
    assert losses[-5:].mean() < 0.8 * losses[:5].mean(), losses
    # Every term that the objective reports is logged, and the terms go down too.
    terms = [k for k in records[0] if k not in ("step", "loss", "lr", "grad_norm", "samples_per_s", "elapsed_s")]
    assert terms, records[0]
    assert summary["final"].keys() == {"loss", *terms}


def test_metrics_and_checkpoint_contents(tmp_path):
    objective, dataset = worker.build_run(in_channels=1)
    seen = []
    config = small_config(steps=5, ckpt_every=2, log_every=2, batch_size=1, grad_accum=2)
    summary = train(objective, dataset, config, tmp_path, modalities=["T1w"], callback=lambda s, r: seen.append((s, r)))

    lines = read_jsonl(tmp_path / "metrics.jsonl")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["step"] for r in lines] == [2, 4, 5]  # every log_every steps, and the last
    assert metrics["records"] == lines == [r for _, r in seen]
    assert [s for s, _ in seen] == [2, 4, 5]
    for record in lines:
        assert {"step", "loss", "lr", "samples_per_s", "elapsed_s", "grad_norm"} <= record.keys()
        assert len(record) > 7  # the objective's terms
        assert record["samples_per_s"] > 0
    assert lines[0]["lr"] < lines[1]["lr"]  # warmup: lr at step 2 < lr at step 4 (peak at step 3)
    assert summary["steps"] == 5 and summary["resumed_from"] is None and summary["global_batch_size"] == 2
    assert metrics["summary"]["final"]["loss"] == pytest.approx(lines[-1]["loss"])

    # Loadable the safe way, with everything needed to resume and to rebuild the backbone.
    raw = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    extra = raw["extra"]
    for key in ("optimizer", "scheduler", "scaler", "step", "config", "metrics", "modalities", "objective", "rng",
                "world_size", "elapsed_s", "ssl_state", "ssl_objective"):
        assert key in extra, key
    assert extra["step"] == 5 and extra["complete"] and extra["config"]["grad_accum"] == 2
    assert extra["modalities"] == ["T1w"] and extra["objective"]["name"] == "swin_trio"
    assert extra["metrics"] == lines
    assert len(extra["rng"]) == 1 and extra["rng"][0]["torch"].dtype == torch.uint8
    assert extra["optimizer"]["state"] and extra["scheduler"]["last_epoch"] == 5
    # The objective's full state = backbone (state_dict) + heads (ssl_state).
    full = {**{"model." + k: v for k, v in raw["state_dict"].items()}, **extra["ssl_state"]}
    assert full.keys() == objective.state_dict().keys()
    assert all(torch.equal(full[k], v) for k, v in objective.state_dict().items())
    # Fine-tuning rebuilds the backbone from model_config alone.
    backbone = create_model(**raw["model_config"])
    backbone.load_state_dict(raw["state_dict"], strict=True)
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temp files behind


def test_restart_after_sigkill_gives_identical_weights(tmp_path):
    """A run killed (SIGKILL) after step 4 and restarted ends with exactly the uninterrupted weights."""
    args = ["--threads", "1", "--steps", "6", "--batch-size", "2", "--grad-accum", "2", "--ckpt-every", "3", "--lr", "1e-3",
            "--warmup-steps", "2", "--mix-prob", "0.5"]
    reference_dir, crashed_dir = tmp_path / "reference", tmp_path / "crashed"

    killed = run_worker("--run-dir", str(crashed_dir), "--kill-at-step", "4", *args)
    assert killed.returncode == -9, killed.stderr
    assert load_checkpoint(crashed_dir / "checkpoint.pt")["extra"]["step"] == 3
    assert [r["step"] for r in read_jsonl(crashed_dir / "metrics.jsonl")] == [1, 2, 3, 4]
    # Restart the same run in another process, with a DataLoader worker this time (allowed to differ).
    restarted = run_worker("--run-dir", str(crashed_dir), "--num-workers", "1", *args)
    assert restarted.returncode == 0, restarted.stderr

    # The uninterrupted reference, in this process.
    objective, dataset = worker.build_run(mix_prob=0.5)
    config = TrainConfig(steps=6, batch_size=2, grad_accum=2, ckpt_every=3, lr=1e-3, warmup_steps=2, seed=0,
                         device="cpu", progress=False)
    train(objective, dataset, config, reference_dir, modalities=["t1"])

    reference = load_checkpoint(reference_dir / "checkpoint.pt")
    resumed = load_checkpoint(crashed_dir / "checkpoint.pt")
    for part in ("state_dict", "ssl_state"):
        ref = reference[part] if part == "state_dict" else reference["extra"][part]
        res = resumed[part] if part == "state_dict" else resumed["extra"][part]
        assert ref.keys() == res.keys()
        for key, value in ref.items():
            assert torch.equal(value, res[key]), (part, key)
    # The log holds each step once; step 4 of the killed session was replaced by the rerun's.
    lines = read_jsonl(crashed_dir / "metrics.jsonl")
    assert [r["step"] for r in lines] == list(range(1, 7))
    ref_lines = read_jsonl(reference_dir / "metrics.jsonl")
    assert [r["loss"] for r in lines] == [r["loss"] for r in ref_lines]
    summary = json.loads((crashed_dir / "metrics.json").read_text())["summary"]
    assert summary["resumed_from"] == 3


def test_finished_run_returns_immediately_and_changed_config_is_refused(tmp_path):
    objective, dataset = worker.build_run()
    config = small_config(steps=3, ckpt_every=2)
    train(objective, dataset, config, tmp_path)
    before = {k: v.clone() for k, v in objective.state_dict().items()}
    mtime = (tmp_path / "checkpoint.pt").stat().st_mtime_ns

    again, _ = worker.build_run()
    summary = train(again, dataset, small_config(steps=3, ckpt_every=2, progress=True, num_workers=1), tmp_path)
    assert summary["resumed_from"] == 3
    assert (tmp_path / "checkpoint.pt").stat().st_mtime_ns == mtime  # nothing trained, nothing written
    assert all(torch.equal(before[k], v) for k, v in again.state_dict().items())  # weights loaded

    with pytest.raises(ValueError) as err:
        train(worker.build_run()[0], dataset, small_config(steps=3, ckpt_every=2, lr=5e-4, batch_size=1), tmp_path)
    message = str(err.value)
    assert str(tmp_path / "checkpoint.pt") in message
    assert "lr" in message and "batch_size" in message and "new run_dir" in message
    with pytest.raises(ValueError, match="modalities"):
        train(worker.build_run()[0], dataset, config, tmp_path, modalities=["flair"])


def test_init_checkpoint_transfers_backbone_to_new_modalities(tmp_path):
    """Stage 2 (flair + t1) starts from stage 1 (t1): backbone copied, first layer mapped by contrast."""
    stage1, data1 = worker.build_run(in_channels=1)
    train(stage1, data1, small_config(steps=2), tmp_path / "stage1", modalities=["t1"])
    stage1_ckpt = tmp_path / "stage1" / "checkpoint.pt"

    stage2, data2 = worker.build_run(in_channels=2, model_seed=1)
    fresh = {k: v.clone() for k, v in stage2.state_dict().items()}
    # One step that moves nothing measurable, so the weights after train() are the initialised ones.
    config = small_config(steps=1, lr=1e-20, warmup_steps=0, max_grad_norm=None, weight_decay=0.0)
    summary = train(stage2, data2, config, tmp_path / "stage2", init_checkpoint=stage1_ckpt, modalities=["flair", "t1"])
    first = "model." + stage1.model.first_conv_key
    assert first in summary["init_report"]
    s1, s2 = stage1.state_dict(), stage2.state_dict()
    # t1 keeps its filter, flair (no flair or t2 in stage 1) takes the mean = the t1 filter; both x 1/2.
    assert s2[first].shape[1] == 2
    torch.testing.assert_close(s2[first][:, 0], s1[first][:, 0] / 2, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(s2[first][:, 1], s1[first][:, 0] / 2, rtol=1e-5, atol=1e-7)
    same_shape = [k for k in s1 if k != first and s1[k].shape == s2[k].shape]
    assert len(same_shape) > 0.9 * len(s1)
    for key in same_shape:  # every other backbone tensor and every head tensor that fits came over
        torch.testing.assert_close(s2[key], s1[key], rtol=1e-5, atol=1e-7, msg=key)
    for key in s1:  # heads whose shape follows the channel count keep their fresh initialisation
        if s1[key].shape != s2[key].shape and key != first:
            assert not key.startswith("model.")
            torch.testing.assert_close(s2[key], fresh[key], rtol=1e-5, atol=1e-7, msg=key)
            assert key in summary["init_report"] or "shape_mismatched" in summary["init_report"]

    # A backbone of another size does not fit: a clear error naming the checkpoint.
    from kit.ssl import create_objective

    wider = create_objective("swin_trio", create_model("segresnet_small", in_channels=1, init_filters=16), mix_prob=0.0)
    with pytest.raises(ValueError, match="init_checkpoint .*stage1.*does not fit"):
        train(wider, data1, small_config(steps=1), tmp_path / "bad", init_checkpoint=stage1_ckpt)
