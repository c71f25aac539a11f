"""The one training loop of brainfm-kit, readable top to bottom (in the spirit of nanoGPT's train.py).

``train(objective, dataset, config, run_dir)`` optimises an SSL objective (backbone + heads), or a
fine-tuning task (network + loss, :class:`kit.finetune.task.FinetuneTask`), with
AdamW and a warmup-cosine schedule, on CPU or GPU (AMP), with gradient accumulation and data
parallelism (torchrun + DistributedDataParallel), and leaves in ``run_dir``:

    checkpoint.pt    model_config + objective state_dict + everything needed to resume exactly
    metrics.jsonl    one JSON record per logged optimizer step, appended as training goes
    metrics.json     {'summary': ..., 'records': [...]}, written at the end

Determinism: every random choice about the data comes from per-sample seeds
(:mod:`kit.train.sampling`); anything else random (global torch / numpy / python RNGs) is seeded
at the start and stored in the checkpoint, so that on CPU a run that is killed and restarted ends
with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from monai.optimizers import WarmupCosineSchedule
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from kit.devices import AMP_CHOICES, resolve_amp
from kit.models.backbones import complete_config
from kit.models.checkpoints import CheckpointError, LoadReport, load_checkpoint, load_weights, save_checkpoint
from kit.models.transfer import init_from_checkpoint
from kit.tempfiles import remove_stale_temporaries, write_text_atomic
from kit.train.distributed import setup_distributed
from kit.train.sampling import GlobalBatchSampler

__all__ = ["TrainConfig", "train", "resolve_amp", "CHECKPOINT_NAME", "METRICS_JSONL", "METRICS_JSON"]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_JSONL = "metrics.jsonl"
METRICS_JSON = "metrics.json"

# Config fields that may differ between a run and its restart: they change bookkeeping, not weights.
RESUME_MAY_DIFFER = ("progress", "num_workers", "log_every", "ckpt_every", "compile", "tensorboard")
TENSORBOARD_DIR = "tensorboard"


@dataclass
class TrainConfig:
    """Plain values that define a training run (like nanoGPT's globals).

    Attributes:
        steps: optimizer steps of the whole run.
        batch_size: samples per process per micro-step; the global batch per optimizer step is
            ``batch_size * world_size * grad_accum``.
        grad_accum: micro-steps (forward/backward passes) per optimizer step.
        lr, weight_decay, betas: AdamW; lr is the peak of the schedule.
        warmup_steps: linear warmup from 0 to lr, then cosine decay to 0 at ``steps``
            (monai.optimizers.WarmupCosineSchedule, stepped once per optimizer step).
        max_grad_norm: clip the global gradient L2 norm to this; None disables clipping.
        amp: 'auto' (bf16 on CUDA when supported, else fp16 with a GradScaler; off on CPU), 'bf16',
            'fp16' or 'off'.
        device: 'auto' (CUDA when available), 'cpu' or 'cuda'.
        ckpt_every: write run_dir/checkpoint.pt every this many optimizer steps (and at the end).
        log_every: log a metrics record every this many optimizer steps (and at the last step).
        seed: run seed; fixes data order, crops and augmentations (see kit.train.sampling).
        num_workers: DataLoader worker processes.
        progress: show a tqdm progress bar (rank 0 only).
        compile: ``torch.compile`` the backbone's encoder (``model.encode``, what every SSL objective
            runs) for this run; off by default (the first steps then pay the compilation, about a
            minute for SwinUNETR; the view making and the losses stay eager).
        tensorboard: also write each logged record (loss terms, lr, grad_norm, samples_per_s) as
            TensorBoard scalars ``train/NAME`` into ``run_dir/tensorboard`` (rank 0; needs the
            ``tensorboard`` package, the ``tensorboard`` extra); metrics.jsonl is written either way.

    On CUDA the optimizer is the fused AdamW kernel (``fused=True``, when every trained parameter is
    on the GPU); elsewhere PyTorch's default implementation.

    Example:
        >>> TrainConfig(steps=30, batch_size=2, lr=1e-3).grad_accum
        1
    """

    steps: int = 100
    batch_size: int = 2
    grad_accum: int = 1
    lr: float = 4e-4
    weight_decay: float = 0.1
    warmup_steps: int = 10
    betas: tuple = (0.9, 0.999)
    max_grad_norm: float | None = 1.0
    amp: str = "auto"
    device: str = "auto"
    ckpt_every: int = 50
    log_every: int = 1
    seed: int = 0
    num_workers: int = 0
    progress: bool = True
    compile: bool = False
    tensorboard: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "ckpt_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.warmup_steps < 0 or self.num_workers < 0:
            raise ValueError("TrainConfig.warmup_steps and num_workers must be >= 0")
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"TrainConfig.amp must be one of {AMP_CHOICES}, got {self.amp!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"TrainConfig.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        self.betas = tuple(float(b) for b in self.betas)


def train(
    objective: nn.Module,
    dataset: Dataset,
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    init_checkpoint: str | os.PathLike | None = None,
    modalities: list[str] | None = None,
    callback: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train ``objective`` on ``dataset``; resume from ``run_dir/checkpoint.pt`` when it exists.

    Args:
        objective: an SSL objective (kit.ssl.create_objective) or a fine-tuning task
            (kit.finetune.task.FinetuneTask); ``objective(batch, seeds)`` returns
            {'loss': total, '<term>': ...}; ``objective.model`` is the network, whose ``config``
            dict is stored so that later stages can rebuild it. All its trainable parameters are
            optimised. After each optimizer step the loop calls ``objective.on_step_end(step)``;
            an objective whose ``should_stop`` is then True (early stopping on validation) ends
            the run there, with a final checkpoint marked complete.
        dataset: map-style dataset keyed by ``(index, sample_seed)`` returning a float tensor
            (C, D, H, W) (e.g. kit.train.sampling.ArrayCropDataset) or an ``(input, target)`` pair
            of tensors (a fine-tuning task's data).
        config: TrainConfig.
        run_dir: folder for checkpoint.pt, metrics.jsonl and metrics.json (created).
        init_checkpoint: checkpoint of a previous stage to initialise the weights from when
            starting fresh (ignored on resume); input channels are transferred when the
            modalities differ.
        modalities: names of the input channels in order (stored; used by init_checkpoint).
        callback: ``callback(step, record)`` called on rank 0 after each logged step.

    Returns:
        summary dict: steps, steps_run, stopped_early, resumed_from (step or None), final (last value of each loss term),
        wall_s (all sessions), samples_per_s (this session), global_batch_size, world_size, paths.

    Example:
        >>> from kit.models import create_model
        >>> from kit.ssl import create_objective
        >>> from kit.train.sampling import ArrayCropDataset
        >>> volumes = [np.random.rand(1, 40, 40, 40).astype('float32') for _ in range(4)]
        >>> objective = create_objective('swin_trio', create_model('segresnet_small', in_channels=1))
        >>> summary = train(objective, ArrayCropDataset(volumes, 32), TrainConfig(steps=2, progress=False), 'runs/demo')  # doctest: +SKIP
    """
    rank, world_size, _, device = setup_distributed(config.device)
    is_main = rank == 0
    run_dir = Path(run_dir)
    checkpoint_path = run_dir / CHECKPOINT_NAME
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(checkpoint_path)  # a run killed while writing its checkpoint

    # ---- model, optimizer, schedule, mixed precision --------------------------------------------
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick the fastest kernels
    objective.to(device)
    amp_dtype = resolve_amp(config.amp, device)
    # A GradScaler only for fp16: bf16 has float32's exponent range and needs no loss scaling.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    params = [p for p in objective.parameters() if p.requires_grad]
    # An objective may bring its own AdamW groups (a fine-tuning protocol, kit.finetune.task.protocol_groups):
    # each with its peak lr, and a group with a start_step at lr 0 until then (then warmup-cosine over the rest).
    groups = objective.param_groups(config.lr) if hasattr(objective, "param_groups") else None
    if groups:
        params = [p for group in groups for p in group["params"]]
    # One fused kernel for the whole update on the GPU, instead of a few per parameter tensor.
    fused = bool(params) and all(p.is_cuda for p in params)
    optimizer = torch.optim.AdamW(
        groups or params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay, fused=fused or None
    )
    starts = [int(group.get("start_step", 0)) for group in optimizer.param_groups]
    if any(starts):
        if world_size > 1:  # DDP registers gradient hooks only for the parameters trainable at its start
            raise ValueError("train: parameter groups that start later (lp-ft) are not supported with several processes")
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, [_DelayedWarmupCosine(config.warmup_steps, config.steps, start) for start in starts])
    else:
        scheduler = WarmupCosineSchedule(optimizer, warmup_steps=config.warmup_steps, t_total=config.steps)
    identity = {
        "model_config": dict(objective.model.config),
        "objective": dict(objective.config),
        "modalities": list(modalities) if modalities is not None else None,
    }

    # ---- fresh start or resume ------------------------------------------------------------------
    start_step, records, elapsed_before, resumed, init_report, finished = 0, [], 0.0, False, None, False
    if checkpoint_path.exists():
        checkpoint = load_checkpoint(checkpoint_path, map_location="cpu")
        extra = checkpoint.get("extra") or {}
        _check_resumable(checkpoint_path, checkpoint, config, world_size, identity, tuple(objective.checkpoint_extra()))
        objective.model.load_state_dict(checkpoint["state_dict"])  # strict: same run, same keys
        objective.load_checkpoint_extra(extra)  # the heads
        optimizer.load_state_dict(extra["optimizer"])
        for group in optimizer.param_groups:  # the kernel follows this run's device, not the stored one
            group["fused"] = fused or None
        scheduler.load_state_dict(extra["scheduler"])
        scaler.load_state_dict(extra["scaler"])
        start_step, records, elapsed_before = int(extra["step"]), list(extra["metrics"]), float(extra["elapsed_s"])
        finished = bool(extra.get("complete"))  # the last step, or the objective asked to stop there
        _set_rng_states(extra["rng"][rank], device)
        resumed = True
    else:
        _seed_everything(config.seed + rank)
        if init_checkpoint is not None:
            init_report = _initialise_from(objective, init_checkpoint, modalities)
            if is_main:
                tqdm.write(f"initialised from {init_checkpoint}:\n{init_report.summary()}")

    global_batch = config.batch_size * world_size * config.grad_accum
    paths = {"run_dir": str(run_dir), "checkpoint": str(checkpoint_path), "metrics": str(run_dir / METRICS_JSON)}

    def summarise(session_steps: int, session_s: float, total_s: float) -> dict:
        last = records[-1] if records else {}
        return {
            "steps": config.steps,
            "steps_run": steps_run,
            "stopped_early": steps_run < config.steps,
            "resumed_from": start_step if resumed else None,
            "final": {k: v for k, v in last.items() if k not in ("step", "lr", "grad_norm", "samples_per_s", "elapsed_s")},
            "wall_s": total_s,
            "samples_per_s": session_steps * global_batch / session_s if session_s > 0 else None,
            "global_batch_size": global_batch,
            "world_size": world_size,
            "init_report": init_report.summary() if init_report is not None else None,
            **paths,
        }

    steps_run = start_step
    if finished or start_step >= config.steps:  # finished earlier: make sure metrics.json is there and stop
        summary = summarise(0, 0.0, elapsed_before)
        if is_main and not (run_dir / METRICS_JSON).exists():
            _write_json_atomic(run_dir / METRICS_JSON, {"summary": summary, "records": records})
        return summary

    # metrics.jsonl restarts from what the checkpoint knows: entries logged after it are dropped.
    if is_main:
        write_text_atomic(run_dir / METRICS_JSONL, "".join(json.dumps(r) + "\n" for r in records), fsync=True)

    model = objective
    if world_size > 1:
        model = DistributedDataParallel(
            objective,
            device_ids=[device.index] if device.type == "cuda" else None,
            # Objectives freeze what their active terms do not use, so every trainable parameter
            # normally gets a gradient; an objective that cannot promise it says so here.
            find_unused_parameters=getattr(objective, "find_unused_parameters", False),
        )

    # ---- data: this rank's micro-batches from step start_step on --------------------------------
    sampler = GlobalBatchSampler(
        len(dataset), config.batch_size, config.seed, config.steps,
        start_step=start_step, grad_accum=config.grad_accum, world_size=world_size, rank=rank,
    )
    loader = DataLoader(
        _WithSeeds(dataset),
        batch_sampler=sampler,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        # Own generator: creating the iterator must not draw from the global RNG (resume exactness).
        generator=torch.Generator().manual_seed(config.seed),
    )
    batches = iter(loader)

    if config.compile:
        # An instance attribute shadows the method for this run only (removed in the finally below);
        # state_dict keys and checkpoints are unchanged.
        objective.model.encode = torch.compile(objective.model.encode)

    # ---- the loop -------------------------------------------------------------------------------
    log_file = open(run_dir / METRICS_JSONL, "a", encoding="utf-8") if is_main else None
    board = _tensorboard_writer(run_dir, start_step if resumed else None) if is_main and config.tensorboard else None
    bar = tqdm(total=config.steps, initial=start_step, disable=not (is_main and config.progress), unit="step")
    objective.train()
    t_session = t_window = time.perf_counter()
    window_steps, term_names = 0, None
    try:
        for step in range(start_step, config.steps):
            lr = optimizer.param_groups[0]["lr"]
            term_sums = None
            for micro_step in range(config.grad_accum):
                batch, seeds = next(batches)
                batch = _to_device(batch, device)
                last_micro = micro_step == config.grad_accum - 1
                # Gradients are all-reduced by DDP only on the last micro-step of an optimizer step.
                no_sync = model.no_sync() if world_size > 1 and not last_micro else contextlib.nullcontext()
                with no_sync:
                    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                        out = model(batch, seeds)
                    scaler.scale(out["loss"] / config.grad_accum).backward()
                if term_names is None:
                    term_names = ["loss"] + [k for k in out if k != "loss"]
                terms = torch.stack([out[k].detach().float() for k in term_names])
                term_sums = terms if term_sums is None else term_sums + terms

            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            max_norm = config.max_grad_norm if config.max_grad_norm is not None else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            scaler.step(optimizer)  # skipped by the scaler when fp16 gradients overflowed
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            done = step + 1
            objective.on_step_end(done)  # e.g. momentum encoders, a fine-tune's validation
            # A task that selects its model on validation may stop early (kit.finetune): the
            # checkpoint below then says complete, so a restart does not train on.
            stop = bool(getattr(objective, "should_stop", False))
            steps_run = done
            window_steps += 1

            if done % config.log_every == 0 or done == config.steps:
                term_means = term_sums / config.grad_accum
                if world_size > 1:  # average over ranks: the loss of the global batch
                    dist.all_reduce(term_means)  # SUM (gloo has no AVG)
                    term_means /= world_size
                values = term_means.tolist()
                now = time.perf_counter()
                record = {"step": done, **dict(zip(term_names, values)), "lr": lr, "grad_norm": float(grad_norm),
                          "samples_per_s": window_steps * global_batch / max(now - t_window, 1e-9),
                          "elapsed_s": elapsed_before + now - t_session}
                t_window, window_steps = now, 0
                if not math.isfinite(values[0]) and not scaler.is_enabled():
                    raise FloatingPointError(f"training loss is {values[0]} at step {done} (run_dir {run_dir}); "
                                             "lower lr or check the data for NaN/inf")
                if is_main:
                    records.append(record)
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                    if board is not None:
                        for name, value in record.items():
                            if name != "step":
                                board.add_scalar(f"train/{name}", value, done)
                    bar.set_postfix(loss=f"{values[0]:.4f}", lr=f"{lr:.2e}")
                    if callback is not None:
                        callback(done, record)
            bar.update(1)

            if done % config.ckpt_every == 0 or done == config.steps or stop:
                rng_states = _gather_rng_states(device, world_size)
                if is_main:
                    # state_dict = the network alone (an SSL objective's backbone, which later stages
                    # load with kit.models.init_from_checkpoint); the objective's own state (SSL
                    # heads, a fine-tune's model selection) goes to extra.
                    save_checkpoint(
                        checkpoint_path,
                        model_config=identity["model_config"],
                        state_dict=objective.model.state_dict(),
                        extra={
                            **objective.checkpoint_extra(),  # SSL: 'ssl_objective', 'ssl_state'
                            "step": done,
                            "complete": done == config.steps or stop,
                            "config": asdict(config),
                            "world_size": world_size,
                            "objective": identity["objective"],
                            "modalities": identity["modalities"],
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "scaler": scaler.state_dict(),
                            "metrics": records,
                            "elapsed_s": elapsed_before + time.perf_counter() - t_session,
                            "rng": rng_states,
                        },
                    )
            if stop:
                break
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
        if board is not None:
            board.close()
        if config.compile:
            objective.model.__dict__.pop("encode", None)

    session_s = time.perf_counter() - t_session
    summary = summarise(steps_run - start_step, session_s, elapsed_before + session_s)
    if is_main:
        _write_json_atomic(run_dir / METRICS_JSON, {"summary": summary, "records": records})
    if world_size > 1:
        dist.barrier()  # every rank returns after rank 0 has written its files
    return summary


