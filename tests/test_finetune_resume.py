"""A fine-tune killed with SIGKILL and restarted from its run folder ends exactly as an uninterrupted one.

Fine-tuning runs in the one training loop (kit.train.train) as a kit.finetune.task.FinetuneTask, so it
checkpoints atomically and resumes exactly, as pretraining does (tests/test_train_loop.py); the model
selection on validation (best weights, curve, patience counter) travels in the same checkpoints.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kit.models import load_checkpoint, load_finetuned
from test_finetune import cache  # noqa: F401  (module fixture: real NIfTI files and their cache)

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("finetune_worker.py")
_spec = importlib.util.spec_from_file_location("finetune_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def run_worker(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, str(WORKER), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key, value in a.items():
        assert torch.equal(value, b[key]), (what, key)


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_finetune_restart_after_sigkill_gives_identical_weights(cache, tmp_path, task):  # noqa: F811
    crashed, reference = tmp_path / "crashed", tmp_path / "reference"
    killed = run_worker("--cache", str(cache.root), "--run-dir", str(crashed), "--task", task, "--kill-at-step", "5")
    assert killed.returncode == -9, killed.stderr
    stored = load_checkpoint(crashed / "checkpoint.pt")["extra"]
    assert stored["step"] == 3 and not stored["complete"]
    assert [h["step"] for h in stored["selection"]["val_history"]] == [2]  # validated at 2, killed after 5

    # Restart in another process, with a DataLoader worker this time (allowed to differ).
    restarted = run_worker("--cache", str(cache.root), "--run-dir", str(crashed), "--task", task, "--num-workers", "1",
                           "--out", str(tmp_path / "resumed.pt"))
    assert restarted.returncode == 0, restarted.stderr

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers
    try:
        result = worker.run(cache.root, reference, task)  # uninterrupted, in this process
    finally:
        torch.set_num_threads(threads)

    ref_ckpt, res_ckpt = load_checkpoint(reference / "checkpoint.pt"), load_checkpoint(crashed / "checkpoint.pt")
    assert_same_tensors(ref_ckpt["state_dict"], res_ckpt["state_dict"], "last weights")
    ref_sel, res_sel = ref_ckpt["extra"]["selection"], res_ckpt["extra"]["selection"]
    assert_same_tensors(ref_sel["best_state"], res_sel["best_state"], "best weights")
    assert (ref_sel["best_step"], ref_sel["best_score"]) == (res_sel["best_step"], res_sel["best_score"])

    model, extra = load_finetuned(tmp_path / "resumed.pt")  # the selected model of the resumed run
    assert_same_tensors(result.model.state_dict(), model.state_dict(), "selected model")
    assert extra["history"] == result.history and [r["step"] for r in result.history] == list(range(1, 8))
    # (one validation subject: its AUC is NaN, so compare the curves as text)
    assert json.dumps(extra["val_history"]) == json.dumps(result.val_history)
    assert [h["step"] for h in result.val_history] == [2, 4, 6, 7]
    assert extra["summary"]["resumed_from"] == 3 and result.summary["resumed_from"] is None
    assert extra["summary"]["best_step"] == result.summary["best_step"]
