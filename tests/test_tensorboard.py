"""TensorBoard scalars beside metrics.jsonl (TrainConfig.tensorboard), read back with tensorboard's
own EventAccumulator; skipped where the optional tensorboard package is not installed."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from kit.train import TrainConfig, train

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

_spec = importlib.util.spec_from_file_location("ddp_worker", Path(__file__).with_name("ddp_worker.py"))
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_scalars_match_metrics_jsonl_and_survive_a_resume(tmp_path):
    config = TrainConfig(steps=5, batch_size=1, lr=1e-3, warmup_steps=1, ckpt_every=2, device="cpu", progress=False,
                         tensorboard=True)
    step2 = tmp_path / "checkpoint_step2.pt"

    def keep_step2_checkpoint(step, record):  # at step 3 the file holds step 2's state
        if step == 3:
            shutil.copyfile(tmp_path / "checkpoint.pt", step2)

    objective, dataset = worker.build_run(in_channels=1)
    train(objective, dataset, config, tmp_path, callback=keep_step2_checkpoint)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    scalars = _scalars(tmp_path)
    assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s"} <= scalars.keys()
    assert {f"train/{k}" for k in records[0] if k != "step"} == scalars.keys()  # every term of the record
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4, 5]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([r["loss"] for r in records], rel=1e-6)

    # A session killed after step 5 had logged 3..5 past its last checkpoint (step 2): on resume the
    # events of steps >= 3 are purged and logged again, once each, as metrics.jsonl is.
    shutil.copyfile(step2, tmp_path / "checkpoint.pt")
    again, _ = worker.build_run(in_channels=1)
    assert train(again, dataset, config, tmp_path)["resumed_from"] == 2
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    resumed = _scalars(tmp_path)["train/loss"]
    assert [s for s, _ in resumed] == [1, 2, 3, 4, 5]
    assert [v for _, v in resumed] == pytest.approx([r["loss"] for r in records], rel=1e-6)


def test_tensorboard_is_off_by_default(tmp_path):
    assert TrainConfig().tensorboard is False
    objective, dataset = worker.build_run(in_channels=1)
    train(objective, dataset, TrainConfig(steps=1, batch_size=1, device="cpu", progress=False), tmp_path)
    assert not (tmp_path / "tensorboard").exists() and (tmp_path / "metrics.jsonl").exists()
