"""kit.train: the one training loop (device, AMP, accumulation, DDP via torchrun, checkpoint/resume,
progress bar, metrics log) and the deterministic sampling it relies on.

Example:
    >>> from kit.train import TrainConfig, train, ArrayCropDataset   # doctest: +SKIP
    >>> summary = train(objective, ArrayCropDataset(volumes, 32), TrainConfig(steps=100), "runs/02_stage1")  # doctest: +SKIP

Multi-GPU (or multi-process CPU) runs use the same code, launched with torchrun::

    python -m torch.distributed.run --standalone --nproc_per_node 4 my_script.py
"""

from kit.devices import resolve_amp, resolve_device
from kit.train.distributed import cleanup, is_main, setup_distributed
from kit.train.loop import CHECKPOINT_NAME, METRICS_JSON, METRICS_JSONL, TrainConfig, train
from kit.train.sampling import ArrayCropDataset, GlobalBatchSampler, epoch_permutation, sample_seed

__all__ = [
    "TrainConfig",
    "train",
    "resolve_amp",
    "CHECKPOINT_NAME",
    "METRICS_JSON",
    "METRICS_JSONL",
    "setup_distributed",
    "resolve_device",
    "is_main",
    "cleanup",
    "GlobalBatchSampler",
    "ArrayCropDataset",
    "sample_seed",
    "epoch_permutation",
]
