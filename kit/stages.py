"""The run folder's stages, at the bottom of the kit: their names, their folders, JSON written atomically.

Every room reads these (``kit.run`` chains the stages, ``kit.train.pretrain`` writes ``02_stage1`` /
``03_stage2``, ``kit.finetune.slice_run`` writes ``04_finetune``), so they import nothing of the kit but
:mod:`kit.tempfiles`; :mod:`kit.run.pipeline` re-exports them for the notebooks.

Example:
    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp())
    >>> stage_dir(run, "02_stage1").name, (run / "02_stage1" / "figures").is_dir()
    ('02_stage1', True)
    >>> json.loads(write_json_atomic(run / "run.json", {"seed": 0}).read_text())
    {'seed': 0}
"""

from __future__ import annotations

import json
from pathlib import Path

from kit.tempfiles import write_text_atomic

__all__ = ["STAGES", "stage_dir", "write_json_atomic"]

STAGES = ("01_curation", "02_stage1", "03_stage2", "04_finetune", "05_saliency")


def stage_dir(run_dir: str | Path, stage: str) -> Path:
    """``RUN_DIR/STAGE``, created if needed (with its ``figures/`` folder)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")
    path = Path(run_dir) / stage
    (path / "figures").mkdir(parents=True, exist_ok=True)
    return path


def write_json_atomic(path: str | Path, obj) -> Path:
    """Write ``obj`` as indented JSON via a temporary file and ``os.replace`` (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(obj, indent=2, default=str))
