#!/usr/bin/env bash
# End-to-end tests of `dsv4 serve` (tests/server): Node's built-in test runner drives the server through the
# official OpenAI and Anthropic SDKs and raw HTTP. Each test file starts its own servers on loopback
# (--port 0) and stops them.
#   scripts/test_server.sh [DSV4_BINARY] [TEST_FILE...]
# DSV4_BINARY defaults to build/test/tools/dsv4; test files default to all of tests/server/*.test.mjs.
# The SDKs are installed from tests/server/package-lock.json with `npm ci` when node_modules is missing or
# older than the lockfile. Server logs go to $DSV4_TEST_LOG_DIR (default: a fresh temporary folder).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/build/test/tools/dsv4}
shift || true
[[ $bin == /* ]] || bin=$PWD/$bin
if [[ ! -x $bin ]]; then
  echo "test_server.sh: no dsv4 binary at $bin (build it: cmake --build build/test --target dsv4_cli)" >&2
  exit 2
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "test_server.sh: node and npm are needed (Node 20 or later)" >&2
  exit 2
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if ((node_major < 20)); then
  echo "test_server.sh: Node $(node --version) is too old (20 or later)" >&2
  exit 2
fi

dir=$root/tests/server
stamp=$dir/node_modules/.package-lock.json  # written by npm ci / npm install
if [[ ! -d $dir/node_modules || ! -f $stamp || $dir/package-lock.json -nt $stamp ]]; then
  echo "== npm ci (tests/server) =="
  npm ci --no-audit --no-fund --prefix "$dir"
  touch "$stamp"
fi

if (($# > 0)); then
  files=("$@")
else
  files=("$dir"/*.test.mjs)
fi
export DSV4_BIN=$bin
export DSV4_TEST_LOG_DIR=${DSV4_TEST_LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/dsv4-serve-test.XXXXXX")}
echo "== dsv4 serve end-to-end tests ($bin; server logs in $DSV4_TEST_LOG_DIR) =="
start=$SECONDS
status=0
node --test --test-concurrency=1 --test-reporter=spec "${files[@]}" || status=$?
echo "dsv4 serve tests took $((SECONDS - start)) s"
exit "$status"
