"""plots.py: reading log.txt (tolerant of VideoMAE's lines, strict on malformed ones) and writing valid PNGs."""
import json
import math
import os
import runpy
import sys

import matplotlib.image as mpimg
import pytest

import plots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_log(run_dir, epochs=5, drop=(), extra_lines=()):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "log.txt"), "w") as f:
        for e in range(epochs):
            record = {"epoch": e, "train_loss": 2.0 * math.exp(-e / 3), "train_lr": 1e-3 * min(1, (e + 1) / 2),
                      "train_clips_per_s": 40.0 + e, "val_acc1": 10.0 * e, "val_acc5": 15.0 * e + 20,
                      "val_loss": 2.1 * math.exp(-e / 4), "n_parameters": 1234}
            f.write(json.dumps({k: v for k, v in record.items() if k not in drop}) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    return str(run_dir)


def check_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 20000
    image = mpimg.imread(path)
    assert image.shape[0] >= 600 and image.shape[1] >= 900 and image.shape[2] in (3, 4)


def test_read_log_skips_final_line_and_keeps_last_repeated_epoch(tmp_path):
    run = write_log(tmp_path / "run", epochs=3, extra_lines=[
        "", json.dumps({"epoch": 1, "train_loss": 9.0}), json.dumps({"Final top-1": 55.0, "Final Top-5": 80.0})])
    records = plots.read_log(os.path.join(run, "log.txt"))
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert records[1] == {"epoch": 1, "train_loss": 9.0}


def _lines(fig):
    """{panel title: {legend label: (epochs, values)}} of a drawn figure."""
    return {ax.get_title(): {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines}
            for ax in fig.axes}


def test_two_runs_plot_each_logged_value_with_gaps_for_missing_keys(tmp_path):
    import matplotlib.pyplot as plt
    a = write_log(tmp_path / "vitb", epochs=6)
    b = write_log(tmp_path / "vitb_llama", epochs=4, drop=("train_clips_per_s", "val_loss"))
    fig = plots.draw_curves([a, b], labels=["ViT-B", "ViT-B-LLaMA"])
    lines = _lines(fig)
    plt.close(fig)
    ea, eb = list(range(6)), list(range(4))
    expect = {  # written from write_log's formulas, not from what plots.py read
        "loss": {"ViT-B train": (ea, [2.0 * math.exp(-e / 3) for e in ea]),
                 "ViT-B val": (ea, [2.1 * math.exp(-e / 4) for e in ea]),
                 "ViT-B-LLaMA train": (eb, [2.0 * math.exp(-e / 3) for e in eb])},
        "learning rate": {"ViT-B": (ea, [1e-3 * min(1, (e + 1) / 2) for e in ea]),
                          "ViT-B-LLaMA": (eb, [1e-3 * min(1, (e + 1) / 2) for e in eb])},
        "validation accuracy": {"ViT-B top-1": (ea, [10.0 * e for e in ea]),
                                "ViT-B top-5": (ea, [15.0 * e + 20 for e in ea]),
                                "ViT-B-LLaMA top-1": (eb, [10.0 * e for e in eb]),
                                "ViT-B-LLaMA top-5": (eb, [15.0 * e + 20 for e in eb])},
        "training throughput": {"ViT-B": (ea, [40.0 + e for e in ea])},
    }
    assert lines.keys() == expect.keys()
    for title, panel in expect.items():
        assert lines[title].keys() == panel.keys(), title
        for label, (xs, ys) in panel.items():
            assert lines[title][label][0] == xs and lines[title][label][1] == pytest.approx(ys), (title, label)
    out = plots.plot_logs([a, b], str(tmp_path / "cmp" / "curves.png"), labels=["ViT-B", "ViT-B-LLaMA"])
    check_png(out)
    with pytest.raises(ValueError, match="1 labels for 2 runs"):
        plots.plot_logs([a, b], str(tmp_path / "x.png"), labels=["only one"])


def test_resumed_run_plots_logged_epochs_and_the_last_entry_of_a_repeated_one(tmp_path):
    import matplotlib.pyplot as plt
    run = write_log(tmp_path / "run", epochs=3, extra_lines=[json.dumps({"epoch": 1, "train_loss": 9.0}),
                                                             json.dumps({"epoch": 5, "train_loss": 1.0})])
    fig = plots.draw_curves([run])
    lines = _lines(fig)["loss"]
    plt.close(fig)
    assert lines["run train"] == ([0, 1, 2, 5], [2.0, 9.0, 2.0 * math.exp(-2 / 3), 1.0])  # x is the logged epoch
    assert lines["run val"] == ([0, 2], [2.1, 2.1 * math.exp(-2 / 4)])  # epoch 1's last record has no val_loss


def test_malformed_line_names_file_and_line(tmp_path):
    run = write_log(tmp_path / "bad", epochs=2, extra_lines=['{"epoch": 2, "train_loss": '])
    with pytest.raises(ValueError, match=r"bad[/\\]log\.txt:3: not a JSON line"):
        plots.plot_logs([run], str(tmp_path / "x.png"))
    write_log(tmp_path / "list", epochs=1, extra_lines=["[1, 2]"])
    with pytest.raises(ValueError, match=r"log\.txt:2: expected a JSON object"):
        plots.read_log(str(tmp_path / "list" / "log.txt"))


def run_cli(args, monkeypatch):
    """plots.py as a script (its __main__ block), in this process."""
    monkeypatch.setattr(sys, "argv", ["plots.py", *args])
    runpy.run_path(os.path.join(ROOT, "plots.py"), run_name="__main__")


def test_cli_default_outputs_and_errors(tmp_path, monkeypatch, capsys):
    one = write_log(tmp_path / "one", epochs=3)
    two = write_log(tmp_path / "two", epochs=3)
    run_cli([one], monkeypatch)
    check_png(os.path.join(one, "curves.png"))
    monkeypatch.chdir(tmp_path)
    run_cli([one, two], monkeypatch)
    assert "curves written to curves.png" in capsys.readouterr().out
    check_png(tmp_path / "curves.png")
    with pytest.raises(SystemExit, match="missing: no such folder or file"):
        run_cli([str(tmp_path / "missing")], monkeypatch)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"empty[/\\]log\.txt: not found"):
        plots.plot_logs([str(tmp_path / "empty")], str(tmp_path / "x.png"))


