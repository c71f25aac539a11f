"""Training throughput of the kit's pretraining path against a plain MONAI loop, in one process.

What is measured (samples/s = crops through one optimizer step of the swin_trio SSL objective):

- kit: ``kit.data.cache.build_cache`` (timed apart: a one-off cost paid before training) +
  ``kit.train.sampling.ArrayCropDataset`` on the memory-mapped cache + ``kit.train.loop.train``
  (AdamW, warmup-cosine, grad clipping, metrics log every step, checkpoint at the end only:
  ``ckpt_every = steps``).
- reference: the loop a user would write from the MONAI tutorials: ``monai.data.Dataset`` +
  ``Compose(LoadImaged, EnsureChannelFirstd, CropForegroundd, NormalizeIntensityd(nonzero,
  channel_wise), SpatialPadd, RandSpatialCropd)`` decoding the .nii.gz files for every sample, a torch
  ``DataLoader`` (same batch size and workers), AdamW with the same clipping, a plain for-loop, no
  cache, no checkpoint. SpatialPadd (a no-op when the brain is larger than the crop) matches
  ArrayCropDataset's zero padding so that batches always collate.

Both paths train the same network (same init seed), on crops of the same synthetic BraTS cohort
(``synth_cohort('tumor', 'brats2021')``, 4 channels flair/t1ce/t1/t2), with the same objective and
the same AMP setting. The rate is taken over the steps after ``--warmup`` (steps warmup+1..steps):
for the kit from the ``elapsed_s`` of metrics.jsonl, for the reference from the same per-step clock;
the first steps (allocator, cuDNN autotuning, worker start-up) are left out of both, and two untimed
steps on random crops warm the process up before the first measured run. Wall time around the whole
call is reported as well.

Why the ratio is the honest figure: absolute samples/s depend on the machine and, on a shared machine,
on whatever else runs; both paths run in the same process, one after the other, on the same model,
data, objective and settings, so kit/reference isolates what the kit changes (the cache and the
loop), not the hardware. The load average is stored with each run to flag a noisy one. On a shared
machine the load drifts, and whichever path runs second pays for it: ``--rounds R`` runs each path R
times in alternating order (kit, reference, reference, kit, ...) and pools the windows; the ratio of
median step times and the per-round ratios are printed next to the pooled one as checks, and
``data s/step`` (what the kit removes) is the least load-sensitive figure.

"data share" is the fraction of the window spent between the end of one optimizer step and the start
of the next forward pass (waiting for the batch, host-to-device copy, loop bookkeeping), measured the
same way in both paths with a forward pre-hook on the objective. "CPU s/step" is the main process's
CPU time per step (DataLoader workers not included): on a shared machine, where wall time includes
waiting for a core, it is the steadier figure (with ``--num-workers 0``).

OpenMP: unless ``--spin-wait`` is given, the script sets ``OMP_WAIT_POLICY=PASSIVE`` (if unset) before
torch loads, for both paths alike (the JSON records it). With the library default, threads spinning
at barriers on a shared 2-core machine made steps about 2x slower, with 5-10 s outliers that fell at
random on one path or the other.

"views share" is the fraction of the window spent making the SSL views (``objective.views``: rotations,
masks, noise), timed around each call (CUDA events on a GPU, which add no synchronisation; the
loop synchronises once per step anyway when it logs the losses).

On CUDA the FLOPs of one training step (forward + backward of the objective on one batch) are counted
with ``torch.utils.flop_counter.FlopCounterMode`` and multiplied by steps/s (achieved TFLOP/s).

Usage:
    python benchmarks/bench_train.py --steps 12 --batch-size 2 --resolution 2 --n 6 --warmup 2
    python benchmarks/bench_train.py --steps 12 --n 6 --rounds 2        # ABBA order, on a shared machine
    python benchmarks/bench_train.py --device cuda --amp bf16 --backbone swinunetr --feature-size 48 \\
        --crop 96 --steps 40 --batch-size 2 --num-workers 4

Writes benchmarks/results/train_<device>.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

# OpenMP threads that spin at barriers burn the cores that the other thread (or another job) needs:
# on a shared 2-core machine steps took 2x longer, with 10 s outliers, than with passive waiting.
# It must be set before torch loads its OpenMP runtime; --spin-wait keeps the library's default.
if "--spin-wait" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import monai  # everything below is imported after the OpenMP setting, on purpose
import torch
from monai.data import Dataset as MonaiDataset
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    LoadImaged,
    NormalizeIntensityd,
    RandSpatialCropd,
    SpatialPadd,
)
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from kit.data.cache import build_cache
from kit.data.synth import synth_cohort
from kit.data.validate import validate_dataset
from kit.devices import resolve_amp
from kit.models import create_model
from kit.ssl import create_objective
from kit.train.loop import METRICS_JSONL, TrainConfig, train
from kit.train.sampling import ArrayCropDataset

CHANNELS = ["flair", "t1ce", "t1", "t2"]  # BraTS 2021 order, as the brats2021 manifest lists them
LR, WEIGHT_DECAY, MAX_GRAD_NORM = 4e-4, 0.1, 1.0  # the kit's TrainConfig defaults, used by both paths


# ---- shared pieces ------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_avg() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def make_objective(args) -> torch.nn.Module:
    """The same network + swin_trio heads for both paths (same seed -> same initial weights)."""
    torch.manual_seed(args.seed)
    if args.backbone == "swinunetr":
        model = create_model("swinunetr", in_channels=len(CHANNELS), out_channels=3, feature_size=args.feature_size)
    else:
        model = create_model("segresnet_small", in_channels=len(CHANNELS), out_channels=3,
                             init_filters=args.init_filters)
    return create_objective("swin_trio", model)


class StepClock:
    """Per-step timestamps and the gap before each forward pass (a forward pre-hook on the objective).

    ``ends[k]`` is when optimizer step k finished (``ends[0]`` = start); ``forward_starts[k - 1]`` is
    when the forward of step k began, so ``forward_starts[k - 1] - ends[k - 1]`` is that step's data
    time. ``cpu_ends[k]`` and ``faults[k]`` are this process's CPU time and minor page faults at the end
