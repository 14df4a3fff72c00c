// Bad input to a context: clear statuses, and the cache exactly as before the failed call.
#include <algorithm>
#include <catch2/catch.hpp>
#include <dsv4/dsv4.h>
#include <string>
#include <vector>

#include "support/fixtures.h"

namespace {
struct Fixture {
    dsv4_model *model = nullptr;
    dsv4_context *ctx = nullptr;
    Fixture(dsv4_abort_callback abort = nullptr, void *abort_data = nullptr, dsv4_eval_callback eval = nullptr,
            void *eval_data = nullptr, int n_ctx = 64, dsv4_eval_ask_callback ask = nullptr) {
        REQUIRE(dsv4_model_load(dsv4::test::tiny_flash_dir().c_str(), nullptr, &model) == DSV4_OK);
        dsv4_context_params p = dsv4_context_default_params();
        p.n_ctx = n_ctx;
        p.n_seq_max = 2;
        p.abort_callback = abort;
        p.abort_user_data = abort_data;
        p.eval_callback = eval;
        p.eval_user_data = eval_data;
        p.eval_ask = ask;
        REQUIRE(dsv4_context_create(model, &p, &ctx) == DSV4_OK);
    }
    ~Fixture() {
        dsv4_context_free(ctx);
        dsv4_model_free(model);
    }
    std::vector<float> last_logits() {
        const float *l;
        int32_t n;
        REQUIRE(dsv4_get_logits(ctx, -1, &l, &n) == DSV4_OK);
        return std::vector<float>(l, l + n);
    }
};
}  // namespace

