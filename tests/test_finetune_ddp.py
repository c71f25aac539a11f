"""Fine-tuning under DDP (torchrun, gloo, CPU): 2 ranks train the same weights as 1 process with the same global batch.

The fine-tune is the kill-and-restart test's (tests/finetune_worker.py: segmentation, 7 steps, augmentation,
validation-based model selection every 2 steps), run through the one loop (kit.train.train). The global batch is 4
samples a step: 2 ranks x 1 sample x 2 accumulation steps, or 1 process x 1 sample x 4. The micro-batch is 1 sample
in both because the segmentation loss's Dice is a batch Dice (pooled over each micro-batch, as MONAI's
``DiceLoss(batch=True)``): 1 process x 2 samples would pool two samples that DDP keeps on two ranks.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kit.models import load_checkpoint
from test_finetune import cache  # noqa: F401  (module fixture: real NIfTI files and their cache)

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("finetune_worker.py")
_spec = importlib.util.spec_from_file_location("finetune_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def test_two_ranks_fine_tune_as_one_process_with_the_same_global_batch(cache, tmp_path):  # noqa: F811
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    ddp_out = tmp_path / "ddp.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
               "--cache", str(cache.root), "--run-dir", str(tmp_path / "ddp"), "--batch-size", "1", "--grad-accum", "2", "--out", str(ddp_out)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank
    try:
        single = worker.run(cache.root, tmp_path / "single", "segmentation", batch_size=1, grad_accum=4)
    finally:
        torch.set_num_threads(threads)
    single.save(tmp_path / "single.pt")

    ddp, one = load_checkpoint(ddp_out), load_checkpoint(tmp_path / "single.pt")
    assert ddp["extra"]["summary"]["best_step"] == one["extra"]["summary"]["best_step"]  # the same model selected
    assert ddp["extra"]["summary"]["best_val"] == pytest.approx(one["extra"]["summary"]["best_val"], abs=1e-5)
    assert ddp["state_dict"].keys() == one["state_dict"].keys()
    floats = [k for k, v in one["state_dict"].items() if v.is_floating_point()]
    worst = max((ddp["state_dict"][k] - one["state_dict"][k]).abs().max().item() for k in floats)
    assert worst < 1e-4, worst
