// Streaming generation through the C ABI on the tiny-flash model: greedy output equals the golden greedy
// tokens, stop conditions, streamed text, timings, and cancellation from another thread.
#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <dsv4/dsv4.h>
#include <dsv4/dsv4.hpp>
#include <nlohmann/json.hpp>
#include <thread>

#include "io/mapped_file.h"
#include "support/fixtures.h"

namespace {
struct Setup {
    dsv4_model *model = nullptr;
    dsv4_context *ctx = nullptr;
    dsv4_sampler *greedy = nullptr;
    dsv4_tokenizer *tok = nullptr;
    Setup() {
        REQUIRE(dsv4_model_load(dsv4::test::tiny_flash_dir().c_str(), nullptr, &model) == DSV4_OK);
        REQUIRE(dsv4_context_create(model, nullptr, &ctx) == DSV4_OK);
        dsv4_sampler_params sp = dsv4_sampler_default_params();
        sp.temperature = 0;
        REQUIRE(dsv4_sampler_create(&sp, &greedy) == DSV4_OK);
        // The real V4 tokenizer decodes the tiny model's ids (< 2048) too: text is meaningless but valid.
        REQUIRE(dsv4_tokenizer_load((dsv4::test::data_dir() + "/tokenizer/tokenizer.json").c_str(), &tok) == DSV4_OK);
    }
    ~Setup() {
        dsv4_tokenizer_free(tok);
        dsv4_sampler_free(greedy);
        dsv4_context_free(ctx);
        dsv4_model_free(model);
    }
};
struct Collected {
    std::vector<int32_t> tokens;
    std::string text;
    std::vector<std::string> pieces;
    int stop_after = -1;
};
int collect(int32_t token, const char *text, size_t len, void *user) {
    auto *c = static_cast<Collected *>(user);
    if (token >= 0) c->tokens.push_back(token);
    c->text.append(text, len);
    if (len) c->pieces.emplace_back(text, len);
    return c->stop_after < 0 || int(c->tokens.size()) < c->stop_after;
}
}  // namespace

// Greedy generation is the argmax of the model's own logits along the generated path (the golden greedy tokens
// cannot be required: on the random-weight fixture every row's top-1 margin is below the fixture's argmax
// tolerance, so a faithful implementation may pick another token; eval-golden checks the logits themselves).
TEST_CASE("greedy generation follows the argmax of the model's logits and streams their text", "[generate]") {
    Setup s;
    const auto g = nlohmann::json::parse(dsv4::io::read_text_file(dsv4::test::data_dir() + "/tiny-flash/golden.json"));
    const auto prompt = g["cases"][1]["prompt"].get<std::vector<int32_t>>();  // len5
    dsv4_generate_params p = dsv4_generate_default_params();
    p.max_tokens = 12;
    Collected got;
    dsv4_generate_stats st{};
    st.struct_size = sizeof st;
    REQUIRE(dsv4_generate(s.ctx, s.greedy, s.tok, 0, prompt.data(), int32_t(prompt.size()), &p, collect, &got, &st) == DSV4_OK);
    REQUIRE(got.tokens.size() == 12);
    // Replay prompt + generated tokens in one batch with every output: row len(prompt)-1+i predicts token i.
    std::vector<int32_t> all = prompt;
    all.insert(all.end(), got.tokens.begin(), got.tokens.end() - 1);
    dsv4_context *replay = nullptr;
    REQUIRE(dsv4_context_create(s.model, nullptr, &replay) == DSV4_OK);
    std::vector<int8_t> want(all.size(), 1);
    dsv4_batch b = dsv4_batch_for_sequence(all.data(), int32_t(all.size()), 0);
    b.want_output = want.data();
    REQUIRE(dsv4_decode(replay, &b) == DSV4_OK);
    for (size_t i = 0; i < got.tokens.size(); ++i) {
        const float *logits = nullptr;
        int32_t n = 0;
        REQUIRE(dsv4_get_logits(replay, int32_t(prompt.size() - 1 + i), &logits, &n) == DSV4_OK);
        INFO("token " << i);
        CHECK(int32_t(std::max_element(logits, logits + n) - logits) == got.tokens[i]);
    }
    dsv4_context_free(replay);
    CHECK(st.stop_reason == DSV4_STOP_MAX_TOKENS);
    CHECK(st.n_prompt == 5);
    CHECK(st.n_generated == 12);
    CHECK(st.prefill_tokens_per_second > 0);
    CHECK(st.time_to_first_token_seconds > 0);
    int32_t len = 0;
    REQUIRE(dsv4_seq_length(s.ctx, 0, &len) == DSV4_OK);
    CHECK(len == 5 + 11);  // the last sampled token is not evaluated
    // the streamed text is the decode of the tokens, delivered in complete characters
    size_t n = 0;
    (void)dsv4_detokenize(s.tok, got.tokens.data(), got.tokens.size(), 0, nullptr, 0, &n);
    std::string full(n + 1, '\0');
    REQUIRE(dsv4_detokenize(s.tok, got.tokens.data(), got.tokens.size(), 0, full.data(), full.size(), &n) == DSV4_OK);
    full.resize(n);
    CHECK(got.text == full);
}

