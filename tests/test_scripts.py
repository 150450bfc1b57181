"""The training scripts (fake torchrun and nvidia-smi): the published step on any GPU count, SLURM requeue."""
import os
import subprocess

import pytest

from runs import ROOT


SCRIPT_ENV = ("MODEL", "TOTAL_BATCH", "LR", "LAYER_DECAY", "EPOCHS", "MAX_BATCH_PER_GPU", "PUBLISHED_BATCH_PER_GPU",
              "COMPILE", "AUGMENT_ON", "NPROC", "NNODES", "DATA_ROOT", "FINETUNE", "PET_SIGNALS_TO_HANDLE", "DATA_SET",
              "NB_CLASSES", "SAMPLING_RATE", "TEST_NUM_SEGMENT", "DATA_SPLIT", "DATA_PATH")


def run_script(tmp_path, script, env, gpu_mib=None):
    """Run a training script with a fake torchrun (prints its argv) and a fake nvidia-smi (gpu_mib per GPU, or
    absent); returns (returncode, torchrun argv, stdout, stderr)."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "torchrun").write_text('#!/bin/sh\necho "SIGNALS $PET_SIGNALS_TO_HANDLE"\n'
                                   'for a in "$@"; do echo "ARG $a"; done\n')
    smi = ('#!/bin/sh\ncase "$*" in *--query-gpu=memory.total*) for i in $(seq ${NPROC}); do echo %s; done ;; '
           '*) for i in $(seq ${NPROC}); do echo "GPU $i"; done ;; esac\n' % gpu_mib) if gpu_mib else "#!/bin/sh\nexit 1\n"
    (fake / "nvidia-smi").write_text(smi)
    for f in ("torchrun", "nvidia-smi"):
        (fake / f).chmod(0o755)
    (tmp_path / "llama").mkdir(exist_ok=True)
    own = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}  # the caller's settings must not leak in
    env = {**own, "PATH": f"{fake}:{os.environ['PATH']}", "OUTPUT_DIR": str(tmp_path / "o"),
           "LLAMA_PATH": str(tmp_path / "llama"), **env}
    res = subprocess.run(["bash", os.path.join(ROOT, "scripts", script), "--extra_flag"], env=env,
                         capture_output=True, text=True, timeout=60)
    argv = [x[4:] for x in res.stdout.splitlines() if x.startswith("ARG ")]
    return res.returncode, argv, res.stdout, res.stderr


H100_MIB, GPU24_MIB = 81559, 24576  # what nvidia-smi reports for an 80 GB H100 and a 24 GiB card


# Per recipe: videos per optimizer step, --data_set, --nb_classes, --sampling_rate (None: not passed),
# --test_num_segment, --data_split.
RECIPES = {"ssv2_vits": (24, "SSV2", "174", None, "2", None), "ssv2_vitb": (12, "SSV2", "174", None, "2", None),
           "k400_vits": (384, "Kinetics-400", "400", "4", "5", None),
           "k400_vitb": (384, "Kinetics-400", "400", "4", "5", None),
           "ucf_hmdb_vitb": (128, "UCF101", "101", "4", "5", "1")}


@pytest.mark.parametrize("script, nproc, gpu_mib, env, expect", [
    ("ssv2_vits.sh", 1, H100_MIB, {}, ("vit_small_patch16_224", "24", "1", "1e-3", "0.7", "40")),
    ("ssv2_vits.sh", 1, GPU24_MIB, {}, ("vit_small_patch16_224", "8", "3", "1e-3", "0.7", "40")),
    ("ssv2_vits.sh", 1, H100_MIB, {"MAX_BATCH_PER_GPU": "6"}, ("vit_small_patch16_224", "6", "4", "1e-3", "0.7", "40")),
    ("ssv2_vits.sh", 1, None, {}, ("vit_small_patch16_224", "6", "4", "1e-3", "0.7", "40")),
    ("ssv2_vits.sh", 4, GPU24_MIB, {}, ("vit_small_patch16_224", "6", "1", "1e-3", "0.7", "40")),
    ("ssv2_vits_llama.sh", 8, H100_MIB, {}, ("vit_llama_small_patch16_224", "3", "1", "1e-3", "0.7", "40")),
    ("ssv2_vitb.sh", 2, None, {}, ("vit_base_patch16_224", "3", "2", "5e-4", "0.75", "30")),
    ("ssv2_vitb_llama.sh", 1, H100_MIB, {}, ("vit_llama_base_patch16_224", "12", "1", "5e-4", "0.75", "30")),
    ("ssv2_vitb_llama.sh", 1, 16384, {}, ("vit_llama_base_patch16_224", "6", "2", "5e-4", "0.75", "30")),
    ("ssv2_vitb_llama.sh", 1, H100_MIB, {"MODEL": "vit_large_patch16_224"},
     ("vit_large_patch16_224", "3", "4", "5e-4", "0.75", "30")),
    # VideoMAE's Kinetics-400 split: ViT-S 12 per GPU on 32 GPUs, ViT-B 6 per GPU on 64 GPUs (384 videos per step)
    ("k400_vits.sh", 32, None, {}, ("vit_small_patch16_224", "12", "1", "5e-4", "0.75", "150")),
    ("k400_vits.sh", 1, H100_MIB, {}, ("vit_small_patch16_224", "32", "12", "5e-4", "0.75", "150")),
    ("k400_vitb.sh", 64, None, {}, ("vit_base_patch16_224", "6", "1", "5e-4", "0.75", "75")),
    ("k400_vitb.sh", 8, H100_MIB, {}, ("vit_base_patch16_224", "24", "2", "5e-4", "0.75", "75")),
    ("k400_vits_llama.sh", 8, H100_MIB, {}, ("vit_llama_small_patch16_224", "24", "2", "5e-4", "0.75", "150")),
    ("k400_vitb_llama.sh", 4, GPU24_MIB, {}, ("vit_llama_base_patch16_224", "8", "12", "5e-4", "0.75", "75")),
    # VideoMAE's UCF101 split: 16 per GPU on 8 GPUs
    ("ucf_hmdb_vitb.sh", 8, None, {}, ("vit_base_patch16_224", "16", "1", "5e-4", "0.7", "100")),
    ("ucf_hmdb_vitb.sh", 1, H100_MIB, {}, ("vit_base_patch16_224", "32", "4", "5e-4", "0.7", "100")),
])
def test_training_scripts_fit_the_gpu_and_keep_the_published_step(tmp_path, script, nproc, gpu_mib, env, expect):
    """The per-GPU batch is the largest divisor of the GPU's share that fits its memory (1.6 GiB per video, 25% kept
    free), MAX_BATCH_PER_GPU overrides it, no nvidia-smi or an unmeasured model gives the published split; always
    batch x update_freq x GPUs = the published videos per step, the published recipe and the dataset's flags."""
    code, argv, out, err = run_script(tmp_path, script, {"NPROC": str(nproc), **env}, gpu_mib)
    assert code == 0, err
    value = lambda flag: argv[argv.index(flag) + 1] if flag in argv else None  # noqa: E731
    got = tuple(value(f) for f in ("--model", "--batch_size", "--update_freq", "--lr", "--layer_decay", "--epochs"))
    assert got == expect
    total, *dataset = RECIPES[script.removesuffix(".sh").removesuffix("_llama")]
    assert int(got[1]) * int(got[2]) * nproc == total
    flags = ("--data_set", "--nb_classes", "--sampling_rate", "--test_num_segment", "--data_split")
    assert [value(f) for f in flags] == dataset
    assert value("--test_num_crop") == "3" and "--extra_flag" in argv and value("--num_frames") == "16"
    assert ("--llama_path" in argv) == ("llama" in script) and "--compile" in argv
    assert value("--augment_on") == "device"  # workers only decode on GPU nodes