of step k (DataLoader workers excluded).
    """

    def __init__(self, objective: torch.nn.Module) -> None:
        self.ends: dict[int, float] = {}
        self.cpu_ends: dict[int, float] = {}
        self.faults: dict[int, int] = {}
        self.forward_starts: list[float] = []
        self.handle = objective.register_forward_pre_hook(
            lambda module, inputs: self.forward_starts.append(time.perf_counter()))

    def mark(self, step: int) -> None:
        self.ends[step] = time.perf_counter()
        self.cpu_ends[step] = time.process_time()
        self.faults[step] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def close(self) -> None:
        self.handle.remove()


class ViewsClock:
    """Time spent in ``objective.views`` per step (wraps the bound method for the run; see ``close``).

    A call belongs to step ``len(step_clock.forward_starts)`` (the forward pre-hook has fired for it).
    """

    def __init__(self, objective: torch.nn.Module, step_clock: StepClock, device: torch.device) -> None:
        self.objective, self.calls, self.cuda = objective, [], device.type == "cuda"
        original = getattr(objective, "views", None)
        if original is None:  # an objective without a separate view step
            return

        def timed(*args, **kwargs):
            step = len(step_clock.forward_starts)
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = original(*args, **kwargs)
                end.record()
            else:
                start = time.perf_counter()
                out = original(*args, **kwargs)
                end = time.perf_counter()
            self.calls.append((step, start, end))
            return out

        objective.views = timed

    def seconds(self, steps: range) -> float | None:
        """Seconds spent making views during ``steps`` (None when the objective has no ``views``)."""
        if not self.calls and getattr(self.objective, "views", None) is None:
            return None
        if self.cuda:
            torch.cuda.synchronize()
            return sum(s.elapsed_time(e) / 1e3 for k, s, e in self.calls if k in steps)
        return sum(e - s for k, s, e in self.calls if k in steps)

    def close(self) -> None:
        self.objective.__dict__.pop("views", None)


def measure(clock: StepClock, warmup: int, steps: int, batch_size: int, window_s: float | None = None,
            views: ViewsClock | None = None) -> dict:
    """Raw figures of one run over steps warmup+1..steps; ``window_s`` overrides the clock's window."""
    window = range(warmup + 1, steps + 1)
    return {
        "views_s": views.seconds(window) if views is not None else None,
        "samples": len(window) * batch_size,
        "window_s": window_s if window_s is not None else clock.ends[steps] - clock.ends[warmup],
        "data_s": sum(clock.forward_starts[k - 1] - clock.ends[k - 1] for k in window),
        "cpu_s": clock.cpu_ends[steps] - clock.cpu_ends[warmup],
        "page_faults": clock.faults[steps] - clock.faults[warmup],
        "step_s": [round(clock.ends[k] - clock.ends[k - 1], 4) for k in window],
    }


