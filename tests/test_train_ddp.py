"""DDP through torchrun (gloo, CPU): 2 processes x batch 1 train the same weights as 1 process x batch 2."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kit.models import load_checkpoint
from kit.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("ddp_worker.py")
_spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

STEPS, GRAD_ACCUM, LR = 3, 2, 1e-4


def full_state(checkpoint: dict) -> dict[str, torch.Tensor]:
    """Backbone + heads of a training checkpoint, with the objective's keys."""
    return {**{"model." + k: v for k, v in checkpoint["state_dict"].items()}, **checkpoint["extra"]["ssl_state"]}


def norm_cancelled_biases(objective: nn.Module) -> set[str]:
    """Biases of convolutions followed by an InstanceNorm (the reconstruction decoder): the norm subtracts
    them, so their exact gradient is 0 and AdamW turns float noise there into lr-sized steps in any run."""
    names = set()
    for prefix, module in objective.named_modules():
        children = list(module.named_children()) if isinstance(module, nn.Sequential) else []
        for (name, conv), (_, norm) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv3d) and isinstance(norm, nn.InstanceNorm3d) and conv.bias is not None:
                names.add(f"{prefix}.{name}.bias")
    return names


@pytest.mark.parametrize("objective", ["swin_trio", "cross_contrast", "mim", "anatomy_hierarchy"])
def test_two_ranks_match_one_process_with_the_same_global_batch(tmp_path, objective):
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
        "--run-dir", str(ddp_dir), "--steps", str(STEPS), "--batch-size", "1", "--grad-accum", str(GRAD_ACCUM),
        "--lr", str(LR), "--warmup-steps", "1", "--ckpt-every", "2", "--mix-prob", "0", "--threads", "1",
        "--objective", objective,
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # The same global batch (2 per micro-step, 2 micro-steps per step) in this process, 1 thread like a rank.
    model, dataset = worker.build_run(mix_prob=0.0, objective=objective)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank (and much faster than 2 threads on a busy 2-core machine)
    try:
        config = TrainConfig(steps=STEPS, batch_size=2, grad_accum=GRAD_ACCUM, lr=LR, warmup_steps=1, ckpt_every=2,
                             seed=0, device="cpu", progress=False)
        train(model, dataset, config, single_dir, modalities=["t1"])
    finally:
        torch.set_num_threads(threads)

    ddp, single = load_checkpoint(ddp_dir / "checkpoint.pt"), load_checkpoint(single_dir / "checkpoint.pt")
    assert ddp["extra"]["world_size"] == 2 and len(ddp["extra"]["rng"]) == 2
    assert ddp["extra"]["step"] == single["extra"]["step"] == STEPS
    fresh = worker.build_run(mix_prob=0.0, objective=objective)[0]
    initial = fresh.state_dict()
    ddp_state, single_state = full_state(ddp), full_state(single)
    assert ddp_state.keys() == single_state.keys() == initial.keys()
    floats = [k for k in initial if initial[k].is_floating_point()]
    # counters and flags (a queue pointer, the schedule's step) must agree exactly
    assert all(torch.equal(ddp_state[k], single_state[k]) for k in initial if k not in floats)
    moved = max((single_state[k] - initial[k]).abs().max().item() for k in floats)
    assert moved > 5e-5  # training changed the weights, so the comparison below means something
    cancelled = norm_cancelled_biases(fresh)
    assert cancelled <= initial.keys()
    worst = max((ddp_state[k] - single_state[k]).abs().max().item() for k in floats if k not in cancelled)
    # Float reduction order differs (all-reduce, gathered contrastive batch), so not bit-equal; a
    # wrong gradient scale between terms would move the weights by a sizeable fraction of an update.
    assert worst < 1e-5 and worst < 0.05 * moved, f"DDP and 1-process weights differ by up to {worst} (updates up to {moved})"

    # The logged losses are the global-batch losses in both runs.
    ddp_log = [json.loads(line) for line in (ddp_dir / "metrics.jsonl").read_text().splitlines()]
    single_log = [json.loads(line) for line in (single_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in ddp_log] == [r["step"] for r in single_log] == list(range(1, STEPS + 1))
    for a, b in zip(ddp_log, single_log):
        terms = ["loss"] + [k for k in b if k not in ("step", "lr", "grad_norm", "samples_per_s", "elapsed_s", "loss")]
        assert terms[1:] and set(terms) == {k for k in a if k not in ("step", "lr", "grad_norm", "samples_per_s", "elapsed_s")}
        for term in terms:
            assert abs(a[term] - b[term]) < 1e-4 * max(1.0, abs(b[term])), (term, a, b)
