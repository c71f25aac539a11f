# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   language_info:
#     name: python
# ---

# %% [markdown]
# # 02 · Stage 1 pretraining on healthy brains
#
# BrainSegFounder's first stage learns **anatomy** from brains without disease (UK Biobank in the
# paper: T1 + T2-FLAIR, 2 channels). It uses the three self-supervised tasks of Swin UNETR
# pretraining, all on the same encoder:
#
# - **rotation**: each crop is rotated by k·90° (k ∈ {0,1,2,3}) in one plane; a head predicts k;
# - **masked-volume inpainting**: random boxes (up to ~30 % of the voxels, each side 5-25 % of the
#   crop) are replaced by noise, sometimes by the same boxes from another crop of the batch; a
#   decoder restores the whole (rotated, unmasked) crop, L1 loss over the whole volume;
# - **contrastive coding**: two differently masked/rotated views of a crop should embed close
#   together and far from other crops (NT-Xent, temperature 0.5).
#
# That is the default objective, `swin_trio`. The `objective` parameter (`kit reproduce --objective
# NAME`) selects another one, trained by the same loop on the same crops: `cross_contrast` (each
# contrast gets its own coarse dropout and the network restores all of them, plus a contrastive
# term; Chen et al., Eur Radiol 2024), `mim` (masked image modelling: SparK-style for the CNN, mask
# tokens for SwinUNETR) or `anatomy_hierarchy` (two crops of the same grid cell, coarse to fine,
# with a momentum teacher; Hosseinzadeh Taher et al., MICCAI DART 2023), or `moco_v3` (MoCo v3 on the
# 2D slices that notebook 01's filter keeps, with a 2D ResNet: the tailored-curation recipe, Computerized
# Medical Imaging and Graphics 2025). The figures below show whatever the chosen objective's `preview`
# returns.
#
# The loop (`kit.train.train`) checkpoints atomically and resumes where it stopped if this
# notebook is run again after an interruption.

# %% tags=["parameters"]
profile = "smoke"
run_dir = None  # None: $KIT_RUN_DIR, else <checkout>/runs/<profile> (kit reproduce --out runs/<profile>)
data_root = None
device = "auto"
seed = 0
interactive = False
objective = None  # an SSL objective by name (kit.ssl.list_objectives()); None: the profile's (swin_trio)

# %%
import json

import matplotlib.pyplot as plt
import pandas as pd
import torch

from kit.pipeline import find_run_dir, show_smoke_banner, write_summary
from kit.train.pretrain import prepare_stage, run_pretraining
from kit.viz import plot_loss_curves, plot_ssl_preview

# The same preparation as `kit pretrain --stage 1` (the script for clusters): cohort, cache, model.
run_dir = find_run_dir(run_dir, profile)  # the run kit reproduce made, also when opened in JupyterLab
show_smoke_banner(profile)
STAGE, COHORT = "02_stage1", "healthy"
stage = prepare_stage(profile, 1, run_dir, objective=objective, seed=seed, device=device, progress=True)
config, entries, modalities, out, setup = stage.config, stage.entries, stage.modalities, stage.out, stage.setup
sample = f"slices {config['slices']['size']}^2" if config.get("slices") else f"crop {config['crop']}^3"
print(f"{len(entries)} {COHORT} subjects, channels {modalities}; backbone {config['backbone']}, {sample}; "
      f"objective {config['objective']}")

# %% [markdown]
# ## The data the network sees
# Subjects are preprocessed once into a cache (brain-cropped, z-scored per channel over brain
# voxels, memory-mapped), so each random crop reads a few megabytes instead of decoding .nii.gz.

# %%
n_params = sum(p.numel() for p in setup.objective.model.parameters())
print(f"cache: {len(setup.cache)} subjects in {setup.cache.root}; backbone parameters: {n_params / 1e6:.2f} M")

# %% [markdown]
# ## The pretext task on one crop
# Left to right: the crop and what the objective makes of it, here from the untrained network. For
# `swin_trio`: the masked and rotated view the encoder receives, the target (the rotated, unmasked
# crop), the reconstruction and the mask; `cross_contrast` and `mim` show the masked input, the
# restoration and the mask; `anatomy_hierarchy` the grid cell drawn and its two crops; `moco_v3` a
# curated slice and its two augmented views.

# %%
crop = torch.stack([setup.dataset[(0, seed)], setup.dataset[(1 % len(setup.dataset), seed + 1)]])
sample_seeds = torch.tensor([seed, seed + 1])
before = setup.objective.preview(crop, sample_seeds)
fig = plot_ssl_preview(before, title=f"{config['objective']} before training")
fig.savefig(out / "figures" / "ssl_views_before.png", dpi=100)
plt.show()

# %% [markdown]
# ## Training

# %%
callback = None
if interactive:
    # a live plot of every loss term, redrawn at most once a second while the loop runs
    from kit.viz.explorer import live_loss_plot

    widget, callback = live_loss_plot(title="stage 1 losses")
    display(widget)

summary = run_pretraining(setup, callback=callback)
print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, (list, dict))}, indent=1, default=str))

# %%
metrics = json.loads((out / "metrics.json").read_text())
records = metrics["records"]
fig = plot_loss_curves(records, title=f"stage 1 ({profile}): loss per term")
fig.savefig(out / "figures" / "loss_curves.png", dpi=100)
plt.show()

# %%
after = setup.objective.preview(crop, sample_seeds)
fig = plot_ssl_preview(after, title=f"{config['objective']} after training")
fig.savefig(out / "figures" / "ssl_views_after.png", dpi=100)
plt.show()

# %% [markdown]
# ## Has pretraining done its job? Pretext metrics on held-out crops
# Crops and views the loop never drew (another seed stream), for the trained network and for the same
# network at its random initialisation: the held-out loss, and for `swin_trio` the rotation accuracy
# (chance 0.25), the contrastive top-1 (chance 1/batch) and the reconstruction L1 on the masked voxels
# beside two baselines without a network (the masked input itself; each crop's mean).

# %%
from kit.ssl.pretext import pretext_table

pretext = pretext_table(out / "checkpoint.pt", setup.dataset, n_crops=4 * config["batch_size"],
                        batch_size=config["batch_size"], seed=seed)
display(pd.DataFrame(pretext).round(4))

# %%
first, last = records[0], records[-1]
write_summary(
    run_dir, STAGE,
    f"stage 1 SSL ({config['objective']}) on {len(entries)} healthy subjects ({', '.join(modalities)}): "
    f"loss {first['loss']:.3f} -> {last['loss']:.3f} in {last['step']} steps",
    {
        "backbone": config["backbone"], "steps": last["step"], "loss_first": round(first["loss"], 4),
        "loss_last": round(last["loss"], 4),
        "objective": config["objective"],
        **{f"{k}_last": round(last[k], 4) for k in setup.objective.term_names if k in last},
        "samples_per_s": round(float(summary.get("samples_per_s") or 0.0), 2),  # None: finished earlier
        "checkpoint": str(out / "checkpoint.pt"),
        **{f"held-out {r['metric']}": f"{r['trained']:.3f} (untrained {r['untrained']:.3f})" for r in pretext},
    },
    ["figures/ssl_views_before.png", "figures/loss_curves.png", "figures/ssl_views_after.png"],
)
assert (out / "checkpoint.pt").exists()
print("stage 02 done")
