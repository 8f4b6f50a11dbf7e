#!/usr/bin/env bash
# The README's local loop, exactly as the README writes it: build -> publish -> train -> eval -> sweep, every role on
# the embedded default (CPU, no network). Run from a checkout after `make install`: `bash runs/local.sh`.
# tests/test_readme_commands.py checks that these lines are the README's and runs this script (in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1

.venv/bin/nanoflux build --config configs/local.yaml --curation.require_valid false \
    --push_to_hub local/nanoflux-medical --hub_dir outputs/hub          # publish v1 to the local repository folder
.venv/bin/nanoflux train --config configs/train/local.yaml              # LoRA on v1, CPU, about a minute
.venv/bin/nanoflux eval --config configs/eval/local.yaml                # base vs base + adapter on benchmark fixtures
.venv/bin/nanoflux sweep --config configs/sweeps/local.yaml             # ablation grid over the build's pool
