"""Segment new scans with a fine-tuned checkpoint: ``kit predict``.

The input goes through exactly the preprocessing of the training cache (:mod:`kit.data.cache`):
MONAI ``LoadImaged`` (channels stacked in the checkpoint's modality order), ``CropForegroundd`` on
the brain (voxels > 0, a margin of 2) and ``NormalizeIntensityd(nonzero=True, channel_wise=True)``.
The model runs by sliding window over the whole cropped volume; the region probabilities become
one label map (kit.data.regions.regions_to_labels: BraTS ET -> 4 (3 in 2023), TC minus ET -> 1,
WT minus TC -> 2; a stroke 'lesion' -> 1); voxels outside the brain (zero in every input
channel) are set to background; and the map is put back into the original voxel grid and saved as
uint8 NIfTI with the first input's affine and header. Writes are atomic.

Command line::

    kit predict --checkpoint seg.pt --inputs flair.nii.gz t1ce.nii.gz t1.nii.gz t2.nii.gz --out seg.nii.gz
    kit predict --checkpoint seg.pt --manifest brats2021 --root /data/BraTS2021 --out predictions/

With ``--manifest`` the data are first checked with :func:`kit.data.validate.validate_dataset`
(labels are optional for prediction); subjects with problems are reported and skipped, the others
are written as ``OUT/<subject>.nii.gz``.

Example:
    >>> from kit.deploy.predict import predict_files
    >>> predict_files("runs/x/04_finetune/seg.pt", ["s_flair.nii.gz", "s_t1ce.nii.gz", "s_t1.nii.gz",
    ...               "s_t2.nii.gz"], "s_pred.nii.gz")  # doctest: +SKIP
    PosixPath('s_pred.nii.gz')
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from torch import nn

from kit.data import orientation
from kit.tensors import to_numpy

__all__ = [
    "PredictOptions",
    "PreparedImage",
    "preprocess_inputs",
    "segment_files",
    "save_label_nifti",
    "load_segmenter",
    "predict_files",
    "predict_dataset",
]

_NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class PreparedImage:
    """An input preprocessed as in the training cache.

    Attributes:
        image: float32 tensor (C, x, y, z), brain-cropped and z-scored over brain voxels.
        brain: bool tensor (x, y, z), voxels nonzero in at least one input channel.
        crop_start: voxel offset of the crop in the RAS+ grid of the inputs.
        original_shape: spatial shape of the inputs in RAS+ voxel order.
        source_affine: the input files' 4x4 affine (their own voxel order, for writing back).
    """

    image: torch.Tensor
    brain: torch.Tensor
    crop_start: tuple[int, int, int]
    original_shape: tuple[int, int, int]
    source_affine: np.ndarray | None = None


def _nifti_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"{path}: the output must be a NIfTI file ending in .nii.gz or .nii")


def _check_inputs(inputs: Sequence[str | os.PathLike], modalities: Sequence[str] | None = None) -> list[Path]:
    """Existence, NIfTI readability, 3D (the rule of kit validate) and a common grid; errors name the file."""

    from kit.data.nifti_checks import check_volume_files, spatial_shape

    paths = [Path(p) for p in inputs]
    if not paths:
        raise ValueError("no input files given")
    if modalities is not None and len(paths) != len(modalities):
        raise ValueError(
            f"{len(paths)} input files for a model that reads {len(modalities)} contrasts {list(modalities)} "
            f"(give them in this order): {[str(p) for p in paths]}"
        )
    reference = None
    for path in paths:
        if not os.path.lexists(path):
            raise FileNotFoundError(f"{path}: input file does not exist")
        check_volume_files([path])  # ValueError "PATH: reason" (a folder, empty, 4D, complex, singular...)
        header = nib.load(path)
        shape = spatial_shape(header.shape)
        if reference is None:
            reference = (path, shape, np.asarray(header.affine))
        elif shape != reference[1] or not np.allclose(header.affine, reference[2], atol=1e-3):
            raise ValueError(
                f"{path}: shape {shape} / affine differ from {reference[0]} (shape {reference[1]}); "
                "all contrasts of a subject must share one voxel grid"
            )
    return paths


_NAME_TOKENS = re.compile(r"[^a-z0-9]+")


def _contrast_in_name(path: Path, known: Sequence[str]) -> str | None:
    """The contrast a file name announces (``sub-1_T1Gd.nii.gz`` -> ``t1ce``), if exactly one of ``known``."""
    from kit.models.transfer import canonical_modality

    stem = path.name.lower().removesuffix(".gz").removesuffix(".nii")
    found = {canonical_modality(t) for t in _NAME_TOKENS.split(stem)} & set(known)
    return found.pop() if len(found) == 1 else None


def input_warnings(paths: Sequence[Path], extra: Mapping[str, Any]) -> list[str]:
    """Warnings about inputs that may not be what the checkpoint expects (never errors).

    * a file whose name announces another contrast than the checkpoint reads at its position
      (``--inputs`` are taken in the order given, names are not used to reorder them);
    * a voxel size that differs by more than 10 % from the training data's (``extra['spacing_mm']``):
      the network sees structures at another scale.

    Example:
        >>> input_warnings([Path("s_t1.nii.gz"), Path("s_flair.nii.gz")], {"modalities": ["flair", "t1"]})[0]
        's_t1.nii.gz: input 1 is named like t1 but the checkpoint reads flair there (expected order: flair, t1)'
    """
    from kit.models.transfer import canonical_modality

    warnings = []
    expected = [canonical_modality(m) for m in extra.get("modalities") or []]
    for position, (path, want) in enumerate(zip(paths, expected), start=1):
        named = _contrast_in_name(path, expected)
        if named is not None and named != want:
            warnings.append(f"{path}: input {position} is named like {named} but the checkpoint reads {want} there "
                            f"(expected order: {', '.join(expected)})")
    trained = extra.get("spacing_mm")
    if trained and paths and all(p.exists() for p in paths[:1]):
        import nibabel as nib

        zooms = [float(z) for z in nib.load(paths[0]).header.get_zooms()[:3]]
        if any(abs(z - t) > 0.1 * t for z, t in zip(zooms, trained)):
            warnings.append(f"{paths[0]}: voxel size {'x'.join(f'{z:g}' for z in zooms)} mm differs from the "
                            f"training data's {'x'.join(f'{t:g}' for t in trained)} mm; resample the inputs to it "
                            "for results like the validation's")
    return warnings


def _refuse_overwrite(out: Path, inputs: Sequence[Path], overwrite: bool) -> None:
    """Never write over an input; over an existing file only with ``overwrite``."""
    out_real = os.path.realpath(out)
    for path in inputs:
        if os.path.realpath(path) == out_real:
            raise ValueError(f"{out}: --out names one of the inputs; choose another output file (an input is never "
                             "overwritten)")
    if os.path.lexists(out) and not overwrite:
        raise ValueError(f"{out}: already exists; pass --overwrite to replace it")


def preprocess_inputs(inputs: Sequence[str | os.PathLike], margin: int = 2) -> PreparedImage:
    """Load and preprocess one subject's contrasts as :func:`kit.data.cache.build_cache` does.

    Args:
        inputs: NIfTI files, one per contrast, in the model's channel order.
        margin: voxels kept around the brain's bounding box (the cache's default is 2).

    Returns:
        :class:`PreparedImage`.

    Example:
        >>> prepared = preprocess_inputs(["s_t1.nii.gz", "s_flair.nii.gz"])  # doctest: +SKIP
        >>> prepared.image.shape, prepared.crop_start  # doctest: +SKIP
        (torch.Size([2, 140, 172, 138]), (50, 34, 8))
    """
    from monai.transforms import Compose, CropForegroundd, LoadImaged, NormalizeIntensityd, Orientationd

    from kit.data.nifti_checks import first_undecodable, nifti_reader

    paths = _check_inputs(inputs)
    load_and_crop = Compose([
        LoadImaged(keys="image", reader=nifti_reader(), ensure_channel_first=True, image_only=True),
        # as the training cache: RAS+ whatever the file's voxel order
        Orientationd(keys="image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        CropForegroundd(keys="image", source_key="image", margin=int(margin), allow_smaller=True),
    ])
    try:
        data = load_and_crop({"image": [str(p) for p in paths]})
    except Exception as err:  # name the file that does not decode (a truncated one), not just the first
        culprit = first_undecodable(paths)
        if culprit is not None:
            raise ValueError(f"{culprit}: truncated or corrupt image data (its voxels cannot be decoded)") from err
        raise ValueError(f"{paths[0]}: cannot preprocess {[str(p) for p in paths]}: {err}") from err
    cropped = data["image"]
    crop_start = (0, 0, 0)
    for op in getattr(cropped, "applied_operations", []):
        if "Crop" in op.get("class", ""):
            box = op.get("extra_info", {}).get("cropped")
            if box is not None:
                crop_start = tuple(int(c) for c in list(box)[0::2])
    source_affine = np.asarray(nib.load(paths[0]).affine, dtype=float)
    ras_shape = orientation.ras_shape(tuple(int(s) for s in cropped.meta["spatial_shape"])[:3], source_affine)
    brain = (cropped.as_tensor() != 0).any(dim=0)
    normalised = NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)(data)["image"]
    image = normalised.as_tensor().float() if hasattr(normalised, "as_tensor") else torch.as_tensor(normalised).float()
    return PreparedImage(image=image, brain=brain, crop_start=crop_start, original_shape=tuple(ras_shape),
                         source_affine=source_affine)


def segment_files(
    model: nn.Module,
    inputs: Sequence[str | os.PathLike],
    regions: Mapping[str, Sequence[int]],
    roi: int | Sequence[int],
    *,
    overlap: float = 0.5,
    sw_batch_size: int | None = None,
    threshold: float = 0.5,
    margin: int = 2,
    amp: str = "auto",
) -> np.ndarray:
    """Label map of one subject in the grid of its input files.

    Args:
        model: segmentation network, one sigmoid channel per region (on the device to run on).
        inputs: NIfTI files in the model's channel order.
        regions: region name -> label values, as trained (``extra['regions']`` of the checkpoint).
        roi, overlap, sw_batch_size, amp: sliding-window settings (kit.models.inference.predict_volume).
        threshold: region probability threshold.
        margin: brain-crop margin in voxels.

    Returns:
        uint8 array with the input files' spatial shape and voxel order; label values from
        ``regions``, zero outside the brain. The network sees RAS+ arrays (as in training); the
        labels are mapped back to the files' own orientation, so an LPS and a RAS file of the same
        scan give the same labels in world space.
    """
    from kit.models.inference import predict_volume
    from kit.data.regions import regions_to_labels

    prepared = preprocess_inputs(inputs, margin)
    probs = predict_volume(model, prepared.image, roi, overlap, sw_batch_size, amp=amp)
    labels = regions_to_labels(probs, regions, threshold)[0]
    labels[~prepared.brain] = 0  # lesions lie in the brain: nothing where every contrast is 0
    full = np.zeros(prepared.original_shape, dtype=np.uint8)
    box = tuple(slice(s, s + n) for s, n in zip(prepared.crop_start, labels.shape))
    full[box] = to_numpy(labels)
    return orientation.from_ras(full, prepared.source_affine) if prepared.source_affine is not None else full


def save_label_nifti(labels: np.ndarray, reference: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write ``labels`` (uint8, the reference's shape) as NIfTI with the reference's affine and header.

    Atomic: a temporary file in the same folder, then ``os.replace``.

    Example:
        >>> save_label_nifti(np.zeros((4, 4, 4), np.uint8), "t1.nii.gz", "seg.nii.gz")  # doctest: +SKIP
        PosixPath('seg.nii.gz')
    """
    import nibabel as nib

    from kit.data.nifti_io import save_image_atomic

    out = Path(out_path)
    _nifti_suffix(out)  # validates the output name
    ref = nib.load(reference)
    if tuple(labels.shape) != tuple(ref.shape[:3]):
        raise ValueError(f"{out}: label shape {tuple(labels.shape)} differs from {reference} {tuple(ref.shape)}")
    header = ref.header.copy()
    image = type(ref)(np.asarray(labels, dtype=np.uint8), ref.affine, header)
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1.0, 0.0)  # labels are stored as is, never rescaled
    return save_image_atomic(image, out)


