"""Reading and writing safetensors in the official DeepSeek-V4 dtypes with numpy alone.

The `safetensors` package has no numpy mapping for F8_E4M3 / F8_E8M0, and Debian's torch 1.13 has no float8
types, so the FP8 / FP4 / E8M0 codes travel as raw bytes here and are decoded through the code tables below.
"""
import json
import struct
from pathlib import Path

import numpy as np

# Every finite float8 e4m3fn value, indexed by its code (0x7F / 0xFF are NaN and never written).
_E4M3 = np.zeros(256, np.float32)
for _c in range(256):
    _e, _m = (_c >> 3) & 0xF, _c & 7
    _v = _m / 8 * 2.0**-6 if _e == 0 else (1 + _m / 8) * 2.0 ** (_e - 7)
    _E4M3[_c] = -_v if _c & 0x80 else _v
_E4M3[0x7F] = _E4M3[0xFF] = np.nan
E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)

_NUMPY = {"F32": np.float32, "I64": np.int64, "I32": np.int32, "I8": np.int8, "U8": np.uint8,
          "BF16": np.uint16, "F8_E4M3": np.uint8, "F8_E8M0": np.uint8}


def read(path):
    """name -> (dtype string, raw numpy array in its storage type)."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = (t["dtype"], np.frombuffer(raw[8 + n + a:8 + n + b], _NUMPY[t["dtype"]]).reshape(t["shape"]))
    return out


def write(path, tensors, metadata=None):
    """tensors: name -> (dtype string, numpy array whose bytes are the stored form)."""
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        dtype, arr = tensors[name]
        data = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def bf16_to_f32(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x):
    """Round to nearest even; the inputs are finite."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def e8m0_to_f32(codes):
    return np.ldexp(np.float32(1), codes.astype(np.int32) - 127).astype(np.float32)


def dequant_fp8(w, scale):
    """FP8 e4m3 weight [out, in] with a 128x128-block e8m0 scale."""
    v = _E4M3[w]
    s = np.repeat(np.repeat(e8m0_to_f32(scale), 128, 0), 128, 1)[:v.shape[0], :v.shape[1]]
    return v * s


def dequant_fp4(w, scale):
    """Packed e2m1 pairs [out, in/2] (element 2k in the low nibble) with per-32 e8m0 scales along `in`."""
    b = w.view(np.uint8)
    v = np.stack([E2M1[b & 15], E2M1[b >> 4]], -1).reshape(b.shape[0], -1)
    return v * np.repeat(e8m0_to_f32(scale), 32, 1)


def _pow2_scale(amax, qmax):
    """2^ceil(log2(amax / qmax)), the reference's power-of-two block scale."""
    return np.exp2(np.ceil(np.log2(np.maximum(amax, 1e-30) / qmax))).astype(np.float32)


def quant_fp8(w):
    """w [out, in] float32 -> (e4m3 codes, e8m0 block scales [ceil(out/128), ceil(in/128)])."""
    out_dim, in_dim = w.shape
    bo, bi = -(-out_dim // 128), -(-in_dim // 128)
    padded = np.zeros((bo * 128, bi * 128), np.float32)
    padded[:out_dim, :in_dim] = w
    blocks = np.abs(padded.reshape(bo, 128, bi, 128)).max(axis=(1, 3))
    scale = _pow2_scale(blocks, 448.0)
    q = w / np.repeat(np.repeat(scale, 128, 0), 128, 1)[:out_dim, :in_dim]
    return _nearest_code(q, _E4M3), (np.log2(scale) + 127).astype(np.uint8)


def quant_fp4(w):
    """w [out, in] float32 -> (packed int8 [out, in/2], e8m0 scales [out, in/32])."""
    out_dim, in_dim = w.shape
    groups = w.reshape(out_dim, in_dim // 32, 32)
    scale = _pow2_scale(np.abs(groups).max(-1), 6.0)
    codes = _nearest_code((groups / scale[..., None]).reshape(out_dim, in_dim), E2M1)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8).view(np.int8)
    return packed, (np.log2(scale) + 127).astype(np.uint8)


def _nearest_code(x, table):
    """Code of the table value nearest to x, ties to the even code (= round to nearest even mantissa)."""
    finite = np.where(np.isnan(table), np.inf, table)
    codes = np.argsort(finite, kind="stable")
    # keep +0 only (the sorted table holds -0 and +0; either decodes to 0)
    values = finite[codes]
    keep = np.concatenate([[True], values[1:] != values[:-1]])
    keep &= np.isfinite(values)
    codes, values = codes[keep], values[keep]
    flat = x.reshape(-1)
    hi = np.clip(np.searchsorted(values, flat), 1, len(values) - 1)
    lo = hi - 1
    d_lo, d_hi = flat - values[lo], values[hi] - flat
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (codes[hi] % 2 == 0))
    return np.where(pick_hi, codes[hi], codes[lo]).astype(np.uint8).reshape(x.shape)
