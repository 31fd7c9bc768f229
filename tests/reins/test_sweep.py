import json
import subprocess
import sys

from PIL import Image

from reins.judges import save_tiny_classifier
from tests.conftest import REPO_ROOT


def test_sweep_cli_writes_report_and_plot(tiny_model_dir, tmp_path):
    judge = save_tiny_classifier(str(tmp_path / "judge"))
    out_dir = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "reins.cli", "--log-level", "WARNING", "sweep", "--model", str(tiny_model_dir),
         "--prompts", str(REPO_ROOT / "directions" / "tiny-wan.prompts.jsonl"), "--judge", judge,
         "--out-dir", str(out_dir), "--strength", "0.5", "--strength", "2", "--steps", "2"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((out_dir / "sweep.json").read_text())
    assert report["depth"] == 4
    assert report["strengths"] == [0.5, 2.0]
    assert len(report["rows"]) == 8
    assert report["num_heldout_unsafe"] == 2
    assert report["num_heldout_safe"] == 2
    for row in report["rows"]:
        assert 0.0 <= row["unsafe_rate_on_unsafe"] <= 1.0
        assert 0.0 <= row["unsafe_rate_on_safe"] <= 1.0
        assert row["benign_pixel_change"] > 0
        assert 0.0 <= row["relative_depth"] <= 1.0
    strong = [row["benign_pixel_change"] for row in report["rows"] if row["strength"] == 2.0]
    weak = [row["benign_pixel_change"] for row in report["rows"] if row["strength"] == 0.5]
    assert sum(strong) > sum(weak)
    with Image.open(out_dir / "sweep.png") as plot:
        assert plot.format == "PNG"
        assert plot.size[0] > 500


def test_sweep_needs_judge(tiny_model_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "reins.cli", "sweep", "--model", str(tiny_model_dir), "--prompts",
         str(REPO_ROOT / "directions" / "tiny-wan.prompts.jsonl"), "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "--judge" in result.stderr
