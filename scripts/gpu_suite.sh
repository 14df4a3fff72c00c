#!/usr/bin/env bash
# The GPU suite, run on a machine with a CUDA GPU: the kernel tests (tests/cuda) and eval-golden on every fixture in
# tests/data on the CUDA backend, with the same tolerances as the CPU.
#   scripts/gpu_suite.sh [BIN_DIR]   BIN_DIR holds dsv4 and test_cuda_kernels (default: build/cuda's)
#   scripts/gpu_suite.sh --kit BUILD_DIR KIT_DIR
#                                    copies the two binaries (stripped) and the shared libraries they need, except the
#                                    C library's, into KIT_DIR for a machine that lacks the Debian packages; run the
#                                    suite there with LD_LIBRARY_PATH=KIT_DIR/lib scripts/gpu_suite.sh KIT_DIR
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [[ "${1:-}" == "--kit" ]]; then
    build=$2 kit=$3
    mkdir -p "$kit/lib"
    cp "$build/tools/dsv4" "$build/tests/test_cuda_kernels" "$kit/"
    strip -s "$kit/dsv4" "$kit/test_cuda_kernels"
    ldd "$kit/dsv4" "$kit/test_cuda_kernels" | awk '/=>/ {print $3}' | sort -u | grep -v -E 'lib(c|m)\.so' |
        while read -r lib; do cp -L "$lib" "$kit/lib/"; done
    exit 0
fi
bin=${1:-$root/build/cuda}
dsv4=$bin/dsv4 tests=$bin/test_cuda_kernels
[[ -x $dsv4 ]] || dsv4=$bin/tools/dsv4
[[ -x $tests ]] || tests=$bin/tests/test_cuda_kernels
"$dsv4" devices
"$tests"
status=0
for fixture in "$root"/tests/data/*/golden.json; do
    dir=$(dirname "$fixture")
    echo "== eval-golden $(basename "$dir") on cuda:0 =="
    "$dsv4" eval-golden "$dir" --device cuda:0 || status=1
done
exit $status
