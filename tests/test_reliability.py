"""Reliability of the commands a user runs: reruns, refusals, one-line errors, stale temp files.

Everything runs on real files: tiny notebooks executed by papermill, real checkpoints written by
torch, real processes killed mid-write. The full smoke pipeline rerun is marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch

from kit.cli import main as kit_main
from kit.models.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from kit.pipeline import NotebookFailed, reproduce, strip_ansi
from kit.runstate import SettingsChanged
from kit.tempfiles import remove_stale_temporaries

REPO = Path(__file__).resolve().parents[1]


def _notebook(path: Path, cells: list[str]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(
        'profile = "x"\nrun_dir = "."\ndata_root = None\ndevice = "cpu"\nseed = 0\ninteractive = False')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)


# Each stage appends a line to RUN/log.txt, so a test sees which stages really ran.
_STAGE_CELL = (
    "import pathlib, random\n"
    "from kit.pipeline import write_summary\n"
    "out = pathlib.Path(run_dir)\n"
    "(out / 'log.txt').open('a').write(STAGE + '\\n')\n"
    "(out / STAGE).mkdir(exist_ok=True)\n"
    "(out / STAGE / 'weights.txt').write_text(str(random.random()))\n"
    "write_summary(run_dir, STAGE, 'ran ' + STAGE, {'seed': seed})"
)


@pytest.fixture()
def notebooks(tmp_path):
    nb_dir = tmp_path / "nbs"
    nb_dir.mkdir()
    _notebook(nb_dir / "01_curation.ipynb", ["STAGE = '01_curation'", _STAGE_CELL])
    _notebook(nb_dir / "02_stage1_pretrain.ipynb", ["STAGE = '02_stage1'", _STAGE_CELL])
    return nb_dir


def _ran(run: Path) -> list[str]:
    return (run / "log.txt").read_text().split()


def _go(run, notebooks, **kw):
    return reproduce("smoke", run, notebooks_dir=notebooks, progress=False, cell_timeout_s=120, **kw)


# ----------------------------------------------------------------------------- reruns


def test_rerun_skips_done_stages_and_keeps_their_outputs(tmp_path, notebooks, capsys):
    run = tmp_path / "run"
    _go(run, notebooks)
    weights = (run / "02_stage1" / "weights.txt").read_text()
    _go(run, notebooks, device="cpu")  # same settings; another device is no reason to redo
    assert _ran(run) == ["01_curation", "02_stage1"]
    assert (run / "02_stage1" / "weights.txt").read_text() == weights
    assert "02_stage1: done earlier with these settings" in capsys.readouterr().err
    state = json.loads((run / "run.json").read_text())
    assert state["device"] == "auto"  # the run-wide device is the first call's
    assert state["stages"]["02_stage1"]["settings"]["seed"] == 0
    assert state["stages"]["02_stage1"]["settings"]["config"] == {"stage1": state["stages"]["02_stage1"]["settings"]["config"]["stage1"]}


def test_force_redoes_a_stage_and_the_later_ones(tmp_path, notebooks):
    run = tmp_path / "run"
    _go(run, notebooks)
    (run / "01_curation" / "stale.txt").write_text("from the first run")
    _go(run, notebooks, force=["01"])
    assert _ran(run) == ["01_curation", "02_stage1", "01_curation", "02_stage1"]
    assert not (run / "01_curation" / "stale.txt").exists()  # redone from an empty folder
    _go(run, notebooks, force=["02_stage1"])
    assert _ran(run)[-1] == "02_stage1" and len(_ran(run)) == 5


def test_partial_rerun_with_other_settings_is_refused(tmp_path, notebooks):
    run = tmp_path / "run"
    _go(run, notebooks, to_stage="01")
    with pytest.raises(SettingsChanged, match=r"01_curation is already done .*seed 0 then, 3 now.*--force 01_curation"):
        _go(run, notebooks, seed=3)
    _go(run, notebooks, from_stage="02", device="cpu")  # a partial rerun on another device
    state = json.loads((run / "run.json").read_text())
    assert state["device"] == "auto" and state["stages"]["02_stage1"]["settings"]["device"] == "cpu"


def test_failed_stage_is_resumed_not_skipped(tmp_path, notebooks):
    run = tmp_path / "run"
    flag = tmp_path / "fail"
    flag.write_text("1")
    _notebook(notebooks / "02_stage1_pretrain.ipynb",
              ["STAGE = '02_stage1'", f"assert not __import__('os').path.exists({str(flag)!r}), 'first try fails'",
               _STAGE_CELL])
    with pytest.raises(NotebookFailed, match="first try fails"):
        _go(run, notebooks)
    flag.unlink()
    _go(run, notebooks)
    assert _ran(run) == ["01_curation", "02_stage1"]


@pytest.mark.slow
def test_smoke_reproduce_twice_into_one_folder(tmp_path):
    """The issue's report: the second `kit reproduce --to 02` into one folder failed at notebook 02."""
    run = tmp_path / "R"
    cmd = [sys.executable, "-m", "kit.cli", "reproduce", "--profile", "smoke", "--to", "02", "--out", str(run), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    weights = load_checkpoint(run / "02_stage1" / "checkpoint.pt")["state_dict"]
    stamp = (run / "02_stage1" / "checkpoint.pt").stat().st_mtime_ns
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    again = load_checkpoint(run / "02_stage1" / "checkpoint.pt")["state_dict"]
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    assert (run / "02_stage1" / "checkpoint.pt").stat().st_mtime_ns == stamp
    # notebook 02 re-executed on the finished stage (run.json lost track of it) is a no-op too:
    # this is the path that failed at `first, last = records[0], records[-1]`
    state = json.loads((run / "run.json").read_text())
    state["stages"]["02_stage1"]["status"] = "failed"
    (run / "run.json").write_text(json.dumps(state))
    third = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert third.returncode == 0, third.stderr[-2000:]
    again = load_checkpoint(run / "02_stage1" / "checkpoint.pt")["state_dict"]
    assert all(torch.equal(weights[k], again[k]) for k in weights)


# ----------------------------------------------------------------------------- failures and timeouts


def test_timeout_names_the_running_cell(tmp_path, notebooks):
    _notebook(notebooks / "01_curation.ipynb", ["x = 1", "import time\ntime.sleep(60)"])
    with pytest.raises(NotebookFailed) as err:
        reproduce("smoke", tmp_path / "run", notebooks_dir=notebooks, progress=False, cell_timeout_s=3)
    assert "code cell 3 ('import time')" in str(err.value) and "timed out after 3 s" in str(err.value)


def test_error_messages_carry_no_ansi_codes(tmp_path, notebooks):
    _notebook(notebooks / "01_curation.ipynb", ["raise ValueError('\\x1b[31mred\\x1b[0m refusal')"])
    run = tmp_path / "run"
    code = kit_main(["reproduce", "--out", str(run), "--notebooks", str(notebooks), "--quiet", "--cell-timeout", "60"])
    assert code == 1
    state = json.loads((run / "run.json").read_text())
    assert "\x1b" not in state["stages"]["01_curation"]["error"]
    assert strip_ansi("\x1b[0;31mValueError\x1b[0m: x") == "ValueError: x"


def test_invalid_data_root_is_refused_before_any_notebook(tmp_path, notebooks, capsys):
    run = tmp_path / "run"
    empty = tmp_path / "data"
    empty.mkdir()
    for root, expected in [(tmp_path / "nope", "does not exist"), (empty, "no ukb/ folder for the healthy cohort")]:
        code = kit_main(["reproduce", "--out", str(run), "--data-root", str(root), "--notebooks", str(notebooks),
                         "--quiet"])
        err = capsys.readouterr().err
        assert code == 1 and expected in err and len(err.strip().splitlines()) == 1, err
    (empty / "ukb").mkdir()
    for name in ("brats2021", "atlas2"):
        (empty / name).mkdir()
    code = kit_main(["reproduce", "--out", str(run), "--data-root", str(empty), "--notebooks", str(notebooks)])
    assert code == 1 and "no subjects match the ukb manifest's glob" in capsys.readouterr().err
    assert not (run / "log.txt").exists() and not (run / "01_curation" / "datalist.json").exists()


def test_cli_user_mistakes_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    argv = ["predict", "--checkpoint", str(bad), "--inputs", str(tmp_path / "a.nii.gz"), "--out", str(tmp_path / "o.nii.gz")]
    assert kit_main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(bad) in err and "Traceback" not in err
    assert kit_main(["reproduce", "--out", str(tmp_path / "r"), "--to", "07"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kit reproduce: unknown stage '07'") and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="unknown stage"):
        kit_main(["--debug", "reproduce", "--out", str(tmp_path / "r"), "--to", "07"])
    proc = subprocess.run([sys.executable, "-m", "kit.cli", "reproduce", "--out", str(tmp_path / "r"), "--to", "07",
                           "--debug"], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" in proc.stderr


# ----------------------------------------------------------------------------- checkpoint temp files


def test_kill_during_checkpoint_write_leaves_no_temp_file_forever(tmp_path):
    """A process SIGKILLed in the middle of torch.save; the next save removes its temp file."""
    target = tmp_path / "checkpoint.pt"
    script = (
        "import os, signal, torch\n"
        "from kit.models.checkpoints import save_checkpoint\n"
        "real_save = torch.save\n"
        "def dying_save(obj, fh, *a, **k):\n"
        "    fh.write(b'half a checkpoint'); fh.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "torch.save = dying_save\n"
        f"save_checkpoint({str(target)!r}, model_config={{'name': 'segresnet_small'}}, state_dict={{'w': torch.ones(3)}})\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    leftovers = list(tmp_path.glob(".checkpoint.pt.*.tmp"))
    assert len(leftovers) == 1 and not target.exists()
    old = time.time() - 3600
    os.utime(leftovers[0], (old, old))  # the writer died an hour ago
    save_checkpoint(target, model_config={"name": "segresnet_small"}, state_dict={"w": torch.zeros(3)})
    assert not list(tmp_path.glob(".checkpoint.pt.*.tmp")) and target.exists()


def test_a_live_writers_temp_file_is_kept(tmp_path):
    mine = tmp_path / f".checkpoint.pt.{os.getpid()}.x.tmp"
    mine.write_bytes(b"being written")
    old = time.time() - 3600
    os.utime(mine, (old, old))
    assert remove_stale_temporaries(tmp_path / "checkpoint.pt") == [] and mine.exists()


def test_unknown_model_or_setting_in_a_checkpoint_is_one_line(tmp_path, capsys):
    for config, expected in [({"name": "unet9", "in_channels": 1}, "model_config names an unknown model 'unet9'"),
                             ({"name": "segresnet_small", "in_channels": 1, "wings": 2},
                              "model_config does not fit model 'segresnet_small'")]:
        path = save_checkpoint(tmp_path / "seg.pt", model_config=config, state_dict={"w": torch.ones(1)},
                               extra={"task": "segmentation"})
        from kit.train.finetune import load_finetuned

        with pytest.raises(CheckpointError, match=expected):
            load_finetuned(path)
        code = kit_main(["predict", "--checkpoint", str(path), "--inputs", "a.nii.gz", "--out", str(tmp_path / "o.nii.gz")])
        err = capsys.readouterr().err
        assert code == 1 and expected in err and len(err.strip().splitlines()) == 1, err
