#!/usr/bin/env bash
# Installs the Debian packages dsv4 needs to build and test, if any is missing. Idempotent; needs root
# (or sudo) only when something has to be installed.
set -euo pipefail

packages=(
  cmake ninja-build g++ pkg-config          # build
  libfmt-dev nlohmann-json3-dev libpcre2-dev # library dependencies
  libcli11-dev                               # the dsv4 tool
  libcpp-httplib-dev                         # dsv4 serve
  catch2                                     # tests
  clang libclang-rt-14-dev                   # sanitizer build and libFuzzer targets
  binutils                                   # nm, for the exported-symbol check
  pybind11-dev python3-dev                   # Python bindings
  python3-venv python3-pip                   # `pip install .` into a virtual environment
  python3-numpy python3-pytest               # the bindings' arrays and their tests
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
echo "dsv4 setup: installing ${missing[*]}"
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then
  sudo_cmd=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