def test_ucf_hmdb_script_dataset_split_and_recipe(tmp_path):
    """HMDB51 split 2 takes 51 classes, its lists and checkpoint names; the UCF101 recipe's extra flags come before
    the user's, so a user's flag wins; an unknown dataset is refused."""
    code, argv, _, err = run_script(tmp_path, "ucf_hmdb_vitb.sh", {"NPROC": "8", "DATA_SET": "HMDB51",
                                                                   "DATA_SPLIT": "2"}, None)
    assert code == 0, err
    value = lambda flag: argv[argv.index(flag) + 1]  # noqa: E731
    assert (value("--data_set"), value("--nb_classes"), value("--data_split")) == ("HMDB51", "51", "2")
    assert (value("--data_path"), value("--finetune")) == ("data/hmdb51", "checkpoints/videomae_hmdb51_vitb.pth")
    assert [value(f) for f in ("--warmup_lr", "--min_lr", "--drop_path", "--fc_drop_rate")] == \
        ["1e-8", "1e-5", "0.2", "0.5"]
    assert argv.index("--fc_drop_rate") < argv.index("--extra_flag")
    code, _, _, err = run_script(tmp_path, "ucf_hmdb_vitb.sh", {"NPROC": "8", "DATA_SET": "Kinetics-400"}, None)
    assert code == 1 and "DATA_SET=Kinetics-400: expected UCF101 or HMDB51" in err
    code, _, _, err = run_script(tmp_path, "finetune.sh", {"NPROC": "1"}, None)
    assert code == 1 and "DATA_SET is not set: run a recipe script (scripts/ssv2_vits.sh" in err


