"""kit reproduce's runner on real (tiny) notebooks: parameters, order, failures naming the cell, report."""

import json
import subprocess
import sys

import nbformat
import pytest

from kit.pipeline import NotebookFailed, profile_config, reproduce, resolve_stage, write_report


def _notebook(path, cells, with_params=True):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if with_params:
        p = nbformat.v4.new_code_cell('profile = "x"\nrun_dir = "."\ndata_root = None\ndevice = "cpu"\nseed = 0\ninteractive = False')
        p.metadata["tags"] = ["parameters"]
        nb.cells.append(p)
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)


WRITE_SUMMARY = (
    "from kit.pipeline import write_summary\n"
    "import sys\n"
    "write_summary(run_dir, STAGE, 'ran ' + STAGE, {'profile': profile, 'seed': seed, 'python': sys.executable})"
)


@pytest.fixture()
def notebooks(tmp_path):
    nb_dir = tmp_path / "nbs"
    nb_dir.mkdir()
    _notebook(nb_dir / "01_curation.ipynb", ["STAGE = '01_curation'", WRITE_SUMMARY])
    _notebook(
        nb_dir / "02_stage1_pretrain.ipynb",
        [
            "STAGE = '02_stage1'\nimport json, pathlib",
            # a later stage reads what the earlier one wrote
            "prev = json.loads((pathlib.Path(run_dir) / '01_curation' / 'summary.json').read_text())\nassert prev['figures']['seed'] == seed",
            WRITE_SUMMARY,
        ],
    )
    return nb_dir


def test_runs_stages_in_order_with_parameters_and_report(tmp_path, notebooks):
    run = tmp_path / "run"
    report = reproduce("smoke", run, seed=7, notebooks_dir=notebooks, progress=False, cell_timeout_s=120)
    summary = json.loads((run / "02_stage1" / "summary.json").read_text())
    assert summary["figures"]["profile"] == "smoke" and summary["figures"]["seed"] == 7
    # the kernel is this interpreter's environment, not some other python on the machine
    assert summary["figures"]["python"].startswith(sys.prefix)
    assert (run / "01_curation" / "01_curation.ipynb").exists()  # executed copy kept
    text = report.read_text()
    # smoke: a banner, and each stage that ran is listed without its one-line verdict
    assert "Smoke run" in text and text.count("ran (smoke: plumbing values only)") == 2
    assert "03_stage2" in text and "not run" in text  # missing notebooks are listed, not hidden
    status = json.loads((run / "run.json").read_text())["stages"]
    assert status["01_curation"]["status"] == "done" and status["03_stage2"]["status"] == "skipped"


def test_failure_names_notebook_and_cell(tmp_path, notebooks):
    _notebook(notebooks / "02_stage1_pretrain.ipynb", ["x = 1", "raise ValueError('boom in stage 2')"])
    run = tmp_path / "run"
    with pytest.raises(NotebookFailed) as err:
        reproduce("smoke", run, notebooks_dir=notebooks, progress=False, cell_timeout_s=120)
    msg = str(err.value)
    assert "02_stage1_pretrain.ipynb" in msg and "code cell 3" in msg and "boom in stage 2" in msg
    assert json.loads((run / "run.json").read_text())["stages"]["02_stage1"]["status"] == "failed"
    assert (run / "report.md").exists()


def test_cell_timeout_fails_fast(tmp_path, notebooks):
    _notebook(notebooks / "01_curation.ipynb", ["import time\ntime.sleep(60)"])
    with pytest.raises(NotebookFailed, match="timed out after 3 s"):
        reproduce("smoke", tmp_path / "run", notebooks_dir=notebooks, progress=False, cell_timeout_s=3)


def test_from_stage_resumes_and_needs_earlier_outputs(tmp_path, notebooks):
    run = tmp_path / "run"
    with pytest.raises(NotebookFailed, match="01_curation"):
        reproduce("smoke", run, from_stage="02", notebooks_dir=notebooks, progress=False)
    reproduce("smoke", run, to_stage="01_curation", notebooks_dir=notebooks, progress=False, cell_timeout_s=120)
    assert not (run / "02_stage1" / "summary.json").exists()
    reproduce("smoke", run, from_stage="stage1", notebooks_dir=notebooks, progress=False, cell_timeout_s=120)
    assert (run / "02_stage1" / "summary.json").exists()


