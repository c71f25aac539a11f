"""Papermill runner behind ``kit reproduce`` (room ``kit.run``): profiles, run directory, stage chaining, report.

A run directory holds one folder per stage (the notebooks' contract)::

    RUN_DIR/run.json              what was asked for (profile, seed, device, data root)
    RUN_DIR/01_curation/          datalist.json, qc.csv, figures/, 01_curation.ipynb (executed copy)
    RUN_DIR/02_stage1/ ...        each stage writes summary.json: {"title", "figures": {...}, "plots": [...]}
    RUN_DIR/report.md             every stage's key figures and plots, rebuilt after each stage

Each notebook gets the parameters ``profile``, ``run_dir``, ``data_root``, ``device``, ``seed``
(and ``interactive=False``) and reads its settings with :func:`profile_config`; notebooks 02-05 also
get ``objective`` (the SSL objective by name; None: the profile's).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import kit
from kit.run.profiles import PROFILES, profile_config  # noqa: F401  (re-exported: notebooks import them from here)
from kit.run.report import (SMOKE_BANNER, markdown_table, show_smoke_banner, smoke_banner,  # noqa: F401  (re-exported:
                             write_report, write_summary)  # notebooks import them from here)
from kit.stages import STAGES, stage_dir, write_json_atomic  # noqa: F401  (re-exported, as above)

NOTEBOOKS = {
    "01_curation": "01_curation.ipynb",
    "02_stage1": "02_stage1_pretrain.ipynb",
    "03_stage2": "03_stage2_pretrain.ipynb",
    "04_finetune": "04_finetune.ipynb",
    "05_saliency": "05_saliency.ipynb",
}


def _cpu_seconds(live_children: bool = False) -> float:
    """CPU seconds used so far by this process and its finished children (the notebook kernels);
    with ``live_children``, also those of children still running (psutil, when installed)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    if live_children:
        try:
            import psutil

            for child in psutil.Process().children(recursive=True):
                try:
                    times = child.cpu_times()
                    total += times.user + times.system
                except psutil.Error:  # it ended meanwhile: counted by RUSAGE_CHILDREN once reaped
                    pass
        except ImportError:
            pass
    return total


def _stage_times(start: float, cpu_start: float, earlier: dict, live_children: bool = False) -> dict:
    """A stage's cost for run.json: wall and CPU seconds (all sessions of a resumed stage), and the
    machine's 1-minute load at the end, so that a stage run beside other jobs is visible as such."""
    times = {"wall_s": round(time.perf_counter() - start + earlier["wall_s"], 1),
             "cpu_s": round(_cpu_seconds(live_children) - cpu_start + earlier["cpu_s"], 1),
             "cpus": os.cpu_count(), "load_1min_end": round(os.getloadavg()[0], 2)}
    if earlier["wall_s"]:
        times["resumed_after_s"] = round(earlier["wall_s"], 1)
    return times


class _StageClock:
    """Writes a running stage's times into run.json every ``every_s`` seconds, so that a stage killed
    outright (kill -9, a closed session) still counts the time it ran when it is resumed."""

    def __init__(self, run_json: Path, run: dict, stage: str, start: float, cpu_start: float, earlier: dict,
                 every_s: float = 30.0):
        import threading

        self._args = (run_json, run, stage, start, cpu_start, earlier)
        self._stop = threading.Event()
        self._every_s = every_s
        self._thread = threading.Thread(target=self._tick, daemon=True)

    def _tick(self) -> None:
        run_json, run, stage, start, cpu_start, earlier = self._args
        while not self._stop.wait(self._every_s):
            entry = run["stages"].get(stage) or {}
            if entry.get("status") == "running":
                run["stages"][stage] = {**entry, **_stage_times(start, cpu_start, earlier, live_children=True)}
                write_json_atomic(run_json, run)

    def __enter__(self) -> "_StageClock":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def repo_root() -> Path:
    """The checkout that holds ``kit/``, ``notebooks/`` and ``data_manifests/``."""
    return Path(kit.__file__).resolve().parents[1]


def find_run_dir(run_dir: str | Path | None, profile: str) -> Path:
    """The run folder a notebook works in: ``run_dir`` when given (papermill passes it), else
    ``$KIT_RUN_DIR``, else ``<checkout>/runs/<profile>`` (what ``kit reproduce --out runs/<profile>``
    makes), so a notebook opened in JupyterLab from ``notebooks/`` finds the run, not
    ``notebooks/runs/...``.

    Example:
        >>> find_run_dir("/tmp/r", "smoke")
        PosixPath('/tmp/r')
        >>> find_run_dir(None, "smoke") == repo_root() / "runs" / "smoke" or "KIT_RUN_DIR" in os.environ
        True
    """
    if run_dir:
        return Path(run_dir).expanduser().resolve()
    if os.environ.get("KIT_RUN_DIR"):
        return Path(os.environ["KIT_RUN_DIR"]).expanduser().resolve()
    return repo_root() / "runs" / profile