def test_script_compile_off_and_bad_inputs(tmp_path):
    code, argv, out, _ = run_script(tmp_path, "ssv2_vits.sh", {"NPROC": "1", "COMPILE": "0", "AUGMENT_ON": "workers"},
                                    H100_MIB)
    assert code == 0 and "--compile" not in argv and argv[argv.index("--batch_size") + 1] == "24"
    assert "SIGNALS SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1\n" in out  # torchrun passes SIGUSR1 on to the ranks
    assert argv[argv.index("--augment_on") + 1] == "workers"
    code, _, _, err = run_script(tmp_path, "ssv2_vits.sh", {"NPROC": "5"}, H100_MIB)
    assert code == 1 and "cannot be split over 5 GPUs" in err
    code, _, _, err = run_script(tmp_path, "ssv2_vits.sh", {"NPROC": "1", "MAX_BATCH_PER_GPU": "0"}, H100_MIB)
    assert code == 1 and "MAX_BATCH_PER_GPU=0: expected a whole number of videos >= 1" in err


@pytest.mark.parametrize("srun_status, requeued", [(75, True), (0, False), (1, False)])
def test_slurm_example_requeues_when_the_run_stopped_on_its_signal(tmp_path, srun_status, requeued):
    """--signal=USR1@120 with --requeue; the run gets --exit_signal USR1, and its exit status 75 (stopped after
    saving) makes the script requeue the job, while success or a crash does not."""
    script = open(os.path.join(ROOT, "scripts", "slurm_example.sh")).read()
    assert "#SBATCH --signal=USR1@120\n" in script and "#SBATCH --requeue\n" in script
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text(f'#!/bin/sh\nfor a in "$@"; do echo "ARG $a"; done\nexit {srun_status}\n')
    (fake / "scontrol").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/scontrol.txt\n')
    for f in ("srun", "scontrol"):
        (fake / f).chmod(0o755)
    own = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}
    res = subprocess.run(["bash", os.path.join(ROOT, "scripts", "slurm_example.sh")], capture_output=True, text=True,
                         env={**own, "PATH": f"{fake}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": ROOT,
                              "SLURM_JOB_ID": "4711"}, timeout=60)
    argv = [x[4:] for x in res.stdout.splitlines() if x.startswith("ARG ")]
    assert res.returncode == srun_status and argv[argv.index("--exit_signal") + 1] == "USR1"
    assert ((tmp_path / "scontrol.txt").read_text() == "requeue 4711\n") if requeued else \
        not (tmp_path / "scontrol.txt").exists()


@pytest.mark.parametrize("compile_env, expect", [({}, True), ({"COMPILE": "0"}, False)])
def test_slurm_example_passes_compile_unless_turned_off(tmp_path, compile_env, expect):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/bin/sh\nfor a in "$@"; do echo "ARG $a"; done\n')
    (fake / "srun").chmod(0o755)
    own = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}
    res = subprocess.run(["bash", os.path.join(ROOT, "scripts", "slurm_example.sh")], capture_output=True, text=True,
                         env={**own, "PATH": f"{fake}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": ROOT,
                              **compile_env}, timeout=60)
    argv = [x[4:] for x in res.stdout.splitlines() if x.startswith("ARG ")]
    assert res.returncode == 0 and argv[:2] == ["python", "run_class_finetuning.py"], res.stderr
    assert ("--compile" in argv) == expect and argv[argv.index("--batch_size") + 1] == "3"