def load_segmenter(checkpoint: str | os.PathLike, device: str = "auto") -> tuple[nn.Module, dict[str, Any]]:
    """A fine-tuned segmentation model on ``device`` and its checkpoint ``extra``.

    Raises:
        CheckpointError: the file is not a fine-tuned segmentation checkpoint (names it).
    """
    from kit.models.checkpoints import CheckpointError
    from kit.devices import resolve_device
    from kit.models.finetuned import load_finetuned

    model, extra = load_finetuned(checkpoint)
    if extra.get("task") != "segmentation":
        raise CheckpointError(f"{checkpoint}: a {extra.get('task')} checkpoint; kit predict segments, it needs "
                              "a segmentation fine-tune")
    for key in ("regions", "modalities", "roi"):
        if not extra.get(key):
            raise CheckpointError(f"{checkpoint}: extra[{key!r}] is missing; re-save it with FinetuneResult.save")
    return model.to(resolve_device(device)), extra


@dataclass(frozen=True)
class PredictOptions:
    """How :func:`predict_files` and :func:`predict_dataset` run a segmenter (the ``kit predict`` options).

    Attributes:
        device, amp: where and how to run ('auto' = CUDA when available, bf16/fp16 there).
        overlap: sliding-window overlap (None: the checkpoint's ``sw_overlap``, 0.5).
        sw_batch_size: windows per forward pass (None: 4 on a GPU, 1 on a CPU).
        threshold: region probability threshold.
        margin: brain-crop margin in voxels.
        overwrite: replace existing outputs (an input file is never replaced).

    Example:
        >>> PredictOptions(device="cpu").with_settings(threshold=0.4).threshold
        0.4
    """

    device: str = "auto"
    amp: str = "auto"
    overlap: float | None = None
    sw_batch_size: int | None = None
    threshold: float = 0.5
    margin: int = 2
    overwrite: bool = False

    def with_settings(self, **settings: Any) -> "PredictOptions":
        """A copy with ``settings`` changed (an unknown name is a ``TypeError`` naming it)."""
        return dataclasses.replace(self, **settings) if settings else self

    def segment(self, model: nn.Module, files: Sequence[str | os.PathLike], extra: Mapping[str, Any]) -> np.ndarray:
        """:func:`segment_files` with these options and the checkpoint's regions, crop size and overlap."""
        return segment_files(
            model, files, extra["regions"], extra["roi"],
            overlap=extra.get("sw_overlap", 0.5) if self.overlap is None else self.overlap,
            sw_batch_size=self.sw_batch_size, threshold=self.threshold, margin=self.margin, amp=self.amp,
        )


