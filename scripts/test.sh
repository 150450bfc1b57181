#!/usr/bin/env bash
# Installs the runtime and test requirements into the active Python, then runs the test suite (CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt -r requirements-dev.txt
# Two pytest workers (TEST_WORKERS), one thread each: most tests are small or wait on subprocesses, so one process
# leaves a core idle. Tests that compare runs do so inside one worker, with the same thread count.
TEST_WORKERS="${TEST_WORKERS:-2}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# Idle OpenMP threads spin by default; with several test processes on few cores that slows every op by orders of magnitude.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
python -m pytest tests -n "${TEST_WORKERS}" --dist worksteal "$@"