TEST_CASE("stop tokens, stop strings, the callback and EOS end generation", "[generate]") {
    const std::vector<int32_t> prompt = {0, 194, 916, 623, 292};
    const std::vector<int32_t> golden = {852, 831, 1184, 1609, 1522, 125, 1913, 666};
    SECTION("stop token") {
        Setup s;
        dsv4_generate_params p = dsv4_generate_default_params();
        const int32_t stop = 1609;
        p.stop_tokens = &stop;
        p.n_stop_tokens = 1;
        Collected got;
        dsv4_generate_stats st{};
        st.struct_size = sizeof st;
        REQUIRE(dsv4_generate(s.ctx, s.greedy, s.tok, 0, prompt.data(), 5, &p, collect, &got, &st) == DSV4_OK);
        CHECK(got.tokens == std::vector<int32_t>{852, 831, 1184});
        CHECK(st.stop_reason == DSV4_STOP_TOKEN);
    }
    SECTION("callback") {
        Setup s;
        Collected got;
        got.stop_after = 2;
        dsv4_generate_stats st{};
        st.struct_size = sizeof st;
        REQUIRE(dsv4_generate(s.ctx, s.greedy, nullptr, 0, prompt.data(), 5, nullptr, collect, &got, &st) == DSV4_OK);
        CHECK(got.tokens.size() == 2);
        CHECK(got.text.empty());  // no tokenizer: no text
        CHECK(st.stop_reason == DSV4_STOP_CALLBACK);
    }
    SECTION("stop string: the text stops right before it") {
        Setup s;
        Collected all;
        dsv4_generate_params p = dsv4_generate_default_params();
        p.max_tokens = 8;
        REQUIRE(dsv4_generate(s.ctx, s.greedy, s.tok, 0, prompt.data(), 5, &p, collect, &all, nullptr) == DSV4_OK);
        REQUIRE(all.text.size() > 6);
        const std::string stop = all.text.substr(all.text.size() / 2, 3);
        const size_t expected_len = all.text.find(stop);
        Setup s2;
        const char *stops[] = {stop.c_str()};
        p.stop_strings = stops;
        p.n_stop_strings = 1;
        Collected got;
        dsv4_generate_stats st{};
        st.struct_size = sizeof st;
        REQUIRE(dsv4_generate(s2.ctx, s2.greedy, s2.tok, 0, prompt.data(), 5, &p, collect, &got, &st) == DSV4_OK);
        CHECK(st.stop_reason == DSV4_STOP_STRING);
        CHECK(got.text == all.text.substr(0, expected_len));

        // A stop string that spans two streamed pieces: its first part must be held back, never streamed.
        REQUIRE(all.pieces.size() >= 3);
        const std::string &a = all.pieces[1], &b = all.pieces[2];
        const std::string spanning = a.substr(a.size() - 1) + b.substr(0, 1);
        const size_t spanning_at = all.text.find(spanning);
        Setup s3;
        const char *spanning_stops[] = {spanning.c_str()};
        p.stop_strings = spanning_stops;
        Collected cut;
        REQUIRE(dsv4_generate(s3.ctx, s3.greedy, s3.tok, 0, prompt.data(), 5, &p, collect, &cut, &st) == DSV4_OK);
        CHECK(st.stop_reason == DSV4_STOP_STRING);
        CHECK(cut.text == all.text.substr(0, spanning_at));
    }
    SECTION("EOS") {
        Setup s;
        dsv4_sampler_params sp = dsv4_sampler_default_params();
        sp.temperature = 0;
        const int32_t eos = 1;
        const float big = 1e4f;
        sp.logit_bias_tokens = &eos;  // force EOS at the third step via a bias only after two tokens? simpler: always
        sp.logit_bias_values = &big;
        sp.n_logit_bias = 1;
        dsv4_sampler *forced = nullptr;
        REQUIRE(dsv4_sampler_create(&sp, &forced) == DSV4_OK);
        Collected got;
        dsv4_generate_stats st{};
        st.struct_size = sizeof st;
        REQUIRE(dsv4_generate(s.ctx, forced, s.tok, 0, prompt.data(), 5, nullptr, collect, &got, &st) == DSV4_OK);
        CHECK(got.tokens.empty());
        CHECK(st.n_generated == 1);
        CHECK(st.stop_reason == DSV4_STOP_EOS);
        dsv4_sampler_free(forced);
    }
    (void)golden;
}

