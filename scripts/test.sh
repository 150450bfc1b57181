#!/usr/bin/env bash
# Installs the runtime and test requirements into the active Python, then runs the test suite (CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt -r requirements-dev.txt
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
# Idle OpenMP threads spin by default; with several test processes on few cores that slows every op by orders of magnitude.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
python -m pytest tests "$@"