# ---- helpers ------------------------------------------------------------------------------------


class _DelayedWarmupCosine:
    """The lr multiplier of a group that starts at ``start``: 0 before, then monai's WarmupCosineSchedule
    (linear warmup over ``warmup`` steps, cosine to 0) over the steps ``start`` .. ``total``.

    Example:
        >>> f = _DelayedWarmupCosine(warmup=2, total=10, start=4)
        >>> [round(f(s), 3) for s in (0, 3, 4, 5, 6, 8, 10)]
        [0.0, 0.0, 0.0, 0.5, 1.0, 0.5, 0.0]
    """

    def __init__(self, warmup: int, total: int, start: int) -> None:
        self.start, self.total = int(start), int(total)
        self.warmup = min(max(int(warmup), 0), self.total - self.start)

    def __call__(self, step: int) -> float:
        if step < self.start:
            return 0.0
        step -= self.start
        if step < self.warmup:
            return float(step) / float(max(1.0, self.warmup))
        progress = float(step - self.warmup) / float(max(1, self.total - self.start - self.warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))



def _to_device(batch: Any, device: torch.device) -> Any:
    """A batch on ``device``: SSL crops as float32 (B, C, D, H, W) or 2D (B, C, H, W) tensors; a task's
    (input, target) pair as given (kit.finetune)."""
    if isinstance(batch, (list, tuple)):
        return type(batch)(t.to(device, non_blocking=True) for t in batch)
    if batch.ndim not in (4, 5):  # 2D slices (moco_v3) or 3D crops
        raise ValueError(f"the dataset returned samples shaped {tuple(batch.shape[1:])}; expected (C, D, H, W) or (C, H, W)")
    return batch.to(device, non_blocking=True).float()


