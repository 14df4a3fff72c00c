"""Streaming generation and chat through Python: golden greedy tokens, seeds, stop strings, prefix reuse,
cancellation from another thread and by Ctrl-C, parallel threads, and no leaks."""

import gc
import os
import signal
import threading
import time

import pytest

import dsv4
from conftest import TINY_MODEL


def test_greedy_generation_follows_the_argmax_of_the_logits(model, golden, tiny_tokenizer):
    """Greedy tokens are the argmax of the model's own logits along the generated path (the fixture's golden
    greedy tokens cannot be required: every row's margin is below its argmax tolerance)."""
    case = next(c for c in golden["cases"] if c["name"] == "len5")
    ctx = dsv4.Context(model, n_ctx=256, tokenizer=tiny_tokenizer)
    gen = ctx.generate(case["prompt"], max_tokens=12, temperature=0)
    pieces = list(gen)
    assert len(gen.tokens) == 12
    replay = dsv4.Context(model, n_ctx=256)
    rows = replay.eval(case["prompt"] + gen.tokens[:-1], all_logits=True)[len(case["prompt"]) - 1 :]
    assert rows.argmax(axis=1).tolist() == gen.tokens
    assert "".join(pieces) == gen.text == tiny_tokenizer.decode(gen.tokens)
    stats = gen.stats
    assert stats["stop_reason"] == "max_tokens" and stats["n_generated"] == 12 and stats["n_prompt"] == 5
    assert stats["prefill_tokens_per_second"] > 0 and stats["decode_tokens_per_second"] > 0
    assert ctx.seq_length() == 5 + 11 and ctx.tokens() == case["prompt"] + gen.tokens[:11]


def test_a_seed_reproduces_a_run(model, tiny_tokenizer):
    def run(seed):
        ctx = dsv4.Context(model, n_ctx=256, tokenizer=tiny_tokenizer)
        return ctx.generate("Once upon a time", max_tokens=16, temperature=0.9, top_p=0.95, seed=seed).run()

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_stop_strings_and_tokens(model, tiny_tokenizer):
    ctx = dsv4.Context(model, n_ctx=256, tokenizer=tiny_tokenizer)
    free = ctx.generate("Hello", max_tokens=20, temperature=0)
    full = free.run()
    stop = tiny_tokenizer.decode(free.tokens[3:5])
    assert stop and stop in full
    stopped = ctx.generate("Hello", max_tokens=20, temperature=0, stop=[stop])
    text = stopped.run()
    assert text == full[: full.find(stop)]
    assert stopped.stats["stop_reason"] == "stop_string"
    by_token = ctx.generate("Hello", max_tokens=20, temperature=0, stop_tokens=[free.tokens[3]])
    by_token.run()
    assert by_token.tokens == free.tokens[:3] and by_token.stats["stop_reason"] == "stop_token"


def test_generate_reuses_the_cached_prefix(model, tiny_tokenizer):
    ctx = dsv4.Context(model, n_ctx=512, tokenizer=tiny_tokenizer)
    first = ctx.generate("The first part of a conversation", max_tokens=4, temperature=0)
    first.run()
    again = ctx.generate(tiny_tokenizer.encode("The first part of a conversation") + first.tokens + [5, 6, 7],
                         max_tokens=4, temperature=0)
    again.run()
    assert again.stats["n_prompt"] == 4  # the three new tokens and the one sampled token not yet evaluated
    fresh = dsv4.Context(model, n_ctx=512, tokenizer=tiny_tokenizer)
    same = fresh.generate(tiny_tokenizer.encode("The first part of a conversation") + first.tokens + [5, 6, 7],
                          max_tokens=4, temperature=0)
    same.run()
    assert same.tokens == again.tokens


def test_chat_streams_events_and_reuses_the_conversation(model, tiny_tokenizer):
    ctx = dsv4.Context(model, n_ctx=1024, tokenizer=tiny_tokenizer)
    messages = [{"role": "user", "content": "Hi there"}]
    reply = ctx.chat(messages, max_tokens=6, temperature=0)
    events = list(reply)
    assert all(isinstance(e, dsv4.ChatEvent) and e.kind in ("reasoning", "content", "tool_call") for e in events)
    assert reply.message["role"] == "assistant"
    messages += [reply.message, {"role": "user", "content": "And again"}]
    second = ctx.chat(messages, max_tokens=6, temperature=0)
    second.run()
    full = len(tiny_tokenizer.encode(dsv4.chat_encode(messages)))
    assert second.stats["n_prompt"] < full