def combine(path: str, runs: list[dict], steps: int, batch_size: int) -> dict:
    """One path's figures over all its runs (rounds): totals for rates, the median over all steps."""
    samples = sum(r["samples"] for r in runs)
    window_s = sum(r["window_s"] for r in runs)
    n_steps = samples / batch_size
    wall_s = sum(r["wall_s"] for r in runs)
    return {
        "path": path,
        "samples_per_s": round(samples / window_s, 4),
        "s_per_step": round(window_s / n_steps, 4),
        "median_s_per_step": round(statistics.median(s for r in runs for s in r["step_s"]), 4),
        "cpu_s_per_step": round(sum(r["cpu_s"] for r in runs) / n_steps, 4),
        "data_s_per_step": round(sum(r["data_s"] for r in runs) / n_steps, 4),
        "data_share": round(sum(r["data_s"] for r in runs) / window_s, 4),
        "views_s_per_step": (round(sum(r["views_s"] for r in runs) / n_steps, 4)
                             if all(r.get("views_s") is not None for r in runs) else None),
        "views_share": (round(sum(r["views_s"] for r in runs) / window_s, 4)
                        if all(r.get("views_s") is not None for r in runs) else None),
        "page_faults_per_step": round(sum(r["page_faults"] for r in runs) / n_steps),
        "window_samples": samples,
        "window_s": round(window_s, 3),
        "wall_s": round(wall_s, 3),
        "wall_samples_per_s": round(len(runs) * steps * batch_size / wall_s, 4),
        "runs": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in runs],
    }


# ---- kit path: ArrayCropDataset on the cache + kit.train.loop.train -------------------------------


def run_kit(dataset: ArrayCropDataset, args, device: torch.device, run_dir: Path) -> dict:
    """One kit.train.loop.train run (a fresh run_dir, or it would resume); raw figures."""
    load_before = load_avg()
    objective = make_objective(args)
    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=LR, weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_GRAD_NORM,
        amp=args.amp, device=device.type, ckpt_every=args.steps,  # one checkpoint, at the end
        log_every=1, seed=args.seed, num_workers=args.num_workers, progress=False, compile=args.compile,
    )
    clock = StepClock(objective)
    views = ViewsClock(objective, clock, device)
    sync(device)
    start = time.perf_counter()
    clock.mark(0)
    summary = train(objective, dataset, config, run_dir, callback=lambda step, record: clock.mark(step))
    sync(device)
    wall_s = time.perf_counter() - start
    clock.close()
    views.close()

    # The rate comes from the loop's own clock (metrics.jsonl elapsed_s); the step and data times
    # from the callback clock (the two windows agree to a few ms).
    records = {r["step"]: r for r in map(json.loads, (run_dir / METRICS_JSONL).read_text().splitlines())}
    window_s = records[args.steps]["elapsed_s"] - records[args.warmup]["elapsed_s"]
    return {
        **measure(clock, args.warmup, args.steps, args.batch_size, window_s, views),
        "callback_window_s": clock.ends[args.steps] - clock.ends[args.warmup],
        "train_summary_samples_per_s": summary["samples_per_s"],
        "wall_s": wall_s,
        "final_loss": summary["final"]["loss"],
        "load_avg_before": load_before,
        "load_avg_after": load_avg(),
    }


# ---- reference path: MONAI transforms on the .nii.gz files + a plain loop --------------------------


