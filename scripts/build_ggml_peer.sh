#!/usr/bin/env bash
# Builds the ggml peer benchmark (bench/ggml_peer.cpp): ggml's CPU backend from a ggml source checkout (github.com/
# ggml-org/ggml; ggml is not a dependency of dsv4 and no Debian 12 package has it), installed under build/ggml,
# then the bench tree configured against it. Usage: scripts/build_ggml_peer.sh GGML_SOURCE_DIR
set -euo pipefail
src=${1:?usage: scripts/build_ggml_peer.sh GGML_SOURCE_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
cmake -S "$src" -B "$root/build/ggml-build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
      -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF
cmake --build "$root/build/ggml-build"
cmake --install "$root/build/ggml-build" --prefix "$root/build/ggml"
cmake -S "$root" -B "$root/build/bench" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSV4_BUILD_BENCH=ON \
      -DDSV4_BUILD_TESTS=OFF -DDSV4_GGML_DIR="$root/build/ggml"
cmake --build "$root/build/bench" --target ggml_peer
echo "run: build/bench/bench/ggml_peer 1024 3"
