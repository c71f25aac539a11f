"""Pretrain one SSL objective, stage 1 then stage 2, on unlabelled pools kept apart from every study
subject, and write the committed checkpoint with its provenance and held-out pretext curves.

    python benchmarks/pretrain_pool.py --objective swin_trio            # resumes where it stopped
    python benchmarks/pretrain_pool.py --objective mim --threads 2
    python benchmarks/pretrain_pool.py --objective swin_trio --export-only

The pools (kit.train.pools): 400 healthy subjects (UK Biobank layout, T1 + FLAIR, IDs 1005000...) for
stage 1 and 200 tumour subjects (BraTS 2021 layout, 4 contrasts, IDs BraTS2021_10000...) for stage 2,
at the study's 3 mm, each from a seed of its own; the study's labelled tumour cohort is
BraTS2021_00000... (80 subjects): no subject in common (checked). 10 % of each pool is held out for
the pretext metrics, which are measured every ``EVAL_EVERY`` steps on crops of held-out subjects, for
the network being trained, at step 0 (random init for stage 1, stage 1's weights for stage 2).

Budget: every objective sees ``STEPS[1] + STEPS[2]`` steps of 4 crops of 32^3 (20,000 crops), 10x the
2,000 crops of one study fine-tune with 1 or 4 labelled subjects (500 steps x 4 crops) and 5x the
all-label fine-tune's 4,000.

Everything lands in ``benchmarks/results/pretraining/<objective>/``: ``checkpoint.pt`` (stage 1+2
weights, fine-tuning init), ``stage1/checkpoint.pt`` (stage 1 weights), with ``seen_subjects.json`` (the leakage guard reads it) and
``provenance.json`` (its sha256) beside each, and ``curves.csv`` (held-out pretext metrics per step). The
loop's full resume state (weights, optimizer, schedule, RNG: 14-22 MiB, over the repository's 5 MiB limit
on data files) stays in the work folder ``runs/pretraining/<objective>/stage{1,2}/checkpoint.pt``, with the
pools and caches (regenerated deterministically); an interrupted run resumes from there, exactly.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kit.data.synth import synth_cohort  # noqa: E402
from kit.data.validate import datalist_dict, validate_dataset  # noqa: E402
from kit.models.checkpoints import load_checkpoint, save_checkpoint  # noqa: E402
from kit.ssl.pretext import pretext_metrics  # noqa: E402
from kit.tempfiles import write_text_atomic  # noqa: E402
from kit.train.pools import (check_disjoint, git_commit, held_out_split, machine_description,  # noqa: E402
                             write_provenance)
from kit.train.pretrain import prepare_pretraining, run_pretraining  # noqa: E402

RESOLUTION_MM = 3.0
# stage -> pool: a synthetic cohort with a seed and subject IDs of its own
POOLS = {
    1: {"cohort": "healthy", "layout": "ukb", "manifest": "ukb", "n": 400, "first_index": 5000, "seed": 50_000,
        "held_out": 40},
    2: {"cohort": "tumor", "layout": "brats2021", "manifest": "brats2021", "n": 200, "first_index": 10_000,
        "seed": 51_000, "held_out": 20},
}
# the study's labelled tumour cohort (kit.profiles: study cohorts tumor n=80, first index 0): never in a pool
LABELLED = {"layout": "brats2021", "n": 80}
STEPS = {1: 4000, 2: 1000}
STAGE = {"backbone": "segresnet_small", "model": {"init_filters": 8}, "crop": 32, "batch_size": 4,
         "weight_decay": 0.1, "ckpt_every": 100, "log_every": 50}
LR = {1: (5e-4, 100), 2: (2e-4, 50)}  # (peak lr, warm-up steps): the study profile's rates
# options that make each pretext task meaningful at 32^3 crops of 3 mm brains (see each objective's docstring)
OBJECTIVE_CFG = {
    "swin_trio": {},
    # 64 patches of 8^3 per crop (16^3 would leave 8 octants), 60 % hidden, one deepest-map voxel per patch
    "mim": {"patch_size": 8, "mask_ratio": 0.6},
    # dropped blocks of 8^3 voxels (24 mm; the published 16^3 at 1 mm would be 5 voxels here, 4^3 ones 1-2)
    "cross_contrast": {"scheme": "large", "block_size": 8},
    # the grid on the whole brain resized to 32^3 (input_mode 'brain'): cells of 32, 16 and 8 voxels
    "anatomy_hierarchy": {"view_size": 32, "grid_sizes": [1, 2, 4]},
}
EVAL_EVERY, EVAL_CROPS, EVAL_BATCH = 250, 64, 8
SEED = 0
WORK = ROOT / "runs" / "pretraining"
RESULTS = ROOT / "benchmarks" / "results" / "pretraining"


def pool_entries(stage: int, progress: bool) -> tuple[list[dict], list[str]]:
    """Generate (or reuse) a stage's pool, validate it with the dataset's manifest; entries and channel names."""
    spec = POOLS[stage]
    root = WORK / "pool" / spec["layout"]
    synth_cohort(spec["cohort"], spec["layout"], spec["n"], root, seed=spec["seed"], resolution_mm=RESOLUTION_MM,
                 first_index=spec["first_index"], progress=progress)
    cached = root / "validated_datalist.json"  # validated once per work folder (600 subjects take minutes)
    if cached.exists() and len(json.loads(cached.read_text())["training"]) == spec["n"]:
        datalist = json.loads(cached.read_text())
    else:
        result = validate_dataset(spec["manifest"], root, progress=progress)
        if not result.ok:
            raise SystemExit(f"{root}: the synthetic pool does not validate: {result.problems[0]}")
        datalist = datalist_dict(result)
        write_text_atomic(cached, json.dumps(datalist))
    modalities = [datalist["modality"][str(i)] for i in range(len(datalist["modality"]))]
    return datalist["training"], modalities


def labelled_ids() -> list[str]:
    from kit.data.synth_layouts import subject_id

    return [subject_id(LABELLED["layout"], i) for i in range(LABELLED["n"])]


def stage_config(objective: str, stage: int) -> dict:
    lr, warmup = LR[stage]
    return {**STAGE, "objective": objective, "objective_cfg": dict(OBJECTIVE_CFG[objective]), "steps": STEPS[stage],
            "lr": lr, "warmup_steps": warmup}


def weights_only(src: Path, dst: Path) -> None:
    """The fine-tuning init: weights, model config, modalities and the objective's identity, no optimizer state."""
    ckpt = load_checkpoint(src, map_location="cpu")
    extra = ckpt.get("extra") or {}
    keep = {k: extra[k] for k in ("modalities", "ssl_objective", "config", "step", "complete") if k in extra}
    save_checkpoint(dst, model_config=ckpt["model_config"], state_dict=ckpt["state_dict"], extra=keep)


