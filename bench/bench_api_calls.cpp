// Cost of common calls through the C ABI, to compare with the same calls through the Python bindings
// (bench/bench_python_calls.py prints the same lines). Usage: bench_api_calls MODEL_DIR TOKENIZER_JSON
#include <dsv4/dsv4.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {
template <typename F>
double ns_per_call(int n, F &&f) {
    f();  // warm
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < n; ++i) f();
    return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / n;
}
bool ok(dsv4_status st) {
    if (st != DSV4_OK) std::fprintf(stderr, "%s: %s\n", dsv4_status_name(st), dsv4_last_error_message());
    return st == DSV4_OK;
}
// Inside a timed loop: a failed call ends the benchmark rather than timing (or reading) a failure.
void must(dsv4_status st) {
    if (!ok(st)) std::exit(1);
}
}  // namespace

int main(int argc, char **argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s MODEL_DIR TOKENIZER_JSON\n", argv[0]);
        return 2;
    }
    dsv4_model *model = nullptr;
    dsv4_tokenizer *tok = nullptr;
    dsv4_context *ctx = nullptr;
    dsv4_sampler *smpl = nullptr;
    dsv4_context_params cp = dsv4_context_default_params();
    cp.n_ctx = 1 << 16;
    dsv4_sampler_params sp = dsv4_sampler_default_params();
    sp.temperature = 0;
    if (!ok(dsv4_model_load(argv[1], nullptr, &model)) || !ok(dsv4_tokenizer_load(argv[2], &tok)) ||
        !ok(dsv4_context_create(model, &cp, &ctx)) || !ok(dsv4_sampler_create(&sp, &smpl)))
        return 1;
    const char *text = "Hello world, this is a short sentence.";
    std::vector<int32_t> ids(64);
    size_t n = 0;
    const double encode = ns_per_call(200000, [&] { must(dsv4_tokenize(tok, text, std::strlen(text), ids.data(), ids.size(), &n)); });
    std::vector<float> copy(size_t(dsv4_tokenizer_vocab_size(tok)));
    int32_t token = 1;
    const double eval = ns_per_call(2000, [&] {
        dsv4_batch b = dsv4_batch_for_sequence(&token, 1, 0);
        must(dsv4_decode(ctx, &b));
        const float *logits = nullptr;
        int32_t n_vocab = 0;
        must(dsv4_get_logits(ctx, -1, &logits, &n_vocab));
        std::memcpy(copy.data(), logits, sizeof(float) * size_t(n_vocab));  // Python gets a copy too
        must(dsv4_seq_truncate(ctx, 0, 0));
    });
    dsv4_generate_params gp = dsv4_generate_default_params();
    gp.max_tokens = 2000;
    gp.ignore_eos = 1;
    const int32_t prompt[] = {0, 1, 2};
    must(dsv4_seq_truncate(ctx, 0, 0));
    dsv4_generation *gen = nullptr;
    if (!ok(dsv4_generation_start(ctx, smpl, tok, 0, prompt, 3, &gp, &gen))) return 1;
    const double step = ns_per_call(1500, [&] {
        int32_t t = 0, done = 0;
        must(dsv4_generation_next(gen, &t, nullptr, nullptr, &done));
    });
    std::printf("encode 38 bytes          %10.0f ns/call\n", encode);
    std::printf("eval 1 token + logits    %10.0f ns/call\n", eval);
    std::printf("generation step          %10.0f ns/call\n", step);
    dsv4_generation_free(gen);
    dsv4_sampler_free(smpl);
    dsv4_context_free(ctx);
    dsv4_tokenizer_free(tok);
    dsv4_model_free(model);
    return 0;
}
