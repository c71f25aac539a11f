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


def test_timeout_names_the_cell_when_the_kernel_leaves_no_error_output(tmp_path, notebooks):
    """The race of issue #24: the kernel's KeyboardInterrupt reply sometimes misses nbclient, and papermill
    then marks the timed-out cell 'completed' with no error output. A cell that ignores SIGINT makes that
    case certain; the message must still name the cell."""
    _notebook(notebooks / "01_curation.ipynb",
              ["x = 1", "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)", "y = 2"])
    with pytest.raises(NotebookFailed) as err:
        reproduce("smoke", tmp_path / "run", notebooks_dir=notebooks, progress=False, cell_timeout_s=2)
    executed = nbformat.read(tmp_path / "run" / "01_curation" / "01_curation.ipynb", as_version=4)
    stuck = executed.cells[-2]
    assert stuck.metadata.papermill["status"] == "completed" and not stuck.outputs  # the case the fix is for
    assert "01_curation.ipynb failed at code cell 3 ('import signal, time')" in str(err.value)
    assert "timed out after 2 s per cell" in str(err.value)


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
    for root, expected in [(tmp_path / "nope", "does not exist"), (empty, "holds none of the datasets' folders")]:
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
        from kit.finetune import load_finetuned

        with pytest.raises(CheckpointError, match=expected):
            load_finetuned(path)
        code = kit_main(["predict", "--checkpoint", str(path), "--inputs", "a.nii.gz", "--out", str(tmp_path / "o.nii.gz")])
        err = capsys.readouterr().err
        assert code == 1 and expected in err and len(err.strip().splitlines()) == 1, err


# ----------------------------------------------------------------------------- kit validate: bad files
# A two-contrast manifest (t1, flair) with an optional 0/1 label; each test writes one clean and one
# broken subject as real NIfTI files and checks the broken file's one-line reason.

import gzip  # noqa: E402
import struct  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from kit.data.cache import build_cache  # noqa: E402
from kit.data.manifest import parse_manifest  # noqa: E402
from kit.data.validate import validate_dataset, write_datalist  # noqa: E402

SHAPE = (12, 12, 8)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
PLAIN = {"name": "plain", "subjects": "sub-*",
         "images": [{"name": "t1", "pattern": "{subject}_t1.nii.gz"},
                    {"name": "flair", "pattern": "{subject}_flair.nii.gz"}],
         "label": {"pattern": "{subject}_seg.nii.gz", "required": False, "values": [0, 1]}}


def _brain(seed: int, shape=SHAPE, dtype=np.float32) -> np.ndarray:
    data = np.zeros(shape, dtype)
    data[2:-2, 2:-2, 1:-1] = np.random.default_rng(seed).uniform(50, 150, (shape[0] - 4, shape[1] - 4, shape[2] - 2))
    return data


def _subject(root: Path, sid: str, seed: int = 0) -> dict[str, Path]:
    folder = root / sid
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for k, name in enumerate(("t1", "flair")):
        files[name] = folder / f"{sid}_{name}.nii.gz"
        nib.save(nib.Nifti1Image(_brain(seed + k), AFFINE), files[name])
    return files


def _validate(root: Path):
    return validate_dataset(parse_manifest(PLAIN), root)


def _reason(root: Path, path: Path) -> str:
    result = _validate(root)
    found = [p for p in result.problems if Path(p.path) == path]
    assert len(found) == 1, [str(p) for p in result.problems]
    assert str(found[0]) == f"{path}: {found[0].reason}"
    assert [e["subject"] for e in result.subjects] == ["sub-ok"]  # the clean one is kept
    return found[0].reason


@pytest.fixture()
def data(tmp_path):
    root = tmp_path / "data"
    _subject(root, "sub-ok", seed=1)
    return root, _subject(root, "sub-bad", seed=5)


def _save(path: Path, image) -> Path:
    nib.save(image, path)
    return path


def test_all_zero_image(data):
    root, bad = data
    _save(bad["t1"], nib.Nifti1Image(np.zeros(SHAPE, np.float32), AFFINE))
    assert _reason(root, bad["t1"]) == "all voxels are zero (an empty image)"