def predict_files(
    checkpoint: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out_path: str | os.PathLike,
    options: PredictOptions | None = None,
    **settings: Any,
) -> Path:
    """Segment one subject's files and write its label map.

    Args:
        checkpoint: a segmentation checkpoint written by ``FinetuneResult.save``.
        inputs: NIfTI files in the checkpoint's modality order (``extra['modalities']``).
        out_path: output ``.nii.gz`` / ``.nii`` (uint8, the first input's grid, affine and header).
        options: a :class:`PredictOptions` (default: its defaults).
        **settings: :class:`PredictOptions` fields set by name (``device="cpu"``, ``overwrite=True``, ...),
            over ``options``; ``overwrite`` replaces ``out_path`` if it exists (never an input).

    Warnings (stderr): inputs named like another contrast than expected at their position, a voxel
    size unlike the training data's (:func:`input_warnings`).

    Returns:
        the path written.
    """
    opts = (options or PredictOptions()).with_settings(**settings)
    paths = [Path(p) for p in inputs]
    _nifti_suffix(Path(out_path))
    _refuse_overwrite(Path(out_path), paths, opts.overwrite)  # before any work
    model, extra = load_segmenter(checkpoint, opts.device)
    paths = _check_inputs(inputs, extra["modalities"])
    for warning in input_warnings(paths, extra):
        print(f"warning: {warning}", file=sys.stderr)
    return save_label_nifti(opts.segment(model, paths, extra), paths[0], out_path)


