"""The loop's speed settings: ``compile`` (torch.compile of the encoder, opt-in) and the AdamW kernel choice."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from kit.train import TrainConfig, train
from kit.train.pretrain import train_config_from

_spec = importlib.util.spec_from_file_location("ddp_worker", Path(__file__).with_name("ddp_worker.py"))
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def test_compile_is_off_by_default_and_read_from_a_profile_stage():
    assert TrainConfig().compile is False
    assert train_config_from({"steps": 2, "compile": True}, seed=0, device="cpu", progress=False).compile is True


def test_compile_runs_the_encoder_through_torch_compile_for_the_run_only(tmp_path, monkeypatch):
    # Dynamo traces the real encoder; the 'eager' backend skips inductor's C++ build (minutes on 2 cores).
    compiled = []
    real_compile = torch.compile

    def compile_eagerly(fn, **kw):
        compiled.append(fn)
        return real_compile(fn, backend="eager", **kw)

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    objective, dataset = worker.build_run(in_channels=1)
    eager, _ = worker.build_run(in_channels=1)
    config = dict(steps=3, batch_size=2, lr=1e-3, warmup_steps=1, device="cpu", progress=False, seed=0)
    train(objective, dataset, TrainConfig(compile=True, **config), tmp_path / "compiled")
    assert len(compiled) == 1 and compiled[0].__func__ is type(objective.model).encode  # the backbone's encoder
    assert "encode" not in vars(objective.model)  # restored after the run
    train(eager, dataset, TrainConfig(**config), tmp_path / "eager")
    records = [json.loads((tmp_path / run / "metrics.json").read_text())["records"] for run in ("compiled", "eager")]
    np.testing.assert_allclose([r["loss"] for r in records[0]], [r["loss"] for r in records[1]], rtol=1e-4)
    # The setting may differ between a run and its restart (it changes no weight).
    summary = train(eager, dataset, TrainConfig(compile=True, **config), tmp_path / "eager")
    assert summary["resumed_from"] == 3
