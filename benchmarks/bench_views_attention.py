"""Two pieces of a pretraining step, each against the code it replaced, in one process (CPU or GPU).

- views: ``kit.ssl.swin_trio.make_views`` (host-drawn boxes, then a few whole-batch tensor operations
  on the batch's device) vs the per-sample, box-by-box loop it replaced (kept below as
  ``reference_views``: CPU noise per box, pasted box by box), on (B, 4, 96, 96, 96) crops, the paper's
  crop and the BraTS channel count, B = 2 and 8.
- window attention: ``kit.models.sdpa_attention.SDPAWindowAttention`` (one
  ``scaled_dot_product_attention`` call) vs MONAI's ``WindowAttention`` (matmul + softmax; MONAI uses
  SDPA only without gradients), forward + backward, SwinUNETR fs48's first stage (dim 48, 3 heads,
  7^3 windows), with the shifted-window mask and without; and a whole SwinUNETR fs12 at 64^3.

Each figure is the median of ``--repeats`` timed calls after one warm-up call, the two
implementations alternating (A B B A ...) so that a drift in the machine's load falls on both;
ratio = old / new (> 1: the new code is faster).

Usage:
    python benchmarks/bench_views_attention.py                 # CPU, 2 threads -> results/views_attention_cpu.json
    python benchmarks/bench_views_attention.py --device cuda --amp bf16
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import monai
import torch
from monai.networks.nets.swin_unetr import WindowAttention, compute_mask

from kit.models import create_model
from kit.models.sdpa_attention import use_monai_attention, use_sdpa_attention
from kit.ssl.base import sample_rng
from kit.ssl.swin_trio import box_mask, box_noise, draw_boxes, make_views, mask_volume, resolve_mix_prob


def reference_views(x, seeds, *, n_views=2, mix_prob="auto", mask_budget=(0.0, 0.3), box_frac=(0.05, 0.25)):
    """The per-sample make_views that the batched one replaced (same draws; noise per box on the CPU)."""
    seeds = [int(s) for s in seeds]
    batch, channels = x.shape[:2]
    mix = resolve_mix_prob(mix_prob, batch)
    views, targets, labels, masks = [], [], [], []
    for view in range(n_views):
        ks = [int(sample_rng(s, 0x7377696E, view, 0).integers(4)) for s in seeds]
        rotated = torch.stack([sample.rot90(k, (2, 3)) for sample, k in zip(x, ks)])
        for i, seed in enumerate(seeds):
            mask_rng = sample_rng(seed, 0x7377696E, view, 1)
            noise_boxes = draw_boxes(x.shape, mask_rng, mask_budget, box_frac)
            masked = mask_volume(rotated[i], noise_boxes, box_noise(noise_boxes, channels, mask_rng))
            pasted = []
            mix_rng = sample_rng(seed, 0x7377696E, view, 2)
            if mix > 0 and mix_rng.random() < mix:
                other = int(mix_rng.integers(batch - 1))
                partner = other if other < i else other + 1
                pasted = draw_boxes(x.shape, mix_rng, mask_budget, box_frac)
                masked = mask_volume(masked, pasted, rotated[partner])
            views.append(masked)
            masks.append(box_mask(x.shape, noise_boxes + pasted))
        targets.append(rotated)
        labels += ks
    return {"views": torch.stack(views), "targets": torch.cat(targets),
            "rot_labels": torch.tensor(labels, device=x.device), "masks": torch.stack(masks).to(x.device)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(old, new, device: torch.device, repeats: int) -> dict:
    """Median seconds of ``old()`` and ``new()``, alternating A B B A..., after one warm-up each."""
    times = {"old": [], "new": []}
    fns = {"old": old, "new": new}
    for name in ("old", "new"):
        fns[name]()
    for r in range(repeats):
        for name in (("old", "new") if r % 2 == 0 else ("new", "old")):
            sync(device)
            start = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    old_s, new_s = statistics.median(times["old"]), statistics.median(times["new"])
    return {"old_s": round(old_s, 4), "new_s": round(new_s, 4), "ratio_old_to_new": round(old_s / new_s, 3),
            "old_all_s": [round(t, 4) for t in times["old"]], "new_all_s": [round(t, 4) for t in times["new"]]}


def attention_step(module, x, mask, amp_dtype, device):
    def step():
        module.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = module(x, mask)
        out.float().square().mean().backward()
    return step


def network_step(net, x, amp_dtype, device):
    def step():
        net.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = net.encode(x)
        out.float().square().mean().backward()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--amp", default="off", choices=["off", "bf16"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/views_attention_<device>.json")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible to torch")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    amp_dtype = torch.bfloat16 if args.amp == "bf16" else None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results = []

    for batch in (2, 8):
        x = torch.rand(batch, 4, 96, 96, 96, generator=torch.Generator().manual_seed(0)).to(device)
        seeds = torch.arange(batch) + 1000
        row = {"what": "views", "shape": list(x.shape),
               **compare(lambda: reference_views(x, seeds), lambda: make_views(x, seeds), device, args.repeats)}
        results.append(row)
        print(f"views B={batch}: per-sample loop {row['old_s']:.3f} s, batched {row['new_s']:.3f} s, "
              f"ratio {row['ratio_old_to_new']:.2f}", flush=True)

    for shifted in (False, True):
        torch.manual_seed(0)
        monai_attn = WindowAttention(48, 3, (7, 7, 7), qkv_bias=True).to(device)
        sdpa_attn = copy.deepcopy(monai_attn)
        use_sdpa_attention(sdpa_attn)
        grid = 28  # 28^3 tokens in 7^3 windows: 64 windows per sample, 2 samples
        mask = compute_mask([grid] * 3, (7, 7, 7), (3, 3, 3), device) if shifted else None
        x = torch.randn(2 * 64, 343, 48, device=device)
        row = {"what": "window attention fwd+bwd" + (" (shifted)" if shifted else ""), "shape": list(x.shape),
               **compare(attention_step(monai_attn, x, mask, amp_dtype, device),
                         attention_step(sdpa_attn, x, mask, amp_dtype, device), device, args.repeats)}
        results.append(row)
        print(f"{row['what']}: MONAI {row['old_s']:.3f} s, SDPA {row['new_s']:.3f} s, "
              f"ratio {row['ratio_old_to_new']:.2f}", flush=True)

    torch.manual_seed(0)
    sdpa_net = create_model("swinunetr", in_channels=4, out_channels=3, feature_size=12).to(device).train()
    monai_net = copy.deepcopy(sdpa_net)
    use_monai_attention(monai_net)
    x = torch.randn(2, 4, 64, 64, 64, device=device)
    row = {"what": "swinunetr fs12 encoder fwd+bwd", "shape": list(x.shape),
           **compare(network_step(monai_net, x, amp_dtype, device), network_step(sdpa_net, x, amp_dtype, device),
                     device, args.repeats)}
    results.append(row)
    print(f"{row['what']}: MONAI attention {row['old_s']:.3f} s, SDPA {row['new_s']:.3f} s, "
          f"ratio {row['ratio_old_to_new']:.2f}", flush=True)

    payload = {
        "benchmark": "views (batched vs per-sample loop) and window attention (SDPA vs MONAI), same process",
        "device": str(device), "amp": args.amp, "torch_threads": torch.get_num_threads(), "repeats": args.repeats,
        "load_avg_1min_before": load, "load_avg_1min_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__, "monai": monai.__version__, "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "results": results,
    }
    out = args.out or Path(__file__).parent / "results" / f"views_attention_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2)
        fh.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
