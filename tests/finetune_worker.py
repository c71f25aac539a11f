"""Fine-tuning worker for the kill-and-restart test: one small fine-tune, run as its own process.

``python tests/finetune_worker.py --cache DIR --run-dir DIR --task segmentation --kill-at-step K`` fine-tunes on
the cache the test built and SIGKILLs itself right after step K; without ``--kill-at-step`` it runs to the end
(resuming from ``--run-dir`` when a checkpoint is there) and saves the fine-tuned model to ``--out``. Under
``torchrun --nproc_per_node 2`` it is one rank of a DDP fine-tune (tests/test_finetune_ddp.py).
:func:`run` is imported by the test too, so the uninterrupted reference is the very same fine-tune.
"""

from __future__ import annotations

import argparse
import os
import signal

import torch

from kit.data.cache import open_cache
from kit.finetune import FinetuneConfig, finetune
from kit.train.distributed import cleanup, is_main

BRATS21 = {"TC": [1, 4], "WT": [1, 2, 4], "ET": [4]}


def config_for(task: str, **overrides) -> FinetuneConfig:
    """7 steps, checkpoints every 3, validation every 2 (so the kill falls between both), 2 micro-batches per step."""
    base = dict(backbone="segresnet_small", model={"init_filters": 8}, steps=7, batch_size=1, grad_accum=2, lr=1e-2,
                warmup_steps=2, crop=16, device="cpu", augment=True, val_every=2, ckpt_every=3, pos_fraction=0.8,
                inference="whole")
    if task == "classification":
        base.update(task="classification", target="tumor_present", input_size=16, dropout=0.3, freeze_encoder=False)
    return FinetuneConfig(**{**base, **overrides})


def run(cache_dir, run_dir, task: str, kill_at_step: int | None = None, **overrides):
    """The fine-tune of the test (train on s0, s1, s3; validate on s2); returns its FinetuneResult."""
    cache = open_cache(cache_dir)

    def kill_after(step: int, record: dict) -> None:
        if kill_at_step is not None and step >= kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally blocks: like a crash or OOM kill

    kwargs = {"regions": BRATS21} if task == "segmentation" else {"classes": [0, 1]}
    return finetune(config_for(task, **overrides), cache, [0, 1, 3], val_indices=[2], run_dir=run_dir,
                    callback=kill_after, **kwargs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--task", default="segmentation", choices=["segmentation", "classification"])
    parser.add_argument("--kill-at-step", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=1, help="per process (under torchrun: per rank)")
    parser.add_argument("--grad-accum", type=int, default=2, help="micro-batches per optimizer step")
    parser.add_argument("--out", default=None, help="save the fine-tuned model here (rank 0 under torchrun)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = run(args.cache, args.run_dir, args.task, args.kill_at_step, num_workers=args.num_workers,
                 batch_size=args.batch_size, grad_accum=args.grad_accum)
    if args.out and is_main():
        result.save(args.out)
    cleanup()


if __name__ == "__main__":
    main()
