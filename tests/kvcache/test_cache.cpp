// The cache manager's storage: paged entries (copy-on-write after fork, transactions), position rings,
// and the exact memory plan of the real Flash and Pro configs (spec §11).
#include <catch2/catch.hpp>
#include <cstring>

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

// A storage of its own (as a device's would be), delegating to host memory and counting what it holds.
class CountingStorage final : public kvcache::Storage {
public:
    std::string name() const override { return "counting"; }
    uint8_t *allocate(size_t bytes) override {
        live += bytes;
        return kvcache::host_storage()->allocate(bytes);
    }
    void release(uint8_t *p, size_t bytes) noexcept override {
        live -= bytes;
        kvcache::host_storage()->release(p, bytes);
    }
    void copy(uint8_t *dst, const uint8_t *src, size_t bytes) override { ++copies, std::memcpy(dst, src, bytes); }
    void zero(uint8_t *dst, size_t bytes) override { std::memset(dst, 0, bytes); }
    void download(void *host, const uint8_t *src, size_t bytes) override { std::memcpy(host, src, bytes); }
    void upload(uint8_t *dst, const void *host, size_t bytes) override { std::memcpy(dst, host, bytes); }
    size_t live = 0, copies = 0;
};

TEST_CASE("a cache lives in its device's storage: every byte allocated there, forks copy there, a state saved from "
          "one storage loads into another", "[kvcache]") {
    auto storage = std::make_shared<CountingStorage>();
    const auto c = io::parse_config(io::read_text_file(test::tiny_flash_dir() + "/config.json"));
    auto geo = kvcache::cache_geometry(c, 4);
    geo.resize(size_t(c.n_layers));
    std::vector<uint8_t> saved;
    {
        kvcache::SequenceCache sc(geo, storage);
        CHECK(storage->live == 0);  // nothing up front
        for (kvcache::LayerCache &l : sc.layers) {
            for (int64_t p = 0; p < 300; ++p) std::fill_n(l.window.write_row(p), l.window.row_len(), uint16_t(p));
            if (!l.geo.ratio) continue;
            for (int64_t p = 0; p < 300; ++p) std::fill_n(l.comp_rows.write_row(p), l.comp_rows.row_len(), float(p));
            for (int64_t e = 0; e < 300 / l.geo.ratio; ++e) std::fill_n(l.kv.append(), l.kv.entry_bytes(), uint8_t(e));
            if (l.geo.ratio != 4) continue;
            for (int64_t p = 0; p < 300; ++p) std::fill_n(l.index_rows.write_row(p), l.index_rows.row_len(), float(-p));
            for (int64_t e = 0; e < 75; ++e) std::fill_n(l.index_keys.append(), l.index_keys.entry_bytes(), uint8_t(e + 1));
        }
        sc.length = sc.high_water = 300;
        CHECK(storage->live == sc.allocated_bytes());
        {
            const size_t before = storage->live;
            kvcache::SequenceCache fork = sc;  // rings copied in the storage, pages shared
            CHECK(storage->copies > 0);
            size_t rings = 0;
            for (const kvcache::LayerCache &l : sc.layers) rings += l.window.bytes() + l.comp_rows.bytes() + l.index_rows.bytes();
            CHECK(storage->live == before + rings);
        }
        sc.serialize(saved);
    }
    CHECK(storage->live == 0);  // all of it released with the cache
    kvcache::SequenceCache host(geo);
    host.deserialize(saved.data(), saved.size());
    std::vector<uint8_t> again;
    host.serialize(again);
    CHECK(again == saved);
    CHECK(host.layers[2].index_keys.entry(74)[0] == 75);
}
