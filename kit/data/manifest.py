"""Dataset manifests: one YAML file per dataset that says where every file of a subject lies.

A manifest is the single description of a dataset's file layout that the validator
(:mod:`kit.data.validate`), the curation notebook and the loaders share; the same manifest
serves the real dataset and the synthetic copy written by ``kit synth`` in its layout.

Schema (keys not listed here are rejected, so typos fail loudly)::

    name: brats2021                 # required; short identifier (the shipped files use their stem)
    title: BraTS 2021 ...           # optional prose
    obtain: |                       # optional prose: licence or access procedure
      ...
    citation: ...                   # optional; a string or a list of strings
    url: https://...                # optional
    subjects: "BraTS2021_*"         # required; glob relative to the data root.
                                    #   Matches subject DIRECTORIES; subject id = directory basename.
    # or, for datasets stored flat (one folder, many subjects), a mapping:
    # subjects: {glob: "IXI*-T1.nii.gz", id_regex: "^(IXI\\d{3}-[A-Za-z]+-\\d{4})-T1"}
    #   glob may match files or directories; id = first group of id_regex searched in the
    #   basename (whole basename when no regex); the subject directory is the match itself when
    #   it is a directory, else the folder holding it.
    images:                         # required, non-empty, ORDERED: this order is the channel order
      - {name: flair, pattern: "{subject}_flair.nii.gz"}   # relative to the subject directory
    label:                          # optional
      pattern: "{subject}_seg.nii.gz"
      required: true                # default true; false = subjects may lack the file
      values: [0, 1, 2, 4]          # allowed integer values (must include 0, the background)
      names: {0: background, ...}   # optional; keys must be in values
      hints: {3: "BraTS 2023 labels under the 2021 manifest?"}  # optional; shown with bad values
    regions: {TC: [1, 4], ...}      # optional; named unions of label values (needs label)
    geometry:                       # optional; what the real data looks like
      ndim: 3                       # required in geometry; 3 for all shipped manifests
      shape: [240, 240, 155]        # optional (null = varies between subjects)
      spacing: [1.0, 1.0, 1.0]      # optional, mm
      space: SRI24                  # optional prose
      same_grid: true               # default true: all images of a subject share shape and affine
    phenotypes:                     # optional table of per-subject values
      file: participants.tsv        # relative to the root; .tsv = tab-separated, else comma
      id_column: subject            # default "subject"
      required: false               # default false
      lesion_free: {column: tumor_present, value: 0}   # optional; rows marking an empty label OK

Patterns accept one placeholder, ``{subject}``, and the glob wildcards ``*``, ``?`` and ``[...]``.
A wildcard pattern that matches several files takes the first in sorted order and the validator
warns (OASIS-3 keeps several sessions per subject). Where a pattern (or a symlink) leads outside
the data root the validator reports a problem instead of reading the file.

Example:
    >>> from kit.data.manifest import load_manifest
    >>> m = load_manifest("brats2021")
    >>> m.modalities
    ('flair', 't1ce', 't1', 't2')
    >>> m.regions["WT"]
    (1, 2, 4)
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

import kit

__all__ = [
    "ImageSpec",
    "LabelSpec",
    "Geometry",
    "PhenotypeSpec",
    "Manifest",
    "manifest_dir",
    "available_manifests",
    "load_manifest",
    "parse_manifest",
]

_TOP_KEYS = {
    "name", "title", "obtain", "citation", "url", "subjects", "images", "label", "regions",
    "geometry", "phenotypes",
}
_REQUIRED_TOP = ("name", "subjects", "images")


def manifest_dir() -> Path:
    """Folder of the shipped manifests: ``<repo>/data_manifests`` next to the ``kit`` package.

    Example:
        >>> manifest_dir().name
        'data_manifests'
    """
    return Path(kit.__file__).resolve().parents[1] / "data_manifests"


def available_manifests() -> list[str]:
    """Names of the shipped manifests (file stems in :func:`manifest_dir`), sorted.

    Example:
        >>> "brats2021" in available_manifests()
        True
    """
    folder = manifest_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


@dataclass(frozen=True)
class ImageSpec:
    """One image channel: its name (``flair``) and file pattern relative to the subject folder."""

    name: str
    pattern: str


@dataclass(frozen=True)
class LabelSpec:
    """The label map: file pattern, whether required, allowed values, names and value hints."""

    pattern: str
    required: bool = True
    values: tuple[int, ...] = (0, 1)
    names: Mapping[int, str] = field(default_factory=dict)
    hints: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Geometry:
    """Expected geometry: ``ndim``, voxel ``shape``, ``spacing`` in mm, ``space`` name.

    ``shape``/``spacing`` of ``None`` mean "varies"; ``same_grid`` says whether all images
    of a subject must share one voxel grid (shape and affine).
    """

    ndim: int = 3
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    space: str = ""
    same_grid: bool = True


@dataclass(frozen=True)
class PhenotypeSpec:
    """Per-subject table: file (relative to the root), id column, whether required, and the
    (column, value) that marks a subject as lesion-free (its label may then be all zero)."""

    file: str
    id_column: str = "subject"
    required: bool = False
    lesion_free_column: str | None = None
    lesion_free_value: Any = None


@dataclass(frozen=True)
class Manifest:
    """A parsed, checked dataset manifest (see the module docstring for the YAML schema).

    Attributes:
        name: short identifier, e.g. ``"brats2021"``.
        subjects_glob: glob relative to the data root that finds subjects.
        subject_id_regex: regex whose first group (in the matched basename) is the subject id,
            or ``None`` for "the basename is the id".
        images: ordered image specs; their order is the channel order.
        label: label spec or ``None`` for unlabelled datasets.
        regions: region name -> tuple of label values (e.g. ``{"ET": (4,)}``).
        source: the YAML file it was read from (``None`` when built from a dict).
    """

    name: str
    subjects_glob: str
    images: tuple[ImageSpec, ...]
    title: str = ""
    obtain: str = ""
    citation: tuple[str, ...] = ()
    url: str = ""
    subject_id_regex: str | None = None
    label: LabelSpec | None = None
    regions: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    geometry: Geometry = field(default_factory=Geometry)
    phenotypes: PhenotypeSpec | None = None
    source: Path | None = None

    @property
    def modalities(self) -> tuple[str, ...]:
        """Channel names in channel order, e.g. ``('flair', 't1ce', 't1', 't2')``."""
        return tuple(spec.name for spec in self.images)

    @property
    def n_channels(self) -> int:
        """Number of image channels."""
        return len(self.images)

    @property
    def has_label(self) -> bool:
        """Whether the dataset has a label map."""
        return self.label is not None

    @property
    def label_values(self) -> tuple[int, ...]:
        """Allowed label values (sorted); ``()`` when unlabelled."""
        return tuple(self.label.values) if self.label else ()

    @property
    def label_names(self) -> dict[int, str]:
        """Label value -> name; values without a name are named ``label_<v>``."""
        if not self.label:
            return {}
        return {v: self.label.names.get(v, f"label_{v}") for v in self.label.values}


def _fail(where: str, key: str, message: str) -> ValueError:
    return ValueError(f"{where}: key '{key}': {message}")


def _check_pattern(where: str, key: str, pattern: Any) -> str:
    if not isinstance(pattern, str) or not pattern.strip():
        raise _fail(where, key, f"must be a non-empty string, got {pattern!r}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as error:
        raise _fail(where, key, f"bad pattern {pattern!r} ({error})") from None
    unknown = sorted(set(fields) - {"subject"})
    if unknown:
        raise _fail(where, key, f"pattern {pattern!r} uses {unknown}; only {{subject}} is allowed")
    return pattern


def _check_int(where: str, key: str, value: Any) -> int:
    # bool is an int subclass; YAML "yes" must not pass as a label value
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, key, f"must be an integer, got {value!r} ({type(value).__name__})")
    return value


def _check_mapping(where: str, key: str, value: Any, allowed: set[str], required: tuple[str, ...]):
    if not isinstance(value, dict):
        raise _fail(where, key, f"must be a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise _fail(where, key, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    for name in required:
        if name not in value:
            raise _fail(where, f"{key}.{name}", "missing")
    return value


def _as_bool(where: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, key, f"must be true or false, got {value!r}")
    return value


def parse_manifest(data: Any, source: str | Path | None = None) -> Manifest:
    """Check a manifest already loaded from YAML (a dict) and build a :class:`Manifest`.

    Args:
        data: the mapping read from YAML.
        source: where it came from; named in error messages.

    Raises:
        ValueError: ``"<source>: key '<key>': <what is wrong>"`` on any schema error.

    Example:
        >>> m = parse_manifest({"name": "toy", "subjects": "sub-*",
        ...                     "images": [{"name": "t1", "pattern": "{subject}_t1.nii.gz"}]})
        >>> m.modalities
        ('t1',)
    """
    where = str(source) if source is not None else "<manifest>"
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a manifest must be a YAML mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise _fail(where, unknown[0], f"unknown key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    for key in _REQUIRED_TOP:
        if key not in data or data[key] is None:
            raise _fail(where, key, "missing (required)")

    name = data["name"]
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise _fail(where, "name", f"must be a short identifier ([A-Za-z0-9_.-]), got {name!r}")
    texts = {}
    for key in ("title", "obtain", "url"):
        value = data.get(key) or ""
        if not isinstance(value, str):
            raise _fail(where, key, f"must be a string, got {type(value).__name__}")
        texts[key] = value.strip()
    citation = data.get("citation") or []
    if isinstance(citation, str):
        citation = (citation.strip(),)
    elif isinstance(citation, list) and all(isinstance(c, str) for c in citation):
        citation = tuple(c.strip() for c in citation)
    else:
        raise _fail(where, "citation", "must be a string or a list of strings")

    # subjects: a glob string or {glob, id_regex}
    subjects = data["subjects"]
    id_regex = None
    if isinstance(subjects, dict):
        _check_mapping(where, "subjects", subjects, {"glob", "id_regex"}, ("glob",))
        id_regex = subjects.get("id_regex")
        subjects = subjects["glob"]
        if id_regex is not None:
            if not isinstance(id_regex, str):
                raise _fail(where, "subjects.id_regex", "must be a string")
            try:
                compiled = re.compile(id_regex)
            except re.error as error:
                raise _fail(where, "subjects.id_regex", f"invalid regex ({error})") from None
            if compiled.groups < 1:
                raise _fail(where, "subjects.id_regex", "needs one capturing group (the id)")
    if not isinstance(subjects, str) or not subjects.strip():
        raise _fail(where, "subjects", f"must be a non-empty glob string, got {subjects!r}")

    images = data["images"]
    if not isinstance(images, list) or not images:
        raise _fail(where, "images", "must be a non-empty list of {name, pattern}")
    image_specs = []
    for index, item in enumerate(images):
        key = f"images[{index}]"
        _check_mapping(where, key, item, {"name", "pattern"}, ("name", "pattern"))
        if not isinstance(item["name"], str) or not item["name"]:
            raise _fail(where, f"{key}.name", f"must be a non-empty string, got {item['name']!r}")
        image_specs.append(ImageSpec(item["name"], _check_pattern(where, f"{key}.pattern", item["pattern"])))
    names = [spec.name for spec in image_specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _fail(where, "images", f"duplicate image name(s) {duplicates}")

    label = None
    if data.get("label") is not None:
        raw = _check_mapping(where, "label", data["label"],
                             {"pattern", "required", "values", "names", "hints"}, ("pattern", "values"))
        pattern = _check_pattern(where, "label.pattern", raw["pattern"])
        required = _as_bool(where, "label.required", raw.get("required", True))
        if not isinstance(raw["values"], list) or not raw["values"]:
            raise _fail(where, "label.values", "must be a non-empty list of integers")
        values = tuple(sorted({_check_int(where, "label.values", v) for v in raw["values"]}))
        if 0 not in values:
            raise _fail(where, "label.values", f"must include 0 (background), got {list(values)}")
        label_names, hints = {}, {}
        for sub, target in (("names", label_names), ("hints", hints)):
            table = raw.get(sub) or {}
            if not isinstance(table, dict):
                raise _fail(where, f"label.{sub}", "must be a mapping value -> text")
            for k, v in table.items():
                k = _check_int(where, f"label.{sub}", k)
                if not isinstance(v, str):
                    raise _fail(where, f"label.{sub}.{k}", f"must be a string, got {v!r}")
                target[k] = v
        stray = sorted(set(label_names) - set(values))
        if stray:
            raise _fail(where, "label.names", f"names values {stray} that are not in label.values")
        label = LabelSpec(pattern, required, values, label_names, hints)

    regions = {}
    if data.get("regions") is not None:
        if label is None:
            raise _fail(where, "regions", "needs a label section")
        if not isinstance(data["regions"], dict):
            raise _fail(where, "regions", "must be a mapping name -> list of label values")
        for region, members in data["regions"].items():
            if not isinstance(members, list) or not members:
                raise _fail(where, f"regions.{region}", "must be a non-empty list of label values")
            members = tuple(_check_int(where, f"regions.{region}", v) for v in members)
            outside = sorted(set(members) - set(label.values))
            if outside:
                raise _fail(where, f"regions.{region}", f"values {outside} not in label.values")
            regions[str(region)] = members

    geometry = Geometry()
    if data.get("geometry") is not None:
        raw = _check_mapping(where, "geometry", data["geometry"],
                             {"ndim", "shape", "spacing", "space", "same_grid"}, ("ndim",))
        ndim = _check_int(where, "geometry.ndim", raw["ndim"])
        if ndim not in (2, 3):
            raise _fail(where, "geometry.ndim", f"must be 2 or 3, got {ndim}")
        shape = raw.get("shape")
        if shape is not None:
            if not isinstance(shape, list) or len(shape) != ndim:
                raise _fail(where, "geometry.shape", f"must be a list of {ndim} integers")
            shape = tuple(_check_int(where, "geometry.shape", s) for s in shape)
            if min(shape) < 1:
                raise _fail(where, "geometry.shape", f"must be positive, got {list(shape)}")
        spacing = raw.get("spacing")
        if spacing is not None:
            if (not isinstance(spacing, list) or len(spacing) != ndim
                    or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0
                               for s in spacing)):
                raise _fail(where, "geometry.spacing", f"must be a list of {ndim} positive numbers (mm)")
            spacing = tuple(float(s) for s in spacing)
        space = raw.get("space") or ""
        if not isinstance(space, str):
            raise _fail(where, "geometry.space", "must be a string")
        same_grid = _as_bool(where, "geometry.same_grid", raw.get("same_grid", True))
        geometry = Geometry(ndim, shape, spacing, space, same_grid)

    phenotypes = None
    if data.get("phenotypes") is not None:
        raw = _check_mapping(where, "phenotypes", data["phenotypes"],
                             {"file", "id_column", "required", "lesion_free"}, ("file",))
        if not isinstance(raw["file"], str) or not raw["file"]:
            raise _fail(where, "phenotypes.file", "must be a file name relative to the root")
        id_column = raw.get("id_column", "subject")
        if not isinstance(id_column, str) or not id_column:
            raise _fail(where, "phenotypes.id_column", "must be a column name")
        column = value = None
        if raw.get("lesion_free") is not None:
            lesion_free = _check_mapping(where, "phenotypes.lesion_free", raw["lesion_free"],
                                         {"column", "value"}, ("column", "value"))
            column, value = str(lesion_free["column"]), lesion_free["value"]
        phenotypes = PhenotypeSpec(raw["file"], id_column,
                                   _as_bool(where, "phenotypes.required", raw.get("required", False)),
                                   column, value)

    return Manifest(
        name=name, subjects_glob=subjects.strip(), images=tuple(image_specs),
        title=texts["title"], obtain=texts["obtain"], citation=citation, url=texts["url"],
        subject_id_regex=id_regex, label=label, regions=regions, geometry=geometry,
        phenotypes=phenotypes, source=Path(source) if source is not None else None,
    )


def _resolve_manifest_path(path_or_name: str | Path) -> Path:
    candidate = Path(path_or_name).expanduser()
    if candidate.is_file():
        return candidate
    text = str(path_or_name)
    looks_like_path = isinstance(path_or_name, Path) or "/" in text or text.endswith((".yaml", ".yml"))
    if not looks_like_path:
        shipped = manifest_dir() / f"{text}.yaml"
        if shipped.is_file():
            return shipped
    # "data_manifests/brats2021.yaml" typed outside the checkout means the shipped manifest
    if not candidate.is_absolute() and candidate.parent.name in ("data_manifests", "") and candidate.suffix in (".yaml", ".yml"):
        shipped = manifest_dir() / candidate.name
        if shipped.is_file():
            return shipped
    raise FileNotFoundError(
        f"manifest {text!r} not found (neither a file nor a shipped name); "
        f"shipped manifests in {manifest_dir()}: {available_manifests()}"
    )


def load_manifest(path_or_name: str | Path) -> Manifest:
    """Read and check a dataset manifest.

    Args:
        path_or_name: a YAML file path, or the bare name of a shipped manifest
            (``"brats2021"`` -> ``<repo>/data_manifests/brats2021.yaml``).

    Returns:
        The frozen :class:`Manifest`.

    Raises:
        FileNotFoundError: no such file and no shipped manifest of that name (lists them).
        ValueError: YAML syntax or schema error; the message names the file and the key.

    Example:
        >>> m = load_manifest("brats2023")
        >>> m.label_values, m.regions["ET"]
        ((0, 1, 2, 3), (3,))
    """
    path = _resolve_manifest_path(path_or_name)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from None
    return parse_manifest(data, source=path)