def _channel_order(model_modalities: Sequence[str], manifest_modalities: Sequence[str], where: str) -> list[int]:
    """Positions in the manifest's image list of each contrast the model reads, matched by name."""
    from kit.models.transfer import canonical_modality

    manifest_names = [canonical_modality(m) for m in manifest_modalities]
    order = []
    for name in model_modalities:
        canonical = canonical_modality(name)
        if canonical not in manifest_names:
            raise ValueError(f"{where}: the model reads {list(model_modalities)} but the manifest has no "
                             f"{name!r} image (it has {list(manifest_modalities)})")
        order.append(manifest_names.index(canonical))
    return order


def predict_dataset(
    checkpoint: str | os.PathLike,
    manifest: Any,
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: PredictOptions | None = None,
    *,
    progress: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """Validate a dataset against its manifest, then segment every clean subject into ``out_dir``.

    Labels are optional here (a manifest that requires them is relaxed: new scans have none).
    Contrasts are matched to the checkpoint's modalities by name, whatever the manifest's order.

    Args:
        checkpoint: a segmentation checkpoint (``FinetuneResult.save``).
        manifest: a :class:`kit.data.manifest.Manifest`, a YAML path or a shipped name.
        root: the dataset root.
        out_dir: folder for ``<subject>.nii.gz`` (created).
        options, **settings: a :class:`PredictOptions` and fields set by name, as in :func:`predict_files`;
            ``overwrite`` replaces existing ``<subject>.nii.gz`` files (inputs are never replaced); without
            it, existing outputs are refused before anything is written.
        progress: tqdm bar over subjects.

    Returns:
        ``{'written': [paths], 'subjects': [ids], 'problems': [validation problems as text],
        'warnings': [...]}``.

    Example:
        >>> out = predict_dataset("seg.pt", "brats2021", "/data/BraTS2021", "preds/")  # doctest: +SKIP
        >>> len(out["written"]), out["problems"][:1]  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from kit.data.manifest import Manifest, load_manifest
    from kit.data.validate import validate_dataset

    opts = (options or PredictOptions()).with_settings(**settings)
    spec = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    if spec.label is not None and spec.label.required:
        spec = dataclasses.replace(spec, label=dataclasses.replace(spec.label, required=False))
    model, extra = load_segmenter(checkpoint, opts.device)
    order = _channel_order(extra["modalities"], spec.modalities, f"{checkpoint} with manifest {spec.name}")
    result = validate_dataset(spec, root, progress=progress)
    out = Path(out_dir)
    targets = [out / f"{entry['subject']}.nii.gz" for entry in result.subjects]
    inputs = [Path(p) for entry in result.subjects for p in entry["image"] + [entry.get("label") or ""] if p]
    existing = [t for t in targets if os.path.lexists(t)]
    for target in targets:
        _refuse_overwrite(target, inputs, overwrite=True)  # an input is never replaced
    if existing and not opts.overwrite:
        raise ValueError(f"{existing[0]}: already exists ({len(existing)} of {len(targets)} label maps in {out} do); "
                         "pass --overwrite to replace them")
    result.warnings.extend(input_warnings([Path(e["image"][order[0]]) for e in result.subjects[:1]],
                                          {"spacing_mm": extra.get("spacing_mm")}))
    out.mkdir(parents=True, exist_ok=True)
    written, subjects = [], []
    for entry in tqdm(result.subjects, disable=not progress, desc="predict", unit="subject"):
        files = [entry["image"][k] for k in order]
        written.append(save_label_nifti(opts.segment(model, files, extra), files[0], out / f"{entry['subject']}.nii.gz"))
        subjects.append(str(entry["subject"]))
    return {
        "written": written,
        "subjects": subjects,
        "problems": [str(p) for p in result.problems],
        "warnings": [str(w) for w in result.warnings],
    }