def test_complex_and_rgb_data_types(data):
    root, bad = data
    _save(bad["t1"], nib.Nifti1Image(_brain(3).astype(np.complex64), AFFINE))
    assert _reason(root, bad["t1"]).startswith("complex data type complex64: an MRI contrast must be real-valued")
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = _brain(3).astype(np.uint8)
    _save(bad["t1"], nib.Nifti1Image(rgb, AFFINE))
    assert _reason(root, bad["t1"]).startswith("multi-component data type (R,G,B): one scalar per voxel")


def test_values_finite_on_disk_but_infinite_as_float32(data):
    root, bad = data
    image = nib.Nifti1Image(_brain(3).astype(np.int16), AFFINE)
    image.header.set_slope_inter(1e37, 0.0)
    _save(bad["flair"], image)
    reason = _reason(root, bad["flair"])
    assert "overflow float32 once scaled (scl_slope 1e+37, scl_inter 0)" in reason


def test_qform_and_sform_disagree(data):
    root, bad = data
    image = nib.Nifti1Image(_brain(3), AFFINE)
    shifted = AFFINE.copy()
    shifted[0, 3] += 20.0  # 2 cm
    image.set_qform(shifted, code=1)
    image.set_sform(AFFINE, code=2)
    _save(bad["t1"], image)
    assert _reason(root, bad["t1"]).startswith("qform and sform disagree: they place the grid's corners up to 20 mm apart")
    image.set_qform(AFFINE + np.diag([0, 0, 0, 0]) + np.array([[0, 0, 0, 0.5], [0] * 4, [0] * 4, [0] * 4]), code=1)
    _save(bad["t1"], image)  # half a millimetre: within the tolerance
    assert not [p for p in _validate(root).problems if Path(p.path) == bad["t1"]]


def test_singular_affine_zero_voxel_size(data):
    root, bad = data
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_sform(np.diag([2.0, 0.0, 2.0, 1.0]), code=2)
    header["pixdim"][1:4] = [2.0, 0.0, 2.0]
    _save(bad["t1"], nib.Nifti1Image(_brain(3), None, header))
    assert _reason(root, bad["t1"]).startswith("singular affine (voxel size 2x0x2 mm)")


def test_subject_ids_colliding_case_insensitively(tmp_path):
    root = tmp_path / "data"
    _subject(root, "sub-ok")
    _subject(root, "sub-OK")
    result = _validate(root)
    assert len(result.problems) == 1 and [e["subject"] for e in result.subjects] == ["sub-OK"]
    assert str(result.problems[0]) == (f"{root / 'sub-ok'}: subject id 'sub-ok' differs from 'sub-OK' "
                                       f"({root / 'sub-OK'}) only in letter case: they collide on a case-insensitive "
                                       "file system")


def test_shape_rule_is_the_same_in_validate_and_cache(data, tmp_path):
    root, bad = data
    _save(bad["t1"], nib.Nifti1Image(_brain(3)[..., None, None], AFFINE))  # 12x12x8x1x1: squeezed
    result = _validate(root)
    assert result.ok and any("squeezed to 3D" in w.reason for w in result.warnings)
    cache = build_cache(result.subjects, ["t1", "flair"], tmp_path / "cache", with_labels=False)
    assert all(a.ndim == 4 and a.shape[0] == 2 and np.isfinite(a).all() for a in cache.images())
    four_d = np.stack([_brain(3), _brain(4)], axis=-1)  # a real series: refused by both, same words
    _save(bad["t1"], nib.Nifti1Image(four_d, AFFINE))
    assert _reason(root, bad["t1"]) == "is 4D (shape 12x12x8x2) where 3D is expected"
    entry = {"subject": "sub-bad", "image": [str(bad["t1"]), str(bad["flair"])]}
    with pytest.raises(ValueError, match=r"sub-bad_t1.nii.gz: is 4D \(shape 12x12x8x2\) where 3D is expected"):
        build_cache([entry], ["t1", "flair"], tmp_path / "cache2", with_labels=False)


def test_directory_and_symlink_loop_where_a_file_is_expected(data):
    root, bad = data
    bad["t1"].unlink()
    bad["t1"].mkdir()
    assert _reason(root, bad["t1"]) == "is a directory, where a NIfTI file is expected"
    bad["t1"].rmdir()
    loop = bad["flair"].with_name("loop_b.nii.gz")
    os.symlink(bad["t1"], loop)
    os.symlink(loop, bad["t1"])
    assert _reason(root, bad["t1"]) == "is a symlink loop, where a NIfTI file is expected"


