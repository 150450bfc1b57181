"""scripts/sweep_llama_layers.sh with a stand-in recipe, and plots.plot_sweep's table against the runs' summaries."""
import csv
import json
import os
import subprocess

import matplotlib.image
import pytest

import plots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Stands in for scripts/ssv2_vits_llama.sh: records its arguments and writes the run's test summary.
RECIPE = """#!/usr/bin/env bash
set -euo pipefail
mkdir -p "${OUTPUT_DIR}"
echo "$*" >> "${OUTPUT_DIR}/argv.txt"
n=${#2}  # top-1 = 50 + the length of the --llama_layer value
printf '{"top1": %d.0, "top5": %d.0, "mean_class_acc": 49.0, "videos": 24, "checkpoint": "%s"}' \\
    $((50 + n)) $((80 + n)) "${OUTPUT_DIR}/checkpoint-1.pth" > "${OUTPUT_DIR}/test_summary.json"
"""


def test_sweep_trains_each_choice_once_and_tabulates(tmp_path):
    recipe = tmp_path / "recipe.sh"
    recipe.write_text(RECIPE)
    env = {**os.environ, "LAYERS": "15 -1 14,15 12:16", "RECIPE": str(recipe), "SWEEP_DIR": str(tmp_path / "sweep")}
    run = lambda: subprocess.run(["bash", os.path.join(ROOT, "scripts", "sweep_llama_layers.sh"), "--epochs", "1"],  # noqa: E731
                                 env=env, capture_output=True, text=True, timeout=120)
    res = run()
    assert res.returncode == 0, res.stderr
    dirs = ["layer_15", "layer_-1", "layer_14+15", "layer_12to16"]
    assert sorted(os.listdir(tmp_path / "sweep")) == sorted(dirs + ["sweep.csv", "sweep.png"])
    for d, choice in zip(dirs, ["15", "-1", "14,15", "12:16"]):
        assert (tmp_path / "sweep" / d / "argv.txt").read_text() == f"--llama_layer {choice} --epochs 1\n"
    with open(tmp_path / "sweep" / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["label"], float(r["top1"]), float(r["top5"])) for r in rows] == [
        ("layer 15", 52.0, 82.0), ("layer -1", 52.0, 82.0), ("layer 14,15", 55.0, 85.0), ("layer 12:16", 55.0, 85.0)]
    assert matplotlib.image.imread(tmp_path / "sweep" / "sweep.png").shape[1] >= 600
    res = run()  # finished runs are skipped: nothing trains twice
    assert res.returncode == 0 and res.stdout.count("skipped") == 4
    assert all((tmp_path / "sweep" / d / "argv.txt").read_text().count("\n") == 1 for d in dirs)


def test_plot_sweep_refuses_unfinished_runs(tmp_path):
    done = tmp_path / "done"
    done.mkdir()
    (done / "test_summary.json").write_text(json.dumps({"top1": 60.0, "top5": 88.5, "videos": 3}))
    csv_path, rows = plots.plot_sweep([str(done)], str(tmp_path / "s.png"))
    assert csv_path == str(tmp_path / "s.csv") and rows[0]["label"] == "done" and rows[0]["top5"] == 88.5
    with pytest.raises(FileNotFoundError, match="no test_summary.json .* in: .*missing"):
        plots.plot_sweep([str(done), str(tmp_path / "missing")], str(tmp_path / "s.png"))
    with pytest.raises(ValueError, match="1 labels for 2 runs"):
        plots.plot_sweep([str(done), str(done)], str(tmp_path / "s.png"), labels=["a"])