def _tensorboard_writer(run_dir: Path, resumed_at: int | None):
    """A SummaryWriter on ``run_dir/tensorboard``; on resume, events a killed session logged after the
    checkpoint's step are purged, as metrics.jsonl drops them."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # torch's module imports the tensorboard package
        raise ImportError("TrainConfig(tensorboard=True) needs the tensorboard package: "
                          "pip install 'brainfm-kit[tensorboard]'") from err
    purge = resumed_at + 1 if resumed_at is not None else None
    return SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=purge)


class _WithSeeds(Dataset):
    """Wraps a keyed dataset so that each sample comes back with its seed: ``key -> (x, seed)``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, int]:
        return self.dataset[key], key[1]


def _comparable(value: Any) -> Any:
    """Lists and tuples compare equal after a save/load round trip."""
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    return value


def _check_resumable(path: Path, checkpoint: dict, config: TrainConfig, world_size: int, identity: dict,
                     objective_keys: tuple[str, ...]) -> None:
    """Raise a ValueError naming ``path`` and every setting that differs from the stored run."""
    extra = checkpoint.get("extra") or {}
    required = ("step", "config", "optimizer", "scheduler", "scaler", "metrics", "rng", "elapsed_s", *objective_keys)
    missing = [k for k in required if k not in extra]
    if missing:
        raise ValueError(f"{path} is not a resumable training checkpoint (extra lacks {missing}); "
                         "delete it or use a new run_dir")
    stored, current = dict(extra["config"]), asdict(config)
    differences = [
        f"{k}: stored {stored.get(k)!r}, now {current.get(k)!r}"
        for k in sorted(set(stored) | set(current))
        if k not in RESUME_MAY_DIFFER and _comparable(stored.get(k)) != _comparable(current.get(k))
    ]
    if extra.get("world_size") != world_size:
        differences.append(f"world_size: stored {extra.get('world_size')!r}, now {world_size!r}")
    if _comparable(complete_config(checkpoint.get("model_config") or {})) != _comparable(complete_config(identity["model_config"])):
        differences.append(f"model_config: stored {checkpoint.get('model_config')!r}, now {identity['model_config']!r}")
    for key in ("objective", "modalities"):
        if _comparable(extra.get(key)) != _comparable(identity[key]):
            differences.append(f"{key}: stored {extra.get(key)!r}, now {identity[key]!r}")
    if differences:
        raise ValueError(
            f"cannot resume from {path}: it was written by a run with different settings ("
            + "; ".join(differences)
            + "). Delete that folder or pass a new run_dir to start over."
        )


