"""Check a dataset on disk against its manifest and turn the clean subjects into a MONAI datalist.

:func:`validate_dataset` walks every subject the manifest's glob finds, reads every file in full
(a ``.nii.gz`` cut short only shows when its data are decoded) and collects *all* problems rather
than stopping at the first, each naming the file and what is wrong with it:

* data root missing, no subjects found, duplicate subject ids;
* missing image or (required) label file;
* unreadable file (not NIfTI) or truncated / corrupt data;
* NaN / inf voxels (counted);
* 4D (or 2D) images where 3D is expected (a trailing singleton axis is squeezed with a warning);
* shape or affine mismatch across a subject's images (affine: corner displacement > 1e-3 mm);
* label values outside the manifest's set, non-integer label values;
* empty label unless the phenotype table marks the subject lesion-free, and a non-empty label
  for a subject marked lesion-free;
* a pattern, glob or symlink that leads outside the data root;
* phenotype table missing when required, unreadable, without its id column, duplicate ids;
* subject ids that differ only in letter case (one folder on a case-insensitive file system);
* the file-level rules of :mod:`kit.data.nifti_checks`, shared with the training cache: a folder,
  symlink loop or unreadable file where a file belongs, empty files, gzip naming, headers that
  promise more voxels than the file holds, complex / RGB data types, non-finite or singular
  affines, qform vs sform > 1 mm apart, all-zero images, values that overflow float32 once scaled.

Warnings (reported, never failing): geometry that differs from the manifest's expected
shape/spacing (synthetic data are often 2-4 mm), squeezed singleton axes, wildcard patterns
matching several files, subjects missing from the phenotype table.

Example:
    >>> from kit.data.validate import validate_dataset, write_datalist
    >>> result = validate_dataset("brats2021", "/data/BraTS2021")          # doctest: +SKIP
    >>> for problem in result.problems:                                      # doctest: +SKIP
    ...     print(problem)        # "/data/.../BraTS2021_00003_seg.nii.gz: label values {3} ..."
    >>> if result.ok:                                                        # doctest: +SKIP
    ...     write_datalist(result, "runs/datalist.json")
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kit.data.manifest import Manifest, load_manifest
from kit.data.nifti_checks import corner_shift_mm
from kit.data.volume_read import Problem, Volume, error_text, fmt_shape, printable, read_volume
from kit.tempfiles import write_text_atomic

__all__ = [
    "AFFINE_TOLERANCE_MM",
    "Problem",
    "printable",
    "ValidationResult",
    "validate_dataset",
    "datalist_dict",
    "write_datalist",
]

#: Largest displacement (mm) of any corner of the voxel grid between two affines still "equal".
AFFINE_TOLERANCE_MM = 1e-3
_GLOB_CHARS = re.compile(r"[*?\[]")
_MISSING_VALUES = {"", "na", "n/a", "nan", "none", "null"}
_RESERVED_KEYS = {"subject", "image", "label"}
_WORKERS = 2  # gzip decoding releases the GIL, so two threads read two files at once


@dataclass
class ValidationResult:
    """Outcome of :func:`validate_dataset`.

    Attributes:
        manifest: the manifest checked against.
        root: absolute data root.
        subjects: datalist entries of the clean subjects only (see :func:`datalist_dict`).
        problems: everything that makes the dataset unusable as described; ``ok`` is False if any.
        warnings: things worth knowing that do not fail validation.
        n_found: number of subjects the manifest's glob found.
    """

    manifest: Manifest
    root: Path
    subjects: list[dict] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    n_found: int = 0

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def summary(self) -> str:
        """One line: manifest, root, subjects found / clean, problem and warning counts."""
        return (f"{self.manifest.name} at {self.root}: {self.n_found} subjects found, "
                f"{len(self.subjects)} clean, {len(self.problems)} problems, "
                f"{len(self.warnings)} warnings")


# ----------------------------------------------------------------------------- small helpers

class _FileError(Exception):
    """A file-level problem found while reading; the message is the reason."""


def _real(path: str | Path) -> str:
    return os.path.realpath(path)


def _inside(path: str | Path, root_real: str) -> bool:
    real = _real(path)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _outside_reason(path: str | Path, root: Path, what: str) -> str:
    via = " (symlink)" if os.path.islink(path) else ""
    return f"{what} resolves outside the data root {root}{via}: -> {_real(path)}"


def _parse_value(text: str) -> Any:
    """Phenotype cell -> int, float, None (empty / NA) or the stripped string."""
    text = text.strip()
    if text.lower() in _MISSING_VALUES:
        return None
    for cast in (int, float):
        try:
            value = cast(text)
        except ValueError:
            continue
        return None if isinstance(value, float) and not math.isfinite(value) else value
    return text


def _same_value(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return False
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a).strip() == str(b).strip()


def _fmt_spacing(spacing) -> str:
    return "x".join(f"{float(s):g}" for s in spacing)


# ----------------------------------------------------------------------------- discovery

@dataclass
class _Subject:
    id: str
    folder: str      # patterns are relative to this folder
    origin: str      # the glob match that found the subject


def _discover(manifest: Manifest, root: Path, root_real: str, problems: list, warnings: list):
    n_problems_before = len(problems)
    matches = sorted(glob.glob(os.path.join(glob.escape(str(root)), manifest.subjects_glob)))
    id_regex = re.compile(manifest.subject_id_regex) if manifest.subject_id_regex else None
    subjects: list[_Subject] = []
    seen: dict[str, str] = {}
    seen_folded: dict[str, tuple[str, str]] = {}
    for match in matches:
        is_dir = os.path.isdir(match)
        if id_regex is None and not is_dir:
            continue  # the plain form finds subject folders only; stray files are not subjects
        if id_regex is not None:
            found = id_regex.search(os.path.basename(match))
            if not found:
                warnings.append(Problem(match, f"matches the subject glob '{manifest.subjects_glob}' "
                                               f"but not id_regex '{manifest.subject_id_regex}'; skipped"))
                continue
            subject_id = found.group(1)
        else:
            subject_id = os.path.basename(match)
        if not _inside(match, root_real):
            what = "subject directory" if is_dir else "subject file"
            problems.append(Problem(match, _outside_reason(match, root, what), subject_id))
            continue
        if subject_id in seen:
            problems.append(Problem(match, f"duplicate subject id '{subject_id}' (also {seen[subject_id]})",
                                    subject_id))
            continue
        folded = subject_id.casefold()
        if folded in seen_folded:  # one folder / one cache file on macOS and Windows file systems
            other_id, other = seen_folded[folded]
            problems.append(Problem(match, f"subject id '{subject_id}' differs from '{other_id}' ({other}) only in "
                                           "letter case: they collide on a case-insensitive file system",
                                    subject_id))
            continue
        seen[subject_id] = match
        seen_folded[folded] = (subject_id, match)
        subjects.append(_Subject(subject_id, match if is_dir else os.path.dirname(match), match))
    if not subjects and len(problems) == n_problems_before:
        problems.append(Problem(str(root), f"no subjects found: glob '{manifest.subjects_glob}' "
                                           f"matched no subject under {root}"))
    return subjects


def _locate(pattern: str, subject: _Subject, root: Path, root_real: str, what: str,
            problems: list, warnings: list) -> tuple[str | None, str]:
    """Return (existing inside-root file or None, the path to report)."""
    if _GLOB_CHARS.search(pattern):
        relative = pattern.format(subject=glob.escape(subject.id))
        found = sorted(glob.glob(os.path.join(glob.escape(subject.folder), relative)))
        # files first; a folder or a dangling/looping link matched alone is reported as such
        matches = [m for m in found if os.path.isfile(m)] or found
        expected = os.path.join(subject.folder, pattern.format(subject=subject.id))
        if not matches:
            return None, expected
        path = matches[0]
        if len(matches) > 1:
            others = ", ".join(os.path.basename(m) for m in matches[1:4])
            more = "" if len(matches) <= 4 else f" and {len(matches) - 4} more"
            warnings.append(Problem(path, f"{what} pattern '{pattern}' matched {len(matches)} files; "
                                          f"using the first in sorted order (others: {others}{more})",
                                    subject.id))
    else:
        path = os.path.normpath(os.path.join(subject.folder, pattern.format(subject=subject.id)))
    if not _inside(path, root_real):
        problems.append(Problem(path, _outside_reason(path, root, f"{what} file"), subject.id))
        return None, path
    # anything there (a folder, a symlink loop) is read and reported for what it is, not as missing
    return (path if os.path.lexists(path) else None), path


# ----------------------------------------------------------------------------- phenotypes

def _read_phenotypes(manifest: Manifest, root: Path, root_real: str, problems: list):
    """Return (table path or None, {subject id: {column: value}} or None)."""
    spec = manifest.phenotypes
    if spec is None:
        return None, None
    path = os.path.normpath(os.path.join(root, spec.file))
    if not _inside(path, root_real):
        problems.append(Problem(path, _outside_reason(path, root, "phenotype table")))
        return path, None
    if not os.path.isfile(path):
        if spec.required:
            problems.append(Problem(path, "phenotype table is missing (required by the manifest)"))
        return path, None
    delimiter = "\t" if path.endswith((".tsv", ".tsv.gz", ".txt")) else ","
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle, delimiter=delimiter))
            columns = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        problems.append(Problem(path, f"unreadable phenotype table ({error_text(error, path)})"))
        return path, None
    if spec.id_column not in columns:
        problems.append(Problem(path, f"phenotype table has no id column '{spec.id_column}' "
                                      f"(columns: {list(columns)})"))
        return path, None
    table: dict[str, dict] = {}
    duplicates = set()
    for row in rows:
        subject_id = (row.get(spec.id_column) or "").strip()
        if subject_id in table:
            duplicates.add(subject_id)
        table[subject_id] = {k: _parse_value(v or "") for k, v in row.items()
                             if k is not None and k != spec.id_column}
    if duplicates:
        problems.append(Problem(path, f"duplicate subject ids in the phenotype table: {sorted(duplicates)[:10]}"))
    return path, table


# ----------------------------------------------------------------------------- one subject

def _check_subject(subject: _Subject, manifest: Manifest, root: Path, root_real: str,
                   table: dict | None, table_path: str | None):
    problems: list[Problem] = []
    warnings: list[Problem] = []
    ndim = manifest.geometry.ndim

    if not _inside(subject.folder, root_real):
        problems.append(Problem(subject.folder, _outside_reason(subject.folder, root, "subject directory"),
                                subject.id))
        return None, problems, warnings, None

    image_paths: list[str | None] = []
    for spec in manifest.images:
        path, reported = _locate(spec.pattern, subject, root, root_real, spec.name, problems, warnings)
        if path is None and _inside(reported, root_real):
            problems.append(Problem(reported, f"missing {spec.name} image (pattern '{spec.pattern}')",
                                    subject.id))
        image_paths.append(path)
    label_path = None
    if manifest.label is not None:
        label_path, reported = _locate(manifest.label.pattern, subject, root, root_real, "label",
                                       problems, warnings)
        if label_path is None and manifest.label.required and _inside(reported, root_real):
            problems.append(Problem(reported, f"missing label (pattern '{manifest.label.pattern}')",
                                    subject.id))

    volumes: list[tuple[str, Volume]] = []
    for spec, path in zip(manifest.images, image_paths):
        if path is not None:
            volume = read_volume(path, ndim, False, problems, warnings, subject.id)
            if volume is not None:
                volumes.append((spec.name, volume))
    label_volume = None
    if label_path is not None:
        label_volume = read_volume(label_path, ndim, True, problems, warnings, subject.id)
        if label_volume is not None:
            volumes.append(("label", label_volume))

    # one voxel grid per subject: compare everything with the first readable image
    usable = [(name, v) for name, v in volumes if not v.bad]
    if manifest.geometry.same_grid and len(usable) > 1:
        ref_name, ref = usable[0]
        for name, volume in usable[1:]:
            if volume.shape != ref.shape:
                problems.append(Problem(volume.path, f"shape {fmt_shape(volume.shape)} differs from "
                                                     f"{ref_name} ({os.path.basename(ref.path)}) "
                                                     f"{fmt_shape(ref.shape)}", subject.id))
                continue
            shift = corner_shift_mm(volume.affine, ref.affine, ref.shape)
            if shift > AFFINE_TOLERANCE_MM:
                problems.append(Problem(volume.path, f"affine differs from {ref_name} "
                                                     f"({os.path.basename(ref.path)}): grid corners "
                                                     f"move by up to {shift:.3g} mm "
                                                     f"(tolerance {AFFINE_TOLERANCE_MM:g} mm)", subject.id))

    row = table.get(subject.id) if table is not None else None
    if table is not None and row is None:
        warnings.append(Problem(table_path, f"subject '{subject.id}' is not in the phenotype table",
                                subject.id))

    if label_volume is not None and not label_volume.bad and manifest.label is not None:
        _check_label(label_volume, manifest, row, table_path, subject.id, problems)

    geometry_key = None
    if usable:
        reference = usable[0][1]
        geometry_key = (reference.shape, tuple(round(s, 3) for s in reference.spacing), reference.path)

    if problems:
        return None, problems, warnings, geometry_key
    entry: dict[str, Any] = {"subject": subject.id,
                             "image": [os.path.abspath(p) for p in image_paths]}
    if label_path is not None:
        entry["label"] = os.path.abspath(label_path)
    if row is not None:
        entry.update({k: v for k, v in row.items() if k not in _RESERVED_KEYS})
    return entry, problems, warnings, geometry_key


def _check_label(volume: Volume, manifest: Manifest, row: dict | None, table_path: str | None,
                 subject_id: str, problems: list) -> None:
    allowed = list(manifest.label.values)
    present = {int(v) for v in volume.label_values}
    outside = sorted(present - set(allowed))
    if outside:
        hints = [manifest.label.hints[v] for v in outside if v in manifest.label.hints]
        hint = f" ({'; '.join(hints)})" if hints else ""
        problems.append(Problem(volume.path, f"label values {{{', '.join(map(str, outside))}}} not in "
                                             f"manifest set {allowed}{hint}", subject_id))
        return
    spec = manifest.phenotypes
    marked_free = (row is not None and spec is not None and spec.lesion_free_column is not None
                   and _same_value(row.get(spec.lesion_free_column), spec.lesion_free_value))
    rule = (f"{spec.lesion_free_column} = {spec.lesion_free_value}"
            if spec is not None and spec.lesion_free_column else "")
    if volume.n_foreground == 0 and not marked_free:
        why = (f"and {os.path.basename(table_path)} does not mark the subject lesion-free ({rule})"
               if rule and table_path else "and no phenotype table marks the subject lesion-free")
        problems.append(Problem(volume.path, f"label is empty (all background) {why}", subject_id))
    elif volume.n_foreground > 0 and marked_free:
        problems.append(Problem(volume.path, f"label has {volume.n_foreground} foreground voxels but "
                                             f"{os.path.basename(table_path)} marks the subject "
                                             f"lesion-free ({rule})", subject_id))


# ----------------------------------------------------------------------------- public API

def validate_dataset(manifest: Manifest | str | Path, root: str | Path, *,
                     progress: bool = False) -> ValidationResult:
    """Check every subject under ``root`` against ``manifest``; never stops at the first problem.

    Args:
        manifest: a :class:`~kit.data.manifest.Manifest`, a manifest YAML path or a shipped name.
        root: the dataset's root folder (the folder the manifest's globs are relative to).
        progress: show a tqdm bar over subjects (stderr).

    Returns:
        :class:`ValidationResult`; ``result.ok`` is True when no problem was found, and
        ``result.subjects`` holds the datalist entries of the clean subjects, in sorted order:
        ``{"subject": id, "image": [abs paths in channel order], "label": abs path (if any),
        <phenotype columns>}``.

    Raises:
        ValueError / FileNotFoundError: only for a bad manifest; dataset problems are returned.

    Example:
        >>> result = validate_dataset("brats2021", "/data/BraTS2021")         # doctest: +SKIP
        >>> result.ok, len(result.subjects), [str(p) for p in result.problems][:1]   # doctest: +SKIP
        (False, 1250, ['/data/BraTS2021/BraTS2021_00495/BraTS2021_00495_seg.nii.gz: missing label ...'])
    """
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    root = Path(os.path.abspath(os.path.expanduser(str(root))))
    result = ValidationResult(manifest=manifest, root=root)
    if not root.is_dir():
        reason = "is not a directory" if root.exists() else "does not exist"
        result.problems.append(Problem(str(root), f"data root {reason} (manifest {manifest.name}, "
                                                  f"subject glob '{manifest.subjects_glob}')"))
        return result
    root_real = _real(root)

    table_path, table = _read_phenotypes(manifest, root, root_real, result.problems)
    subjects = _discover(manifest, root, root_real, result.problems, result.warnings)
    result.n_found = len(subjects)

    def check(subject: _Subject):
        try:
            return _check_subject(subject, manifest, root, root_real, table, table_path)
        except Exception as error:  # a bug or an odd file must not hide the other subjects
            return None, [Problem(subject.origin, f"could not be checked ({error_text(error, subject.origin)})",
                                  subject.id)], [], None

    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        outcomes = pool.map(check, subjects)
        if progress:
            from tqdm.auto import tqdm
            outcomes = tqdm(outcomes, total=len(subjects), desc=f"validate {manifest.name}", unit="subject")
        geometries: dict[tuple, list[str]] = {}
        for entry, problems, warnings, geometry_key in outcomes:
            result.problems.extend(problems)
            result.warnings.extend(warnings)
            if entry is not None:
                result.subjects.append(entry)
            if geometry_key is not None:
                geometries.setdefault(geometry_key[:2], []).append(geometry_key[2])

    result.warnings.extend(_geometry_warnings(manifest, geometries, result.n_found))
    return result


def _geometry_warnings(manifest: Manifest, geometries: dict, n_subjects: int) -> list[Problem]:
    """One warning per distinct (shape, spacing) that differs from the manifest's expectation."""
    expected = manifest.geometry
    warnings = []
    for (shape, spacing), paths in sorted(geometries.items(), key=lambda kv: -len(kv[1])):
        shape_off = expected.shape is not None and tuple(shape) != tuple(expected.shape)
        spacing_off = expected.spacing is not None and not np.allclose(spacing, expected.spacing, atol=1e-3)
        if not (shape_off or spacing_off):
            continue
        want = ", ".join(part for part in (
            f"shape {fmt_shape(expected.shape)}" if expected.shape else "",
            f"spacing {_fmt_spacing(expected.spacing)} mm" if expected.spacing else "") if part)
        warnings.append(Problem(paths[0], f"{len(paths)} of {n_subjects} subjects have shape "
                                          f"{fmt_shape(shape)}, spacing {_fmt_spacing(spacing)} mm; "
                                          f"manifest {manifest.name} expects {want}"
                                          f"{' in ' + expected.space if expected.space else ''} "
                                          "(resampled or synthetic data?)"))
    return warnings