class NotebookFailed(RuntimeError):
    """A notebook of the pipeline failed; the message names the notebook, the cell and the error."""


@dataclass
class _CellInfo:
    index: int
    first_line: str


def _failing_cell(executed: Path) -> _CellInfo | None:
    """The cell that stopped an executed notebook copy: an error output, else papermill's status,
    else the last cell that started.

    papermill records each cell's state in ``cell.metadata.papermill`` (``status``: pending, running,
    completed, failed; ``start_time``) and saves the copy as it goes. A cell stopped by a timeout has
    an error output only when the kernel's KeyboardInterrupt reply arrives before nbclient stops
    listening (a race), and papermill then marks it ``completed`` (nbclient's ``CellTimeoutError`` is
    not the ``CellExecutionError`` papermill marks ``failed``); execution stops at it, so it is the
    last cell with a ``start_time``.
    """
    import nbformat

    try:
        nb = nbformat.read(executed, as_version=4)
    except Exception:
        return None
    code_cells = [
        cell for cell in nb.cells
        # papermill's injected-parameters cell is not in the user's notebook: do not count it
        if cell.cell_type == "code" and "injected-parameters" not in cell.metadata.get("tags", [])
    ]

    def info(index: int, cell) -> _CellInfo:
        first = next((line for line in cell.source.splitlines() if line.strip()), "")
        return _CellInfo(index, first[:80])

    for index, cell in enumerate(code_cells, start=1):
        if any(out.get("output_type") == "error" for out in cell.get("outputs", [])):
            return info(index, cell)
    for state in ("failed", "running"):
        for index, cell in enumerate(code_cells, start=1):
            meta = cell.metadata.get("papermill", {})
            if meta.get("status") == state or (state == "failed" and meta.get("exception")):
                return info(index, cell)
    started = [(index, cell) for index, cell in enumerate(code_cells, start=1)
               if cell.metadata.get("papermill", {}).get("start_time")]
    return info(*started[-1]) if started else None


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour codes (kernel tracebacks carry them).

    Example:
        >>> strip_ansi("\x1b[0;31mValueError\x1b[0m: bad")
        'ValueError: bad'
    """
    return _ANSI.sub("", text)


def run_notebook(
    notebook: Path,
    output: Path,
    parameters: dict,
    cell_timeout_s: int,
    progress: bool = True,
    kernel_name: str = "python3",
    label: str | None = None,
    drop_tags: tuple[str, ...] = (),
) -> None:
    """Execute one notebook with papermill, raising :class:`NotebookFailed` with the cell that failed.

    The executed copy is written to ``output`` even when a cell fails, so the traceback can be read.
    Cells tagged with one of ``drop_tags`` are left out (:func:`cells_to_drop`: the other path of a
    notebook with a 2D and a 3D path).
    The progress bar is named ``label`` (default: the notebook's name); the kernel logs errors only
    (its "running over TCP without encryption" warning is about remote kernels, not a local run).
    """
    import papermill as pm

    output.parent.mkdir(parents=True, exist_ok=True)
    # headless: viewers that need a browser (itkwidgets) refuse instead of blocking the next cell
    os.environ.setdefault("KIT_HEADLESS", "1")
    if drop_tags:
        import nbformat

        nb = nbformat.read(str(notebook), as_version=4)
        nb.cells = [c for c in nb.cells if not set(c.metadata.get("tags", [])) & set(drop_tags)]
        selected = output.parent / f".{notebook.name}"  # the selected cells; the executed copy keeps the name
        nbformat.write(nb, str(selected))
    try:
        pm.execute_notebook(
            str(selected if drop_tags else notebook),
            str(output),
            parameters=parameters,
            kernel_name=kernel_name,
            execution_timeout=cell_timeout_s,
            progress_bar={"desc": label or notebook.stem} if progress else False,
            cwd=str(output.parent),
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    except Exception as err:  # papermill/nbclient raise several types: name the notebook and the cell
        cell = _failing_cell(output)
        where = f"code cell {cell.index} ({cell.first_line!r})" if cell else "a cell"
        kind = type(err).__name__
        if isinstance(err, TimeoutError) or "Timeout" in kind or "timed out" in str(err).lower():
            reason = f"timed out after {cell_timeout_s} s per cell"
        else:
            evalue = getattr(err, "evalue", None) or str(err).strip().splitlines()[-1:] or [kind]
            reason = f"{getattr(err, 'ename', kind)}: {evalue if isinstance(evalue, str) else evalue[0]}"
        reason = " ".join(strip_ansi(reason).split())
        raise NotebookFailed(f"{notebook.name} failed at {where}: {reason}. Executed copy: {output}") from err
    finally:
        if drop_tags:
            selected.unlink(missing_ok=True)


def cells_to_drop(objective: str | None) -> tuple[str, ...]:
    """Cell tags of notebooks 04-05 that a run of ``objective`` leaves out: the 3D tasks' cells for an
    objective trained on 2D slices (``spatial_dims`` 2, e.g. moco_v3), the 2D slice task's otherwise.

    Example:
        >>> cells_to_drop("moco_v3"), cells_to_drop("swin_trio")
        (('3d',), ('2d',))
    """
    from kit.ssl.base import objective_class

    return ("3d",) if getattr(objective_class(objective or "swin_trio"), "spatial_dims", 3) == 2 else ("2d",)


def resolve_stage(name: str | None) -> str | None:
    """Accept ``02_stage1``, ``02`` or ``stage1`` for a stage name."""
    if name is None:
        return None
    for stage in STAGES:
        if name in (stage, stage[:2], stage[3:], NOTEBOOKS[stage].removesuffix(".ipynb")):
            return stage
    raise ValueError(f"unknown stage {name!r}; stages are {STAGES}")


def reproduce(
    profile: str = "smoke",
    out: str | Path = "runs/smoke",
    data_root: str | Path | None = None,
    device: str = "auto",
    from_stage: str | None = None,
    to_stage: str | None = None,
    seed: int = 0,
    cell_timeout_s: int | None = None,
    notebooks_dir: str | Path | None = None,
    progress: bool = True,
    force: list[str] | tuple[str, ...] = (),
    extra_inits: dict[str, str] | None = None,
    objective: str | None = None,
) -> Path:
    """Run the notebooks in order with papermill and write ``report.md``.

    Args:
        profile: ``smoke``, ``workshop`` or ``full`` (see :data:`PROFILES`).
        out: the run directory.
        data_root: a directory with one validated dataset per manifest name (``ukb/``,
            ``brats2021/``, ``atlas2/``); None generates synthetic cohorts in ``out/data``.
        device: ``auto``, ``cpu`` or ``cuda``.
        from_stage: start at this stage (earlier stages' outputs must be in ``out``).
        to_stage: stop after this stage.
        seed: the run's seed, passed to every notebook.
        cell_timeout_s: per-cell timeout; default the profile's.
        notebooks_dir: where the notebooks are (default: the checkout's ``notebooks/``).
        progress: show papermill's progress bar.
        force: stages to redo even when done (they and the later stages of the call start over).
        extra_inits: more fine-tuning initialisations for notebook 04, ``{name: kit checkpoint}``
            (e.g. published weights converted by ``kit import-weights``).
        objective: SSL objective of stages 02-03 by name (``kit.ssl.list_objectives()``), passed to
            notebooks 02-05; None keeps the profile's (``swin_trio``).

    A stage already done in ``out`` with the same settings is skipped, its outputs untouched; see
    :mod:`kit.run.state` for the rules of a rerun.

    Returns:
        Path of ``report.md``. Notebooks that do not exist yet are skipped with a note.

    Raises:
        NotebookFailed: naming the notebook and the failing cell; the report is still written.
        ValueError: a bad ``data_root`` (before any notebook runs), or a done stage asked for with
            other settings (:class:`kit.run.state.SettingsChanged`).

    Example:
        >>> reproduce("smoke", "runs/smoke", from_stage="02_stage1")  # doctest: +SKIP
    """
    from kit.run.state import clear_stage, decide, stage_settings

    # Everything is checked and every stage decided before the first write: a refusal leaves `out` as it was.
    config = profile_config(profile)
    if objective is not None:
        from kit.ssl import list_objectives

        if objective not in list_objectives():
            raise ValueError(f"unknown --objective {objective!r}; choose one of {list_objectives()}")
    run_dir = Path(out).resolve()
    nb_dir = Path(notebooks_dir) if notebooks_dir else repo_root() / "notebooks"
    first = STAGES.index(resolve_stage(from_stage)) if from_stage else 0
    last = STAGES.index(resolve_stage(to_stage)) if to_stage else len(STAGES) - 1
    forced = {resolve_stage(name) for name in force or ()}
    if first > last:
        raise ValueError(f"--from {STAGES[first]} comes after --to {STAGES[last]}: nothing to run")
    if first > 0 and not (run_dir / STAGES[first - 1]).exists():
        raise NotebookFailed(
            f"--from {STAGES[first]} needs the earlier stage's outputs in {run_dir / STAGES[first - 1]}, which do not exist"
        )
    if data_root and first == 0:  # before any notebook: a wrong folder fails here, not in cell 3 of 01
        from kit.data.cohorts import check_data_root

        check_data_root(config["cohorts"], data_root)
    _check_inits(extra_inits)
    run_json = run_dir / "run.json"
    run = json.loads(run_json.read_text()) if run_json.exists() else {}
    run.setdefault("stages", {})
    objective = _call_objective(run_dir, run, objective, first, forced)
    objective = objective or config["stage1"].get("objective", "swin_trio")
    _check_objective_fits(run_dir, config, objective, first, last)
    data_root = str(Path(data_root).resolve()) if data_root else None
    parameters = {
        "profile": profile,
        "run_dir": str(run_dir),
        "data_root": data_root,
        "device": device,
        "seed": seed,
        "interactive": False,
    }
    plan = []  # (stage, notebook, parameters, settings, action); action None: the notebook does not exist yet
    upstream_redone = False
    for stage in STAGES[first : last + 1]:
        notebook = nb_dir / NOTEBOOKS[stage]
        if not notebook.exists():
            plan.append((stage, notebook, None, None, None))
            continue
        # notebook 01 has no SSL objective (papermill would warn about an unknown parameter)
        params = parameters if stage == "01_curation" else {**parameters, "objective": objective}
        if extra_inits and stage == "04_finetune":
            params["extra_inits"] = dict(extra_inits)
        settings = stage_settings(stage, params, config)
        action = decide(stage, run["stages"].get(stage), settings, forced=stage in forced,
                        upstream_redone=upstream_redone)
        upstream_redone = upstream_redone or action != "skip"
        plan.append((stage, notebook, params, settings, action))

    run_dir.mkdir(parents=True, exist_ok=True)
    # run-wide fields describe the run as first made; a partial rerun records its own in its stages
    fresh = not run.get("profile") or (first == 0 and STAGES[0] in forced)
    run_wide = dict(profile=profile, seed=seed, device=device, data_root=data_root,
                    started=time.strftime("%Y-%m-%d %H:%M:%S"))
    for key, value in run_wide.items():
        if fresh or key not in run:
            run[key] = value
    run["kit_version"] = kit.__version__
    timeout = int(cell_timeout_s or config["cell_timeout_s"])
    try:
        for stage, notebook, params, settings, action in plan:
            if action is None:
                run["stages"][stage] = {"status": "skipped", "error": f"{notebook.name} does not exist yet"}
                continue
            if action == "skip":
                print(f"{stage}: done earlier with these settings; kept as is (--force {stage} redoes it)",
                      file=sys.stderr)
                continue
            if action == "redo":
                clear_stage(run_dir, stage)
            if stage == "02_stage1":
                run["objective"] = objective  # the objective this run pretrains with
            # the objective each stage ran with (02-05), beside its settings
            per_stage = {} if stage == "01_curation" else {"objective": objective}
            # a resumed stage (failed or interrupted earlier) keeps the time its earlier sessions took
            earlier = (run["stages"].get(stage) or {}) if action == "run" else {}
            earlier_s = {k: float(earlier.get(k) or 0.0) for k in ("wall_s", "cpu_s")}
            run["stages"][stage] = {"status": "running", **per_stage, "settings": settings}
            write_json_atomic(run_json, run)
            start, cpu_start = time.perf_counter(), _cpu_seconds()
            label = f"[{STAGES.index(stage) + 1}/{len(STAGES)}] {notebook.stem}"
            print(f"{label} ...", file=sys.stderr, flush=True)
            try:
                with _StageClock(run_json, run, stage, start, cpu_start, earlier_s):
                    run_notebook(notebook, stage_dir(run_dir, stage) / notebook.name, params, timeout, progress,
                                 label=label, drop_tags=cells_to_drop(objective))
            except KeyboardInterrupt:  # Ctrl-C (or SIGTERM, see kit.cli): resumable, with the time it ran
                run["stages"][stage] = {"status": "interrupted", **per_stage, "settings": settings,
                                        **_stage_times(start, cpu_start, earlier_s)}
                raise
            except NotebookFailed as err:
                run["stages"][stage] = {"status": "failed", "error": str(err), **per_stage, "settings": settings,
                                        **_stage_times(start, cpu_start, earlier_s)}
                raise
            run["stages"][stage] = {"status": "done", **per_stage, "settings": settings,
                                    **_stage_times(start, cpu_start, earlier_s)}
            print(f"{label} done in {run['stages'][stage]['wall_s']:.0f} s", file=sys.stderr, flush=True)
    finally:
        write_json_atomic(run_json, run)
        report = write_report(run_dir)
    return report


def _stage_objective(record: dict | None) -> str | None:
    """The SSL objective a stage of ``run.json`` ran with (its own field, else its settings'), or None."""
    record = record or {}
    return record.get("objective") or (record.get("settings") or {}).get("objective")


def _call_objective(run_dir: Path, run: dict, objective: str | None, first: int, forced: set[str]) -> str | None:
    """The objective of this ``kit reproduce`` call, or a refusal that names the stage it conflicts with.

    Stage 01 does not depend on the objective, so a run that holds only stage 01 takes any. A stage 02
    done (or started) with another objective is the conflict: from stage 02 on, :func:`kit.run.state.decide`
    refuses a done one unless forced, and a started one is refused here (its checkpoint belongs to the
    other objective); from stage 03 on, the later stages continue from stage 02's weights. Without
    ``--objective``, the objective of the run's stage 02 is kept.
    """
    record = run["stages"].get("02_stage1") or {}
    pretrained = _stage_objective(record)
    if pretrained is None and record.get("status") == "done":
        pretrained = run.get("objective")  # run.json of an older kit: the run-wide field
    if objective is None:
        return pretrained
    if pretrained is None or objective == pretrained or "02_stage1" in forced:
        return objective
    status = record.get("status")
    if first > STAGES.index("02_stage1"):
        raise ValueError(f"--objective {objective}: {run_dir / '02_stage1'} was pretrained with {pretrained!r} and "
                         f"{STAGES[first]} continues from its weights; rerun from stage 02 (--from 02 --force 02_stage1) "
                         "to change the objective, or use another --out")
    if status != "done":
        raise ValueError(f"--objective {objective}: {run_dir / '02_stage1'} was started with {pretrained!r} ({status}); "
                         f"pass --force 02_stage1 to start it over with {objective!r}, or use another --out")
    return objective  # a done stage 02 with another objective: decide() names the conflict and --force


def _check_inits(extra_inits: dict[str, str] | None) -> None:
    """Each ``--init NAME=CKPT`` must be a readable kit checkpoint (checked before notebook 01 starts)."""
    from kit.models.checkpoints import CheckpointError, load_checkpoint

    for name, path in (extra_inits or {}).items():
        try:
            load_checkpoint(path)
        except (FileNotFoundError, CheckpointError) as err:
            raise ValueError(f"--init {name}={path}: {str(err).removeprefix(f'{path}: ')}") from None


def _check_objective_fits(run_dir: Path, config: dict, objective: str, first: int, last: int) -> None:
    """The pretraining stages of this call (02, 03) against what ``objective`` needs, before any notebook.

    The contrasts come from the run's datalist when stage 01 is done and not rerun, else from each
    cohort's manifest (what notebook 01 will write); a 2D objective's slice table is checked when it exists.
    """
    from kit.data.cohorts import load_cohort
    from kit.train.checks import check_slices, check_stage_settings
    from kit.train.pretrain import STAGE_SETTINGS, stage_for_objective

    datalist = run_dir / "01_curation" / "datalist.json"
    for number, (folder, cohort, key) in STAGE_SETTINGS.items():
        if not first <= STAGES.index(folder) <= last:
            continue
        stage = stage_for_objective(config[key], objective)
        cohort = stage.get("cohort", cohort)  # a profile may pretrain a stage on another cohort
        if first > 0 and datalist.exists():
            entries, meta = load_cohort(datalist, cohort)
            modalities = [meta["modality"][str(i)] for i in range(len(meta["modality"]))]
            source = f"{datalist} cohort {cohort!r}"
        else:
            from kit.data.manifest import load_manifest

            manifest = config["cohorts"][cohort]["manifest"]
            entries, modalities = None, list(load_manifest(manifest).modalities)
            source = f"the {manifest} manifest of cohort {cohort!r}"
        try:
            check_stage_settings(stage, modalities, source)
            slices = run_dir / "01_curation" / "slices.csv"
            if stage.get("slices") is not None and entries is not None and slices.exists():
                check_slices(slices, stage, [str(e["subject"]) for e in entries], cohort, config.get("slice_filter"))
        except ValueError as err:
            raise ValueError(f"{folder}: {err}") from None