def held_out_metrics(objective, dataset) -> dict:
    # a copy: an objective with state (anatomy_hierarchy's queue) must not change by being measured
    return pretext_metrics(copy.deepcopy(objective), dataset, n_crops=EVAL_CROPS, batch_size=EVAL_BATCH, seed=SEED)


def smoke_settings(folder: Path) -> None:
    """Shrink everything for a test run into ``folder`` (the same code path, minutes -> seconds)."""
    global RESOLUTION_MM, EVAL_EVERY, EVAL_CROPS, WORK, RESULTS
    RESOLUTION_MM, EVAL_EVERY, EVAL_CROPS = 6.0, 4, 16
    WORK, RESULTS = Path(folder) / "work", Path(folder) / "results"
    POOLS[1].update(n=10, held_out=2)
    POOLS[2].update(n=8, held_out=2)
    STEPS.update({1: 8, 2: 4})
    STAGE.update(crop=16, batch_size=2, ckpt_every=4, log_every=2)
    LR.update({1: (5e-4, 2), 2: (2e-4, 1)})
    OBJECTIVE_CFG["mim"] = {"patch_size": 8}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", choices=sorted(OBJECTIVE_CFG), help="required unless --figure")
    parser.add_argument("--figure", action="store_true",
                        help="only draw curves.png from every objective's curves.csv and comparison.csv")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--export-only", action="store_true", help="write the committed files from the work folder")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--smoke", type=Path, default=None, metavar="DIR",
                        help="a tiny run into DIR (pools of 10/8 subjects, 8 + 4 steps): what the tests run")
    args = parser.parse_args(argv)
    if args.smoke is not None:
        smoke_settings(args.smoke)
    torch.set_num_threads(args.threads)
    if args.figure:
        draw_curves(RESULTS)
        return 0
    if args.objective is None:
        parser.error("--objective is required (or --figure)")
    name = args.objective
    work, results = WORK / name, RESULTS / name
    results.mkdir(parents=True, exist_ok=True)
    given = argv if argv is not None else sys.argv[1:]
    # the command that trains (an --export-only pass records the run, not itself)
    command = "python benchmarks/pretrain_pool.py " + " ".join(a for a in given if a != "--export-only")

    started = work / "started.json"  # the code a run began with (provenance's "commit" is the last export's)
    if not started.exists() and not args.export_only:
        work.mkdir(parents=True, exist_ok=True)
        try:
            dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                        capture_output=True, text=True).stdout.strip())
        except OSError:  # no git on this machine
            dirty = None
        write_text_atomic(started, json.dumps({"commit": git_commit(ROOT), "uncommitted_changes": dirty,
                                               "at": time.strftime("%Y-%m-%d %H:%M:%S %Z")}))

    pools, held, train_entries, modalities = {}, {}, {}, {}
    for stage in (1, 2):
        entries, modalities[stage] = pool_entries(stage, args.progress)
        subjects = [str(e["subject"]) for e in entries]
        train, held[stage] = held_out_split(subjects, POOLS[stage]["held_out"], seed=SEED)
        train_entries[stage] = [e for e in entries if str(e["subject"]) in set(train)]
        held_entries = [e for e in entries if str(e["subject"]) in set(held[stage])]
        pools[stage] = (train_entries[stage], held_entries)
    check_disjoint({"stage-1 pool": [e["subject"] for e in pools[1][0] + pools[1][1]],
                    "stage-2 pool": [e["subject"] for e in pools[2][0] + pools[2][1]],
                    "the study's labelled tumour cohort": labelled_ids()})

    curves_path = results / "curves.csv"
    curves = pd.read_csv(curves_path).to_dict("records") if curves_path.exists() else []
    resumable = any((work / f"stage{s}" / "checkpoint.pt").exists() for s in (1, 2))
    if curves and not resumable and not args.export_only:
        record = json.loads((results / "provenance.json").read_text()) if (results / "provenance.json").exists() else {}
        if record.get("partial") is False:
            print(f"{name}: complete ({results / 'provenance.json'}); nothing to do", flush=True)
            return 0
        raise SystemExit(f"{curves_path}: holds the curve of an earlier run but nothing to resume it from; move "
                         f"{results} away to start {name} over")
    stage_info: dict = {}
    init = None
    for stage in (1, 2):
        out = work / f"stage{stage}"
        out.mkdir(parents=True, exist_ok=True)
        config = stage_config(name, stage)
        setup = prepare_pretraining(config, train_entries[stage], modalities[stage], out, seed=SEED, device=args.device,
                                    progress=args.progress, cache_dir=WORK / "cache" / f"stage{stage}",
                                    cohort=POOLS[stage]["cohort"])
        held_setup = prepare_pretraining(config, pools[stage][1], modalities[stage], work / f"held_out{stage}",
                                         seed=SEED, device="cpu", cache_dir=WORK / "cache" / f"held_out{stage}")
        held_data = held_setup.dataset
        stage_start = time.time()

        def export(step: int, complete: bool, _stage=stage, _out=out, _setup=setup) -> None:
            """Copy the loop's weights (no optimizer state) and seen subjects into the committed folder."""
            ckpt = _out / "checkpoint.pt"
            if not ckpt.exists():
                return
            weights = results / ("stage1" if _stage == 1 else "") / "checkpoint.pt"
            weights.parent.mkdir(parents=True, exist_ok=True)
            weights_only(ckpt, weights)
            shutil.copyfile(_out / "seen_subjects.json", weights.with_name("seen_subjects.json"))  # the leakage guard's

        def measure(step: int, record: dict | None = None, _stage=stage, _setup=setup, _held=held_data) -> None:
            if step % EVAL_EVERY and step != STEPS[_stage]:
                return
            if any(r["stage"] == _stage and r["step"] == step for r in curves):
                return  # measured before an interruption
            metrics = held_out_metrics(_setup.objective, _held)
            curves.append({"stage": _stage, "step": step, "crops_seen": step * STAGE["batch_size"], **metrics})
            pd.DataFrame(curves).to_csv(curves_path, index=False)
            print(f"stage {_stage} step {step}: held-out {json.dumps({k: round(v, 4) for k, v in metrics.items()})}",
                  flush=True)

        if args.export_only:
            export(0, bool((load_checkpoint(out / "checkpoint.pt").get("extra") or {}).get("complete"))
                   if (out / "checkpoint.pt").exists() else False)
            init = out / "checkpoint.pt"
            continue
        if not (out / "checkpoint.pt").exists():
            # step 0: random init (stage 1) or stage 1's weights on the stage-2 channels (stage 2)
            if init is not None:
                from kit.train.loop import _initialise_from

                start = copy.deepcopy(setup.objective)
                _initialise_from(start, init, setup.modalities)
                baseline = start
            else:
                baseline = setup.objective
            if not any(r["stage"] == stage and r["step"] == 0 for r in curves):
                metrics = held_out_metrics(baseline, held_data)
                curves.append({"stage": stage, "step": 0, "crops_seen": 0, **metrics})
                pd.DataFrame(curves).to_csv(curves_path, index=False)
                print(f"stage {stage} step 0: held-out {metrics}", flush=True)

        def callback(step: int, record: dict, _measure=measure, _export=export, _stage=stage) -> None:
            _measure(step, record)
            if step % EVAL_EVERY == 0 or step == STEPS[_stage]:
                _export(step, step == STEPS[_stage])

        summary = run_pretraining(setup, init_checkpoint=init, callback=callback)
        export(STEPS[stage], True)
        stage_info[stage] = {"steps": STEPS[stage], "batch_size": STAGE["batch_size"], "crop": STAGE["crop"],
                             "crops": STEPS[stage] * STAGE["batch_size"], "lr": LR[stage][0],
                             "warmup_steps": LR[stage][1], "wall_s": round(float(summary.get("wall_s") or 0), 1),
                             "session_s": round(time.time() - stage_start, 1), "objective_cfg": config["objective_cfg"],
                             "modalities": modalities[stage], "complete": True}
        init = out / "checkpoint.pt"
    comparison = compare_on_held_out_tumours(name, modalities, held_data)
    write_record(name, command, stage_info, held, train_entries, comparison)
    return 0