def reference_dataset(entries: list[dict], crop: int) -> MonaiDataset:
    transform = Compose([
        LoadImaged(keys="image", image_only=True),  # decodes the 4 .nii.gz files of the subject, every time
        EnsureChannelFirstd(keys="image"),
        CropForegroundd(keys="image", source_key="image", margin=2, allow_smaller=True),
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
        SpatialPadd(keys="image", spatial_size=(crop,) * 3),
        RandSpatialCropd(keys="image", roi_size=(crop,) * 3, random_size=False),
    ])
    return MonaiDataset([{"image": e["image"]} for e in entries], transform)


def run_reference(entries: list[dict], args, device: torch.device) -> dict:
    """One plain-loop run: MONAI transforms on the .nii.gz files, DataLoader, AdamW; raw figures."""
    load_before = load_avg()
    dataset = reference_dataset(entries, args.crop)
    # Crop positions: seeded; torch's DataLoader gives every worker a copy of this state (no
    # MONAI worker_init_fn), which changes which crops are drawn, not how long they take.
    dataset.transform.set_random_state(seed=args.seed)
    objective = make_objective(args)
    clock = StepClock(objective)
    views = ViewsClock(objective, clock, device)
    sync(device)
    start = time.perf_counter()  # as for the kit: setup (device copy, optimizer, loader) counts in wall time
    clock.mark(0)
    objective.to(device).train()
    amp_dtype = resolve_amp(args.amp, device)
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.num_workers, persistent_workers=args.num_workers > 0,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(args.seed))
    seeds_rng = torch.Generator().manual_seed(args.seed)
    step = 0
    while step < args.steps:
        for batch in loader:
            # A plain tensor, as the kit's loop gets: MetaTensor bookkeeping is not what we measure.
            x = batch["image"].as_tensor().to(device, non_blocking=True).float()
            seeds = torch.randint(0, 2**62, (x.shape[0],), generator=seeds_rng)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                out = objective(x, seeds)
            scaler.scale(out["loss"]).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            loss = out["loss"].item()  # what a user prints; also syncs CUDA so the clock is true
            step += 1
            clock.mark(step)
            if step == args.steps:
                break
    wall_s = time.perf_counter() - start
    clock.close()
    views.close()
    return {
        **measure(clock, args.warmup, args.steps, args.batch_size, views=views),
        "wall_s": wall_s,
        "final_loss": loss,
        "load_avg_before": load_before,
        "load_avg_after": load_avg(),
    }


# ---- process warm-up and FLOPs of one training step ---------------------------------------------


def warm_up_process(args, device: torch.device, steps: int = 2) -> None:
    """A few untimed training steps on random crops, so that whichever path runs first does not pay
    the process's one-time costs (oneDNN/cuDNN kernel selection, allocator growth) in its window."""
    objective = make_objective(args).to(device).train()
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=LR)
    amp_dtype = resolve_amp(args.amp, device)
    x = torch.randn(args.batch_size, len(CHANNELS), args.crop, args.crop, args.crop, device=device)
    for step in range(steps):
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = objective(x, torch.arange(step * args.batch_size, (step + 1) * args.batch_size))
        out["loss"].float().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)


def count_step_flops(entries: list[dict], args, device: torch.device) -> int:
    """FLOPs of forward + backward of the objective on one batch (FlopCounterMode; optimizer excluded)."""
    objective = make_objective(args).to(device).train()
    dataset = reference_dataset(entries, args.crop)
    x = torch.stack([dataset[i]["image"].as_tensor() for i in range(args.batch_size)]).to(device).float()
    seeds = torch.arange(args.batch_size, dtype=torch.int64)
    amp_dtype = resolve_amp(args.amp, device)
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = objective(x, seeds)
        out["loss"].backward()
    del objective
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return int(counter.get_total_flops())


