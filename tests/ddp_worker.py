"""Training worker for the loop tests: the same small run, launched as a separate process.

Used two ways:
- under torchrun (``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py ...``)
  for the DDP-equals-one-process test (gloo on CPU);
- as a plain ``python tests/ddp_worker.py ... --kill-at-step K`` that SIGKILLs itself right after
  step K, for the kill-and-restart test.

:func:`build_run` is also imported by the tests so that every process builds exactly the same data
and initial weights.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from kit.models import create_model
from kit.ssl import create_objective
from kit.train.distributed import cleanup
from kit.train.loop import TrainConfig, train
from kit.train.sampling import ArrayCropDataset

VOLUME_SHAPE = (32, 32, 32)
CROP = 24


def smooth_volumes(n: int, channels: int, shape=VOLUME_SHAPE, seed: int = 0) -> list[np.ndarray]:
    """``n`` random smooth volumes (C, D, H, W) scaled to [0, 1]: Gaussian-filtered noise plus a blob."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    volumes = []
    for _ in range(n):
        channels_out = []
        for _ in range(channels):
            noise = gaussian_filter(rng.standard_normal(shape), sigma=3)
            centre = rng.uniform(-0.4, 0.4, size=(3, 1, 1, 1))
            blob = np.exp(-((grid - centre) ** 2).sum(0) / 0.2)
            v = noise / (np.abs(noise).max() + 1e-8) + blob
            channels_out.append((v - v.min()) / (v.max() - v.min()))
        volumes.append(np.stack(channels_out).astype(np.float32))
    return volumes


#: objective -> its options in the loop tests (small crops: MIM patches of 8, a small queue)
OBJECTIVE_CFG = {
    "swin_trio": {},
    "cross_contrast": {"weights": {"recon_dropped": 1.0}},
    "mim": {"patch_size": 8, "mask_ratio": 0.6},
    "anatomy_hierarchy": {"queue_size": 8, "total_steps": 3, "momentum": 0.9},
}


def build_run(in_channels: int = 1, n_volumes: int = 6, model_seed: int = 0, mix_prob: float = 0.0, data_seed: int = 0,
              crop: int = CROP, objective: str = "swin_trio"):
    """(objective, dataset) for the tests: segresnet_small with ``objective`` (default swin_trio) on ``crop``^3 crops."""
    dataset = ArrayCropDataset(smooth_volumes(n_volumes, in_channels, seed=data_seed), crop)
    torch.manual_seed(model_seed)
    model = create_model("segresnet_small", in_channels=in_channels)
    cfg = {"mix_prob": mix_prob} if objective == "swin_trio" else json.loads(json.dumps(OBJECTIVE_CFG[objective]))
    return create_objective(objective, model, **cfg), dataset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--ckpt-every", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mix-prob", type=float, default=0.0)
    parser.add_argument("--objective", default="swin_trio", choices=sorted(OBJECTIVE_CFG))
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    parser.add_argument("--kill-at-step", type=int, default=None, help="SIGKILL this process after that step")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    objective, dataset = build_run(mix_prob=args.mix_prob, objective=args.objective)
    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        warmup_steps=args.warmup_steps, ckpt_every=args.ckpt_every, seed=args.seed,
        num_workers=args.num_workers, device="cpu", progress=False,
    )

    def kill_after(step: int, record: dict) -> None:
        if args.kill_at_step is not None and step >= args.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally blocks: like a crash or OOM kill

    summary = train(objective, dataset, config, args.run_dir, modalities=["t1"], callback=kill_after)
    cleanup()
    print("summary", summary, file=sys.stderr)


if __name__ == "__main__":
    main()
