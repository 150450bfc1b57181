"""predict.py against a model trained by run_class_finetuning in the test, and its failure messages."""
import argparse
import csv
import json
import os
import runpy
import sys
import warnings

import imageio_ffmpeg
import numpy as np
import pytest
import torch

import checkpoint
import predict
import run_class_finetuning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLOURS = {"red": (210, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 220)}  # one class each


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    """predict.py picks CUDA where it exists; these are CPU tests and must mean the same on a GPU node."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def write_video(path: str, rgb, seed: int, frames: int = 10, height: int = 40, width: int = 56) -> None:
    """A noisy clip of one dominant colour: clearly separable classes that a tiny ViT learns in a few steps."""
    rng = np.random.default_rng(seed)
    writer = imageio_ffmpeg.write_frames(path, (width, height), fps=10, codec="libx264", pix_fmt_out="yuv420p",
                                         macro_block_size=8, output_params=["-crf", "18"])
    writer.send(None)
    for _ in range(frames):
        frame = np.asarray(rgb) * rng.uniform(0.7, 1.1) + rng.integers(-30, 30, (height, width, 3))
        writer.send(np.clip(frame, 0, 255).astype(np.uint8).tobytes())
    writer.close()


def write_colour_videos(root) -> dict[str, list[str]]:
    """4 train + 2 test videos per colour under root/videos, each seeded by its position in the lists (the same
    pixels in every run; hash() of a tuple would change with PYTHONHASHSEED). Returns the CSV lines per split."""
    os.makedirs(root / "videos")
    lists = {"train": [], "test": []}
    for split, count in (("train", 4), ("test", 2)):
        for label, (name, rgb) in enumerate(COLOURS.items()):
            for i in range(count):
                rel = f"videos/{split}_{name}_{i}.mp4"
                write_video(str(root / rel), rgb, seed=len(lists["train"]) + len(lists["test"]))
                lists[split].append(f"{rel} {label}")
    return lists


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """3-class colour dataset, vit_tiny trained a few epochs by run_class_finetuning (ending in its multi-view test)."""
    root = tmp_path_factory.mktemp("colours")
    lists = write_colour_videos(root)
    for split, lines in (("train.csv", lists["train"]), ("val.csv", lists["test"]), ("test.csv", lists["test"])):
        (root / split).write_text("\n".join(lines) + "\n")
    labels_json = root / "something-something-v2-labels.json"
    labels_json.write_text(json.dumps({f"Something {name}": str(i) for i, name in enumerate(COLOURS)}))
    out = root / "run"
    args = run_class_finetuning.parse_args([
        "--model", "vit_tiny_patch16", "--data_path", str(root), "--nb_classes", "3", "--output_dir", str(out),
        "--num_frames", "4", "--input_size", "32", "--short_side_size", "32", "--tubelet_size", "2",
        "--test_num_segment", "2", "--test_num_crop", "3", "--batch_size", "6", "--num_sample", "1",
        "--epochs", "2", "--disable_eval_during_finetuning", "--warmup_epochs", "0", "--lr", "0.1",
        "--min_lr", "1e-4", "--layer_decay", "1.0",
        "--drop_path", "0", "--mixup", "0", "--cutmix", "0", "--smoothing", "0", "--aa", "none", "--reprob", "0",
        "--num_workers", "0", "--device", "cpu", "--print_freq", "100", "--seed", "0"])
    summary = run_class_finetuning.main(args)
    return dict(root=root, out=out, summary=summary, checkpoint=str(out / "checkpoint-1.pth"),
                labels_json=str(labels_json), test_videos=[str(root / line.split()[0]) for line in lists["test"]],
                test_labels=[int(line.split()[1]) for line in lists["test"]])


def test_predict_returns_true_class_and_matches_multi_view_test(trained, tmp_path):
    out_json = tmp_path / "pred.json"
    results = predict.main([*trained["test_videos"], "--resume", trained["checkpoint"], "--model", "vit_tiny_patch16",
                            "--labels", trained["labels_json"], "--json", str(out_json), "--device", "cpu"])
    assert trained["summary"]["checkpoint"] == trained["checkpoint"]
    assert [r["top5"][0]["class_id"] for r in results] == trained["test_labels"]
    assert [r["top5"][0]["name"] for r in results] == [f"Something {n}" for n in COLOURS for _ in range(2)]
    assert json.loads(out_json.read_text()) == results
    for r in results:
        probs = [t["prob"] for t in r["top5"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-5)

    # The engine's merged per-video probabilities for the same checkpoint: same pixels, same views, same average.
    merged = np.load(trained["out"] / "test_per_video.npz")
    by_id = {str(v): p for v, p in zip(merged["video_ids"], merged["probs"])}
    for video, r in zip(trained["test_videos"], results):
        expected = by_id[os.path.splitext(os.path.basename(video))[0]]
        got = np.zeros_like(expected)
        for t in r["top5"]:
            got[t["class_id"]] = t["prob"]
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_flags_default_to_checkpoint_args_and_match_explicit_ones(trained):
    video = trained["test_videos"][0]
    implicit = predict.main([video, "--resume", trained["checkpoint"]])
    explicit = predict.main([video, "--resume", trained["checkpoint"], "--model", "vit_tiny_patch16",
                             "--num_frames", "4", "--input_size", "32", "--short_side_size", "32",
                             "--test_num_segment", "2", "--test_num_crop", "3", "--tubelet_size", "2",
                             "--nb_classes", "3"])
    assert implicit == explicit


def test_ema_weights_and_bare_state_dict(trained, tmp_path):
    video = trained["test_videos"][0]
    ckpt = checkpoint.safe_load(trained["checkpoint"])
    ema = {k: torch.zeros_like(v) if k.startswith("head.") else v for k, v in ckpt["model"].items()}
    torch.save({"model": ckpt["model"], "model_ema": ema, "args": ckpt["args"]}, tmp_path / "ema.pth")
    uniform = predict.main([video, "--resume", str(tmp_path / "ema.pth"), "--use_ema"])
    assert [t["prob"] for t in uniform[0]["top5"]] == pytest.approx([1 / 3] * 3)
    # today's checkpoints: the EMA holds the trainable weights only (frozen ones come from 'model'); here a subset
    torch.save({"model": ckpt["model"], "model_ema": {k: v for k, v in ema.items() if k.startswith("head.")},
                "args": ckpt["args"]}, tmp_path / "ema_subset.pth")
    assert predict.main([video, "--resume", str(tmp_path / "ema_subset.pth"), "--use_ema"]) == uniform
    with pytest.raises(predict.PredictError, match="no weights under 'model_ema'"):
        predict.main([video, "--resume", trained["checkpoint"], "--use_ema"])
    torch.save(ckpt["model"], tmp_path / "bare.pth")
    bare = predict.main([video, "--resume", str(tmp_path / "bare.pth"), "--model", "vit_tiny_patch16",
                         "--num_frames", "4", "--input_size", "32", "--short_side_size", "32"])
    assert bare == predict.main([video, "--resume", trained["checkpoint"]])


def test_llama_checkpoint_equals_direct_forward(trained, tmp_path):
    """A ViT-LLaMA checkpoint (LLaMA block weights inside) loads strictly; probs = mean of the views' softmaxes."""
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from datasets import read_test_views
    from models import create_model
    torch.manual_seed(0)
    with warnings.catch_warnings():  # random LLaMA weights, saved into the checkpoint below
        warnings.simplefilter("ignore")
        model = create_model("vit_llama_tiny_patch16", num_classes=3, all_frames=4, img_size=32).eval()
    torch.save({"model": model.state_dict(), "args": {"model": "vit_llama_tiny_patch16", "num_frames": 4,
                                                       "input_size": 32, "short_side_size": 32}},
               tmp_path / "llama.pth")
    video = trained["test_videos"][2]
    got = predict.main([video, "--resume", str(tmp_path / "llama.pth"), "--test_num_segment", "3",
                        "--test_num_crop", "2"])
    views, view_ids = read_test_views(video, argparse.Namespace(
        num_frames=4, input_size=32, short_side_size=32, test_num_segment=3, test_num_crop=2))
    assert views.shape[0] == 6 and view_ids.tolist() == [[k, j] for k in range(3) for j in range(2)]
    with torch.no_grad():
        mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN), torch.tensor(IMAGENET_DEFAULT_STD)
        clips = ((views.float() / 255 - mean) / std).permute(0, 4, 1, 2, 3)  # uint8 V x T x H x W x C views
        expected = model(clips).softmax(-1).mean(0)
    assert {t["class_id"]: t["prob"] for t in got[0]["top5"]} == pytest.approx(
        {c: float(p) for c, p in enumerate(expected)}, abs=1e-6)


