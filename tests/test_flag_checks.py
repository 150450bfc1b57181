"""Flags checked before any work: VideoMAE's compatibility flags, impossible values and combinations (one line
naming the flag and what it accepts), and the per-dataset defaults."""
import re

import pytest
import torch

import run_class_finetuning as run

from runs import base_argv


def test_compatibility_flags_take_only_their_default(data_dir, tmp_path, capsys):
    on = ["--pin_mem", "--auto_resume", "--save_ckpt", "--use_mean_pooling"]  # VideoMAE's switches: on here anyway
    assert vars(run.parse_args(base_argv(data_dir, tmp_path, *on))) == vars(run.parse_args(base_argv(data_dir,
                                                                                                tmp_path)))
    off = run.parse_args(base_argv(data_dir, tmp_path, "--no_pin_mem", "--no_auto_resume", "--no_save_ckpt"))
    assert (off.pin_mem, off.auto_resume, off.save_ckpt) == (False, False, False)
    args = run.parse_args(base_argv(data_dir, tmp_path, "--data_set", "SSV2", "--num_segments", "1",
                                    "--sampling_rate", "4", "--color_jitter", "0.4"))
    assert (args.data_set, args.num_segments, args.sampling_rate, args.color_jitter) == ("SSV2", 1, 4, 0.4)
    with pytest.raises(SystemExit):
        run.parse_args(base_argv(data_dir, tmp_path, "--imagenet_default_mean_and_std"))
    assert "unrecognized arguments: --imagenet_default_mean_and_std" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--enable_deepspeed"], "--enable_deepspeed is not supported .*native mixed precision"),
    (["--crop_pct", "0.9"], "--crop_pct is not supported .*image-only"),
    (["--resplit"], "--resplit is not supported .*image-only"),
    (["--num_segments", "2"], "--num_segments 2: only 1 is supported"),
    (["--sampling_rate", "2"], "--sampling_rate 2 does nothing for --data_set SSV2, which takes one frame in each of "
                               "--num_frames segments"),
    (["--data_set", "Kinetics-400", "--sampling_rate", "0"], "--sampling_rate 0: takes an integer >= 1"),
    (["--data_set", "UCF101", "--data_split", "4"], "--data_split 4: UCF101 has the official splits 1, 2 and 3"),
    (["--data_set", "Kinetics-400", "--data_split", "2"], r"--data_split 2: --data_set Kinetics-400 has one split "
                                                          r"\(train.csv, val.csv, test.csv\); splits are for UCF101"),
    (["--data_split", "3"], "--data_split 3: --data_set SSV2 has one split"),
    (["--color_jitter", "0.2"], "--color_jitter 0.2: only 0.4 is supported .*unused for video"),
    (["--use_cls"], "--use_cls is not supported .*no CLS token"),
    (["--opt_betas", "0.9"], "two numbers"),
    (["--cutmix_minmax", "0.3"], "two numbers"),
    (["--weight_decay", "0", "--weight_decay_end", "0.05"], r"--weight_decay_end 0.05 with --weight_decay 0 decays "
                                                            r"nothing"),
    (["--device", "cuda"], "no CUDA device"),
])
def test_flag_fails_clearly(data_dir, tmp_path, extra, message):
    if extra == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit, match=message):
        run.parse_args(base_argv(data_dir, tmp_path, *extra))


