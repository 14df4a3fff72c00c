#!/usr/bin/python3
"""Writes a checkpoint of real V4 layer shapes with random weights in the official format, for bench_layers.

    /usr/bin/python3 bench/make_layer_checkpoint.py OUT_DIR [--config tests/data/configs/deepseek-v4-flash.json]
                                                    [--vocab 4096]

Two score-routed main layers, one CSA (ratio 4) and one HCA (ratio 128), with every dimension of the given
config (Flash: 256 experts of 2048x4096 in FP4, 6 active, a shared FP8 expert), no MTP block, and a reduced
vocabulary (the embedding and LM head are not part of a layer's cost; say so when quoting whole-model figures).
Tensor names, dtypes and shapes follow lib/model/weights.cpp (the loader checks every one). About 6.8 GB for
Flash; nothing here is shipped.
"""

import argparse
import json
import struct
from pathlib import Path

import numpy as np

rng = np.random.default_rng(0)


class Writer:
    """Streams tensors into one safetensors file: header first (offsets known from the shapes), then data."""

    def __init__(self):
        self.tensors = []  # (name, dtype, shape, nbytes, make)

    def add(self, name, dtype, shape, make):
        itemsize = {"F32": 4, "BF16": 2, "F8_E4M3": 1, "F8_E8M0": 1, "I8": 1, "I64": 8}[dtype]
        self.tensors.append((name, dtype, list(shape), int(np.prod(shape)) * itemsize, make))

    def write(self, path):
        header, offset = {}, 0
        for name, dtype, shape, nbytes, _ in self.tensors:
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        blob = json.dumps(header).encode()
        blob += b" " * (-len(blob) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for name, dtype, shape, nbytes, make in self.tensors:
                data = make()
                assert data.nbytes == nbytes, name
                data.tofile(f)


def bf16(shape, std):
    x = rng.standard_normal(size=shape, dtype=np.float32) * std
    return (x.view(np.uint32) >> 16).astype(np.uint16)


def f32(shape, value=None, std=0.0):
    return np.full(shape, value, np.float32) if value is not None else rng.standard_normal(shape, np.float32) * std


def fp8_codes(shape):
    codes = rng.integers(0, 0x7E, size=shape, dtype=np.uint8)  # finite magnitudes, no NaN code
    return codes | (rng.integers(0, 2, size=shape, dtype=np.uint8) << 7)


def add_fp8(w, name, rows, cols, scale_code=118):
    w.add(name + ".weight", "F8_E4M3", (rows, cols), lambda: fp8_codes((rows, cols)))
    shape = (-(-rows // 128), -(-cols // 128))
    w.add(name + ".scale", "F8_E8M0", shape, lambda: np.full(shape, scale_code, np.uint8))


def add_fp4(w, name, rows, cols, scale_code=121):
    w.add(name + ".weight", "I8", (rows, cols // 2), lambda: rng.integers(0, 256, size=(rows, cols // 2), dtype=np.uint8))
    w.add(name + ".scale", "F8_E8M0", (rows, cols // 32), lambda: np.full((rows, cols // 32), scale_code, np.uint8))


def add_compressor(w, prefix, ratio, out_dim, dim):
    width = (2 if ratio == 4 else 1) * out_dim
    w.add(prefix + ".wkv.weight", "BF16", (width, dim), lambda: bf16((width, dim), 0.02))
    w.add(prefix + ".wgate.weight", "BF16", (width, dim), lambda: bf16((width, dim), 0.02))
    w.add(prefix + ".ape", "F32", (ratio, width), lambda: f32((ratio, width), std=0.02))
    w.add(prefix + ".norm.weight", "BF16", (out_dim,), lambda: bf16((out_dim,), 0.0) + 0x3F80)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "tests/data/configs/deepseek-v4-flash.json"))
    ap.add_argument("--vocab", type=int, default=4096)
    args = ap.parse_args()
    c = json.loads(Path(args.config).read_text())
    # The full model's layer schedule and vocabulary, for bench_layers' whole-model projection.
    c["dsv4_bench_full_model"] = {"compress_ratios": c["compress_ratios"][: c["num_hidden_layers"]],
                                  "vocab_size": c["vocab_size"]}
    c.update(num_hidden_layers=2, num_nextn_predict_layers=0, num_hash_layers=0, compress_ratios=[4, 128],
             vocab_size=args.vocab)
    D, H, d, I, E = c["hidden_size"], c["num_attention_heads"], c["head_dim"], c["moe_intermediate_size"], c["n_routed_experts"]
    hc, V = c["hc_mult"], c["vocab_size"]
    mix, hcD = (2 + hc) * hc, hc * D
    one = lambda n: (lambda: bf16((n,), 0.0) + 0x3F80)  # bf16 ones (norm weights)

    w = Writer()
    w.add("embed.weight", "BF16", (V, D), lambda: bf16((V, D), 1.0))
    w.add("head.weight", "BF16", (V, D), lambda: bf16((V, D), 0.02))
    w.add("norm.weight", "BF16", (D,), one(D))
    for n, shape in (("hc_head_fn", (hc, hcD)), ("hc_head_base", (hc,)), ("hc_head_scale", (1,))):
        w.add(n, "F32", shape, lambda shape=shape: f32(shape, std=0.01))
    for il, ratio in enumerate(c["compress_ratios"]):
        p = f"layers.{il}."
        w.add(p + "attn_norm.weight", "BF16", (D,), one(D))
        w.add(p + "ffn_norm.weight", "BF16", (D,), one(D))
        for hcn in ("hc_attn", "hc_ffn"):
            w.add(p + hcn + "_fn", "F32", (mix, hcD), lambda: f32((mix, hcD), std=0.01))
            w.add(p + hcn + "_base", "F32", (mix,), lambda: f32((mix,), std=0.1))
            w.add(p + hcn + "_scale", "F32", (3,), lambda: f32((3,), 1.0))
        w.add(p + "attn.attn_sink", "F32", (H,), lambda: f32((H,), 0.0))
        add_fp8(w, p + "attn.wq_a", c["q_lora_rank"], D)
        w.add(p + "attn.q_norm.weight", "BF16", (c["q_lora_rank"],), one(c["q_lora_rank"]))
        add_fp8(w, p + "attn.wq_b", H * d, c["q_lora_rank"])
        add_fp8(w, p + "attn.wkv", d, D)
        w.add(p + "attn.kv_norm.weight", "BF16", (d,), one(d))
        add_fp8(w, p + "attn.wo_a", c["o_groups"] * c["o_lora_rank"], H * d // c["o_groups"])
        add_fp8(w, p + "attn.wo_b", D, c["o_groups"] * c["o_lora_rank"])
        add_compressor(w, p + "attn.compressor", ratio, d, D)
        if ratio == 4:
            nI, dI = c["index_n_heads"], c["index_head_dim"]
            add_fp8(w, p + "attn.indexer.wq_b", nI * dI, c["q_lora_rank"])
            w.add(p + "attn.indexer.weights_proj.weight", "BF16", (nI, D), lambda: bf16((nI, D), 0.02))
            add_compressor(w, p + "attn.indexer.compressor", 4, dI, D)
        w.add(p + "ffn.gate.weight", "BF16", (E, D), lambda: bf16((E, D), 0.02))
        w.add(p + "ffn.gate.bias", "F32", (E,), lambda: f32((E,), 0.0))
        for e in range(E):
            for n, rows, cols in (("w1", I, D), ("w3", I, D), ("w2", D, I)):
                add_fp4(w, f"{p}ffn.experts.{e}.{n}", rows, cols)
        for n, rows, cols in (("w1", I, D), ("w3", I, D), ("w2", D, I)):
            add_fp8(w, f"{p}ffn.shared_experts.{n}", rows, cols)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(c, indent=2))
    w.write(out / "model.safetensors")
    print(f"{out}: {sum(t[3] for t in w.tensors) / 1e9:.2f} GB in {len(w.tensors)} tensors")


if __name__ == "__main__":
    main()
