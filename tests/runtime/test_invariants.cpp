// Invariants of the engine on the tiny-flash model (2 window, 1 CSA, 1 HCA layer; W = 128):
// chunked prefill equals one-shot prefill, a batch equals separate runs, fork-then-diverge equals separate
// runs, save/load round-trips bit-exactly, truncate-then-replay equals the original, across compression
// (3/4, 127/128/129, 255/256) and window boundaries, and a context of several thousand tokens.
#include <catch2/catch.hpp>
#include <dsv4/dsv4.h>
#include <random>

#include "support/fixtures.h"

namespace {

struct Engine {
    dsv4_model *model = nullptr;
    dsv4_context *ctx = nullptr;
    int32_t vocab = 0;
    explicit Engine(int n_seq = 1, int n_ctx = 8192, int rewind = 256) {
        REQUIRE(dsv4_model_load(dsv4::test::tiny_flash_dir().c_str(), nullptr, &model) == DSV4_OK);
        dsv4_context_params p = dsv4_context_default_params();
        p.n_seq_max = n_seq;
        p.n_ctx = n_ctx;
        p.n_rewind = rewind;
        REQUIRE(dsv4_context_create(model, &p, &ctx) == DSV4_OK);
    }
    ~Engine() {
        dsv4_context_free(ctx);
        dsv4_model_free(model);
    }
    // Feeds tokens to seq in one call; returns the logits of every token.
    std::vector<std::vector<float>> feed(const std::vector<int32_t> &tokens, int32_t seq = 0) {
        std::vector<int8_t> want(tokens.size(), 1);
        dsv4_batch b = dsv4_batch_for_sequence(tokens.data(), int32_t(tokens.size()), seq);
        b.want_output = want.data();
        const dsv4_status st = dsv4_decode(ctx, &b);
        INFO(dsv4_last_error_message());
        REQUIRE(st == DSV4_OK);
        return outputs();
    }
    std::vector<std::vector<float>> outputs() {
        std::vector<std::vector<float>> out;
        for (int32_t i = 0; i < dsv4_n_outputs(ctx); ++i) {
            const float *l;
            REQUIRE(dsv4_get_logits(ctx, i, &l, &vocab) == DSV4_OK);
            out.emplace_back(l, l + vocab);
        }
        return out;
    }
    int32_t length(int32_t seq = 0) {
        int32_t n = -1;
        REQUIRE(dsv4_seq_length(ctx, seq, &n) == DSV4_OK);
        return n;
    }
};

std::vector<int32_t> random_tokens(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int32_t> d(1, 2047);
    std::vector<int32_t> t(n);
    for (auto &x : t) x = d(rng);
    t[0] = 0;
    return t;
}

// Feeds tokens in chunks of the given sizes (the rest as one chunk) and returns all logits.
std::vector<std::vector<float>> run_chunked(Engine &e, const std::vector<int32_t> &tokens, const std::vector<size_t> &cuts,
                                            int32_t seq = 0) {
    std::vector<std::vector<float>> all;
    size_t pos = 0;
    for (size_t cut : cuts) {
        auto part = e.feed(std::vector<int32_t>(tokens.begin() + long(pos), tokens.begin() + long(cut)), seq);
        all.insert(all.end(), part.begin(), part.end());
        pos = cut;
    }
    if (pos < tokens.size()) {
        auto part = e.feed(std::vector<int32_t>(tokens.begin() + long(pos), tokens.end()), seq);
        all.insert(all.end(), part.begin(), part.end());
    }
    return all;
}

}  // namespace

TEST_CASE("chunked prefill equals one-shot prefill bit for bit, across compression and window boundaries", "[invariants]") {
    const auto tokens = random_tokens(300, 1);
    Engine one;
    const auto reference = one.feed(tokens);
    REQUIRE(reference.size() == 300);
    // Cuts on and around the CSA (4), HCA (128) and window (128) boundaries, and token-by-token decode.
    for (const std::vector<size_t> &cuts : std::vector<std::vector<size_t>>{
             {3, 4, 5}, {127, 128, 129}, {255, 256}, {1, 2, 3, 130, 131, 250}, {100, 200}}) {
        Engine chunked;
        auto got = run_chunked(chunked, tokens, cuts);
        REQUIRE(got.size() == reference.size());
        for (size_t i = 0; i < got.size(); ++i) {
            INFO("position " << i);
            REQUIRE(got[i] == reference[i]);
        }
    }
    Engine stepwise;
    std::vector<size_t> every;
    for (size_t i = 1; i < 260; ++i) every.push_back(i);
    auto got = run_chunked(stepwise, std::vector<int32_t>(tokens.begin(), tokens.begin() + 260), every);
    for (size_t i = 0; i < got.size(); ++i) REQUIRE(got[i] == reference[i]);
}