def test_stage_names_and_profiles():
    assert resolve_stage("03") == "03_stage2" and resolve_stage("04_finetune") == "04_finetune"
    with pytest.raises(ValueError, match="unknown stage"):
        resolve_stage("06")
    with pytest.raises(ValueError, match="unknown profile"):
        profile_config("huge")
    assert set(profile_config("smoke")["cohorts"]) == {"healthy", "tumor", "stroke", "tumor_pool"}
    assert profile_config("smoke")["stage2"]["cohort"] == "tumor_pool" and profile_config("full")["stage2"]["cohort"] == "tumor"


def test_report_without_run_json(tmp_path):
    assert "not run" in write_report(tmp_path).read_text()


def test_cli_reproduce_exit_code_on_failure(tmp_path, notebooks):
    _notebook(notebooks / "01_curation.ipynb", ["x = 2", "1/0"])
    cmd = [sys.executable, "-m", "kit.cli", "reproduce", "--profile", "smoke", "--out", str(tmp_path / "run"),
           "--notebooks", str(notebooks), "--quiet", "--cell-timeout", "120"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "01_curation.ipynb failed at code cell 3" in proc.stderr and "ZeroDivisionError" in proc.stderr


def test_smoke_report_has_a_banner_and_no_verdicts(tmp_path):
    from kit.pipeline import write_json_atomic, write_summary

    write_summary(tmp_path, "04_finetune", "tumour-detection accuracy 1.000", {"accuracy": 1.0})
    write_json_atomic(tmp_path / "run.json", {"profile": "smoke", "seed": 0})
    smoke = write_report(tmp_path).read_text()
    assert "Smoke run: this checks the plumbing" in smoke and "accuracy 1.000" not in smoke
    write_json_atomic(tmp_path / "run.json", {"profile": "workshop", "seed": 0})
    workshop = write_report(tmp_path).read_text()
    assert "Smoke run" not in workshop and "accuracy 1.000" in workshop


def test_terminal_shows_each_stage_by_name_without_kernel_warnings(tmp_path, notebooks):
    cmd = [sys.executable, "-m", "kit.cli", "reproduce", "--profile", "smoke", "--out", str(tmp_path / "run"),
           "--notebooks", str(notebooks), "--to", "02", "--cell-timeout", "120"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "[1/5] 01_curation ..." in proc.stderr and "[2/5] 02_stage1_pretrain done in" in proc.stderr
    assert "[2/5] 02_stage1_pretrain:" in proc.stderr  # papermill's bar carries the stage's name
    assert "TCP" not in proc.stderr and "WARNING" not in proc.stderr


def test_objective_reaches_notebooks_02_on_and_is_recorded(tmp_path, notebooks):
    _notebook(notebooks / "02_stage1_pretrain.ipynb", [
        "STAGE = '02_stage1'",
        "from kit.pipeline import write_summary\nwrite_summary(run_dir, STAGE, 'ran', {'objective': objective})",
    ])
    _notebook(notebooks / "01_curation.ipynb", ["STAGE = '01_curation'", "assert 'objective' not in dir()", WRITE_SUMMARY])
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="unknown --objective 'nope'.*mim"):
        reproduce("smoke", run, objective="nope", notebooks_dir=notebooks, progress=False)
    reproduce("smoke", run, objective="mim", notebooks_dir=notebooks, progress=False, cell_timeout_s=120)
    assert json.loads((run / "02_stage1" / "summary.json").read_text())["figures"]["objective"] == "mim"
    assert json.loads((run / "run.json").read_text())["objective"] == "mim"
    # resuming keeps the run's objective, and refuses another one, naming the stage done with it
    reproduce("smoke", run, from_stage="02", notebooks_dir=notebooks, progress=False, cell_timeout_s=120)
    assert json.loads((run / "02_stage1" / "summary.json").read_text())["figures"]["objective"] == "mim"
    with pytest.raises(ValueError, match="02_stage1 is already done .*objective 'mim' then, 'cross_contrast' now"):
        reproduce("smoke", run, from_stage="02", objective="cross_contrast", notebooks_dir=notebooks, progress=False)


def test_cells_of_the_other_path_are_left_out(tmp_path, notebooks):
    """Notebooks 04-05 hold a 2D and a 3D path in cells tagged '2d' / '3d' (jupytext: '# %% tags=["3d"]');
    a run of a slice objective (moco_v3) executes the 2D cells only, any other objective the 3D ones."""
    import jupytext

    text = ('# %% tags=["parameters"]\nprofile = "x"\n\n# %% tags=["3d"]\nSTAGE = "3d"\n\n'
            '# %% [markdown] tags=["2d"]\n# ## 2D\n\n# %% tags=["2d"]\nSTAGE = "2d"\n\n# %%\nprint(STAGE)\n')
    cells = jupytext.reads(text, fmt="py:percent").cells
    assert [c.metadata.get("tags") for c in cells] == [["parameters"], ["3d"], ["2d"], ["2d"], None]
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('profile = "x"\nrun_dir = "."\ndata_root = None\ndevice = "cpu"\nseed = 0\n'
                                       'interactive = False\nobjective = None')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params]
    for path in ("3d", "2d"):
        cell = nbformat.v4.new_code_cell(f"STAGE = '02_stage1'\nfrom kit.pipeline import write_summary\n"
                                         f"write_summary(run_dir, STAGE, 'ran', {{'path': '{path}'}})")
        cell.metadata["tags"] = [path]
        nb.cells.append(cell)
    nbformat.write(nb, notebooks / "02_stage1_pretrain.ipynb")
    for objective, path in (("moco_v3", "2d"), ("mim", "3d")):
        run = tmp_path / objective
        reproduce("smoke", run, objective=objective, notebooks_dir=notebooks, progress=False, cell_timeout_s=120)
        assert json.loads((run / "02_stage1" / "summary.json").read_text())["figures"]["path"] == path
        executed = nbformat.read(run / "02_stage1" / "02_stage1_pretrain.ipynb", as_version=4)
        assert [c.metadata.get("tags") for c in executed.cells[2:]] == [[path]]  # after parameters + injected
        assert not (run / "02_stage1" / ".02_stage1_pretrain.ipynb").exists()  # the selection is not left behind