TEST_CASE("generation is cancelled from another thread", "[generate]") {
    Setup s;
    const std::vector<int32_t> prompt = {0, 5, 6, 7};
    struct Progress {
        std::atomic<int> tokens{0};
    } progress;
    auto count = [](int32_t, const char *, size_t, void *u) {
        ++static_cast<Progress *>(u)->tokens;
        return 1;
    };
    dsv4_generate_params p = dsv4_generate_default_params();
    p.max_tokens = 100000;
    p.ignore_eos = 1;
    dsv4_generate_stats st{};
    st.struct_size = sizeof st;
    dsv4_status status = DSV4_ERR_INTERNAL;
    std::thread worker([&] { status = dsv4_generate(s.ctx, s.greedy, nullptr, 0, prompt.data(), 4, &p, count, &progress, &st); });
    while (progress.tokens < 3) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    dsv4_context_abort(s.ctx);
    worker.join();
    CHECK(status == DSV4_OK);
    CHECK(st.stop_reason == DSV4_STOP_CANCELLED);
    CHECK(st.n_generated < 100000);
    int32_t len = 0;
    REQUIRE(dsv4_seq_length(s.ctx, 0, &len) == DSV4_OK);
    CHECK(len >= 4);
    // the context stays usable
    int32_t next = 9;
    dsv4_batch b = dsv4_batch_for_sequence(&next, 1, 0);
    CHECK(dsv4_decode(s.ctx, &b) == DSV4_OK);
}

