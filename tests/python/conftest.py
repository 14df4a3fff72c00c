"""Shared fixtures of the Python tests: the project's test data and the tiny-flash fixture model."""

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import dsv4

DATA = Path(__file__).resolve().parents[1] / "data"
TINY_MODEL = DATA / "tiny-flash" / "model"
TINY_TOKENIZER = DATA / "tiny-tokenizer" / "tokenizer.json"
V4_TOKENIZER = DATA / "tokenizer" / "tokenizer.json"

# One compute thread per context, as the C++ tests run: results do not depend on it, test time does.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file (F32 / I64 only, which is what the fixtures hold)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    dtypes = {"F32": np.float32, "I64": np.int64}
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a : 8 + n + b], dtype=dtypes[t["dtype"]]).reshape(t["shape"])
    return out


@pytest.fixture(scope="session")
def model() -> dsv4.Model:
    return dsv4.Model(str(TINY_MODEL))


@pytest.fixture(scope="session")
def tiny_tokenizer() -> dsv4.Tokenizer:
    return dsv4.Tokenizer(str(TINY_TOKENIZER))


@pytest.fixture(scope="session")
def v4_tokenizer() -> dsv4.Tokenizer:
    return dsv4.Tokenizer(str(V4_TOKENIZER))


@pytest.fixture(scope="session")
def golden() -> dict:
    return json.loads((DATA / "tiny-flash" / "golden.json").read_text())


@pytest.fixture(scope="session")
def golden_tensors() -> dict[str, np.ndarray]:
    return read_safetensors(DATA / "tiny-flash" / "golden.safetensors")


@pytest.fixture
def ctx(model, tiny_tokenizer) -> dsv4.Context:
    return dsv4.Context(model, n_ctx=1024, tokenizer=tiny_tokenizer)