def test_stage_clock_writes_a_running_stage_time(tmp_path):
    """A stage killed outright (kill -9) still has the time it ran in run.json, written by the clock."""
    import time as _time

    from kit.run.pipeline import _StageClock

    run_json = tmp_path / "run.json"
    run = {"stages": {"04_finetune": {"status": "running", "settings": {}}}}
    start = _time.perf_counter()
    with _StageClock(run_json, run, "04_finetune", start, 0.0, {"wall_s": 100.0, "cpu_s": 0.0}, every_s=0.05):
        _time.sleep(0.4)
    entry = json.loads(run_json.read_text())["stages"]["04_finetune"]
    assert entry["status"] == "running" and 100.2 <= entry["wall_s"] < 110
    assert entry["resumed_after_s"] == 100.0


def test_sigterm_marks_the_stage_interrupted_and_resume_adds_its_time(tmp_path, notebooks):
    import signal
    import time as _time

    # sleeps on its first run only, so the test can stop it there and resume it
    _notebook(notebooks / "01_curation.ipynb", [
        "import pathlib, time\nmarker = pathlib.Path(run_dir) / 'ran_once'\nfirst = not marker.exists()\n"
        "marker.touch()\ntime.sleep(120 if first else 0)", "STAGE = '01_curation'", WRITE_SUMMARY])
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "kit.cli", "reproduce", "--profile", "smoke", "--out", str(run),
           "--notebooks", str(notebooks), "--to", "01", "--quiet", "--cell-timeout", "300"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = _time.time() + 120
    while not (run / "ran_once").exists() and _time.time() < deadline:
        _time.sleep(0.2)
    _time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; run the same command again to resume" in err
    first = json.loads((run / "run.json").read_text())["stages"]["01_curation"]
    assert first["status"] == "interrupted" and first["wall_s"] >= 2.0
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    second = json.loads((run / "run.json").read_text())["stages"]["01_curation"]
    assert second["status"] == "done" and second["resumed_after_s"] == first["wall_s"]
    assert second["wall_s"] > first["wall_s"]