TEST_CASE("invalid batches fail cleanly and leave the cache untouched", "[errors]") {
    Fixture f;
    std::vector<int32_t> prompt = {0, 5, 6, 7, 8, 9, 10};
    dsv4_batch b = dsv4_batch_for_sequence(prompt.data(), 7, 0);
    REQUIRE(dsv4_decode(f.ctx, &b) == DSV4_OK);
    int32_t next = 11;
    b = dsv4_batch_for_sequence(&next, 1, 0);
    REQUIRE(dsv4_decode(f.ctx, &b) == DSV4_OK);
    const std::vector<float> expected = f.last_logits();
    REQUIRE(dsv4_seq_truncate(f.ctx, 0, 7) == DSV4_OK);

    int32_t bad_token = 2048;
    b = dsv4_batch_for_sequence(&bad_token, 1, 0);
    CHECK(dsv4_decode(f.ctx, &b) == DSV4_ERR_INVALID_TOKEN);
    CHECK_THAT(std::string(dsv4_last_error_message()), Catch::Contains("2048"));
    b = dsv4_batch_for_sequence(&next, 1, 7);
    CHECK(dsv4_decode(f.ctx, &b) == DSV4_ERR_INVALID_ARGUMENT_SEQUENCE);
    int32_t wrong_pos = 3;
    b = dsv4_batch_for_sequence(&next, 1, 0);
    b.pos = &wrong_pos;
    CHECK(dsv4_decode(f.ctx, &b) == DSV4_ERR_INVALID_ARGUMENT_POSITION);
    CHECK_THAT(std::string(dsv4_last_error_message()), Catch::Contains("expected 7"));
    std::vector<int32_t> too_long(60, 3);
    b = dsv4_batch_for_sequence(too_long.data(), 60, 0);
    CHECK(dsv4_decode(f.ctx, &b) == DSV4_ERR_CONTEXT_FULL);
    b = dsv4_batch_for_sequence(&next, 0, 0);
    CHECK(dsv4_decode(f.ctx, &b) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK(dsv4_decode(f.ctx, nullptr) == DSV4_ERR_INVALID_ARGUMENT);

    int32_t len = 0;
    REQUIRE(dsv4_seq_length(f.ctx, 0, &len) == DSV4_OK);
    CHECK(len == 7);
    int32_t pos = 7;
    b = dsv4_batch_for_sequence(&next, 1, 0);
    b.pos = &pos;
    REQUIRE(dsv4_decode(f.ctx, &b) == DSV4_OK);
    CHECK(f.last_logits() == expected);
    CHECK(dsv4_last_error_status() == DSV4_OK);  // a successful call clears the error
}

TEST_CASE("an abort mid-evaluation cancels and rolls back", "[errors]") {
    struct Abort {
        int calls = 0, abort_at = -1;
    } a;
    auto cb = [](void *u) {
        auto *s = static_cast<Abort *>(u);
        return ++s->calls == s->abort_at ? 1 : 0;
    };
    Fixture f(cb, &a);
    std::vector<int32_t> prompt = {0, 1, 2, 3, 4, 5, 6, 7, 8};
    dsv4_batch b = dsv4_batch_for_sequence(prompt.data(), 9, 0);
    REQUIRE(dsv4_decode(f.ctx, &b) == DSV4_OK);
    int32_t next = 42;
    b = dsv4_batch_for_sequence(&next, 1, 0);
    REQUIRE(dsv4_decode(f.ctx, &b) == DSV4_OK);
    const auto expected = f.last_logits();
    REQUIRE(dsv4_seq_truncate(f.ctx, 0, 9) == DSV4_OK);
    a.calls = 0;
    a.abort_at = 3;  // inside the layer loop
    CHECK(dsv4_decode(f.ctx, &b) == DSV4_ERR_CANCELLED);
    int32_t len = 0;
    REQUIRE(dsv4_seq_length(f.ctx, 0, &len) == DSV4_OK);
    CHECK(len == 9);
    a.abort_at = -1;
    REQUIRE(dsv4_decode(f.ctx, &b) == DSV4_OK);
    CHECK(f.last_logits() == expected);
}

TEST_CASE("the eval callback observes named intermediate tensors", "[errors]") {
    struct Seen {
        std::vector<std::string> names;
        int64_t kv_rows = 0;
    } seen;
    auto cb = [](const char *name, int32_t layer, dsv4_dtype dtype, int64_t rows, int64_t cols, const void *data, void *u) {
        auto *s = static_cast<Seen *>(u);
        s->names.push_back(name);
        if (std::string(name) == "L0.kv") {
            s->kv_rows = rows;
            CHECK(cols == 512);
            CHECK(dtype == DSV4_DTYPE_F32);
            CHECK(layer == 0);
            CHECK(data != nullptr);
        }
        return 1;
    };
    Fixture f(nullptr, nullptr, cb, &seen);
    std::vector<int32_t> prompt = {0, 1, 2, 3, 4};
    dsv4_batch b = dsv4_batch_for_sequence(prompt.data(), 5, 0);
    REQUIRE(dsv4_decode(f.ctx, &b) == DSV4_OK);
    CHECK(seen.kv_rows == 5);
    auto has = [&](const char *n) { return std::find(seen.names.begin(), seen.names.end(), n) != seen.names.end(); };
    CHECK(has("L2.index_topk"));
    CHECK(has("L3.kv_comp"));
    CHECK(has("L1.gate_ids"));
    CHECK(has("L3.h_out"));
}

TEST_CASE("the eval callback receives only the tensors its ask callback wants, and logits do not change", "[errors]") {
    struct Seen {
        std::vector<std::string> asked, got;
    } seen;
    const auto ask = [](const char *name, int32_t, void *user) {
        static_cast<Seen *>(user)->asked.emplace_back(name);
        const std::string n(name);
        return int(n == "L2.index_topk" || n == "L3.kv_comp" || n == "L0.h_out");
    };
    const auto get = [](const char *name, int32_t, dsv4_dtype, int64_t rows, int64_t cols, const void *, void *user) {
        static_cast<Seen *>(user)->got.emplace_back(std::string(name) + ":" + std::to_string(rows) + "x" + std::to_string(cols));
        return 1;
    };
    std::vector<int32_t> prompt(260);
    for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = int32_t((i * 13 + 5) % 2048);
    dsv4_batch b{};
    b.struct_size = sizeof b;
    b.tokens = prompt.data();
    b.n_tokens = int32_t(prompt.size());
    Fixture plain(nullptr, nullptr, nullptr, nullptr, 512);
    REQUIRE(dsv4_decode(plain.ctx, &b) == DSV4_OK);
    Fixture asked(nullptr, nullptr, get, &seen, 512, ask);
    REQUIRE(dsv4_decode(asked.ctx, &b) == DSV4_OK);
    CHECK(asked.last_logits() == plain.last_logits());
    // 260 tokens: layer 3 (ratio 128) emits 2 entries; layer 2's top-k is min(16, 65 entries) wide
    CHECK(seen.got == std::vector<std::string>{"L0.h_out:260x1024", "L2.index_topk:260x16", "L3.kv_comp:2x512"});
    CHECK(std::count(seen.asked.begin(), seen.asked.end(), std::string("L1.attn_out")) == 1);
    CHECK(std::count(seen.asked.begin(), seen.asked.end(), std::string("L2.index_scores")) == 1);
}

TEST_CASE("MTP logits are available on request", "[errors]") {
    Fixture f;
    std::vector<int32_t> prompt = {0, 10, 20, 30};
    std::vector<int8_t> want(4, 1);
    dsv4_batch b = dsv4_batch_for_sequence(prompt.data(), 4, 0);
    b.want_output = want.data();
    REQUIRE(dsv4_decode(f.ctx, &b) == DSV4_OK);
    std::vector<int32_t> next = {10, 20, 30, 40};
    std::vector<float> out(4 * 2048);
    CHECK(dsv4_mtp_logits(f.ctx, next.data(), 4, out.data(), 10) == DSV4_ERR_BUFFER_TOO_SMALL);
    REQUIRE(dsv4_mtp_logits(f.ctx, next.data(), 4, out.data(), out.size()) == DSV4_OK);
    for (float v : out) REQUIRE(std::isfinite(v));
    // the MTP row differs from the main head's row for the same position
    const float *main_logits;
    int32_t n;
    REQUIRE(dsv4_get_logits(f.ctx, 3, &main_logits, &n) == DSV4_OK);
    CHECK(std::vector<float>(main_logits, main_logits + n) != std::vector<float>(out.begin() + 3 * 2048, out.end()));
    // positions must continue: running the same outputs again is refused
    CHECK(dsv4_mtp_logits(f.ctx, next.data(), 4, out.data(), out.size()) == DSV4_ERR_INVALID_ARGUMENT_POSITION);
}

// AddressSanitizer reserves terabytes of shadow memory, so an address-space cap cannot be used under it.
#if defined(__SANITIZE_ADDRESS__)
#define DSV4_TEST_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DSV4_TEST_UNDER_ASAN 1
#endif
#endif
#if !defined(DSV4_TEST_UNDER_ASAN)
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

TEST_CASE("out of memory is a status, and the context stays usable", "[errors]") {
    // In a child process, cap the address space just above what is in use, then ask for a long prefill.
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int code = 0;
        {
            Fixture f(nullptr, nullptr, nullptr, nullptr, 8192);
            std::vector<int32_t> warm = {0, 1, 2};
            dsv4_batch b = dsv4_batch_for_sequence(warm.data(), 3, 0);
            if (dsv4_decode(f.ctx, &b) != DSV4_OK) _exit(10);
            std::FILE *statm = std::fopen("/proc/self/statm", "r");
            long pages = 0;
            if (!statm || std::fscanf(statm, "%ld", &pages) != 1) _exit(11);
            std::fclose(statm);
            rlimit old{};
            getrlimit(RLIMIT_AS, &old);
            rlimit lim = old;
            lim.rlim_cur = rlim_t(pages) * rlim_t(sysconf(_SC_PAGESIZE)) + (rlim_t(8) << 20);
            setrlimit(RLIMIT_AS, &lim);
            std::vector<int32_t> many(4000, 7);  // fits n_ctx, but the activations need far more than 8 MiB
            b = dsv4_batch_for_sequence(many.data(), 4000, 0);
            const dsv4_status st = dsv4_decode(f.ctx, &b);
            setrlimit(RLIMIT_AS, &old);
            if (st != DSV4_ERR_OUT_OF_MEMORY) code = 20 + int(st);
            int32_t len = -1;
            if (!code && (dsv4_seq_length(f.ctx, 0, &len) != DSV4_OK || len != 3)) code = 12;
            int32_t next = 9;
            b = dsv4_batch_for_sequence(&next, 1, 0);
            if (!code && dsv4_decode(f.ctx, &b) != DSV4_OK) code = 13;
        }
        _exit(code);
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
}
#endif
