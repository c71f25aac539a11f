"""Whole-volume sliding-window inference time per backbone (kit.finetune.evaluate.predict_volume).

One BraTS-sized input, 4 channels x 240 x 240 x 155, through
``monai.inferers.sliding_window_inference`` (gaussian blending) for:

- segresnet_small (init_filters 8), roi 96^3;
- swinunetr feature_size 48 (the paper's model), roi 96^3;
- swinunetr feature_size 12 (the workshop-size transformer), roi 64^3.

The in-process baseline is monai's plain single forward of the same network on one roi window
(median of ``--repeats``, after a warm-up). ``ratio`` = sliding-window seconds / single-window
seconds, i.e. how many single windows the whole volume costs ("windows-equivalent"); compare it with
``n_windows``, the number of windows the sliding window actually runs: a ratio above it is the cost
of padding, blending and aggregation.

Usage:
    python benchmarks/bench_inference.py                         # CPU, 2 threads -> results/inference_cpu.json
    python benchmarks/bench_inference.py --device cuda --amp bf16 --sw-batch-size 4   # -> inference_cuda.json

If the estimated time of one configuration (n_windows x single window) exceeds ``--max-seconds``
(300 by default), its overlap is lowered to 0.25 and the JSON records ``overlap_lowered_from``.
Wall times include waiting for the CPU on a shared machine; the load average and process CPU time
are stored with each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import monai
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval

from kit.devices import resolve_amp
from kit.models import create_model
from kit.models.inference import predict_volume

VOLUME = (4, 240, 240, 155)
CONFIGS = [
    {"label": "segresnet_small", "name": "segresnet_small", "model": {"init_filters": 8}, "roi": 96},
    {"label": "swinunetr_fs48", "name": "swinunetr", "model": {"feature_size": 48}, "roi": 96},
    {"label": "swinunetr_fs12", "name": "swinunetr", "model": {"feature_size": 12}, "roi": 64},
]


def n_windows(image_size, roi: int, overlap: float) -> int:
    """Windows that sliding_window_inference runs on ``image_size`` (its own scan-interval rule)."""
    roi_size = (roi,) * len(image_size)
    padded = [max(s, r) for s, r in zip(image_size, roi_size)]
    interval = _get_scan_interval(padded, roi_size, len(image_size), (overlap,) * len(image_size))
    return len(dense_patch_slices(padded, roi_size, interval))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(config: dict, volume: torch.Tensor, device: torch.device, amp: str, overlap: float,
          sw_batch_size: int, repeats: int, max_seconds: float) -> dict:
    """Time one backbone: single-window baseline, then the whole volume."""
    torch.manual_seed(0)
    model = create_model(config["name"], in_channels=VOLUME[0], out_channels=3, **config["model"]).to(device).eval()
    roi = config["roi"]
    window = volume[None, :, :roi, :roi, :roi].to(device)
    amp_dtype = resolve_amp(amp, device)
    single = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        for i in range(repeats + 1):  # the first run warms up (allocator, cuDNN, kernels)
            sync(device)
            start = time.perf_counter()
            model(window)
            sync(device)
            if i:
                single.append(time.perf_counter() - start)
    single_s = statistics.median(single)
    record = {"backbone": config["label"], "model": {"name": config["name"], **config["model"]},
              "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2), "roi": roi,
              "sw_batch_size": sw_batch_size, "single_window_s": round(single_s, 3)}
    windows = n_windows(VOLUME[1:], roi, overlap)
    if windows * single_s > max_seconds and overlap > 0.25:
        record["overlap_lowered_from"] = overlap
        record["estimated_s_at_that_overlap"] = round(windows * single_s, 1)
        overlap = 0.25
        windows = n_windows(VOLUME[1:], roi, overlap)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    sync(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    probs = predict_volume(model, volume, roi, overlap, sw_batch_size, amp=amp)
    sync(device)
    seconds = time.perf_counter() - start
    record.update(
        overlap=overlap, n_windows=windows, seconds=round(seconds, 2),
        cpu_seconds=round(time.process_time() - start_cpu, 2),
        ratio=round(seconds / single_s, 2), output_shape=list(probs.shape), load_avg_1min=load_before,
    )
    if device.type == "cuda":
        record["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        torch.cuda.reset_peak_memory_stats(device)
    return record


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--amp", default="off", choices=["off", "bf16", "fp16", "auto"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--sw-batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="single-window repeats (median)")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="lower the overlap above this estimate")
    parser.add_argument("--only", nargs="*", default=None, help="labels to run, e.g. swinunetr_fs12")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/inference_<device>.json")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible to torch")

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = args.out or Path(__file__).parent / "results" / f"inference_{device.type}.json"
    volume = torch.randn(*VOLUME, generator=torch.Generator().manual_seed(0))
    results = []
    for config in CONFIGS:
        if args.only and config["label"] not in args.only:
            continue
        record = bench(config, volume, device, args.amp, args.overlap, args.sw_batch_size, args.repeats,
                       args.max_seconds)
        results.append(record)
        lowered = f" (overlap lowered from {record['overlap_lowered_from']})" if "overlap_lowered_from" in record else ""
        print(f"{record['backbone']:16s} roi {record['roi']}^3 overlap {record['overlap']} sw_batch "
              f"{record['sw_batch_size']}: {record['seconds']:.1f} s for {record['n_windows']} windows; one window "
              f"{record['single_window_s']:.3f} s; ratio {record['ratio']:.1f} windows-equivalent{lowered}", flush=True)
    payload = {
        "benchmark": "whole-volume sliding-window inference (kit.finetune.evaluate.predict_volume, gaussian blending)",
        "volume": list(VOLUME), "device": str(device), "amp": args.amp, "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "monai": monai.__version__, "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "baseline": "monai network's plain forward on one roi window (median of repeats, after a warm-up)",
        "results": results,
    }
    write_json_atomic(out, payload)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
