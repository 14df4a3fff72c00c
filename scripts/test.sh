#!/usr/bin/env bash
# The whole test suite: set up, then
#   1. a release build (gcc) with every test: unit, golden (eval-golden on every fixture in tests/data, on
#      every CPU kernel path), the examples, the exported-symbol list, the find_package consumer and the
#      Python module as plain CMake builds it;
#   2. dsv4 serve end to end: the official OpenAI and Anthropic SDKs (npm, tests/server) against the server
#      the release build made (scripts/test_server.sh);
#   3. the Python bindings: `pip install .` into a virtual environment (build/venv, offline, Debian's
#      python3 with its numpy and pytest), then the pytest suite in tests/python against the installed package;
#   4. a sanitizer build (clang, ASan + UBSan) running the same suite plus the libFuzzer targets for a
#      bounded time (DSV4_FUZZ_SECONDS, default 20 s each).
# Set DSV4_SKIP_SANITIZERS=1 to run only the first part.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
jobs=$(nproc)
start=$SECONDS

"$root/scripts/setup.sh"

echo "== release build =="
cmake -S "$root" -B "$root/build/test" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSV4_BUILD_TESTS=ON -DDSV4_WERROR=ON \
      -DDSV4_BUILD_PYTHON=ON -DPython_EXECUTABLE=/usr/bin/python3 >/dev/null
cmake --build "$root/build/test" -j "$jobs"
ctest --test-dir "$root/build/test" --output-on-failure -j "$jobs"

"$root/scripts/test_server.sh" "$root/build/test/tools/dsv4"

echo "== CUDA build (sm_90a): the library with its CUDA backend, the tool and the kernel tests =="
# CI has no GPU: this shows that the CUDA code compiles and that its tests skip saying so; scripts/gpu_suite.sh runs
# them, and eval-golden on CUDA, where a GPU is.
cmake -S "$root" -B "$root/build/cuda" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSV4_BUILD_TESTS=ON -DDSV4_WERROR=ON \
      -DDSV4_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a -DDSV4_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$root/build/cuda" -j "$jobs" --target dsv4_cli test_cuda_kernels
"$root/build/cuda/tests/test_cuda_kernels"
if "$root/build/cuda/tools/dsv4" devices | grep -q '^cuda:'; then
    "$root/scripts/gpu_suite.sh" "$root/build/cuda"
else
    echo "no CUDA device here: the GPU suite (scripts/gpu_suite.sh) did not run"
fi

echo "== Python bindings: pip install . + pytest =="
venv="$root/build/venv"
[[ -x "$venv/bin/python" ]] || /usr/bin/python3 -m venv --system-site-packages "$venv"
pip_start=$SECONDS
(cd "$root" && "$venv/bin/python" -m pip install --quiet --no-input --disable-pip-version-check .)
echo "pip install . took $((SECONDS - pip_start)) s"
# From outside the tree, so `import dsv4` finds the installed package, not bindings/python.
(cd "$root/tests/python" && "$venv/bin/python" -m pytest -q -p no:cacheprovider .)

if [[ "${DSV4_SKIP_SANITIZERS:-0}" != "1" ]]; then
  echo "== ASan + UBSan build (clang) with fuzzing =="
  CC=clang CXX=clang++ cmake -S "$root" -B "$root/build/sanitize" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DDSV4_BUILD_TESTS=ON -DDSV4_SANITIZE_ADDRESS=ON -DDSV4_SANITIZE_UNDEFINED=ON -DDSV4_OPENMP=OFF \
        -DDSV4_FUZZ=ON -DDSV4_FUZZ_SECONDS="${DSV4_FUZZ_SECONDS:-20}" >/dev/null
  cmake --build "$root/build/sanitize" -j "$jobs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    ctest --test-dir "$root/build/sanitize" --output-on-failure -j "$jobs"
fi
echo "dsv4 tests: all passed in $((SECONDS - start)) s"
