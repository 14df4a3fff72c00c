"""Trains the embedded DeepSeek-V4-architecture model, exports it in the official format and records the
PyTorch side of the parity checks (held-out perplexity and greedy continuations on the exported weights).

    python3 tools/train/train.py --data build/train-data --tokenizer TOKENIZER_JSON --out OUT_DIR --minutes 6

Without a GPU (Debian's python3-torch 1.13) it runs on the CPU, slowly: give it the shipped tokenizer and dsv4's
tokenizer stands in for `tokenizers` (run it with build/venv/bin/python, which sees both). A smoke run:
    build/venv/bin/python tools/train/train.py --data build/train-data --tokenizer models/sotu-v4-tiny/tokenizer.json \
        --out /tmp/tiny-run --minutes 2 --batch 2 --eval-seqs 1 --greedy-tokens 4

The schedule runs on wall-clock time (`--minutes`): warm-up, cosine decay, the indexer's dense warm-up in the
first 15% and quantisation-aware training (FP8/FP4 weights and activations as the reference rounds them) in
the last 25%, so a run fits the device's per-command limit whatever the step time turns out to be.
Writes OUT_DIR/model/{config.json, model-0000k-of-0000n.safetensors, model.safetensors.index.json},
tokenizer.json, expected.json (what dsv4 must reproduce) and train_log.json.
"""
import argparse
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import checkpoint  # noqa: E402
import parity  # noqa: E402
import v4model  # noqa: E402

SEQ = 1024


def model_config(vocab_size):
    """HF config.json of the embedded model: V4-Flash's layout (window-only, CSA, HCA layers; hash-routed
    first layers; FP8 + FP4 weights) at a size that ships in ~20 MB."""
    return {
        "architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4", "attention_bias": False,
        "attention_dropout": 0.0, "bos_token_id": 0, "eos_token_id": 1, "expert_dtype": "fp4",
        "hc_eps": 1e-06, "hc_mult": 4, "hc_sinkhorn_iters": 20, "head_dim": 512, "hidden_act": "silu",
        "hidden_size": 256, "index_head_dim": 128, "index_n_heads": 8, "index_topk": 64,
        "initializer_range": 0.02, "max_position_embeddings": 1048576, "moe_intermediate_size": 256,
        "n_routed_experts": 8, "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 4,
        "num_experts_per_tok": 2, "num_hidden_layers": 6, "num_hash_layers": 2, "num_key_value_heads": 1,
        "num_nextn_predict_layers": 0, "o_groups": 2, "o_lora_rank": 128, "q_lora_rank": 128,
        "qk_rope_head_dim": 64,
        "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                "scale_fmt": "ue8m0", "weight_block_size": [128, 128]},
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 16, "original_max_position_embeddings": 65536,
                         "type": "yarn"},
        "rope_theta": 10000, "routed_scaling_factor": 1.5, "scoring_func": "sqrtsoftplus", "sliding_window": 128,
        "swiglu_limit": 10.0, "tie_word_embeddings": False, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
        "use_cache": True, "vocab_size": vocab_size, "compress_rope_theta": 160000,
        "compress_ratios": [0, 0, 4, 128, 4, 128],
    }


def load_streams(path, tok):
    """kind -> one int32 stream of every document's tokens."""
    docs = parity.documents(path)
    out = {}
    for kind in ("prose", "chat"):
        texts = [d["text"] for d in docs if d["kind"] == kind]
        out[kind] = np.concatenate([np.array(e.ids, np.int32) for e in tok.encode_batch(texts)])
    return out, docs


def batch(streams, n, rng, prose_share, device):
    rows = []
    for _ in range(n):
        s = streams["prose" if rng.random() < prose_share else "chat"]
        i = rng.randrange(len(s) - SEQ - 1)
        rows.append(s[i:i + SEQ + 1])
    t = torch.from_numpy(np.stack(rows).astype(np.int64)).to(device)
    return t[:, :-1], t[:, 1:]


