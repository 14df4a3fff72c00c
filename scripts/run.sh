#!/usr/bin/env bash
# The main job: set up, build the library and the dsv4 tool, load a checkpoint (default: the tiny-flash
# fixture model shipped in tests/data), print its summary, and generate greedily from token ids.
#   scripts/run.sh [MODEL_DIR] [PROMPT_IDS] [N_PREDICT]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
model=${1:-$root/tests/data/tiny-flash/model}
prompt=${2:-0,194,916,623,292}
n_predict=${3:-16}

"$root/scripts/setup.sh"
cmake -S "$root" -B "$root/build/release" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DDSV4_BUILD_TESTS=OFF -DDSV4_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$root/build/release" --target dsv4_cli

"$root/build/release/tools/dsv4" info "$model"
echo
"$root/build/release/tools/dsv4" run --model "$model" --prompt-ids "$prompt" --n-predict "$n_predict"
