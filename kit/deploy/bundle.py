"""A fine-tuned segmentation checkpoint as a MONAI bundle: ``kit export-bundle``.

The bundle (https://docs.monai.io/en/stable/mb_specification.html) runs without the kit::

    DIR/configs/metadata.json     input channels (names, order), spacing, output labels, versions
    DIR/configs/inference.json    MONAI transforms, network, SlidingWindowInferer, SaveImaged
    DIR/models/model.pt           the network's state dict
    DIR/scripts/kit_bundle.py     subjects of a BraTS-layout folder, regions -> labels (numpy/torch/MONAI only)
    DIR/scripts/patch_merging.py  MONAI < 1.5's SwinUNETR patch merging, for imported weights (torch/MONAI only)
    DIR/README.md                 how to run it

    python -m monai.bundle run --bundle_root DIR --config_file DIR/configs/inference.json \\
        --meta_file DIR/configs/metadata.json --dataset_dir SUBJECTS --output_dir OUT

writes ``OUT/<subject>_seg.nii.gz`` for every subject folder of ``SUBJECTS``. The preprocessing and
postprocessing are those of ``kit predict`` (kit.deploy.predict): ``LoadImaged`` (channels stacked in the
checkpoint's order), ``Orientationd`` to RAS+ (as in training), ``CropForegroundd`` on voxels > 0
with a margin of 2, ``NormalizeIntensityd(nonzero=True, channel_wise=True)``, no resampling (the
model reads the voxel size it was trained on), Gaussian-weighted sliding windows of the training
crop size, sigmoid, regions -> BraTS labels, zero outside the brain, un-cropped and put back in
the input's own orientation (``Invertd``) and saved in the first input's space as uint8.

Example:
    >>> export_bundle("runs/x/04_finetune/models/tumor_seg__stage1+2.pt", "bundles/tumor_seg")  # doctest: +SKIP
    PosixPath('bundles/tumor_seg')
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from kit.tempfiles import atomic_write

__all__ = ["export_bundle", "network_definition", "inference_config", "check_spacing", "check_channels"]

# MONAI classes of the kit's backbones (kit.models.backbones subclasses them without changing keys or forward).
_MONAI_CLASS = {"segresnet_small": "SegResNet", "swinunetr": "SwinUNETR"}
_BRATS2021_PATTERN = "{subject}_%s.nii.gz"


_MODALITY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_spacing(spacing: Any, where: str) -> list[float]:
    """Voxel spacing as 3 finite positive floats (mm), or ``ValueError`` naming ``where`` and the values.

    Example:
        >>> check_spacing([1, 1, 1.5], "--spacing")
        [1.0, 1.0, 1.5]
        >>> check_spacing([0, -1, float("nan")], "--spacing")
        Traceback (most recent call last):
        ...
        ValueError: --spacing 0 -1 nan: spacing must be 3 finite positive numbers in mm (e.g. 1 1 1)
    """
    values = list(spacing) if isinstance(spacing, (list, tuple)) else [spacing]
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        floats = []
    if len(floats) != 3 or not all(math.isfinite(v) and v > 0 for v in floats):
        shown = " ".join(f"{v:g}" if isinstance(v, (int, float)) else str(v) for v in values)
        raise ValueError(f"{where} {shown}: spacing must be 3 finite positive numbers in mm (e.g. 1 1 1)")
    return floats


def check_channels(modalities: Any, in_channels: Any, where: str) -> list[str]:
    """A checkpoint's input contrasts: unique names usable in file names, one per input channel of the network.

    They become the bundle's ``channel_def`` and file patterns (``{subject}_NAME.nii.gz``).

    Example:
        >>> check_channels(["flair", "t1"], 2, "seg.pt")
        ['flair', 't1']
        >>> check_channels(["flair", "t1/../x"], 2, "seg.pt")
        Traceback (most recent call last):
        ...
        ValueError: seg.pt: contrast name 't1/../x' cannot be part of a file name (letters, digits, '_', '-', '.')
    """
    if not isinstance(modalities, (list, tuple)) or not modalities:
        raise ValueError(f"{where}: extra['modalities'] must be a non-empty list of contrast names, got {modalities!r}")
    names = list(modalities)
    for name in names:
        if not isinstance(name, str) or not _MODALITY_NAME.match(name):
            raise ValueError(f"{where}: contrast name {name!r} cannot be part of a file name (letters, digits, '_', '-', '.')")
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: contrast names repeat: {names}")
    if in_channels is not None and int(in_channels) != len(names):
        raise ValueError(f"{where}: the network reads {in_channels} channels but extra['modalities'] names "
                         f"{len(names)} ({', '.join(names)})")
    return names


def _writable_parent(out: Path) -> None:
    """Refuse an ``--out`` below an existing file (the bundle folder could never be made there)."""
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--out {out}: {parent} is a file, not a folder")
            return


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def network_definition(model_config: dict, merging_module: str = "scripts.patch_merging") -> dict:
    """The MONAI network of a kit ``model_config`` as a bundle ``_target_`` definition.

    A ``swinunetr`` with ``patch_merging: 'legacy'`` (imported published weights) gets MONAI < 1.5's
    merging layer as its ``downsample``: ``LegacyPatchMerging`` of ``merging_module`` (the bundle's copy
    of :mod:`kit.models.patch_merging`), so the bundle computes what the kit computes.

    Example:
        >>> network_definition({"name": "segresnet_small", "in_channels": 4, "out_channels": 3, "init_filters": 8,
        ...                     "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 1), "dropout_prob": None})["_target_"]
        'SegResNet'
    """
    config = dict(model_config)
    name = config.pop("name")
    if name not in _MONAI_CLASS:
        raise ValueError(f"no MONAI network for the kit backbone {name!r}; exportable: {sorted(_MONAI_CLASS)}")
    config.setdefault("spatial_dims", 3)
    if config.pop("patch_merging", "current") == "legacy":
        config["downsample"] = {"_target_": f"{merging_module}.LegacyPatchMerging", "_mode_": "callable"}
    return {"_target_": _MONAI_CLASS[name], **_jsonable(config)}


def inference_config(extra: dict, network: dict, patterns: list[str]) -> dict:
    """The ``inference.json`` of a segmentation checkpoint's ``extra`` (regions, roi, sw_overlap)."""
    from kit.data.regions import region_paint_order

    regions = extra["regions"]
    index = {name: i for i, name in enumerate(regions)}
    paint = [[index[name], int(value)] for name, value in region_paint_order(regions)]
    return {
        # scripts.* only in _target_: MONAI puts the bundle root on sys.path when the run starts, after imports.
        "imports": ["$import numpy", "$import torch"],
        "bundle_root": ".",
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "dataset_dir": "data",
        "output_dir": "$@bundle_root + '/eval'",
        "output_postfix": "seg",
        "image_patterns": patterns,
        "threshold": 0.5,
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": network,
        "network": "$@network_def.to(@device)",
        "datalist": {"_target_": "scripts.kit_bundle.brats_subjects", "dataset_dir": "@dataset_dir",
                     "patterns": "@image_patterns"},
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image", "ensure_channel_first": True, "image_only": True},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS", "labels": [["L", "R"], ["P", "A"], ["I", "S"]]},
                {"_target_": "CropForegroundd", "keys": "image", "source_key": "image", "margin": 2,
                 "allow_smaller": True},
                {"_target_": "CopyItemsd", "keys": "image", "times": 1, "names": "brain"},
                {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
            ],
        },
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": _jsonable(extra["roi"]), "sw_batch_size": 1,
                    "overlap": float(extra.get("sw_overlap", 0.5)), "mode": "gaussian"},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
                {"_target_": "scripts.kit_bundle.RegionsToLabelsd", "keys": "pred", "paint": paint,
                 "threshold": "@threshold", "brain_key": "brain"},
                {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
                 "nearest_interp": True, "to_tensor": True},
                {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir",
                 "output_postfix": "@output_postfix", "output_dtype": "$numpy.uint8", "separate_folder": False,
                 "resample": False, "print_log": False,
                 "output_name_formatter": {"_target_": "scripts.kit_bundle.subject_name_formatter",
                                           "first_pattern": "$@image_patterns[0]"}},
            ],
        },
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": "@ckpt_path", "load_dict": {"model": "@network"},
             "map_location": "@device", "strict": True},
        ],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "run": ["$@evaluator.run()"],
    }


