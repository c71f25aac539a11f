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
# # 03 · Stage 2 pretraining on diseased brains, from the stage-1 checkpoint
#
# BrainSegFounder's second stage continues the same self-supervised tasks (rotation, inpainting,
# contrastive, or the objective chosen with the `objective` parameter, as in notebook 02) on the
# **target population**: here tumour brains in the BraTS layout, with
# 4 channels (FLAIR, T1ce, T1, T2) where stage 1 had 2 (T1, FLAIR). The paper's learning rate is
# far lower in stage 2 (6e-6 vs 4e-4): the aim is to adapt, not to relearn.
#
# **Which tumour brains.** The paper's stage 2 pretrains on every BraTS subject, the test subjects
# of its fine-tuning included (a transductive protocol). The synthetic profiles pretrain stage 2 on an
# unlabelled pool of its own (`tumor_pool`: other subjects, other IDs), so that notebook 04 can compare
# with scratch on subjects pretraining never saw (its leakage guard refuses otherwise); the `full`
# profile keeps the paper's protocol on purpose and reports it.
#
# **The first layer.** The public BrainSegFounder code re-initialised the patch embedding when the
# channel count changed, discarding the pretrained first layer. Here the stage-1 input filters are
# mapped by modality name: FLAIR and T1 keep their filters, T1ce starts from T1's (same contrast
# before gadolinium), T2 from FLAIR's (both T2-weighted), and all are rescaled so that the layer's
# response to a normalised input keeps its magnitude.

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
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

from kit.models.checkpoints import load_checkpoint
from kit.pipeline import find_run_dir, show_smoke_banner, write_summary
from kit.train.pretrain import prepare_stage, pretrain_comparison, run_pretraining
from kit.viz import plot_first_layer, plot_loss_curves, plot_ssl_preview

run_dir = find_run_dir(run_dir, profile)  # the run kit reproduce made, also when opened in JupyterLab
show_smoke_banner(profile)
stage1_checkpoint = Path(run_dir) / "02_stage1" / "checkpoint.pt"
stage1 = load_checkpoint(stage1_checkpoint)
print(f"stage 1: {stage1_checkpoint} ({stage1['extra'].get('modalities')}, step {stage1['extra'].get('step')})")

# %%
# The same preparation as `kit pretrain --stage 2` (the script for clusters): cohort, cache, model.
stage = prepare_stage(profile, 2, run_dir, objective=objective, init_checkpoint=stage1_checkpoint, seed=seed,
                      device=device, progress=True)
config, entries, modalities, out, setup = stage.config, stage.entries, stage.modalities, stage.out, stage.setup
STAGE, COHORT = "03_stage2", config.get("cohort", "tumor")
print(f"stage 2: {len(entries)} {COHORT} subjects, channels {modalities}; objective {config['objective']}")
print(f"cache: {len(setup.cache)} subjects in {setup.cache.root}")

# %% [markdown]
# ## Training from the stage-1 weights

# %%
callback = None
if interactive:
    from kit.viz.explorer import live_loss_plot

    widget, callback = live_loss_plot(title="stage 2 losses")
    display(widget)
summary = run_pretraining(setup, init_checkpoint=stage1_checkpoint, callback=callback)
print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, (list, dict))}, indent=1, default=str))

# %% [markdown]
# The first layer after stage 2, per input channel: the mean absolute filter weight shows each
# channel contributes. Grey bars: the same network at a random initialisation, for scale.

# %%
from kit.models import create_model

torch.manual_seed(seed)
random_init = create_model(**setup.objective.model.config)
fig, per_channel = plot_first_layer(setup.objective.model, modalities, reference=random_init)  # model may be on a GPU
fig.savefig(out / "figures" / "first_layer.png", dpi=100)
plt.show()

# %%
records = json.loads((out / "metrics.json").read_text())["records"]
fig = plot_loss_curves(records, title=f"stage 2 ({profile}): loss per term")
fig.savefig(out / "figures" / "loss_curves.png", dpi=100)
plt.show()

# %%
crop = torch.stack([setup.dataset[(0, seed)], setup.dataset[(1 % len(setup.dataset), seed + 1)]])
fig = plot_ssl_preview(setup.objective.preview(crop, torch.tensor([seed, seed + 1])), channel=1,
                       title=f"{config['objective']} after stage 2 (T1ce channel)")
fig.savefig(out / "figures" / "ssl_views_after.png", dpi=100)
plt.show()

# %% [markdown]
# ## The objectives this run compares
# The profile may name other SSL objectives to put beside this one (`compare_objectives`; the
# workshop compares cross-contrast context restoration and masked image modelling). Each gets the
# same two stages on the same subjects and budget, into `03_stage2/objectives/NAME/`; notebook 04
# then treats their stage 1+2 checkpoints as further initialisations. Their losses are on different
# scales (different tasks), so each curve is drawn relative to its first step.

# %%
from kit.finetune.slice_run import is_slice_objective

# a run on 2D slices (moco_v3) is evaluated on the slice task, where 3D objectives' checkpoints do not fit
compared = [name for name in config.get("compare_objectives", []) if name != config["objective"]
            and is_slice_objective(name) == is_slice_objective(config["objective"])]
comparison = pretrain_comparison(profile, run_dir, compared, seed=seed, device=device) if compared else []
if comparison:
    display(pd.DataFrame(comparison).drop(columns="checkpoint").round(4))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), constrained_layout=True)
    for ax, stage_no in zip(axes, (1, 2)):
        for row in [r for r in comparison if r["stage"] == stage_no]:
            steps_losses = json.loads((Path(row["checkpoint"]).parent / "metrics.json").read_text())["records"]
            ax.plot([r["step"] for r in steps_losses], [r["loss"] / steps_losses[0]["loss"] for r in steps_losses],
                    label=row["objective"])
        ax.set(title=f"stage {stage_no}", xlabel="optimizer step", ylabel="loss / first-step loss")
        ax.legend()
    fig.savefig(out / "figures" / "compared_objectives.png", dpi=100)
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
    f"stage 2 SSL ({config['objective']}) on {len(entries)} tumour subjects ({', '.join(modalities)}), from stage 1: "
    f"loss {first['loss']:.3f} -> {last['loss']:.3f} in {last['step']} steps",
    {
        "init": str(stage1_checkpoint), "steps": last["step"], "loss_first": round(first["loss"], 4),
        "loss_last": round(last["loss"], 4),
        "objective": config["objective"],
        **{f"{k}_last": round(last[k], 4) for k in setup.objective.term_names if k in last},
        "samples_per_s": round(float(summary.get("samples_per_s") or 0.0), 2),  # None: finished earlier
        "checkpoint": str(out / "checkpoint.pt"),
        **{f"held-out {r['metric']}": f"{r['trained']:.3f} (untrained {r['untrained']:.3f})" for r in pretext},
        **{f"compared {r['objective']} stage {r['stage']} loss": f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}"
           for r in comparison},
    },
    ["figures/first_layer.png", "figures/loss_curves.png", "figures/ssl_views_after.png"]
    + (["figures/compared_objectives.png"] if comparison else []),
)
assert (out / "checkpoint.pt").exists()
print("stage 03 done")
