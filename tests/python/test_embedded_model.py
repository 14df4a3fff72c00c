"""The embedded model (models/sotu-v4-tiny) against the PyTorch side of its parity checks.

tests/data/embedded-model/expected.json was computed by tools/train/parity.py: the PyTorch implementation of
the architecture (tools/train/v4model.py, itself checked against the official golden fixture) on the exported
checkpoint, with every reference rounding point simulated. Re-run it on the device when the model changes.
"""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

import dsv4

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_MODEL = ROOT / "models" / "sotu-v4-tiny"
EXPECTED = ROOT / "tests" / "data" / "embedded-model" / "expected.json"
TOY_TOOLS = json.loads((ROOT / "tools" / "train" / "toy_tools.json").read_text())

# Two faithful implementations differ by FP8 re-quantisation noise (spec §17.4): a greedy step whose two best
# logits are closer than this may go either way. The golden fixture's own logit tolerances are larger.
NEAR_TIE = 0.25
# How far ours may then prefer the other token. The same noise moves both logits: on an AMD Zen 4 host, whose
# VDPBF16PS rounds differently from the sequence Intel documents in 0.7% of lanes, the avx512_bf16 path turns the
# reference's 0.17 lead at prose_peace step 62 into a 0.34 lead of the other token (the avx512 and generic paths
# follow the reference there); the golden fixture's argmax margins are far wider.
MAX_EXCESS = 0.5


@pytest.fixture(scope="module")
def model() -> dsv4.Model:
    return dsv4.Model(str(EMBEDDED_MODEL))


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads(EXPECTED.read_text())


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_heldout_perplexity_matches_pytorch(model, expected):
    ctx = dsv4.Context(model, n_ctx=1024)
    total, count = 0.0, 0
    for seq in expected["sequences"]:
        ids = seq["tokens"]
        ctx.truncate(0)
        lp = log_softmax(ctx.eval(ids, all_logits=True))
        total += -lp[np.arange(len(ids) - 1), ids[1:]].sum()
        count += len(ids) - 1
    assert count == expected["scored_tokens"]
    perplexity = math.exp(total / count)
    assert perplexity == pytest.approx(expected["perplexity"], rel=0.005)


def test_tokenizer_reproduces_the_training_tokenizer(model, expected):
    for case in expected["greedy"]:
        assert model.tokenizer.encode(case["text"]) == case["prompt_tokens"], case["name"]


def test_greedy_continuations_match_pytorch(model, expected):
    ctx = dsv4.Context(model, n_ctx=1024)
    identical = 0
    for case in expected["greedy"]:
        prompt, ref = case["prompt_tokens"], case["tokens"]
        ctx.truncate(0)
        logits = ctx.eval(prompt)
        mine = []
        for _ in ref:  # free-running greedy decode, one token per step
            mine.append(int(np.argmax(logits)))
            logits = ctx.eval([mine[-1]])
        # A continuation may part from the reference's only where the reference itself had a near tie.
        first = next((i for i, (a, b) in enumerate(zip(mine, ref)) if a != b), None)
        assert first is None or case["margins"][first] < NEAR_TIE, (case["name"], first)
        identical += first is None
        # Teacher-forced on the reference's tokens: every step picks the reference's token, except at a near
        # tie of the reference itself, and then only by a near-tie amount.
        ctx.truncate(0)
        rows = ctx.eval(prompt + ref, all_logits=True)[len(prompt) - 1:len(prompt) - 1 + len(ref)]
        excess = rows.max(-1) - rows[np.arange(len(ref)), ref]
        for step in np.flatnonzero(excess > 0):
            assert case["margins"][step] < NEAR_TIE and excess[step] < MAX_EXCESS, (case["name"], int(step))
    assert identical >= 3  # of 7: 4 on the avx512 path, 3 on avx512_bf16 on the Zen 4 host (see MAX_EXCESS)


def calculator(expression: str) -> str:
    assert re.fullmatch(r"[0-9 +\-*]+", expression), expression
    return str(eval(expression))  # digits and + - * only, checked above


def test_tool_round_trip(model):
    ctx = dsv4.Context(model, n_ctx=2048)
    messages = [{"role": "system", "content": "You are a helpful assistant with a calculator and a unit converter.",
                 "tools": TOY_TOOLS},
                {"role": "user", "content": "What is 1234 times 56?"}]
    reply = ctx.chat(messages, max_tokens=120, temperature=0)
    events = list(reply)
    call = reply.message["tool_calls"][0]["function"]
    assert call["name"] == "calculator"
    assert any(e.kind == "tool_call" for e in events)
    result = calculator(json.loads(call["arguments"])["expression"])
    messages += [reply.message, {"role": "tool", "content": result}]
    answer = ctx.chat(messages, max_tokens=60, temperature=0)
    list(answer)
    assert answer.message["tool_calls"] == []
    assert result in answer.message["content"]