# ---- main ------------------------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2)
        fh.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; results are for everyone to read
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per path")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the rate")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (both paths)")
    parser.add_argument("--resolution", type=float, default=2.0, help="voxel side of the synthetic cohort, mm")
    parser.add_argument("--n", type=int, default=8, help="subjects in the synthetic cohort")
    parser.add_argument("--backbone", default="segresnet_small", choices=["segresnet_small", "swinunetr"])
    parser.add_argument("--init-filters", type=int, default=8, help="segresnet_small width")
    parser.add_argument("--feature-size", type=int, default=12, help="swinunetr width (48 = the paper)")
    parser.add_argument("--crop", type=int, default=64, help="crop side, voxels")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (CPU runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1, help="runs per path, alternating the order (ABBA...)")
    parser.add_argument("--reference-first", action="store_true", help="start with the reference path")
    parser.add_argument("--spin-wait", action="store_true",
                        help="keep OpenMP's default waiting (spinning); default sets OMP_WAIT_POLICY=PASSIVE")
    parser.add_argument("--compile", action="store_true", help="kit path: TrainConfig(compile=True)")
    parser.add_argument("--count-flops", action="store_true", help="also count FLOPs on CPU (always on CUDA)")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/train_<device>.json")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if not 0 <= args.warmup < args.steps:
        parser.error(f"--warmup ({args.warmup}) must be in [0, --steps ({args.steps}))")
    if args.n < args.batch_size:
        parser.error(f"--n ({args.n}) must be at least --batch-size ({args.batch_size}): "
                     "the reference drops the last partial batch")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible to torch")

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    out_path = args.out or Path(__file__).parent / "results" / f"train_{device.type}.json"
    model_desc = ({"name": "swinunetr", "feature_size": args.feature_size} if args.backbone == "swinunetr"
                  else {"name": "segresnet_small", "init_filters": args.init_filters})
    print(f"bench_train: {model_desc}, crop {args.crop}, batch {args.batch_size}, steps {args.steps} "
          f"(rate over steps {args.warmup + 1}..{args.steps}), workers {args.num_workers}, device {device}, "
          f"amp {args.amp}, threads {torch.get_num_threads()}, OMP_WAIT_POLICY "
          f"{os.environ.get('OMP_WAIT_POLICY', 'default')}, load avg {load_avg()}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        workdir = Path(tmp)
        start = time.perf_counter()
        synth_cohort("tumor", "brats2021", args.n, workdir / "brats", seed=args.seed, resolution_mm=args.resolution)
        synth_s = time.perf_counter() - start
        validation = validate_dataset("brats2021", workdir / "brats")
        if not validation.ok:
            raise RuntimeError("synthetic cohort failed validation:\n" + "\n".join(map(str, validation.problems)))
        entries = validation.subjects
        print(f"cohort: {len(entries)} subjects at {args.resolution:g} mm in {synth_s:.1f} s", flush=True)

        start = time.perf_counter()
        cache = build_cache(entries, CHANNELS, workdir / "cache", with_labels=False)  # one-off, before training
        cache_s = time.perf_counter() - start
        cache_mb = sum(p.stat().st_size for p in (workdir / "cache").glob("*.npy")) / 1e6
        kit_dataset = ArrayCropDataset(cache.images(), args.crop)
        print(f"cache: {cache_mb:.0f} MB built in {cache_s:.1f} s", flush=True)

        flops = count_step_flops(entries, args, device) if (device.type == "cuda" or args.count_flops) else None
        start = time.perf_counter()
        warm_up_process(args, device)
        print(f"process warm-up: 2 untimed steps in {time.perf_counter() - start:.1f} s", flush=True)

        # Rounds alternate the order (kit, reference, reference, kit, ...) so that a drift in the
        # machine's load does not always fall on the same path.
        first, second = ("reference", "kit") if args.reference_first else ("kit", "reference")
        order = [name for r in range(args.rounds) for name in ((first, second) if r % 2 == 0 else (second, first))]
        raws: dict[str, list[dict]] = {"kit": [], "reference": []}
        for name in order:
            if name == "kit":
                raw = run_kit(kit_dataset, args, device, workdir / f"kit_run{len(raws['kit'])}")
            else:
                raw = run_reference(entries, args, device)
            raws[name].append(raw)
            print(f"{name} done: {raw['samples'] / raw['window_s']:.3f} samples/s (load avg {load_avg()})", flush=True)

    kit = combine("kit", raws["kit"], args.steps, args.batch_size)
    reference = combine("reference", raws["reference"], args.steps, args.batch_size)
    ratio = kit["samples_per_s"] / reference["samples_per_s"]
    median_ratio = reference["median_s_per_step"] / kit["median_s_per_step"]  # robust to bursts of load
    cpu_ratio = reference["cpu_s_per_step"] / kit["cpu_s_per_step"]
    round_ratios = [round((k["samples"] / k["window_s"]) / (r["samples"] / r["window_s"]), 3)
                    for k, r in zip(raws["kit"], raws["reference"])]
    if flops is not None:
        for row in (kit, reference):
            row["tflops_per_s"] = round(flops * row["samples_per_s"] / args.batch_size / 1e12, 4)

    print()
    header = (f"{'path':<10} {'samples/s':>10} {'s/step':>8} {'median':>8} {'CPU s/step':>11} {'data s/step':>12} "
              f"{'data share':>11} {'views share':>12} {'wall s':>8} {'kit/ref':>8}")
    print(header + (f" {'TFLOP/s':>8}" if flops is not None else ""))
    for row in (kit, reference):
        line = (f"{row['path']:<10} {row['samples_per_s']:>10.3f} {row['s_per_step']:>8.3f} "
                f"{row['median_s_per_step']:>8.3f} {row['cpu_s_per_step']:>11.3f} {row['data_s_per_step']:>12.3f} "
                f"{row['data_share']:>11.0%} {_percent(row['views_share']):>12} {row['wall_s']:>8.1f} "
                f"{(ratio if row is kit else 1.0):>8.2f}")
        print(line + (f" {row['tflops_per_s']:>8.3f}" if flops is not None else ""))
    print(f"\nkit/reference = {ratio:.2f}x samples/s over steps {args.warmup + 1}..{args.steps} "
          f"({median_ratio:.2f}x by median step, {cpu_ratio:.2f}x by main-process CPU s/step; "
          f"per round {round_ratios}, order {order})")
    print(f"one-off cache build {cache_s:.1f} s; wall incl. warm-up (kit: and final checkpoint) "
          f"{kit['wall_s']:.1f} s vs {reference['wall_s']:.1f} s; load avg "
          + ", ".join(f"{name} {raw['load_avg_before']}->{raw['load_avg_after']}"
                      for name in ("kit", "reference") for raw in raws[name]))
    print(f"minor page faults per step (main process): kit {kit['page_faults_per_step']}, "
          f"reference {reference['page_faults_per_step']}")
    if flops is not None:
        print(f"FLOPs per training step (forward + backward, batch {args.batch_size}): {flops / 1e9:.1f} GFLOP")

    report = {
        "benchmark": "samples/s of swin_trio pretraining: kit (cache + ArrayCropDataset + kit.train.loop.train) "
                     "vs a plain MONAI loop (LoadImaged .nii.gz per sample + DataLoader + for-loop)",
        "command": " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], *sys.argv]),
        "settings": {"device": device.type, "amp": args.amp, "model": model_desc, "crop": args.crop,
                     "batch_size": args.batch_size, "steps": args.steps, "warmup_steps": args.warmup,
                     "num_workers": args.num_workers, "n_subjects": args.n, "resolution_mm": args.resolution,
                     "seed": args.seed, "kit_ckpt_every": args.steps, "rounds": args.rounds, "order": order,
                     "compile": args.compile},
        "ratio_kit_to_reference": round(ratio, 3),
        "ratio_per_round": round_ratios,
        "median_step_ratio_reference_to_kit": round(median_ratio, 3),
        "cpu_ratio_reference_to_kit": round(cpu_ratio, 3),
        "synth_s": round(synth_s, 2),
        "cache_build_s": round(cache_s, 3),
        "cache_mb": round(cache_mb, 1),
        "flops_per_step": flops,
        "results": [kit, reference],
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "nproc": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "library default"),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "versions": {"torch": torch.__version__, "monai": monai.__version__},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json_atomic(out_path, report)
    print(f"wrote {out_path}")
    return report


if __name__ == "__main__":
    main()
