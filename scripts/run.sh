#!/usr/bin/env bash
# The main job: set up, build the library and the dsv4 tool, load a checkpoint, print its summary, and generate
# text from a chat prompt, streamed.
#   scripts/run.sh [MODEL_DIR] [PROMPT] [N_PREDICT]
# Without MODEL_DIR it uses the tiny-flash fixture model (tests/data, random weights: the text is meaningless)
# with a byte-level tokenizer that fits its 2048-token vocabulary. A real checkpoint brings its tokenizer.json.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
model=${1:-$root/tests/data/tiny-flash/model}
prompt=${2:-Hello! What can you do?}
n_predict=${3:-32}
tokenizer_args=()
if [[ ! -f "$model/tokenizer.json" ]]; then
  tokenizer_args=(--tokenizer "$root/tests/data/tiny-tokenizer/tokenizer.json")
fi

"$root/scripts/setup.sh"
cmake -S "$root" -B "$root/build/release" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DDSV4_BUILD_TESTS=OFF -DDSV4_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$root/build/release" --target dsv4_cli

"$root/build/release/tools/dsv4" info "$model"
echo
echo "user: $prompt"
echo -n "assistant: "
"$root/build/release/tools/dsv4" run --quiet --model "$model" "${tokenizer_args[@]}" --chat --prompt "$prompt" \
      --n-predict "$n_predict" --temp 0.7 --seed 1
