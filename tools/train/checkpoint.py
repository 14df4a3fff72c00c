"""Official-format checkpoint <-> v4model.Transformer (spec §10)."""
import json
from pathlib import Path

import numpy as np
import torch

import safetensors_io as st
import v4model

_F32_SUFFIXES = ("attn_sink", ".ape", "hc_attn_fn", "hc_attn_base", "hc_attn_scale", "hc_ffn_fn", "hc_ffn_base",
                 "hc_ffn_scale", "hc_head_fn", "hc_head_base", "hc_head_scale", "gate.bias")


def read_tensors(model_dir):
    """Every tensor of the checkpoint, one file or the shards that model.safetensors.index.json names."""
    index = model_dir / "model.safetensors.index.json"
    if not index.exists():
        return st.read(model_dir / "model.safetensors")
    tensors = {}
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        tensors.update(st.read(model_dir / shard))
    return tensors


def merge_shards(model_dir):
    """Rewrites a sharded checkpoint as one model.safetensors, bytes unchanged."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    st.write(model_dir / "model.safetensors", read_tensors(model_dir), {"format": "pt"})
    for shard in shards:
        (model_dir / shard).unlink()
    index.unlink()


def load(model_dir, device="cpu"):
    """Build the model of `model_dir/config.json` with the weights of `model_dir/model.safetensors`."""
    model_dir = Path(model_dir)
    hf = json.loads((model_dir / "config.json").read_text())
    cfg = v4model.Config.from_hf(hf)
    model = v4model.Transformer(cfg)
    tensors = read_tensors(model_dir)
    state = {}
    for name in model.state_dict():
        key = v4model.checkpoint_name(name)
        dtype, raw = tensors[key]
        if dtype == "F8_E4M3":
            value = st.dequant_fp8(raw, tensors[key[:-len("weight")] + "scale"][1])
        elif dtype == "I8":
            value = st.dequant_fp4(raw, tensors[key[:-len("weight")] + "scale"][1])
        elif dtype == "BF16":
            value = st.bf16_to_f32(raw)
        else:
            value = raw
        state[name] = torch.from_numpy(np.array(value))
    model.load_state_dict(state)
    return model.to(device), hf


def export(model, hf_config, model_dir, shard_bytes=None):
    """Write config.json + model.safetensors in the official format: FP8 128x128 / FP4 1x32 weights with
    e8m0 scales, bf16 / fp32 / int64 as spec §10.1 lists. With shard_bytes: shards of about that size plus
    model.safetensors.index.json, as the published checkpoints are stored."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    kinds = {name + ".weight": m.kind for name, m in model.named_modules() if isinstance(m, v4model.Linear)}
    out = {}
    for name, value in model.state_dict().items():
        key = v4model.checkpoint_name(name)
        w = value.detach().float().cpu().numpy()
        kind = kinds.get(name)
        if kind == "fp8":
            q, s = st.quant_fp8(w)
            out[key] = ("F8_E4M3", q)
            out[key[:-len("weight")] + "scale"] = ("F8_E8M0", s)
        elif kind == "fp4":
            q, s = st.quant_fp4(w)
            out[key] = ("I8", q)
            out[key[:-len("weight")] + "scale"] = ("F8_E8M0", s)
        elif key.endswith("tid2eid"):
            out[key] = ("I64", value.cpu().numpy().astype(np.int64))
        elif key.endswith(_F32_SUFFIXES):
            out[key] = ("F32", w.astype(np.float32))
        else:
            out[key] = ("BF16", st.f32_to_bf16(w))
    if shard_bytes is None:
        st.write(model_dir / "model.safetensors", out, {"format": "pt"})
    else:
        shards, size = [{}], 0
        for key in sorted(out):
            n = out[key][1].nbytes
            if size and size + n > shard_bytes:
                shards.append({})
                size = 0
            shards[-1][key] = out[key]
            size += n
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            st.write(model_dir / name, shard, {"format": "pt"})
            weight_map.update({k: name for k in shard})
        (model_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}, indent=1) + "\n")
    (model_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "merge":
        sys.exit("usage: checkpoint.py merge MODEL_DIR   (shards + index -> one model.safetensors)")
    merge_shards(sys.argv[2])
