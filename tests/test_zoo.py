"""The model-zoo table: checkpoints identified from their contents, tested with the published protocol, and the
published, measured and difference columns, on tiny zoo-format checkpoints and the tiny synthetic data."""
import csv
import json
import os
import subprocess

import numpy as np
import pytest
import torch

import zoo
from fakes import published_model_shapes, single_thread, write_zoo_checkpoint  # noqa: F401
from runs import ROOT

SMALL_PROTOCOL = ["--num_frames", "8", "--input_size", "32", "--short_side_size", "32", "--test_num_segment", "2",
                  "--test_num_crop", "2", "--batch_size", "4", "--num_workers", "0"]


def write_zoo(folder) -> None:
    """A ViT with saved args (model and data_set) and a ViT-LLaMA saved with weights only, as the zoo stores them;
    plus files the tool must pass over."""
    os.makedirs(folder)
    write_zoo_checkpoint(str(folder / "ssv2_tiny.pth"), published_model_shapes(192, 4, 8),
                         args={"model": "vit_tiny_patch16", "nb_classes": 8, "data_set": "SSV2", "num_frames": 8,
                               "input_size": 32})
    sd = write_zoo_checkpoint(str(folder / "ssv2_tiny_llama.pth"), published_model_shapes(192, 4, 8, 256, 768), seed=1)
    torch.save({"model": sd, "epoch": 29}, folder / "ssv2_tiny_llama.pth")  # the weights only
    (folder / "videomae_ssv2_vits.pth").write_bytes(b"a pre-training file: not a zoo name")


def accuracy(run_dir, k: int) -> float:
    """Top-k (%) from the run's per-video probabilities, computed here."""
    with np.load(os.path.join(run_dir, "test_per_video.npz")) as z:
        topk = np.argsort(-z["probs"], axis=1)[:, :k]
        return 100.0 * float((topk == z["labels"][:, None]).any(1).mean())


@pytest.mark.filterwarnings("ignore:no llama_path given")
def test_zoo_table_on_tiny_checkpoints(data_dir, tmp_path):
    write_zoo(tmp_path / "checkpoints")
    published = tmp_path / "published.json"
    published.write_text(json.dumps({"SSV2": {"vit_tiny_patch16": [50.0, 90.0],
                                              "vit_llama_tiny_patch16": [12.5, 62.5]}}))
    out = tmp_path / "zoo"
    rows = zoo.main(["--checkpoints", str(tmp_path / "checkpoints"), "--output_dir", str(out), "--ssv2_data_path",
                     data_dir, "--device", "cpu", "--published", str(published), "--", *SMALL_PROTOCOL])
    with open(out / "zoo_results.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["checkpoint"], r["model"], r["dataset"]) for r in table] == [
        ("ssv2_tiny.pth", "vit_tiny_patch16", "SSV2"), ("ssv2_tiny_llama.pth", "vit_llama_tiny_patch16", "SSV2")]
    for r, (pub1, pub5) in zip(table, [(50.0, 90.0), (12.5, 62.5)]):
        run_dir = out / r["checkpoint"].removesuffix(".pth")
        top1, top5 = accuracy(run_dir, 1), accuracy(run_dir, 5)
        assert float(r["measured_top1"]) == pytest.approx(top1) and float(r["measured_top5"]) == pytest.approx(top5)
        assert (float(r["published_top1"]), float(r["published_top5"])) == (pub1, pub5)
        assert float(r["diff_top1"]) == pytest.approx(top1 - pub1)
        assert float(r["diff_top5"]) == pytest.approx(top5 - pub5)
        assert (r["videos"], r["views"]) == ("7", "2x2") and float(r["seconds"]) > 0
    md = (out / "zoo_results.md").read_text().splitlines()
    assert md[0].startswith("| checkpoint | model | dataset | published top-1 | published top-5 | measured top-1")
    r = rows[0]
    assert md[2].startswith(f"| ssv2_tiny.pth | vit_tiny_patch16 | SSV2 | 50.00 | 90.00 | {r['measured_top1']:.2f} | "
                            f"{r['measured_top5']:.2f} | {r['measured_top1'] - 50:+.2f} |")


