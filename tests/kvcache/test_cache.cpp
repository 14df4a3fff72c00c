// The cache manager's storage: paged entries (copy-on-write after fork, transactions), position rings,
// and the exact memory plan of the real Flash and Pro configs (spec §11).
#include <catch2/catch.hpp>

#include "io/config.h"
#include "io/mapped_file.h"
#include "kvcache/cache.h"
#include "support/fixtures.h"

using namespace dsv4;

TEST_CASE("paged entries: append, rollback, truncate, copy-on-write after a fork", "[kvcache]") {
    kvcache::PagedEntries e(3);
    for (int i = 0; i < 70; ++i) std::fill_n(e.append(), 3, uint8_t(i));
    CHECK(e.size() == 70);
    CHECK(e.pages().size() == 2);
    e.begin();
    for (int i = 70; i < 140; ++i) std::fill_n(e.append(), 3, uint8_t(i));
    CHECK(e.pages().size() == 3);
    e.rollback();
    CHECK(e.size() == 70);
    CHECK(e.pages().size() == 2);
    CHECK(e.entry(69)[0] == 69);

    kvcache::PagedEntries fork = e;  // shares both pages
    CHECK(fork.pages()[1].get() == e.pages()[1].get());
    std::fill_n(fork.append(), 3, uint8_t(200));  // writes into the shared last page: copied first
    CHECK(fork.pages()[1].get() != e.pages()[1].get());
    CHECK(fork.pages()[0].get() == e.pages()[0].get());
    CHECK(e.size() == 70);
    CHECK(fork.entry(70)[0] == 200);
    fork.truncate(10);
    CHECK(fork.size() == 10);
    CHECK(fork.pages().size() == 1);
    std::fill_n(fork.append(), 3, uint8_t(7));  // page 0 is still shared: copy, never overwrite e's entry 10
    CHECK(e.entry(10)[0] == 10);
    CHECK(fork.entry(10)[0] == 7);
}

TEST_CASE("position rings keep the last capacity positions and undo a transaction", "[kvcache]") {
    kvcache::PositionRing<float> r(5, 2);
    for (int p = 0; p < 7; ++p) std::fill_n(r.write_row(p), 2, float(p));
    CHECK(r.row(6)[0] == 6.0f);
    CHECK(r.row(2)[0] == 2.0f);
    r.begin();
    std::fill_n(r.write_row(7), 2, 7.0f);  // overwrites position 2
    std::fill_n(r.write_row(7), 2, 8.0f);
    CHECK(r.row(7)[1] == 8.0f);
    r.rollback();
    CHECK(r.row(2)[0] == 2.0f);
}

TEST_CASE("memory plan of the real Flash and Pro configs matches the spec's accounting", "[kvcache]") {
    for (const auto &[name, per_token, n_csa, n_hca] : {std::tuple{"deepseek-v4-flash", 21 * 651.0 / 4 + 20 * 583.0 / 128, 21, 20},
                                                        std::tuple{"deepseek-v4-pro", 30 * 651.0 / 4 + 31 * 583.0 / 128, 30, 31}}) {
        const auto c = io::parse_config(io::read_text_file(test::data_dir() + "/configs/" + name + ".json"));
        auto geo = kvcache::cache_geometry(c, 0);
        geo.resize(size_t(c.n_layers));
        const auto plan = kvcache::plan_memory(geo);
        INFO(name);
        CHECK(plan.n_csa == n_csa);
        CHECK(plan.n_hca == n_hca);
        CHECK(plan.bytes_per_4_tokens_csa == 448 + 7 + 128 + 64 + 4);
        CHECK(plan.bytes_per_128_tokens_hca == 448 + 7 + 128);
        CHECK(plan.bytes_per_1024_tokens / 1024.0 == Approx(per_token));
        // constant part: W rows of bf16 KV per layer + fp32 compressor state (spec §11.2: 5.4 + 11.6 MiB Flash)
        const double window_mib = c.n_layers * 128.0 * 512 * 2 / 1048576;
        const double states_mib = (n_csa * (2 * 8 * 1024 * 4 + 2 * 8 * 256 * 4) + n_hca * (2 * 128 * 512 * 4)) / 1048576.0;
        CHECK(plan.constant_bytes / 1048576.0 == Approx(window_mib + states_mib));
    }
}
