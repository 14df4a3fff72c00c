#!/usr/bin/env bash
# The main job: set up, build the library and the dsv4 tool, load a checkpoint, print its summary, continue a
# text prompt and answer a chat question, both streamed with their speed.
#   scripts/run.sh [MODEL_DIR] [PROMPT] [N_PREDICT]
# Without MODEL_DIR it uses the embedded model, models/sotu-v4-tiny (models/README.md): a small model of the
# DeepSeek-V4 architecture trained by the project on State of the Union addresses and toy conversations.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
model=${1:-$root/models/sotu-v4-tiny}
prompt=${2:-Mr. Speaker, Members of the Congress, my fellow Americans: Tonight}
n_predict=${3:-64}

"$root/scripts/setup.sh"
cmake -S "$root" -B "$root/build/release" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DDSV4_BUILD_TESTS=OFF -DDSV4_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$root/build/release" --target dsv4_cli
dsv4="$root/build/release/tools/dsv4"

"$dsv4" info "$model"
echo
echo "== continuation (greedy) =="
echo -n "$prompt"
"$dsv4" run --quiet --model "$model" --prompt "$prompt" --n-predict "$n_predict"
echo
echo "== chat (sampled, temperature 0.7, seed 1) =="
question="Who delivered the State of the Union address in 1962?"
echo "user: $question"
echo -n "assistant: "
"$dsv4" run --quiet --model "$model" --chat --prompt "$question" --n-predict "$n_predict" --temp 0.7 --seed 1
