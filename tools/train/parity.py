"""The PyTorch side of the embedded model's parity checks: what dsv4 must reproduce on the exported checkpoint,
computed from the exported weights with every reference rounding point (v4model.Numerics.reference()).

    python3 tools/train/parity.py MODEL_DIR DATA_DIR OUT_JSON [GREEDY_TOKENS]

DATA_DIR holds heldout.jsonl and prompts.json (make_data.py). Runs on the CPU (torch 1.13, with build/venv/bin/python
for dsv4's tokenizer) or a GPU; the GPU run of train.py writes the same file.
"""
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import checkpoint  # noqa: E402
import v4model  # noqa: E402

SEQ = 1024


class _Dsv4Tokenizer:
    """dsv4's tokenizer behind the part of the `tokenizers` API these scripts use."""

    class Encoding:
        def __init__(self, ids):
            self.ids = ids

    def __init__(self, path):
        import dsv4

        self._tok = dsv4.Tokenizer(str(path))

    def encode(self, text):
        return self.Encoding(list(self._tok.encode(text)))

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def get_vocab_size(self):
        return self._tok.vocab_size

    def decode(self, ids, skip_special_tokens=False):
        assert not skip_special_tokens
        return self._tok.decode(ids)


def load_tokenizer(path):
    """Hugging Face `tokenizers` where installed (the GPU image); else dsv4's own tokenizer, which gives the
    same ids (tests/python/test_embedded_model.py) and lets Debian's python3-torch train on the CPU."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return _Dsv4Tokenizer(path)
    return Tokenizer.from_file(str(path))


def documents(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@torch.no_grad()
def nll(model, ids, num):
    """Summed next-token negative log-likelihood of ids[1:] and its count."""
    logits, _ = model(ids[None], num)
    lp = torch.log_softmax(logits[0, :-1].double(), -1)
    return float(-lp.gather(-1, ids[1:, None]).sum()), ids.numel() - 1


@torch.no_grad()
def greedy(model, prompt, n, num):
    """n greedy tokens after prompt (EOS not special: the comparison runs the full length) and the top-1 /
    top-2 logit margin of each step."""
    ids, margins = list(prompt), []
    device = model.embed.weight.device
    for _ in range(n):
        logits, _ = model(torch.tensor(ids, device=device)[None], num)
        top = torch.topk(logits[0, -1], 2)
        margins.append(float(top.values[0] - top.values[1]))
        ids.append(int(top.indices[0]))
    return ids[len(prompt):], margins


def expectations(model, tok, data_dir, n_greedy):
    """Held-out perplexity over three held-out addresses and the held-out conversations (1024 tokens each),
    and greedy continuations of the prompts in prompts.json."""
    num = v4model.Numerics.reference()
    device = model.embed.weight.device
    docs = documents(data_dir / "heldout.jsonl")
    prose = [d["text"] for d in docs if d["kind"] == "prose"]
    texts = prose[:3] + ["".join(d["text"] for d in docs if d["kind"] == "chat")]
    total, count, sequences = 0.0, 0, []
    for text in texts:
        ids = tok.encode(text).ids[:SEQ]
        a, b = nll(model, torch.tensor(ids, device=device), num)
        sequences.append({"tokens": ids, "nll": a})
        total, count = total + a, count + b
    continuations = []
    for p in json.loads((data_dir / "prompts.json").read_text()):
        ids = tok.encode(p["text"]).ids
        tokens, margins = greedy(model, ids, n_greedy, num)
        continuations.append({"name": p["name"], "text": p["text"], "prompt_tokens": ids, "tokens": tokens,
                              "margins": margins})
    return {"perplexity": math.exp(total / count), "scored_tokens": count, "device": str(device),
            "torch": torch.__version__, "sequences": sequences, "greedy": continuations}


def main(model_dir, data_dir, out_path, n_greedy=64):
    torch.set_grad_enabled(False)
    model, _ = checkpoint.load(Path(model_dir), "cuda" if torch.cuda.is_available() else "cpu")
    model.eval()
    tok = load_tokenizer(Path(model_dir) / "tokenizer.json")
    result = expectations(model, tok, Path(data_dir), int(n_greedy))
    Path(out_path).write_text(json.dumps(result) + "\n")
    print(f"perplexity {result['perplexity']:.4f} over {result['scored_tokens']} tokens")


if __name__ == "__main__":
    main(*sys.argv[1:])
