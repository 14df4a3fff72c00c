"""The calls of bench_api_calls.cpp through the Python bindings, printed the same way.
Usage: python bench_python_calls.py MODEL_DIR TOKENIZER_JSON"""

import sys
import time

import dsv4


def ns_per_call(n, f):
    f()
    t0 = time.perf_counter_ns()
    for _ in range(n):
        f()
    return (time.perf_counter_ns() - t0) / n


def main():
    model = dsv4.Model(sys.argv[1])
    tok = dsv4.Tokenizer(sys.argv[2])
    ctx = dsv4.Context(model, n_ctx=1 << 16, tokenizer=tok)
    text = "Hello world, this is a short sentence."
    encode = ns_per_call(200000, lambda: tok.encode(text))

    def eval_one():
        ctx.eval([1])
        ctx.truncate(0)

    evaluate = ns_per_call(2000, eval_one)
    ctx.truncate(0)
    gen = ctx.generate([0, 1, 2], max_tokens=2000, temperature=0, ignore_eos=True)
    native = gen._native  # the token-by-token call itself, without the text accumulation of the iterator
    step = ns_per_call(1500, native.next)
    print(f"encode 38 bytes          {encode:10.0f} ns/call")
    print(f"eval 1 token + logits    {evaluate:10.0f} ns/call")
    print(f"generation step          {step:10.0f} ns/call")


if __name__ == "__main__":
    main()
