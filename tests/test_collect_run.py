"""benchmarks/collect_run.py: a run's report, the figures it links and its tables, copied so the links work."""

import importlib.util
import json
from pathlib import Path

from kit.pipeline import write_json_atomic, write_report, write_summary

ROOT = Path(__file__).resolve().parents[1]


def _collect_module():
    spec = importlib.util.spec_from_file_location("collect_run", ROOT / "benchmarks" / "collect_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_copies_report_links_and_tables_and_replaces_the_old_folder(tmp_path):
    run = tmp_path / "run"
    write_json_atomic(run / "run.json", {"profile": "workshop", "seed": 0, "stages": {}})
    (run / "04_finetune" / "figures").mkdir(parents=True)
    (run / "04_finetune" / "figures" / "curve.png").write_bytes(b"png")
    (run / "04_finetune" / "results.csv").write_text("init,dice\nscratch,0.5\n")
    (run / "04_finetune" / "models").mkdir()
    (run / "04_finetune" / "models" / "m.pt").write_bytes(b"weights")
    write_summary(run, "04_finetune", "fine-tuned", {"n": 1, "checkpoint": str(run / "02_stage1" / "checkpoint.pt")},
                  plots=["figures/curve.png"])
    write_report(run)
    out = tmp_path / "results" / "workshop"
    (out / "old").mkdir(parents=True)
    (out / "old" / "stale.csv").write_text("x")
    (out / "partial").mkdir()
    (out / "partial" / "README.md").write_text("kept")

    assert _collect_module().main(["--run", str(run), "--out", str(out), "--keep", "partial"]) == 0
    assert (out / "04_finetune" / "figures" / "curve.png").read_bytes() == b"png"
    assert (out / "04_finetune" / "results.csv").exists() and (out / "04_finetune" / "summary.json").exists()
    report = (out / "report.md").read_text()
    assert "![curve](04_finetune/figures/curve.png)" in report
    assert "| checkpoint | 02_stage1/checkpoint.pt |" in report and str(tmp_path) not in report  # relative paths only
    assert json.loads((out / "run.json").read_text())["profile"] == "workshop"
    assert not (out / "old").exists() and not (out / "04_finetune" / "models").exists()
    assert (out / "partial" / "README.md").read_text() == "kept"


def test_a_missing_linked_figure_is_an_error_naming_it(tmp_path, capsys):
    run = tmp_path / "run"
    write_json_atomic(run / "run.json", {"profile": "workshop", "seed": 0, "stages": {}})
    write_summary(run, "04_finetune", "fine-tuned", {}, plots=["figures/gone.png"])
    write_report(run)
    assert _collect_module().main(["--run", str(run), "--out", str(tmp_path / "out")]) == 1
    assert "04_finetune/figures/gone.png" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