def write_videomae_log(path, epochs=4):
    """A training log as VideoMAE's engine writes it: one JSON line per epoch with its train_*/val_* keys, then the
    test result line without an epoch."""
    with open(path, "w") as f:
        for e in range(epochs):
            f.write(json.dumps({"train_lr": 5e-4 * (e + 1) / epochs, "train_min_lr": 1e-6, "train_loss": 4.0 - e / 2,
                                "train_loss_scale": 65536.0, "train_weight_decay": 0.05, "train_grad_norm": 3.5,
                                "val_loss": 3.0 - e / 4, "val_acc1": 20.0 + 5 * e, "val_acc5": 50.0 + 3 * e,
                                "epoch": e, "n_parameters": 86361006}) + "\n")
        f.write(json.dumps({"Final top-1": 70.8, "Final Top-5": 92.4}) + "\n")
    return str(path)


def test_published_log_is_overlaid_in_its_own_style(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    run = write_log(tmp_path / "vitb", epochs=3)
    ref = write_videomae_log(tmp_path / "videomae_vitb_ssv2.txt")
    fig = plots.draw_curves([run], references=[ref])
    panels = {ax.get_title(): {line.get_label(): line for line in ax.lines} for ax in fig.axes}
    plt.close(fig)
    e = [0, 1, 2, 3]
    expect = {"loss": {"videomae_vitb_ssv2 train": [4.0 - x / 2 for x in e],
                       "videomae_vitb_ssv2 val": [3.0 - x / 4 for x in e]},
              "learning rate": {"videomae_vitb_ssv2": [5e-4 * (x + 1) / 4 for x in e]},
              "validation accuracy": {"videomae_vitb_ssv2 top-1": [20.0 + 5 * x for x in e],
                                      "videomae_vitb_ssv2 top-5": [50.0 + 3 * x for x in e]}}
    for title, lines in expect.items():
        for label, ys in lines.items():
            line = panels[title][label]
            assert list(line.get_xdata()) == e and list(line.get_ydata()) == pytest.approx(ys), label
            assert line.get_marker() in ("None", None, "") and line.get_linestyle() in (":", "-."), label
    assert panels["loss"]["videomae_vitb_ssv2 train"].get_linestyle() == ":"
    assert panels["loss"]["videomae_vitb_ssv2 val"].get_linestyle() == "-."
    own = panels["loss"]["vitb train"]
    assert (own.get_linestyle(), own.get_marker()) == ("-", ".") and list(own.get_xdata()) == [0, 1, 2]
    assert own.get_color() != panels["loss"]["videomae_vitb_ssv2 train"].get_color()
    assert set(panels["training throughput"]) == {"vitb"}  # the published log has no throughput
    out = tmp_path / "overlay.png"
    run_cli([run, "--reference", ref, "--reference_label", "VideoMAE ViT-B", "--out", str(out)], monkeypatch)
    check_png(out)
    fig = plots.draw_curves([run], references=[ref], reference_labels=["VideoMAE ViT-B"])
    assert {line.get_label() for line in fig.axes[0].lines} == {"vitb train", "vitb val", "VideoMAE ViT-B train",
                                                                "VideoMAE ViT-B val"}
    plt.close(fig)
    with pytest.raises(ValueError, match="2 reference labels for 1 references"):
        plots.draw_curves([run], references=[ref], reference_labels=["a", "b"])
    with pytest.raises(SystemExit, match="--reference overlays training curves"):
        run_cli([run, "--sweep", "--reference", ref], monkeypatch)