TEST_CASE("a batch of sequences equals separate runs", "[invariants]") {
    const auto a = random_tokens(140, 2), b = random_tokens(9, 3), c = random_tokens(260, 4);
    Engine sep;
    const auto ra = sep.feed(a);
    Engine sep2;
    const auto rb = sep2.feed(b);
    Engine sep3;
    const auto rc = sep3.feed(c);

    Engine batch(3);
    // Interleave the three sequences in one batch, then continue with mixed decode + prefill steps.
    std::vector<int32_t> tok, seq;
    std::vector<int8_t> want;
    auto add = [&](const std::vector<int32_t> &t, size_t from, size_t to, int32_t s) {
        for (size_t i = from; i < to; ++i) {
            tok.push_back(t[i]);
            seq.push_back(s);
            want.push_back(1);
        }
    };
    add(a, 0, 100, 0);
    add(b, 0, 5, 1);
    add(c, 0, 200, 2);
    dsv4_batch bt{};
    bt.struct_size = sizeof bt;
    bt.n_tokens = int32_t(tok.size());
    bt.tokens = tok.data();
    bt.seq_id = seq.data();
    bt.want_output = want.data();
    REQUIRE(dsv4_decode(batch.ctx, &bt) == DSV4_OK);
    auto out = batch.outputs();
    for (size_t i = 0; i < 100; ++i) REQUIRE(out[i] == ra[i]);
    for (size_t i = 0; i < 5; ++i) REQUIRE(out[100 + i] == rb[i]);
    for (size_t i = 0; i < 200; ++i) REQUIRE(out[105 + i] == rc[i]);
    tok.clear();
    seq.clear();
    want.clear();
    add(c, 200, 260, 2);  // a prefill chunk of one sequence
    add(a, 100, 101, 0);  // decode tokens of the others
    add(b, 5, 9, 1);
    add(a, 101, 140, 0);
    bt.n_tokens = int32_t(tok.size());
    bt.tokens = tok.data();
    bt.seq_id = seq.data();
    bt.want_output = want.data();
    REQUIRE(dsv4_decode(batch.ctx, &bt) == DSV4_OK);
    out = batch.outputs();
    for (size_t i = 0; i < 60; ++i) REQUIRE(out[i] == rc[200 + i]);
    REQUIRE(out[60] == ra[100]);
    for (size_t i = 0; i < 4; ++i) REQUIRE(out[61 + i] == rb[5 + i]);
    for (size_t i = 0; i < 39; ++i) REQUIRE(out[65 + i] == ra[101 + i]);
}

TEST_CASE("fork then diverge equals separate runs; pages are shared", "[invariants]") {
    const auto prefix = random_tokens(200, 5);
    const auto tail1 = random_tokens(70, 6), tail2 = random_tokens(70, 7);
    auto concat = [&](const std::vector<int32_t> &t) {
        std::vector<int32_t> all = prefix;
        all.insert(all.end(), t.begin(), t.end());
        return all;
    };
    Engine s1, s2;
    const auto r1 = s1.feed(concat(tail1)), r2 = s2.feed(concat(tail2));

    Engine f(2);
    f.feed(prefix, 0);
    dsv4_memory_stats before{};
    before.struct_size = sizeof before;
    REQUIRE(dsv4_get_memory_stats(f.ctx, &before) == DSV4_OK);
    REQUIRE(dsv4_seq_fork(f.ctx, 0, 1) == DSV4_OK);
    CHECK(f.length(1) == 200);
    dsv4_memory_stats after{};
    after.struct_size = sizeof after;
    REQUIRE(dsv4_get_memory_stats(f.ctx, &after) == DSV4_OK);
    // the fork copies the constant-size rings but shares every compressed page
    CHECK(after.cache_bytes - before.cache_bytes == after.constant_bytes_per_sequence);
    const auto g1 = f.feed(tail1, 0), g2 = f.feed(tail2, 1);
    for (size_t i = 0; i < 70; ++i) {
        REQUIRE(g1[i] == r1[200 + i]);
        REQUIRE(g2[i] == r2[200 + i]);
    }
}