def heldout_loss(model, streams, device, num, n_seq=16):
    rng = random.Random(5)
    out = {}
    for kind, s in streams.items():
        total, count = 0.0, 0
        for _ in range(n_seq):
            i = rng.randrange(len(s) - SEQ - 1)
            a, b = parity.nll(model, torch.from_numpy(s[i:i + SEQ].astype(np.int64)).to(device), num)
            total, count = total + a, count + b
        out[kind] = total / count
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=6)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--prose-share", type=float, default=0.6)
    ap.add_argument("--eval-seqs", type=int, default=16, help="held-out windows per kind for the final losses")
    ap.add_argument("--greedy-tokens", type=int, default=64)
    args = ap.parse_args()

    torch.manual_seed(0)
    rng = random.Random(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = parity.load_tokenizer(args.tokenizer)
    train, _ = load_streams(Path(args.data) / "train.jsonl", tok)
    held, _ = load_streams(Path(args.data) / "heldout.jsonl", tok)
    print({k: len(v) for k, v in train.items()}, {k: len(v) for k, v in held.items()}, flush=True)

    hf = model_config(tok.get_vocab_size())
    model = v4model.Transformer(v4model.Config.from_hf(hf)).to(device)
    matrices = [p for n, p in model.named_parameters() if p.dim() == 2]
    others = [p for n, p in model.named_parameters() if p.dim() != 2]
    opt = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    budget = args.minutes * 60
    start = time.time()
    log, step, phase = [], 0, None
    plain, qat = v4model.Numerics(), v4model.Numerics(act_quant=True, cache_quant=True, weight_quant=True)
    while (frac := (time.time() - start) / budget) < 1:
        for layer in model.layers:
            layer.attn.dense_compressed = frac < 0.15
        num = qat if frac >= 0.75 else plain
        if phase != (frac < 0.15, num is qat):
            phase = (frac < 0.15, num is qat)
            print(f"step {step}: dense indexer warm-up {phase[0]}, QAT {phase[1]}", flush=True)
        lr = args.lr * min(1, frac / 0.03) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        x, y = batch(train, args.batch, rng, args.prose_share, device)
        logits, index_loss = model(x, num)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1))
        total = loss + (0.1 * index_loss if index_loss is not None else 0)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():  # auxiliary-loss-free balancing of the score-routed layers
            for layer in model.layers:
                moe = layer.ffn
                if not moe.hash:
                    load = moe.last_load.float()
                    moe.gate.bias += 1e-3 * torch.sign(load.mean() - load)
        if step % 50 == 0:
            entry = {"step": step, "minutes": round((time.time() - start) / 60, 2), "lr": lr,
                     "train_loss": loss.item(), "index_loss": index_loss.item() if index_loss is not None else None}
            if step % 200 == 0:
                model.eval()
                entry["heldout_loss"] = heldout_loss(model, held, device, num, n_seq=4)
            log.append(entry)
            print(json.dumps(entry), flush=True)
        step += 1

    model.eval()
    final = {"steps": step, "tokens_seen": step * args.batch * SEQ, "minutes": (time.time() - start) / 60,
             "train_loss_qat": heldout_loss(model, train, device, qat, args.eval_seqs),
             "heldout_loss_qat": heldout_loss(model, held, device, qat, args.eval_seqs)}
    print(json.dumps(final), flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False  # the parity side computes in true fp32, as the reference
    torch.backends.cudnn.allow_tf32 = False
    checkpoint.export(model, hf, out / "model", shard_bytes=12 << 20)
    shutil.copy(args.tokenizer, out / "tokenizer.json")
    exported, _ = checkpoint.load(out / "model", device)
    exported.eval()
    final["heldout_loss_exported_reference_numerics"] = heldout_loss(exported, held, device, v4model.Numerics.reference(),
                                                                     args.eval_seqs)
    expected = parity.expectations(exported, tok, Path(args.data), args.greedy_tokens)
    (out / "expected.json").write_text(json.dumps(expected) + "\n")
    (out / "train_log.json").write_text(json.dumps({"args": vars(args), "log": log, "final": final}, indent=1) + "\n")
    print(json.dumps(final), "perplexity", expected["perplexity"], flush=True)
    for g in expected["greedy"]:
        print(g["name"], repr(tok.decode(g["tokens"], skip_special_tokens=False)), flush=True)


if __name__ == "__main__":
    main()