def test_llm_checkpoint_needs_no_folder_and_refuses_another(trained, tmp_path):
    """A ViT-LLaMA on a Qwen2 layer (GQA, q/k/v biases): predict rebuilds the block from the checkpoint's record
    without --llama_path (same probabilities as the model itself), accepts the folder it was trained with, and refuses
    another Qwen2 folder naming both blocks."""
    from datasets import read_test_views
    from fakes import write_hf_family
    from models import create_model
    from video_transforms import normalize_clips
    small = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                 num_hidden_layers=2, vocab_size=32)
    write_hf_family(str(tmp_path / "qwen"), "qwen2", seed=1, **small)
    write_hf_family(str(tmp_path / "qwen_other"), "qwen2", seed=2, **small)
    torch.manual_seed(0)
    model = create_model("vit_llama_tiny_patch16", num_classes=3, all_frames=4, img_size=32,
                         llama_path=str(tmp_path / "qwen"), llama_layer="-1").eval()
    torch.save({"model": model.state_dict(), "llm": model.llm_identity,
                "args": {"model": "vit_llama_tiny_patch16", "num_frames": 4, "input_size": 32, "short_side_size": 32}},
               tmp_path / "qwen.pth")
    video = trained["test_videos"][1]
    argv = [video, "--resume", str(tmp_path / "qwen.pth"), "--test_num_segment", "1", "--test_num_crop", "2"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither the random-block nor the unrecorded-identity warning
        got = predict.main(argv)
    views, _ = read_test_views(video, argparse.Namespace(num_frames=4, input_size=32, short_side_size=32,
                                                         test_num_segment=1, test_num_crop=2))
    with torch.no_grad():
        expected = model(normalize_clips(views)).softmax(-1).mean(0)
    assert {t["class_id"]: t["prob"] for t in got[0]["top5"]} == pytest.approx(
        {c: float(p) for c, p in enumerate(expected)}, abs=1e-6)
    assert predict.main(argv + ["--llama_path", str(tmp_path / "qwen")]) == got
    with pytest.raises(predict.PredictError, match=r"qwen.pth holds another LLM block(?s:.*)checkpoint: qwen2 \(hidden "
                                                   r"64, 4 heads / 2 KV, FFN 96, q/k/v biases, eps 1e-06\) layers "
                                                   r"\[1\], from .*qwen \(sha256 .*\n  model: +qwen2 .*qwen_other"):
        predict.main(argv + ["--llama_path", str(tmp_path / "qwen_other")])


@pytest.mark.parametrize("extra, message", [
    (["--nb_classes", "5"], r"it holds a 3-class head; the model has 5 classes \(--nb_classes\)"),
    (["--model", "vit_llama_tiny_patch16"], r"(?s)its saved args say --model vit_tiny_patch16.*missing keys: llama\."),
    (["--model", "vit_nope"], r"--model vit_nope: unknown model"),
    (["--labels", "LABELS_10"], r"names 10 classes; the checkpoint's head has 3"),
])
def test_checkpoint_of_another_model_fails_clearly(trained, tmp_path, extra, message):
    labels10 = tmp_path / "labels10.json"
    labels10.write_text(json.dumps({f"c{i}": str(i) for i in range(10)}))
    extra = [str(labels10) if e == "LABELS_10" else e for e in extra]
    with pytest.raises(predict.PredictError, match=message):
        predict.main([trained["test_videos"][0], "--resume", trained["checkpoint"], *extra])


def test_missing_or_unreadable_inputs_fail_with_file_and_reason(trained, tmp_path):
    video, ckpt = trained["test_videos"][0], trained["checkpoint"]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(open(video, "rb").read()[:500])
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(open(ckpt, "rb").read()[:2000])
    cases = [([str(tmp_path / "gone.mp4"), "--resume", ckpt], "video .*gone.mp4: no such file"),
             ([str(broken), "--resume", ckpt], "video .*broken.mp4: cannot be decoded"),
             ([video, "--resume", str(tmp_path / "none.pth")], "checkpoint .*none.pth: no such file"),
             ([video, "--resume", str(truncated)], "cannot read checkpoint .*truncated.pth")]
    for argv, message in cases:
        with pytest.raises(predict.PredictError, match=message):
            predict.main(argv)


def run_cli(argv, monkeypatch):
    """predict.py as a script (its __main__ block) in this process, to skip a second torch import."""
    monkeypatch.setattr(sys, "argv", ["predict.py", *argv])
    runpy.run_path(os.path.join(ROOT, "predict.py"), run_name="__main__")


def test_cli_prints_top5_and_exits_with_message(trained, monkeypatch, capsys):
    run_cli([trained["test_videos"][-1], "--resume", trained["checkpoint"], "--labels", trained["labels_json"]],
            monkeypatch)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == trained["test_videos"][-1]
    assert lines[1].strip().startswith("1. ") and lines[1].endswith("Something blue (2)")
    assert len(lines) == 4  # the video, then its 3 classes (top-5 of 3)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["missing.mp4", "--resume", trained["checkpoint"]], monkeypatch)
    assert exit_info.value.code == "predict.py: video missing.mp4: no such file"


def test_engine_reports_agree_with_its_per_view_file(trained):
    """The run's per_class.csv and test_summary.json, recounted from test_per_view.npz independently."""
    per_view = np.load(trained["out"] / "test_per_view.npz")
    views = {}
    for vid, label, p in zip(per_view["video_ids"], per_view["labels"], per_view["probs"]):
        views.setdefault(str(vid), (int(label), []))[1].append(p)
    assert all(len(v[1]) == 6 for v in views.values()) and len(views) == 6
    correct = {c: 0 for c in range(3)}
    videos = {c: 0 for c in range(3)}
    for label, ps in views.values():
        videos[label] += 1
        correct[label] += int(np.mean(ps, 0).argmax() == label)
    with open(trained["out"] / "per_class.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["videos"]), float(r["top1"])) for r in rows] == [(videos[c], 100 * correct[c] / videos[c])
                                                                      for c in range(3)]
    assert [r["name"] for r in rows] == [f"Something {n}" for n in COLOURS]
    summary = json.loads((trained["out"] / "test_summary.json").read_text())
    assert summary["videos"] == 6 and summary["mean_class_acc"] == pytest.approx(
        np.mean([100 * correct[c] / videos[c] for c in range(3)]))
    assert os.path.getsize(summary["confusion_matrix_png"]) > 2000


def test_bad_videos_are_skipped_and_reported_and_the_others_written(trained, tmp_path, monkeypatch):
    good = trained["test_videos"][:2]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(open(good[0], "rb").read()[:500])
    out_json = tmp_path / "pred.json"
    with pytest.raises(predict.PredictError, match=r"2 of 4 videos could not be predicted \(the others were\): video "
                                                   r".*broken.mp4: cannot be decoded.*; video .*gone.mp4: no such"):
        predict.main([good[0], str(broken), str(tmp_path / "gone.mp4"), good[1], "--resume", trained["checkpoint"],
                      "--json", str(out_json)])
    assert [r["video"] for r in json.loads(out_json.read_text())] == good


def test_json_into_a_missing_folder_fails_before_any_work(trained, tmp_path, monkeypatch):
    monkeypatch.setattr(predict, "load_model", lambda *a: pytest.fail("the model was loaded"))
    with pytest.raises(predict.PredictError, match=r"--json .*nowhere/p.json: its folder does not exist"):
        predict.main([trained["test_videos"][0], "--resume", trained["checkpoint"], "--json",
                      str(tmp_path / "nowhere" / "p.json")])


def test_frames_or_size_other_than_the_checkpoints_are_refused(trained):
    """Given explicitly, --num_frames 8 on a 4-frame checkpoint loads (the position table is fixed) but would
    predict from other inputs than it was trained on: refused unless --allow_arg_mismatch."""
    argv = [trained["test_videos"][0], "--resume", trained["checkpoint"], "--num_frames", "8"]
    with pytest.raises(predict.PredictError, match=r"trained with other settings: --num_frames 4 -> 8 .*"
                                                   r"--allow_arg_mismatch"):
        predict.main(argv)
    assert len(predict.main(argv + ["--allow_arg_mismatch"])) == 1


def test_a_truncated_video_is_predicted_with_a_warning(trained, tmp_path, capsys):
    """A webm cut to 60% of its bytes (its header promises 36 frames, fewer decode): predicted on the frames it has,
    with a warning naming it and "truncated" in the JSON; a whole video says nothing."""
    import av

    from datasets.synthetic import write_video as write_webm
    whole, cut = str(tmp_path / "whole.webm"), str(tmp_path / "cut.webm")
    rng = np.random.default_rng(0)
    frames = np.clip(np.asarray(COLOURS["green"]) + rng.integers(-30, 30, (36, 40, 56, 3)), 0, 255).astype(np.uint8)
    write_webm(whole, frames, codec="libvpx-vp9")
    data = open(whole, "rb").read()
    open(cut, "wb").write(data[: len(data) * 6 // 10])
    with av.open(cut) as container:  # independently: the frames PyAV decodes
        present = sum(1 for _ in container.decode(video=0))
    assert present < 35
    out_json = tmp_path / "pred.json"
    results = predict.main([whole, cut, "--resume", trained["checkpoint"], "--json", str(out_json)])
    captured = capsys.readouterr()
    note = f"{present} frames decode, its header promises 36"
    assert [r["truncated"] for r in results] == [None, note]
    assert f"WARNING: video {cut} is truncated: {note}" in captured.err
    assert "whole.webm is truncated" not in captured.err and f"{cut} (truncated: {note})" in captured.out
    assert json.loads(out_json.read_text()) == results and results[1]["top5"][0]["class_id"] == 1