def _initialise_from(objective: nn.Module, path: str | os.PathLike, modalities: list[str] | None) -> LoadReport:
    """Load a previous stage's weights into ``objective`` (stage 2 from stage 1).

    The backbone must fit completely (kit.models.init_from_checkpoint, strict), the input layers
    mapped by contrast name when the modalities differ. Head tensors of the stored objective are
    loaded where they fit; the others (another objective's heads, or a head whose shape follows the
    channel count) keep their initial values, and the returned report lists them.
    """
    path = Path(path)
    checkpoint = load_checkpoint(path, map_location="cpu")
    extra = checkpoint.get("extra") or {}
    backbone = objective.model
    try:
        backbone_report = init_from_checkpoint(backbone, checkpoint, modalities=modalities, source=path)
    except CheckpointError as err:
        raise ValueError(f"init_checkpoint {path}: its backbone does not fit this objective's backbone: {err}") from err
    # Heads: load what fits, on top of the backbone just loaded.
    heads = dict(extra.get("ssl_state") or {})
    full = {**{"model." + k: v for k, v in backbone.state_dict().items()}, **heads}
    own_heads = tuple(k for k in objective.state_dict() if not k.startswith("model."))
    report = load_weights(objective, full, allow_missing=own_heads, allow_unexpected=tuple(heads))
    report.transferred = ["model." + k for k in backbone_report.transferred]
    report.notes = backbone_report.notes + report.notes + [f"initialised from {path} (objective {extra.get('ssl_objective', {}).get('name')!r})"]
    return report


def _seed_everything(seed: int) -> None:
    """Seed the global RNGs (dropout, anything not driven by the per-sample seeds)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_states(device: torch.device) -> dict:
    """This process's global RNG states, as tensors and plain values (loadable with weights_only)."""
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached_gauss)),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_states(state: dict, device: torch.device) -> None:
    """Restore what :func:`_rng_states` captured."""
    random.setstate(_as_tuples(state["python"]))
    kind, keys, position, has_gauss, cached_gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gauss))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _as_tuples(value: Any) -> Any:
    """random.setstate wants nested tuples back."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _gather_rng_states(device: torch.device, world_size: int) -> list[dict]:
    """Every rank's RNG states, in rank order (each rank restores its own on resume)."""
    state = _rng_states(device)
    if world_size == 1:
        return [state]
    gathered: list = [None] * world_size
    dist.all_gather_object(gathered, state)
    return gathered


def _write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=1) + "\n", fsync=True)