TEST_CASE("several requests generate together, each exactly as alone", "[generate]") {
    const std::vector<std::vector<int32_t>> prompts = {{0, 194, 916, 623, 292}, {0, 7}, {0, 1000, 20, 300, 4, 5, 6, 7, 8}};
    const std::vector<int32_t> max_tokens = {10, 4, 7};
    // alone
    std::vector<Collected> alone(3);
    std::vector<dsv4_generate_stats> alone_stats(3);
    for (size_t i = 0; i < 3; ++i) {
        alone_stats[i] = dsv4_generate_stats{};
        alone_stats[i].struct_size = sizeof alone_stats[i];
        Setup s;
        dsv4_sampler_params sp = dsv4_sampler_default_params();
        sp.temperature = 0.9f;
        sp.seed = 100 + i;
        dsv4_sampler *smpl = nullptr;
        REQUIRE(dsv4_sampler_create(&sp, &smpl) == DSV4_OK);
        dsv4_generate_params p = dsv4_generate_default_params();
        p.max_tokens = max_tokens[i];
        REQUIRE(dsv4_generate(s.ctx, smpl, s.tok, 0, prompts[i].data(), int32_t(prompts[i].size()), &p, collect, &alone[i],
                              &alone_stats[i]) == DSV4_OK);
        dsv4_sampler_free(smpl);
    }
    // together, on sequences 2, 0, 1 of one context
    dsv4_model *model = nullptr;
    REQUIRE(dsv4_model_load(dsv4::test::tiny_flash_dir().c_str(), nullptr, &model) == DSV4_OK);
    dsv4_context_params cp = dsv4_context_default_params();
    cp.n_seq_max = 3;
    dsv4_context *ctx = nullptr;
    REQUIRE(dsv4_context_create(model, &cp, &ctx) == DSV4_OK);
    Setup tokenizer_owner;
    std::vector<Collected> together(3);
    std::vector<dsv4_sampler *> samplers(3);
    std::vector<dsv4_generate_params> params(3);
    std::vector<dsv4_generate_stats> stats(3);
    std::vector<dsv4_generate_request> reqs(3);
    for (size_t i = 0; i < 3; ++i) {
        dsv4_sampler_params sp = dsv4_sampler_default_params();
        sp.temperature = 0.9f;
        sp.seed = 100 + i;
        REQUIRE(dsv4_sampler_create(&sp, &samplers[i]) == DSV4_OK);
        params[i] = dsv4_generate_default_params();
        params[i].max_tokens = max_tokens[i];
        stats[i] = dsv4_generate_stats{};
        stats[i].struct_size = sizeof stats[i];
        reqs[i] = dsv4_generate_request{sizeof(dsv4_generate_request), int32_t((i + 2) % 3), prompts[i].data(),
                                        int32_t(prompts[i].size()), samplers[i], &params[i], collect, &together[i], &stats[i]};
    }
    REQUIRE(dsv4_generate_batch(ctx, tokenizer_owner.tok, reqs.data(), 3) == DSV4_OK);
    for (size_t i = 0; i < 3; ++i) {
        INFO("request " << i);
        CHECK(together[i].tokens == alone[i].tokens);
        CHECK(together[i].text == alone[i].text);
        CHECK(stats[i].n_generated == alone_stats[i].n_generated);
        CHECK(stats[i].stop_reason == alone_stats[i].stop_reason);
    }
    // two requests on one sequence are refused
    reqs[1].seq = reqs[0].seq;
    CHECK(dsv4_generate_batch(ctx, nullptr, reqs.data(), 2) == DSV4_ERR_INVALID_ARGUMENT);
    for (dsv4_sampler *smpl : samplers) dsv4_sampler_free(smpl);
    dsv4_context_free(ctx);
    dsv4_model_free(model);
}