def test_unreadable_file_says_cannot_read(tmp_path):
    """Permission denied is not 'not a NIfTI image'. Root reads anything: then a forked child runs as nobody."""
    import shutil

    base = Path("/tmp") / f"kit-perm-{os.getpid()}"  # pytest's tmp_path is private to root
    base.mkdir(exist_ok=True)
    try:
        root = base / "data"
        _subject(root, "sub-ok")
        bad = _subject(root, "sub-bad")
        for path in [base, *base.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        _validate(root)  # imports everything while it can still be read
        os.chmod(bad["t1"], 0o000)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                if os.geteuid() == 0:
                    import pwd

                    nobody = pwd.getpwnam("nobody")
                    os.setgid(nobody.pw_gid)
                    os.setuid(nobody.pw_uid)
                os.write(write_end, json.dumps([str(p) for p in _validate(root).problems]).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            problems = json.loads(pipe.read() or b"null")
        os.waitpid(pid, 0)
        assert problems == [f"{bad['t1']}: cannot read: Permission denied"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_non_utf8_subject_folder_under_a_strict_utf8_locale(tmp_path):
    root = tmp_path / "data"
    _subject(root, "sub-ok")
    odd = os.fsencode(str(root)) + b"/sub-\xff\xfe01"
    os.mkdir(odd)  # a subject folder whose name is not UTF-8, with no images in it
    datalist = tmp_path / "datalist.json"
    manifest = tmp_path / "plain.yaml"
    manifest.write_text(json.dumps(PLAIN))  # JSON is YAML
    env = {**os.environ, "PYTHONPATH": str(REPO), "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8:strict",
           "PYTHONUTF8": "0"}
    proc = subprocess.run([sys.executable, "-m", "kit.cli", "validate", "--manifest", str(manifest), "--root",
                           str(root), "--datalist", str(datalist)], capture_output=True, env=env)
    out = proc.stdout.decode("utf-8")  # strict: the report is valid UTF-8
    assert proc.returncode == 1, proc.stderr.decode()[-2000:]
    assert f"{root}/sub-\\xff\\xfe01/sub-\\xff\\xfe01_t1.nii.gz: missing t1 image" in out
    assert "Traceback" not in proc.stderr.decode() and datalist.exists()
    assert [e["subject"] for e in json.loads(datalist.read_text())["training"]] == ["sub-ok"]


# ----------------------------------------------------------------------------- corruptions of our own


def test_label_with_non_integer_values(data):
    root, bad = data
    label = np.zeros(SHAPE, np.float32)
    label[4:6, 4:6, 3:5] = 0.5
    path = _save(bad["t1"].with_name("sub-bad_seg.nii.gz"), nib.Nifti1Image(label, AFFINE))
    assert _reason(root, path) == ("non-integer label values (8 voxels, e.g. 0.5); a label map holds integers")


def test_contrasts_differing_by_one_voxel(data):
    root, bad = data
    _save(bad["flair"], nib.Nifti1Image(_brain(3, (12, 12, 9)), AFFINE))
    assert _reason(root, bad["flair"]) == "shape 12x12x9 differs from t1 (sub-bad_t1.nii.gz) 12x12x8"


def test_gzip_data_behind_a_nii_name_and_plain_data_behind_nii_gz(tmp_path):
    root = tmp_path / "data"
    manifest = dict(PLAIN, images=[{"name": "t1", "pattern": "{subject}_t1.nii"}])
    ok = root / "sub-ok" / "sub-ok_t1.nii"
    ok.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(_brain(1), AFFINE), ok)
    bad = root / "sub-bad" / "sub-bad_t1.nii"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(gzip.compress(ok.read_bytes()))
    result = validate_dataset(parse_manifest(manifest), root)
    assert [str(p) for p in result.problems] == [
        f"{bad}: holds gzip-compressed NIfTI data but is named .nii (rename it to .nii.gz)"]
    plain = tmp_path / "data2"
    _subject(plain, "sub-ok")
    files = _subject(plain, "sub-bad")
    nib.save(nib.Nifti1Image(_brain(2), AFFINE), files["t1"].with_suffix(""))  # .nii
    files["t1"].write_bytes(files["t1"].with_suffix("").read_bytes())
    assert _reason(plain, files["t1"]) == "is named .nii.gz but holds uncompressed NIfTI data (rename it to .nii)"


def test_nan_in_header_pixdim(data):
    root, bad = data
    image = nib.Nifti1Image(_brain(3), AFFINE)
    image.header["pixdim"][2] = np.nan
    _save(bad["t1"], image)
    assert _reason(root, bad["t1"]) == "non-finite voxel size 2xnanx2 mm in the header (pixdim)"


def test_zero_byte_file(data):
    root, bad = data
    bad["flair"].write_bytes(b"")
    assert _reason(root, bad["flair"]) == "is an empty file (0 bytes)"


def test_bool_datatype_code(data):
    root, bad = data
    raw = bytearray(gzip.decompress(bad["t1"].read_bytes()))
    raw[70:74] = struct.pack("<hh", 1, 1)  # datatype DT_BINARY (1 bit per voxel), bitpix 1
    bad["t1"].write_bytes(gzip.compress(bytes(raw)))
    assert _reason(root, bad["t1"]).startswith("unsupported NIfTI data type (HeaderDataError: data code 1 not supported")


def test_huge_dimensions_in_the_header_of_a_tiny_file(data):
    """Read naively, this header asks for 108 TB; it must be refused from the file size alone."""
    root, bad = data
    raw = bytearray(gzip.decompress(bad["t1"].read_bytes()))
    raw[42:48] = struct.pack("<hhh", 30000, 30000, 30000)
    bad["t1"].write_bytes(gzip.compress(bytes(raw)))
    reason = _reason(root, bad["t1"])
    assert reason.startswith("header declares shape 30000x30000x30000 (1.01e+05 GiB of voxels) but the file is a")
    assert reason.endswith("-byte gzip stream, which cannot hold that much: a corrupt header")


def test_empty_axis_in_the_header(data):
    root, bad = data
    raw = bytearray(gzip.decompress(bad["t1"].read_bytes()))
    raw[42:48] = struct.pack("<hhh", 12, 0, 8)
    bad["t1"].write_bytes(gzip.compress(bytes(raw)))
    assert _reason(root, bad["t1"]) == "shape 12x0x8 has an empty axis"


# ----------------------------------------------------------------------------- accepted means loadable


def test_every_subject_validate_accepts_loads_through_the_cache_with_finite_values(tmp_path):
    """Odd but valid files are accepted and preprocess to finite arrays; every broken one is refused."""
    root = tmp_path / "data"
    accepted, refused = [], []

    def subject(sid, t1=None, flair=None, label=None, ok=True):
        files = _subject(root, sid, seed=len(accepted) + len(refused))
        if t1 is not None:
            nib.save(t1, files["t1"])
        if flair is not None:
            nib.save(flair, files["flair"])
        if label is not None:
            nib.save(label, files["t1"].with_name(f"{sid}_seg.nii.gz"))
        (accepted if ok else refused).append(sid)

    lesion = np.zeros(SHAPE, np.float32)
    lesion[5:7, 5:7, 3:5] = 1.0
    scaled = nib.Nifti1Image(_brain(7).astype(np.int16), AFFINE)
    scaled.header.set_slope_inter(0.25, 10.0)
    big_endian = nib.Nifti1Image(_brain(8).astype(">f4"), AFFINE)
    qs = nib.Nifti1Image(_brain(9), AFFINE)
    nudged = AFFINE.copy()
    nudged[1, 3] += 0.4
    qs.set_qform(nudged, code=1)
    qs.set_sform(AFFINE, code=2)
    constant = np.where(_brain(10) > 0, 100.0, 0.0).astype(np.float32)
    subject("sub-a-plain")
    subject("sub-b-singleton", t1=nib.Nifti1Image(_brain(11)[..., None], AFFINE))
    subject("sub-c-float-label", label=nib.Nifti1Image(lesion, AFFINE))
    subject("sub-d-scaled-int16", flair=scaled)
    subject("sub-e-big-endian-uint8", t1=big_endian, flair=nib.Nifti1Image(_brain(12).astype(np.uint8), AFFINE))
    subject("sub-f-qform-within-1mm", t1=qs)
    subject("sub-g-float64", flair=nib.Nifti1Image(_brain(13).astype(np.float64), AFFINE))
    subject("sub-h-constant-brain", t1=nib.Nifti1Image(constant, AFFINE))
    subject("sub-i-empty-label", label=nib.Nifti1Image(np.zeros(SHAPE, np.uint8), AFFINE), ok=False)
    subject("sub-j-zero", t1=nib.Nifti1Image(np.zeros(SHAPE, np.float32), AFFINE), ok=False)
    overflow = nib.Nifti1Image(_brain(14).astype(np.int16), AFFINE)
    overflow.header.set_slope_inter(1e37, 0.0)
    subject("sub-k-overflow", flair=overflow, ok=False)
    subject("sub-l-nan", t1=nib.Nifti1Image(np.where(_brain(15) > 0, np.nan, 0).astype(np.float32), AFFINE), ok=False)
    subject("sub-m-4d", t1=nib.Nifti1Image(np.stack([_brain(1), _brain(2)], -1), AFFINE), ok=False)

    result = _validate(root)
    assert sorted(e["subject"] for e in result.subjects) == accepted, [str(p) for p in result.problems]
    assert sorted({p.subject for p in result.problems}) == refused
    labelled = [e for e in result.subjects if "label" in e]
    unlabelled = [e for e in result.subjects if "label" not in e]
    images = build_cache(unlabelled, ["t1", "flair"], tmp_path / "cache", with_labels=False).images()
    with_labels = build_cache(labelled, ["t1", "flair"], tmp_path / "cache_l", with_labels=True)
    for array in images + with_labels.images():
        assert array.shape[0] == 2 and np.isfinite(array).all() and np.abs(array).max() > 0
    assert all(set(np.unique(a)) <= {0, 1} for a in with_labels.labels())


# ----------------------------------------------------------------------------- kit predict


@pytest.fixture(scope="module")
def seg_checkpoint(tmp_path_factory):
    """A real 1-step segmentation fine-tune on two 2 mm subjects (t1, flair)."""
    from kit.finetune import FinetuneConfig, finetune

    root = tmp_path_factory.mktemp("train")
    entries = []
    for i in range(2):
        files = _subject(root, f"sub-{i}", seed=i)
        label = np.zeros(SHAPE, np.uint8)
        label[5:8, 5:8, 3:5] = 1
        nib.save(nib.Nifti1Image(label, AFFINE), root / f"sub-{i}" / f"sub-{i}_seg.nii.gz")
        entries.append({"subject": f"sub-{i}", "image": [str(files["t1"]), str(files["flair"])],
                        "label": str(root / f"sub-{i}" / f"sub-{i}_seg.nii.gz")})
    cache = build_cache(entries, ["t1", "flair"], root / "cache")
    config = FinetuneConfig(backbone="segresnet_small", model={"init_filters": 8}, steps=1, crop=16,
                            warmup_steps=0, device="cpu")
    result = finetune(config, cache, [0, 1], regions={"lesion": [1]}, label_values=[0, 1])
    assert result.spacing_mm == [2.0, 2.0, 2.0]
    return result.save(root / "seg.pt")


def _predict(checkpoint, inputs, out, *extra):
    return kit_main(["predict", "--checkpoint", str(checkpoint), "--inputs", *map(str, inputs), "--out", str(out),
                     "--device", "cpu", *extra])


def test_predict_never_overwrites_an_input_or_an_existing_file(seg_checkpoint, tmp_path, capsys):
    files = _subject(tmp_path, "sub-new")
    before = files["flair"].read_bytes()
    assert _predict(seg_checkpoint, [files["t1"], files["flair"]], files["flair"]) == 1
    assert files["flair"].read_bytes() == before
    assert "--out names one of the inputs" in capsys.readouterr().err
    assert _predict(seg_checkpoint, [files["t1"], files["flair"]], files["flair"], "--overwrite") == 1
    assert files["flair"].read_bytes() == before  # not even with --overwrite
    assert "an input is never overwritten" in capsys.readouterr().err
    out = tmp_path / "pred.nii.gz"
    out.write_bytes(b"someone's file")
    assert _predict(seg_checkpoint, [files["t1"], files["flair"]], out) == 1
    assert out.read_bytes() == b"someone's file"
    assert capsys.readouterr().err.strip() == f"kit predict: {out}: already exists; pass --overwrite to replace it"
    assert _predict(seg_checkpoint, [files["t1"], files["flair"]], out, "--overwrite") == 0
    assert nib.load(out).shape == SHAPE


def test_predict_warns_on_voxel_size_and_contrast_order(seg_checkpoint, tmp_path, capsys):
    files = _subject(tmp_path, "sub-new")
    coarse = tmp_path / "coarse"
    coarse.mkdir()
    for name in ("t1", "flair"):
        nib.save(nib.Nifti1Image(_brain(1), np.diag([3.0, 3.0, 3.0, 1.0])), coarse / f"s_{name}.nii.gz")
    assert _predict(seg_checkpoint, [coarse / "s_t1.nii.gz", coarse / "s_flair.nii.gz"], tmp_path / "a.nii.gz") == 0
    err = capsys.readouterr().err
    assert f"warning: {coarse / 's_t1.nii.gz'}: voxel size 3x3x3 mm differs from the training data's 2x2x2 mm" in err
    assert _predict(seg_checkpoint, [files["flair"], files["t1"]], tmp_path / "b.nii.gz") == 0  # swapped
    err = capsys.readouterr().err
    assert (f"warning: {files['flair']}: input 1 is named like flair but the checkpoint reads t1 there "
            "(expected order: t1, flair)") in err


def test_predict_blames_the_truncated_input(seg_checkpoint, tmp_path, capsys):
    files = _subject(tmp_path, "sub-new")
    payload = files["flair"].read_bytes()
    files["flair"].write_bytes(payload[: len(payload) // 2])
    assert _predict(seg_checkpoint, [files["t1"], files["flair"]], tmp_path / "o.nii.gz") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"kit predict: {files['flair']}: truncated or corrupt image data") and "\n" not in err.strip()


def test_predict_refuses_bad_inputs_in_one_line(seg_checkpoint, tmp_path, capsys):
    files = _subject(tmp_path, "sub-new")
    nib.save(nib.Nifti1Image(np.stack([_brain(1), _brain(2)], -1), AFFINE), files["t1"])
    assert _predict(seg_checkpoint, [files["t1"], files["flair"]], tmp_path / "o.nii.gz") == 1
    assert capsys.readouterr().err.strip() == (f"kit predict: {files['t1']}: is 4D (shape 12x12x8x2) "
                                               "where 3D is expected")
    folder = tmp_path / "folder.nii.gz"
    folder.mkdir()
    assert _predict(seg_checkpoint, [folder, files["flair"]], tmp_path / "o.nii.gz") == 1
    assert "folder.nii.gz: is a directory, where a NIfTI file is expected" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()


def test_predict_dataset_refuses_existing_outputs(seg_checkpoint, tmp_path, capsys):
    from kit.predict import predict_dataset

    root = tmp_path / "data"
    _subject(root, "sub-a")
    _subject(root, "sub-b")
    out = tmp_path / "preds"
    out.mkdir()
    (out / "sub-b.nii.gz").write_bytes(b"keep me")
    manifest = parse_manifest(PLAIN)
    with pytest.raises(ValueError, match=r"sub-b.nii.gz: already exists \(1 of 2 label maps .*pass --overwrite"):
        predict_dataset(seg_checkpoint, manifest, root, out, device="cpu")
    assert (out / "sub-b.nii.gz").read_bytes() == b"keep me" and not (out / "sub-a.nii.gz").exists()
    summary = predict_dataset(seg_checkpoint, manifest, root, out, device="cpu", overwrite=True)
    assert len(summary["written"]) == 2 and nib.load(out / "sub-b.nii.gz").shape == SHAPE


def test_no_empty_datalist_for_a_cohort_without_clean_subjects(tmp_path):
    from kit.data.cohorts import combined_datalist

    root = tmp_path / "data"
    files = _subject(root, "sub-bad")
    files["t1"].write_bytes(b"")
    result = _validate(root)
    with pytest.raises(ValueError, match=r"the tumor cohort has no clean subject \(1 problems\): .*sub-bad_t1.nii.gz: "
                                         r"is an empty file \(0 bytes\)"):
        combined_datalist({"tumor": result})