def test_published_numbers_and_protocols(tmp_path):
    """A zoo file without args is identified by its keys; its name's prefix picks the dataset and the protocol."""
    sd = write_zoo_checkpoint(str(tmp_path / "k400_tiny.pth"), published_model_shapes(192, 4, 400))
    torch.save({"model": sd}, tmp_path / "k400_tiny.pth")
    ck = zoo.identify(str(tmp_path / "k400_tiny.pth"))
    assert ck == zoo.ZooCheckpoint(str(tmp_path / "k400_tiny.pth"), "vit_tiny_patch16", "Kinetics-400", 400)
    argv = zoo.eval_argv(ck, "out", "data/k400", "cpu", [])
    assert " ".join(argv).endswith("--test_num_segment 5 --test_num_crop 3")
    ssv2 = zoo.eval_argv(zoo.ZooCheckpoint("ssv2_vits.pth", "vit_small_patch16_224", "SSV2", 174), "o", "d", "cpu",
                         ["--batch_size", "4"])
    assert " ".join(ssv2).endswith("--num_frames 16 --input_size 224 --short_side_size 224 --test_num_segment 2 "
                                   "--test_num_crop 3 --batch_size 4")
    vits = zoo.ZooCheckpoint("k400_vits.pth", "vit_small_patch16_224", "Kinetics-400", 400)
    row = zoo.result_row(vits, {"top1": 80.0, "top5": 93.0, "videos": 19881}, "5x3", 1.0, zoo.PUBLISHED)
    assert (row["published_top1"], row["published_top5"]) == (79.0, 93.8)
    assert row["diff_top1"] == pytest.approx(1.0) and row["diff_top5"] == pytest.approx(-0.8)
    assert zoo.result_row(ck, {"top1": 1.0, "top5": 2.0, "videos": 3}, "5x3", 1.0, zoo.PUBLISHED)["diff_top1"] is None
    assert zoo.PUBLISHED["SSV2"]["vit_llama_base_patch16_224"] == (66.03, 90.25)


def test_unknown_files_are_refused_with_what_they_hold(tmp_path):
    torch.save({"model": {"head.weight": torch.zeros(3, 5), "patch_embed.proj.weight": torch.zeros(5, 3, 2, 16, 16)}},
               tmp_path / "ssv2_odd.pth")
    with pytest.raises(ValueError, match=r"ssv2_odd.pth: its 2 tensors \(patch_embed.proj.weight \(5, 3, 2, 16, 16\), "
                                         r"LLM block: no\) fit no registered model"):
        zoo.identify(str(tmp_path / "ssv2_odd.pth"))
    torch.save({"model": {"encoder.patch_embed.proj.weight": torch.zeros(1)}}, tmp_path / "ssv2_pretrain.pth")
    with pytest.raises(ValueError, match="ssv2_pretrain.pth: no head.weight: not a fine-tuned classifier"):
        zoo.identify(str(tmp_path / "ssv2_pretrain.pth"))


@pytest.mark.parametrize("text", ['{"SSV2": {"vit_tiny_patch16": [50.0]}}', '{"SSV2": [50, 90]}', '{"SSV2": '])
def test_bad_published_file_is_named(tmp_path, text):
    (tmp_path / "pub.json").write_text(text)
    with pytest.raises(SystemExit, match=r"pub.json: expected JSON \{dataset: \{model: \[top1, top5\]\}\}"):
        zoo.read_published(str(tmp_path / "pub.json"))


def test_eval_zoo_script_says_what_it_looked_for(tmp_path):
    env = {**os.environ, "CHECKPOINTS": str(tmp_path), "NPROC": "0", "OUTPUT_DIR": str(tmp_path / "zoo")}
    res = subprocess.run(["bash", os.path.join(ROOT, "scripts", "eval_zoo.sh")], env=env, capture_output=True,
                         text=True)
    assert res.returncode == 1
    assert f"no model-zoo checkpoint (ssv2_*.pth, k400_*.pth) in {tmp_path}" in res.stderr