# Impossible values: each is refused by parse_args (before any data or model is built) in one line that names the flag
# and what it accepts.
BAD_VALUES = [
    (["--save_ckpt_freq", "0"], r"--save_ckpt_freq 0: takes an integer >= 1"),
    (["--update_freq", "0"], r"--update_freq 0: takes an integer >= 1"),
    (["--test_num_crop", "0"], r"--test_num_crop 0: takes an integer >= 1"),
    (["--test_num_segment", "0"], r"--test_num_segment 0: takes an integer >= 1"),
    (["--batch_size", "0"], r"--batch_size 0: takes an integer >= 1"),
    (["--num_sample", "0"], r"--num_sample 0: takes an integer >= 1"),
    (["--epochs", "0"], r"--epochs 0: takes an integer >= 1"),
    (["--nb_classes", "0"], r"--nb_classes 0: takes an integer >= 1"),
    (["--print_freq", "0"], r"--print_freq 0: takes an integer >= 1"),
    (["--num_workers", "-1"], r"--num_workers -1: takes an integer >= 0"),
    (["--max_bad_videos", "-2"], r"--max_bad_videos -2: takes an integer >= 0"),
    (["--keep_last", "-1"], r"--keep_last -1: takes an integer >= 0"),
    (["--warmup_steps", "-5"], r"--warmup_steps -5: takes an integer >= 0, or -1 for --warmup_epochs"),
    (["--num_frames", "7"], r"--num_frames 7: takes a multiple of --tubelet_size 2"),
    (["--tubelet_size", "0"], r"--tubelet_size 0: takes an integer >= 1"),
    (["--input_size", "40", "--short_side_size", "40"], r"--input_size 40: takes a multiple of "
                                                        r"vit_llama_tiny_patch16's patch size 16"),
    (["--short_side_size", "16"], r"--short_side_size 16: takes a size >= --input_size 32"),
    (["--reprob", "1.5"], r"--reprob 1.5: takes a probability/fraction in \[0, 1\]"),
    (["--mixup_prob", "-0.1"], r"--mixup_prob -0.1: takes a probability/fraction in \[0, 1\]"),
    (["--mixup_switch_prob", "2"], r"--mixup_switch_prob 2.0: takes a probability"),
    (["--smoothing", "1.1"], r"--smoothing 1.1: takes a probability"),
    (["--drop_path", "-0.1"], r"--drop_path -0.1: takes a probability"),
    (["--model_ema_decay", "1.5"], r"--model_ema_decay 1.5: takes a probability"),
    (["--layer_decay", "2"], r"--layer_decay 2.0: takes a probability/fraction"),
    (["--lr", "-1"], r"--lr -1.0: takes a number >= 0"),
    (["--mixup", "-0.5"], r"--mixup -0.5: takes a number >= 0"),
    (["--clip_grad", "0"], r"--clip_grad 0.0: takes a number > 0 \(leave --clip_grad out to clip nothing\)"),
    (["--opt_eps", "0"], r"--opt_eps 0.0: takes a number > 0"),
    (["--dist_timeout", "0"], r"--dist_timeout 0.0: takes a number > 0 \(minutes\)"),
    (["--cutmix_minmax", "0.8", "0.2"], r"--cutmix_minmax 0.8 0.2: takes MIN MAX with 0 < MIN <= MAX <= 1"),
    (["--batch_size", "3", "--num_sample", "1"], r"--batch_size 3 x --num_sample 1: mixup/cutmix takes an even "
                                                 r"number of clips per batch \(or pass --mixup 0 --cutmix 0\)"),
    (["--model", "vit_gigantic"], r"--model: unknown model 'vit_gigantic'; known: vit_base_patch16_224"),
    (["--data_path", "{tmp}/none"], r"--data_path .*/none: takes the folder of train.csv/val.csv/test.csv, but no "
                                    r"such folder"),
    (["--eval_data_path", "{tmp}/none"], r"--eval_data_path .*/none: takes the folder of val.csv/test.csv"),
    (["--data_root", "{tmp}/none"], r"--data_root .*/none: takes the folder relative video paths start from"),
    (["--finetune", "{tmp}/none.pth"], r"--finetune .*/none.pth: takes the weights to fine-tune from, but no such "
                                       r"file"),
    (["--resume", "{tmp}/none.pth"], r"--resume .*/none.pth: takes the checkpoint to resume, but no such file"),
    (["--labels", "{tmp}/none.json"], r"--labels .*/none.json: takes the labels json, but no such file"),
    (["--llama_path", "{tmp}/none"], r"--llama_path .*/none: takes the LLM folder, but no such folder"),
    (["--output_dir", "{tmp}/file"], r"--output_dir .*/file: takes a folder, but it is a file"),
    (["--eval", "--finetune", "{tmp}/w.pth"], r"--eval with --finetune .*/w.pth: --finetune loads weights to train "
                                              r"from .*pass it as --resume .*/w.pth"),
]


@pytest.mark.parametrize("extra, message", BAD_VALUES, ids=[" ".join(e) for e, _ in BAD_VALUES])
def test_impossible_value_is_refused_before_any_work(data_dir, tmp_path, extra, message):
    (tmp_path / "file").write_text("")
    (tmp_path / "w.pth").write_bytes(b"")
    argv = base_argv(data_dir, tmp_path / "out", *[e.format(tmp=tmp_path) for e in extra])
    with pytest.raises(SystemExit) as e:
        run.parse_args(argv)
    assert re.fullmatch(rf"error: {message}.*", str(e.value)) and "\n" not in str(e.value), str(e.value)
    run.parse_args(base_argv(data_dir, tmp_path / "out"))  # the same command without the bad value is accepted


def test_eval_reads_only_the_eval_data_path(data_dir, tmp_path):
    args = run.parse_args(base_argv(data_dir, tmp_path, "--eval", "--data_path", str(tmp_path / "none"),
                                    "--eval_data_path", data_dir))
    assert args.eval_data_path == data_dir


@pytest.mark.parametrize("data_set, nb_classes, test_num_segment, labels", [
    ("SSV2", 174, 2, "something-something-v2-labels.json"), ("Kinetics-400", 400, 5, "kinetics400-labels.json"),
    ("UCF101", 101, 5, "ucf101-labels.json"), ("HMDB51", 51, 5, "hmdb51-labels.json")])
def test_dataset_defaults(tmp_path, data_set, nb_classes, test_num_segment, labels):
    """--nb_classes, --test_num_segment and --labels follow --data_set; the labels json only when it is there."""
    argv = ["--data_set", data_set, "--data_path", str(tmp_path), "--device", "cpu"]
    args = run.parse_args(argv)
    assert (args.nb_classes, args.test_num_segment, args.labels) == (nb_classes, test_num_segment, None)
    (tmp_path / labels).write_text("{}")
    assert run.parse_args(argv).labels == str(tmp_path / labels)
    (tmp_path / "x.json").write_text("{}")
    given = run.parse_args([*argv, "--nb_classes", "7", "--test_num_segment", "1", "--labels", str(tmp_path / "x.json")])
    assert (given.nb_classes, given.test_num_segment, given.labels) == (7, 1, str(tmp_path / "x.json"))