def test_chat_events_of_a_scripted_completion():
    """The event stream of a completion with reasoning and a tool call (the parser the chat iterator uses)."""
    from dsv4 import _dsv4

    completion = ("Let me check.</think>Sure.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"calc\">\n"
                  "<｜DSML｜parameter name=\"expr\" string=\"true\">2+2</｜DSML｜parameter>\n"
                  "</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>")
    stream = _dsv4.ChatStream(True)
    events = []
    for i in range(0, len(completion), 7):
        events += stream.push(completion[i : i + 7])
    events += stream.finish()
    kinds = [k for k, _ in events]
    assert "reasoning" in kinds and "content" in kinds and kinds.count("tool_call") == 1
    assert "".join(t for k, t in events if k == "reasoning") == "Let me check."
    assert "DSML" not in "".join(t for k, t in events if k == "content")
    parsed = dsv4.chat_parse(completion, thinking=True)
    assert parsed["tool_calls"][0]["function"]["name"] == "calc"


def test_abort_from_another_thread_cancels(model, tiny_tokenizer):
    ctx = dsv4.Context(model, n_ctx=4096, tokenizer=tiny_tokenizer)
    gen = ctx.generate([0, 1, 2], max_tokens=3000, temperature=0, ignore_eos=True)
    timer = threading.Timer(0.3, ctx.abort)
    timer.start()
    gen.run()
    timer.join()
    assert gen.stats["stop_reason"] == "cancelled"
    assert 0 < len(gen.tokens) < 3000
    assert ctx.seq_length() == 3 + len(gen.tokens) - 1 or ctx.seq_length() == 3 + len(gen.tokens)
    assert ctx.generate([0, 1, 2], max_tokens=2, temperature=0).run() is not None  # still usable


def test_ctrl_c_interrupts_a_running_evaluation(model):
    """SIGINT while the native code runs: the evaluation is cancelled and KeyboardInterrupt is raised; the
    sequence is left as before the interrupted call."""
    ctx = dsv4.Context(model, n_ctx=4096)
    ctx.eval([0, 1])
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        for _ in range(1000):  # each call is long enough that the signal lands inside one
            ctx.eval(list(range(3, 1003)), seq=0)
            ctx.truncate(2)
    timer.join()
    assert time.monotonic() - t0 < 30
    assert ctx.seq_length() in (2, 1002)
    ctx.truncate(2) if ctx.seq_length() == 1002 else None
    assert ctx.eval([5]).shape == (2048,)


def test_ctrl_c_stops_a_streaming_generation(model, tiny_tokenizer):
    ctx = dsv4.Context(model, n_ctx=4096, tokenizer=tiny_tokenizer)
    gen = ctx.generate([0, 1, 2], max_tokens=3000, temperature=0, ignore_eos=True)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        for _ in gen:
            pass
    timer.join()
    assert 0 < len(gen.tokens) < 3000
    assert ctx.tokens() == [0, 1, 2] + gen.tokens[: ctx.seq_length() - 3]


def test_two_threads_generate_at_the_same_time(model, tiny_tokenizer):
    prompts = [[0, 194, 916, 623, 292], [0, 7, 8]]
    alone = []
    for p in prompts:
        ctx = dsv4.Context(model, n_ctx=512, tokenizer=tiny_tokenizer)
        alone.append(ctx.generate(p, max_tokens=40, temperature=0.8, seed=3, ignore_eos=True).run())

    results, spans = [None, None], [None, None]
    barrier = threading.Barrier(2)

    def worker(i):
        ctx = dsv4.Context(model, n_ctx=512, n_threads=1, tokenizer=tiny_tokenizer)
        barrier.wait()
        t0 = time.monotonic()
        results[i] = ctx.generate(prompts[i], max_tokens=40, temperature=0.8, seed=3, ignore_eos=True).run()
        spans[i] = (t0, time.monotonic())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == alone
    # Both ran concurrently: each started before the other finished (the GIL is released during model work).
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]


def test_one_context_shared_by_threads_is_serialised(model):
    ctx = dsv4.Context(model, n_ctx=4096, n_seq_max=2)
    errors = []

    def worker(seq):
        try:
            for _ in range(20):
                ctx.eval([1, 2, 3], seq=seq)
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and ctx.seq_length(0) == ctx.seq_length(1) == 60


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_no_leaks_over_many_create_free_cycles(tiny_tokenizer):
    def cycle():
        m = dsv4.Model(str(TINY_MODEL))
        c = dsv4.Context(m, n_ctx=128, tokenizer=tiny_tokenizer)
        c.generate([0, 1, 2], max_tokens=2, temperature=0).run()
        del c, m
        gc.collect()

    for _ in range(20):
        cycle()
    before = _rss_bytes()
    for _ in range(200):
        cycle()
    growth = _rss_bytes() - before
    assert growth < 8 * 1024 * 1024, f"RSS grew by {growth} bytes over 200 cycles"