TEST_CASE("state save/load round-trips bit-exactly, to memory and to a file", "[invariants]") {
    const auto tokens = random_tokens(290, 8);
    Engine a;
    a.feed(std::vector<int32_t>(tokens.begin(), tokens.begin() + 257));
    size_t size = 0;
    REQUIRE(dsv4_state_size(a.ctx, 0, &size) == DSV4_OK);
    std::vector<uint8_t> blob(size);
    size_t written = 0;
    CHECK(dsv4_state_save(a.ctx, 0, blob.data(), 10, &written) == DSV4_ERR_BUFFER_TOO_SMALL);
    CHECK(written == size);
    REQUIRE(dsv4_state_save(a.ctx, 0, blob.data(), blob.size(), &written) == DSV4_OK);
    const std::string path = dsv4::test::temp_dir("state") + "/seq.bin";
    REQUIRE(dsv4_state_save_file(a.ctx, 0, path.c_str()) == DSV4_OK);
    const auto expected = a.feed(std::vector<int32_t>(tokens.begin() + 257, tokens.end()));

    Engine b(2);
    REQUIRE(dsv4_state_load(b.ctx, 1, blob.data(), blob.size()) == DSV4_OK);
    CHECK(b.length(1) == 257);
    REQUIRE(b.feed(std::vector<int32_t>(tokens.begin() + 257, tokens.end()), 1) == expected);
    // saving the restored sequence gives the same bytes
    Engine c;
    REQUIRE(dsv4_state_load_file(c.ctx, 0, path.c_str()) == DSV4_OK);
    std::vector<uint8_t> again(size);
    REQUIRE(dsv4_state_save(c.ctx, 0, again.data(), again.size(), &written) == DSV4_OK);
    CHECK(again == blob);
    REQUIRE(c.feed(std::vector<int32_t>(tokens.begin() + 257, tokens.end())) == expected);

    SECTION("damaged blobs are rejected and leave the sequence as it was") {
        std::vector<uint8_t> bad = blob;
        bad[0] ^= 1;
        CHECK(dsv4_state_load(c.ctx, 0, bad.data(), bad.size()) == DSV4_ERR_VERSION);
        bad = blob;
        bad[8] ^= 1;  // model fingerprint
        CHECK(dsv4_state_load(c.ctx, 0, bad.data(), bad.size()) == DSV4_ERR_VERSION);
        CHECK(DSV4_STATUS_PRIMARY(dsv4_state_load(c.ctx, 0, blob.data(), blob.size() - 5)) == DSV4_ERR_FORMAT);
        CHECK(c.length() == 290);
    }
}

// The size dsv4_state_size gives (computed from the lengths) against the bytes a save writes.
size_t saved_bytes(dsv4_context *ctx, int32_t seq) {
    size_t size = 0, written = 0;
    REQUIRE(dsv4_state_size(ctx, seq, &size) == DSV4_OK);
    std::vector<uint8_t> blob(size + 64);
    REQUIRE(dsv4_state_save(ctx, seq, blob.data(), blob.size(), &written) == DSV4_OK);
    CHECK(written == size);
    return written;
}

TEST_CASE("dsv4_state_size is the saved size at every length, after truncation and for an unused sequence", "[invariants]") {
    const auto tokens = random_tokens(300, 12);
    Engine e(2, 8192, 200);
    const size_t empty = saved_bytes(e.ctx, 1);
    size_t last = empty;
    for (size_t n : {1, 3, 4, 5, 127, 128, 129, 300}) {
        e.feed(std::vector<int32_t>(tokens.begin() + int64_t(e.length()), tokens.begin() + int64_t(n)));
        const size_t now = saved_bytes(e.ctx, 0);
        CHECK(now > last);
        last = now;
    }
    REQUIRE(dsv4_seq_truncate(e.ctx, 0, 130) == DSV4_OK);
    CHECK(saved_bytes(e.ctx, 0) < last);
    REQUIRE(dsv4_seq_truncate(e.ctx, 0, 0) == DSV4_OK);
    CHECK(saved_bytes(e.ctx, 0) == empty);
}