TEST_CASE("pulled generation yields exactly the callback's events; the C++ iterator too", "[generate]") {
    const std::vector<int32_t> prompt = {0, 194, 916, 623, 292};
    dsv4_sampler_params sp = dsv4_sampler_default_params();
    sp.temperature = 0.8f;
    sp.seed = 7;
    dsv4_generate_params p = dsv4_generate_default_params();
    p.max_tokens = 9;
    const char *stop[] = {"\xff\xfe never"};  // a stop string that holds nothing back in practice
    p.stop_strings = stop;
    p.n_stop_strings = 1;

    Collected pushed;
    dsv4_generate_stats pushed_stats{};
    pushed_stats.struct_size = sizeof pushed_stats;
    {
        Setup s;
        dsv4_sampler *smpl = nullptr;
        REQUIRE(dsv4_sampler_create(&sp, &smpl) == DSV4_OK);
        REQUIRE(dsv4_generate(s.ctx, smpl, s.tok, 0, prompt.data(), 5, &p, collect, &pushed, &pushed_stats) == DSV4_OK);
        dsv4_sampler_free(smpl);
    }
    Setup s;
    dsv4_sampler *smpl = nullptr;
    REQUIRE(dsv4_sampler_create(&sp, &smpl) == DSV4_OK);
    dsv4_generation *gen = nullptr;
    REQUIRE(dsv4_generation_start(s.ctx, smpl, s.tok, 0, prompt.data(), 5, &p, &gen) == DSV4_OK);
    Collected pulled;
    for (;;) {
        int32_t token = 0, done = 0;
        const char *text = nullptr;
        size_t len = 0;
        REQUIRE(dsv4_generation_next(gen, &token, &text, &len, &done) == DSV4_OK);
        if (done) {
            CHECK(token == -1);
            CHECK(len == 0);
            break;
        }
        collect(token, text, len, &pulled);
    }
    int32_t token = 0, done = 0;
    CHECK(dsv4_generation_next(gen, &token, nullptr, nullptr, &done) == DSV4_OK);  // stays done
    CHECK(done == 1);
    CHECK(pulled.tokens == pushed.tokens);
    CHECK(pulled.pieces == pushed.pieces);
    dsv4_generate_stats st{};
    st.struct_size = sizeof st;
    REQUIRE(dsv4_generation_get_stats(gen, &st) == DSV4_OK);
    CHECK(st.n_generated == pushed_stats.n_generated);
    CHECK(st.stop_reason == pushed_stats.stop_reason);
    dsv4_generation_free(gen);
    dsv4_sampler_free(smpl);

    // The same through dsv4.hpp's range-for.
    dsv4::Model model(dsv4::test::tiny_flash_dir());
    dsv4::Context ctx(model);
    dsv4::Sampler sampler(sp);
    const dsv4::Tokenizer tok = dsv4::Tokenizer::load(dsv4::test::data_dir() + "/tokenizer/tokenizer.json");
    std::vector<int32_t> tokens;
    std::string text;
    dsv4::Generation g(ctx, sampler, tok, prompt, p);
    for (const dsv4::Piece &piece : g) {
        if (piece.token >= 0) tokens.push_back(piece.token);
        text += piece.text;
    }
    CHECK(tokens == pushed.tokens);
    CHECK(text == pushed.text);
}

TEST_CASE("a paused generation refuses to go on after the context evaluated something else", "[generate]") {
    Setup s;
    dsv4_context_params cp = dsv4_context_default_params();
    cp.n_seq_max = 2;
    dsv4_context *ctx = nullptr;
    REQUIRE(dsv4_context_create(s.model, &cp, &ctx) == DSV4_OK);
    const std::vector<int32_t> prompt = {0, 194, 916};
    dsv4_generation *gen = nullptr;
    REQUIRE(dsv4_generation_start(ctx, s.greedy, nullptr, 0, prompt.data(), 3, nullptr, &gen) == DSV4_OK);
    int32_t token = 0, done = 0;
    REQUIRE(dsv4_generation_next(gen, &token, nullptr, nullptr, &done) == DSV4_OK);
    CHECK(done == 0);
    const int32_t other = 5;
    dsv4_batch b = dsv4_batch_for_sequence(&other, 1, 1);
    REQUIRE(dsv4_decode(ctx, &b) == DSV4_OK);
    CHECK(dsv4_generation_next(gen, &token, nullptr, nullptr, &done) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK(std::string(dsv4_last_error_message()).find("another batch") != std::string::npos);
    CHECK(dsv4_generation_next(gen, &token, nullptr, nullptr, &done) == DSV4_ERR_INVALID_ARGUMENT);  // stays failed
    dsv4_generation_free(gen);
    // bad arguments
    CHECK(dsv4_generation_start(ctx, s.greedy, nullptr, 0, prompt.data(), 0, nullptr, &gen) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK(gen == nullptr);
    CHECK(dsv4_generation_start(ctx, nullptr, nullptr, 0, prompt.data(), 3, nullptr, &gen) == DSV4_ERR_INVALID_ARGUMENT);
    dsv4_generation_free(nullptr);
    dsv4_context_free(ctx);
}