def datalist_dict(result: ValidationResult) -> dict:
    """MONAI decathlon-style datalist of the clean subjects of a validation.

    Returns:
        ``{"name", "description", "reference", "manifest", "root", "tensorImageSize",
        "modality": {"0": "flair", ...}, "labels": {"0": "background", ...} (labelled data only),
        "regions": {"TC": [1, 4], ...}, "numTraining", "training": [entries]}``; loadable with
        ``monai.data.load_decathlon_datalist(path, data_list_key="training")``.

    Example:
        >>> d = datalist_dict(result)                     # doctest: +SKIP
        >>> d["modality"], d["training"][0]["image"][0]   # doctest: +SKIP
        ({'0': 'flair', '1': 't1ce', '2': 't1', '3': 't2'}, '/data/BraTS2021/BraTS2021_00000/..._flair.nii.gz')
    """
    manifest = result.manifest
    data: dict[str, Any] = {
        "name": manifest.name,
        "description": manifest.title,
        "reference": " | ".join(manifest.citation),
        "manifest": manifest.name,
        "root": str(result.root),
        "tensorImageSize": "4D" if manifest.n_channels > 1 else "3D",
        "modality": {str(i): name for i, name in enumerate(manifest.modalities)},
    }
    if manifest.label is not None:
        data["labels"] = {str(v): name for v, name in manifest.label_names.items()}
    data["regions"] = {name: list(values) for name, values in manifest.regions.items()}
    data["numTraining"] = len(result.subjects)
    data["training"] = [dict(entry) for entry in result.subjects]
    return data


def write_datalist(result: ValidationResult, out_path: str | Path) -> Path:
    """Write :func:`datalist_dict` as JSON, atomically (temp file in the same folder + os.replace).

    Args:
        result: a validation result (usually ``ok``; only its clean subjects are written).
        out_path: destination ``.json``; parent folders are created.

    Returns:
        The absolute path written.

    Example:
        >>> write_datalist(validate_dataset("brats2021", "/data/BraTS2021"), "runs/datalist.json")  # doctest: +SKIP
        PosixPath('/.../runs/datalist.json')
    """
    out_path = Path(os.path.abspath(os.path.expanduser(str(out_path))))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(datalist_dict(result), indent=2, allow_nan=False)
    return write_text_atomic(out_path, text + "\n", fsync=True)