def _metadata(ckpt: dict, extra: dict, patterns: list[str], spacing: list[float] | None) -> dict:
    import monai
    import numpy

    from kit.data.regions import region_paint_order

    modalities = list(extra["modalities"])
    label_names = {"0": "background"}
    for name, value in region_paint_order(extra["regions"]):
        label_names[str(value)] = f"{name} only" if len(extra["regions"][name]) > 1 else name
    config = ckpt["model_config"]
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": "exported by brainfm-kit (kit export-bundle)"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "optional_packages_version": {"nibabel": _version("nibabel"), **({"einops": _version("einops")} if config["name"] == "swinunetr" else {})},
        "name": f"brainfm-kit {extra.get('task', 'segmentation')} ({config['name']})",
        "task": "brain lesion segmentation in multi-contrast MRI",
        "description": (
            "A brainfm-kit fine-tuned segmentation model. Inputs: one subject folder per case in the BraTS 2021 "
            f"layout with the channels {modalities} in this order, skull-stripped and co-registered. "
            "Preprocessing as kit predict: brain crop (voxels > 0, margin 2), z-score per channel over brain voxels; "
            "no resampling: inputs must already have the training spacing. Output: a uint8 label map per subject, "
            "in the first input's grid."
        ),
        "authors": "brainfm-kit",
        "copyright": "see the training data's licence",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image", "format": "magnitude", "modality": "MR", "num_channels": len(modalities),
                    "spatial_shape": _jsonable(extra["roi"]), "dtype": "float32", "value_range": [],
                    "is_patch_data": True, "channel_def": {str(i): m for i, m in enumerate(modalities)},
                    "file_patterns": patterns, "spacing_mm": spacing,
                }
            },
            "outputs": {
                "pred": {
                    "type": "image", "format": "labels", "num_channels": 1, "spatial_shape": _jsonable(extra["roi"]),
                    "dtype": "uint8", "value_range": sorted(int(v) for v in label_names), "is_patch_data": False,
                    "channel_def": label_names,
                }
            },
        },
        "kit": {
            "modalities": modalities, "regions": _jsonable(extra["regions"]), "roi": _jsonable(extra["roi"]),
            "sw_overlap": float(extra.get("sw_overlap", 0.5)), "threshold": 0.5, "spacing_mm": spacing,
            "model_config": _jsonable(config),
        },
    }


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def export_bundle(checkpoint: str | os.PathLike, out: str | os.PathLike, spacing: list[float] | None = None) -> Path:
    """Write a MONAI bundle for a fine-tuned segmentation checkpoint (see the module docstring).

    Args:
        checkpoint: a segmentation checkpoint (``FinetuneResult.save``, e.g. ``04_finetune/models/*.pt``).
        out: the bundle folder; must not exist (nothing is overwritten). Written in a temporary
            sibling folder and renamed, so a failed export leaves nothing behind.
        spacing: voxel spacing (mm) of the training data, recorded in metadata.json (default: the
            checkpoint's ``extra['spacing_mm']``, else null: not recorded).

    Returns:
        the bundle folder.

    Raises:
        CheckpointError: not a segmentation checkpoint; FileExistsError: ``out`` exists.
    """
    from kit.models.checkpoints import CheckpointError, load_checkpoint
    from kit.deploy.predict import load_segmenter

    out = Path(out)
    # the arguments first, then the checkpoint: a refusal writes nothing
    if spacing is not None:
        spacing = check_spacing(spacing, "--spacing")
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new --out folder (a bundle is never written over files)")
    _writable_parent(out)
    model, extra = load_segmenter(checkpoint, device="cpu")
    ckpt = load_checkpoint(checkpoint)
    check_channels(extra["modalities"], ckpt["model_config"].get("in_channels"), str(checkpoint))
    if spacing is None and extra.get("spacing_mm") is not None:
        spacing = check_spacing(extra["spacing_mm"], f"{checkpoint}: extra['spacing_mm']")
    network = network_definition(ckpt["model_config"])
    # The bundle's network is MONAI's class: check here that it takes the weights, key for key.
    from monai.bundle import ConfigParser

    # The check builds it here, with the kit's copy of the legacy merging layer (the bundle ships the same file).
    monai_net = ConfigParser({"net": network_definition(ckpt["model_config"], "kit.models.patch_merging")}).get_parsed_content("net")
    try:
        monai_net.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{checkpoint}: MONAI's {network['_target_']} does not take these weights: {err}") from err
    patterns = [_BRATS2021_PATTERN % m for m in extra["modalities"]]

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, directory=True) as tmp:
        for sub in ("configs", "models", "scripts"):
            (tmp / sub).mkdir()
        # allow_nan=False: a NaN or infinity anywhere is an error here, never an unparsable .json in the bundle
        (tmp / "configs" / "inference.json").write_text(
            json.dumps(inference_config(extra, network, patterns), indent=2, allow_nan=False))
        (tmp / "configs" / "metadata.json").write_text(
            json.dumps(_metadata(ckpt, extra, patterns, spacing), indent=2, allow_nan=False))
        torch.save({k: v.detach().cpu() for k, v in monai_net.state_dict().items()}, tmp / "models" / "model.pt")
        shutil.copyfile(Path(__file__).with_name("bundle_scripts.py"), tmp / "scripts" / "kit_bundle.py")
        shutil.copyfile(Path(__file__).parents[1] / "models" / "patch_merging.py", tmp / "scripts" / "patch_merging.py")
        (tmp / "scripts" / "__init__.py").write_text("")
        (tmp / "README.md").write_text(
            f"# {out.name}\n\nExported by brainfm-kit from `{Path(checkpoint).name}`. Run on a folder of subjects "
            f"in the BraTS 2021 layout (channels {', '.join(extra['modalities'])}):\n\n"
            "```bash\npython -m monai.bundle run --bundle_root . --config_file configs/inference.json "
            "--meta_file configs/metadata.json --dataset_dir SUBJECTS --output_dir OUT\n```\n"
        )
    return out