def compare_on_held_out_tumours(name: str, modalities: dict, held_data) -> list[dict]:
    """What each stage added, on the held-out tumour subjects: the stage-2 objective at its random init, with
    stage 1's weights (first layer mapped to the 4 contrasts, as stage 2 starts), and after stage 2."""
    from kit.models import create_model
    from kit.ssl import create_objective
    from kit.ssl.base import objective_class
    from kit.train.loop import _initialise_from

    config = stage_config(name, 2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = create_model(config["backbone"], in_channels=len(modalities[2]), out_channels=3, **config["model"])
        options = dict(config["objective_cfg"])
        if getattr(objective_class(name), "uses_total_steps", False):
            options["total_steps"] = STEPS[2]  # as prepare_pretraining sets it
        random_init = create_objective(name, model, **options)
    rows = [{"init": "random", "steps": 0, **held_out_metrics(random_init, held_data)}]
    stage1, stage2 = WORK / name / "stage1" / "checkpoint.pt", WORK / name / "stage2" / "checkpoint.pt"
    for label, ckpt in (("stage 1", stage1), ("stage 1+2", stage2)):
        if not ckpt.exists():
            continue
        objective = copy.deepcopy(random_init)
        if label == "stage 1":
            _initialise_from(objective, ckpt, modalities[2])
        else:
            state = load_checkpoint(ckpt)
            objective.model.load_state_dict(state["state_dict"])
            objective.load_checkpoint_extra(state.get("extra") or {})
        steps = int((load_checkpoint(ckpt).get("extra") or {}).get("step", 0))
        rows.append({"init": label, "steps": steps, **held_out_metrics(objective, held_data)})
    table = pd.DataFrame(rows)
    table.to_csv(RESULTS / name / "comparison.csv", index=False)
    print(table.round(4).to_string(index=False), flush=True)
    return rows


def draw_curves(results: Path) -> Path:
    """curves.png: each objective's held-out pretext loss against the crops pretraining has seen (stage 1, then
    stage 2 on the tumour pool, x continued), with its random-init level; swin_trio's rotation accuracy beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in OBJECTIVE_CFG if (results / n / "curves.csv").exists()]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False, constrained_layout=True)
    for ax, name in zip(axes[0], names):
        curves = pd.read_csv(results / name / "curves.csv").sort_values(["stage", "step"])
        offset = 0
        for stage, style in ((1, "o-"), (2, "s--")):
            part = curves[curves.stage == stage]
            if not len(part):
                continue
            if stage == 2:
                offset = STEPS[1] * STAGE["batch_size"]
            x = offset + part.crops_seen
            ax.plot(x, part["loss"], style, ms=3, label=f"stage {stage} ({'healthy' if stage == 1 else 'tumour'} pool)")
            ax.axhline(part["loss"].iloc[0], color=ax.lines[-1].get_color(), lw=0.7, ls=":",
                       label=f"stage {stage} start ({'random init' if stage == 1 else 'stage-1 weights'})")
        total = int(curves.crops_seen.where(curves.stage == 1, 0).max() + curves.crops_seen.where(curves.stage == 2, 0).max())
        budget = sum(STEPS.values()) * STAGE["batch_size"]
        ax.set(xlabel=f"crops seen in pretraining ({STAGE['crop']}^3 voxels)", ylabel="held-out pretext loss (lower is better)",
               title=f"{name}\n{total:,} of {budget:,} crops" + (" (partial run)" if total < budget else ""))
        ax.legend(fontsize=7)
    out = results / "curves.png"
    fig.savefig(out, dpi=110)
    write_summary(results, names)
    return out


def write_summary(results: Path, names: list[str]) -> Path:
    """summary.csv, one row per objective, read from each provenance.json and comparison.csv (what the README
    quotes): steps and crops done, wall time, held-out loss at the start and the last measurement of each stage,
    and on held-out tumour subjects the loss of a random init, stage 1 and stage 1+2."""
    rows = []
    for name in names:
        path = results / name / "provenance.json"
        path = path if path.exists() else results / name / "stage1" / "provenance.json"
        if not path.exists():
            continue  # still running: no record yet
        record = json.loads(path.read_text())
        row = {"objective": name, "partial": record["partial"], "sha256": record["sha256"][:12]}
        for stage in ("1", "2"):
            info = record["stages"].get(stage, {})
            row[f"stage{stage}_steps"] = f"{info.get('steps_done', info.get('steps', 0) if info else 0)}/{STEPS[int(stage)]}"
            row[f"stage{stage}_crops"] = info.get("crops", 0)
            row[f"stage{stage}_wall_h"] = round(info.get("wall_s", 0) / 3600, 2)
            metrics = record["pretext_metrics"].get(f"stage{stage}")
            if metrics:
                row[f"stage{stage}_loss_start"] = round(metrics["start"]["loss"], 4)
                row[f"stage{stage}_loss_last"] = round(metrics["last"]["loss"], 4)
        for entry in record["pretext_metrics"].get("held_out_tumour_subjects", []):
            row[f"tumour_loss_{entry['init'].replace(' ', '').replace('+', '_')}"] = round(entry["loss"], 4)
        rows.append(row)
    out = results / "summary.csv"
    pd.DataFrame(rows).to_csv(out, index=False)
    return out


def write_record(name: str, command: str, stage_info: dict, held: dict, train_entries: dict,
                 comparison: list[dict]) -> None:
    """provenance.json beside each committed checkpoint: ``stage1/`` (stage 1 weights) and, once stage 2 has
    started, the objective's folder (stage 1+2 weights, the fine-tuning init); the same record, each with its
    own file's sha256."""
    results = RESULTS / name
    for stage in (1, 2):
        if stage not in stage_info:
            ckpt = WORK / name / f"stage{stage}" / "checkpoint.pt"
            if ckpt.exists():
                extra = load_checkpoint(ckpt).get("extra") or {}
                stage_info[stage] = {"steps": STEPS[stage], "steps_done": int(extra.get("step", 0)),
                                     "complete": bool(extra.get("complete")), "batch_size": STAGE["batch_size"],
                                     "crop": STAGE["crop"], "crops": int(extra.get("step", 0)) * STAGE["batch_size"],
                                     "wall_s": round(float(extra.get("elapsed_s", 0.0)), 1)}
    curves = pd.read_csv(results / "curves.csv") if (results / "curves.csv").exists() else pd.DataFrame()
    final = {}
    for stage in (1, 2):
        part = curves[curves.stage == stage] if len(curves) else curves
        if len(part):
            last, first = part.sort_values("step").iloc[-1], part.sort_values("step").iloc[0]
            final[f"stage{stage}"] = {"step": int(last.step), "start": {k: float(first[k]) for k in part.columns
                                      if k not in ("stage", "step", "crops_seen") and pd.notna(first[k])},
                                      "last": {k: float(last[k]) for k in part.columns
                                               if k not in ("stage", "step", "crops_seen") and pd.notna(last[k])}}
    target = results / "checkpoint.pt" if (results / "checkpoint.pt").exists() else results / "stage1" / "checkpoint.pt"
    partial = not all(stage_info.get(s, {}).get("complete") for s in (1, 2))
    started = WORK / name / "started.json"
    info = {"objective": name, "command": command, "seed": SEED, "commit": git_commit(ROOT),
            "started_with": json.loads(started.read_text()) if started.exists() else None,
            "machine": machine_description(), "partial": partial,
            "pool": {f"stage{s}": {**{k: v for k, v in POOLS[s].items()}, "train_subjects": len(train_entries[s]),
                                   "held_out_subjects": held[s], "resolution_mm": RESOLUTION_MM} for s in (1, 2)},
            "stages": stage_info, "pretext_metrics": {**final, "held_out_tumour_subjects": comparison},
            "budget": {"crops_total": sum(STEPS.values()) * STAGE["batch_size"],
                       "study_finetune_crops": {"1 or 4 subjects": 500 * 4, "all subjects": 1000 * 4}}}
    write_provenance(results / "stage1" / "provenance.json", results / "stage1" / "checkpoint.pt", info)
    if target == results / "checkpoint.pt":
        write_provenance(results / "provenance.json", target, info)
    else:  # stage 2 not started: no stage 1+2 checkpoint, so no record of one
        (results / "provenance.json").unlink(missing_ok=True)


if __name__ == "__main__":
    raise SystemExit(main())
