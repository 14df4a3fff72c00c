"""The V4 tokenizer and the chat format through Python: shared vectors, batch encode, chat cases."""

import json

import pytest

import dsv4
from conftest import DATA


def test_shared_tokenizer_vectors(v4_tokenizer):
    n = 0
    for line in (DATA / "tokenizer" / "vectors.jsonl").read_text(encoding="utf-8").split("\n"):
        if not line:
            continue
        v = json.loads(line)
        if v.get("kind") != "encode":
            continue
        assert v4_tokenizer.encode(v["text"]) == v["ids"], v["id"]
        assert v4_tokenizer.decode(v["ids"]) == v["decoded"], v["id"]
        assert v4_tokenizer.decode(v["ids"], skip_special=True) == v["decoded_skip_special"], v["id"]
        n += 1
    assert n > 100


def test_batch_encode_equals_single_encodes(v4_tokenizer):
    texts = [f"line {i}: 中文 text <｜User｜> x = {i * i}" for i in range(50)] + [""]
    assert v4_tokenizer.encode_batch(texts) == [v4_tokenizer.encode(t) for t in texts]
    assert v4_tokenizer.encode_batch(texts, n_threads=1) == [v4_tokenizer.encode(t) for t in texts]
    assert v4_tokenizer.vocab_size > 128000
    assert v4_tokenizer.is_special(0) and not v4_tokenizer.is_special(100)
    assert isinstance(v4_tokenizer.token_bytes(100), bytes)


def test_tokenizer_errors(tmp_path):
    with pytest.raises(dsv4.IOError):
        dsv4.Tokenizer(str(tmp_path / "none.json"))
    (tmp_path / "bad.json").write_text('{"model": 3}')
    with pytest.raises(dsv4.Error):
        dsv4.Tokenizer(str(tmp_path / "bad.json"))


def _cases(kind):
    for line in (DATA / "encoding" / "cases.jsonl").read_text(encoding="utf-8").split("\n"):
        if not line:
            continue
        c = json.loads(line)
        if c["kind"] == kind:
            yield c


def test_chat_encode_cases():
    for c in _cases("encode"):
        options = dict(thinking=c["thinking_mode"] == "thinking", drop_thinking=c.get("drop_thinking", True),
                       reasoning_effort=c.get("reasoning_effort"))
        if c.get("error"):
            with pytest.raises(dsv4.InvalidArgumentError):
                dsv4.chat_encode(c["messages"], **options)
        else:
            assert dsv4.chat_encode(c["messages"], **options) == c["prompt"], c["id"]


def _normalise(message):
    out = dict(message)
    out["tool_calls"] = [
        {**t, "function": {**t["function"], "arguments": json.loads(t["function"]["arguments"])}}
        for t in message.get("tool_calls") or []
    ]
    return out


def test_chat_parse_cases():
    for c in _cases("parse"):
        thinking = c["thinking_mode"] == "thinking"
        if c.get("error"):
            with pytest.raises(dsv4.InvalidArgumentError):
                dsv4.chat_parse(c["completion"], thinking=thinking)
            continue
        got = dsv4.chat_parse(c["completion"], thinking=thinking)
        want = c["message"]
        for key in ("content", "reasoning_content"):
            assert got.get(key) == want.get(key), c["id"]
        assert _normalise(got)["tool_calls"] == _normalise(want)["tool_calls"], c["id"]
