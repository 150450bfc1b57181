"""Several run_class_finetuning.main() calls in one torchrun launch (each launch costs ~10 s of imports on the test
machine), for tests/test_eval_ddp.py:

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_driver.py PLAN.json

PLAN.json: a list of {"argv": [...], "port": free TCP port for this call's rendezvous, "signal_rank": rank or null,
"signal_step": k, "exit": expected exit status (0: returns normally)}. With signal_rank, that rank sends itself
SIGTERM inside its k-th optimizer step (the other rank gets no signal). Each call gets its own rendezvous (rank 0
hosts a new store on "port"), since a finished call has destroyed its process group.
"""
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import engine_for_finetuning as engine  # noqa: E402
import run_class_finetuning as run  # noqa: E402


def call(spec: dict) -> int:
    os.environ.update(TORCHELASTIC_USE_AGENT_STORE="False", MASTER_PORT=str(spec["port"]))
    real, steps = engine.optimizer_step, []

    def step(*a, **k):
        steps.append(1)
        if len(steps) == spec.get("signal_step") and int(os.environ["RANK"]) == spec.get("signal_rank"):
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)
    engine.optimizer_step = step
    try:
        run.main(run.parse_args(spec["argv"]))
        return 0
    except SystemExit as e:
        return e.code
    finally:
        engine.optimizer_step = real


if __name__ == "__main__":
    for i, spec in enumerate(json.load(open(sys.argv[1]))):
        code = call(spec)
        if code != spec.get("exit", 0):
            sys.exit(f"ddp_driver: call {i} on rank {os.environ['RANK']} exited {code!r}, expected "
                     f"{spec.get('exit', 0)}")
