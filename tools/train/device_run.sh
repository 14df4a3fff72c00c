#!/usr/bin/env bash
# One device call: tokenizer, training, export, PyTorch parity side. Run from the repository root on the GPU
# machine with build/train-data (from make_data.py) carried; results land in $OUT (see train.py).
set -euo pipefail
export PYTHONUNBUFFERED=1
minutes=${1:-5.5}
python3 -c "import torch, tokenizers; print('torch', torch.__version__, 'tokenizers', tokenizers.__version__, torch.cuda.get_device_name())"
python3 tools/train/train_tokenizer.py build/train-data/train.jsonl tests/data/tokenizer/tokenizer.json 4096 /tmp/tokenizer.json
python3 tools/train/train.py --data build/train-data --tokenizer /tmp/tokenizer.json --out "$OUT" --minutes "$minutes" 2>&1 | tee "$OUT/log.txt"