TEST_CASE("truncate then replay equals the original", "[invariants]") {
    const auto tokens = random_tokens(300, 9);
    Engine ref;
    const auto expected = ref.feed(tokens);
    Engine e(1, 8192, 200);
    e.feed(tokens);
    for (int32_t n : {299, 256, 255, 129, 128, 127}) {
        REQUIRE(dsv4_seq_truncate(e.ctx, 0, n) == DSV4_OK);
        REQUIRE(e.length() == n);
        const auto got = e.feed(std::vector<int32_t>(tokens.begin() + n, tokens.end()));
        for (size_t i = 0; i < got.size(); ++i) REQUIRE(got[i] == expected[size_t(n) + i]);
    }
    // going back further than n_rewind is refused and changes nothing; 0 clears
    CHECK(dsv4_seq_truncate(e.ctx, 0, 50) == DSV4_ERR_UNSUPPORTED_REWIND);
    CHECK(e.length() == 300);
    // the limit counts from the furthest position ever held, not from the current length: rows of positions
    // 100.. were overwritten by positions up to 299
    REQUIRE(dsv4_seq_truncate(e.ctx, 0, 150) == DSV4_OK);
    CHECK(dsv4_seq_truncate(e.ctx, 0, 99) == DSV4_ERR_UNSUPPORTED_REWIND);
    REQUIRE(dsv4_seq_truncate(e.ctx, 0, 100) == DSV4_OK);
    {
        const auto got = e.feed(std::vector<int32_t>(tokens.begin() + 100, tokens.end()));
        for (size_t i = 0; i < got.size(); ++i) REQUIRE(got[i] == expected[100 + i]);
    }
    CHECK(dsv4_seq_truncate(e.ctx, 0, 301) == DSV4_ERR_INVALID_ARGUMENT_POSITION);
    REQUIRE(dsv4_seq_truncate(e.ctx, 0, 0) == DSV4_OK);
    CHECK(e.length() == 0);
    REQUIRE(e.feed(tokens) == expected);
    // a cleared sequence keeps its rings' memory: other tokens after a clear see none of the old rows and
    // entries, and the rewind limit counts from the new tokens only
    const auto other = random_tokens(300, 11);
    Engine fresh;
    const auto expected_other = fresh.feed(other);
    REQUIRE(dsv4_seq_truncate(e.ctx, 0, 0) == DSV4_OK);
    const auto head = e.feed(std::vector<int32_t>(other.begin(), other.begin() + 100));
    REQUIRE(dsv4_seq_truncate(e.ctx, 0, 1) == DSV4_OK);
    const auto rest = e.feed(std::vector<int32_t>(other.begin() + 1, other.end()));
    for (size_t i = 0; i < head.size(); ++i) REQUIRE(head[i] == expected_other[i]);
    for (size_t i = 0; i < rest.size(); ++i) REQUIRE(rest[i] == expected_other[1 + i]);
}

TEST_CASE("a context of several thousand tokens: cache grows with the tokens, exact accounting", "[invariants][slow]") {
    Engine e(1, 8192, 16);
    dsv4_memory_stats st{};
    st.struct_size = sizeof st;
    REQUIRE(dsv4_get_memory_stats(e.ctx, &st) == DSV4_OK);
    CHECK(st.cache_bytes == 0);  // nothing allocated up front
    // per 1024 tokens: one CSA layer (256 entries x (583 + 68) B) + one HCA layer (8 x 583 B)
    CHECK(st.bytes_per_4_tokens_csa == 583 + 68);
    CHECK(st.bytes_per_128_tokens_hca == 583);
    CHECK(st.bytes_per_1024_tokens == 256 * (583 + 68) + 8 * 583);
    const auto tokens = random_tokens(4000, 10);
    const auto logits = run_chunked(e, tokens, {1000, 2000, 3000});
    REQUIRE(logits.size() == 4000);
    for (const auto &row : logits)
        for (float v : row) REQUIRE(std::isfinite(v));
    REQUIRE(dsv4_get_memory_stats(e.ctx, &st) == DSV4_OK);
    CHECK(st.n_sequences == 1);
    const uint64_t pages_csa = (1000 + 63) / 64, pages_hca = (31 + 63) / 64;
    CHECK(st.cache_bytes == st.constant_bytes_per_sequence + pages_csa * 64 * (583 + 68) + pages_hca * 64 * 583);
    // the passes' large temporaries stay for the next pass: at least one 1000-token buffer of the streams
    CHECK(st.scratch_bytes >= 1000 * 4 * 256 * sizeof(float));
}

TEST_CASE("a prefill chunk that asks for no logits advances the cache like one that does") {
    const auto tokens = random_tokens(300, 11);
    Engine a, b;
    const auto whole = a.feed(tokens);
    std::vector<int8_t> none(200, 0);
    dsv4_batch first = dsv4_batch_for_sequence(tokens.data(), 200, 0);
    first.want_output = none.data();
    REQUIRE(dsv4_decode(b.ctx, &first) == DSV4_OK);
    CHECK(dsv4_n_outputs(b.ctx) == 0);
    CHECK(b.length() == 200);
    const auto rest = b.feed(std::vector<int32_t>(tokens.begin() + 200, tokens.end()));
    REQUIRE(rest.size() == 100);
    for (size_t i = 0; i < rest.size(); ++i) REQUIRE(rest[i] == whole[200 + i]);
}
