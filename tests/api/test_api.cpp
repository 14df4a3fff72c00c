// The C ABI contract: version twins, pinned status values, params init, thread-local last error, layouts.
#include <catch2/catch.hpp>
#include <cstring>
#include <cstddef>
#include <dsv4/dsv4.h>
#include <string>
#include <thread>
#include <vector>

#include "support/fixtures.h"

extern "C" int dsv4_test_header_c99(void);

// Struct layouts are ABI: appending is allowed, moving a field is not.
static_assert(offsetof(dsv4_model_params, struct_size) == 0);
static_assert(offsetof(dsv4_model_params, progress_callback) == 8);
static_assert(offsetof(dsv4_context_params, n_ctx) == 8);
static_assert(offsetof(dsv4_context_params, abort_callback) == 24);
static_assert(offsetof(dsv4_batch, n_tokens) == 8);
static_assert(offsetof(dsv4_batch, tokens) == 16);
static_assert(offsetof(dsv4_batch, seq) == 48);
static_assert(offsetof(dsv4_model_info, name) == 8);
static_assert(offsetof(dsv4_memory_stats, cache_bytes) == 8);
static_assert(sizeof(dsv4_status) == 4);

TEST_CASE("version macros and runtime twins agree", "[api]") {
    CHECK(dsv4_version_number() == DSV4_VERSION_NUMBER);
    CHECK(std::string(dsv4_version_string()) == DSV4_VERSION_STRING);
    CHECK(dsv4_api_version() == DSV4_API_VERSION);
    CHECK(std::to_string(DSV4_VERSION_MAJOR) + "." + std::to_string(DSV4_VERSION_MINOR) + "." +
              std::to_string(DSV4_VERSION_PATCH) == DSV4_VERSION_STRING);
    CHECK_THAT(std::string(dsv4_build_info()), Catch::Contains(DSV4_VERSION_STRING));
    CHECK(dsv4_test_header_c99() == 1);
}

TEST_CASE("status codes are pinned and named", "[api]") {
    // Values are ABI: never renumber.
    CHECK(DSV4_OK == 0);
    CHECK(DSV4_ERR_INVALID_ARGUMENT == 1);
    CHECK(DSV4_ERR_FORMAT == 3);
    CHECK(DSV4_ERR_WEIGHTS == 5);
    CHECK(DSV4_ERR_INTERNAL == 14);
    CHECK(DSV4_ERR_FORMAT_NESTING == (3 | (4 << 8)));
    CHECK(DSV4_ERR_WEIGHTS_SHAPE == (5 | (3 << 8)));
    CHECK(DSV4_ERR_UNSUPPORTED_REWIND == (9 | (1 << 8)));
    CHECK(DSV4_STATUS_PRIMARY(DSV4_ERR_FORMAT_OVERLAP) == DSV4_ERR_FORMAT);
    CHECK(std::string(dsv4_status_name(DSV4_ERR_WEIGHTS_SHAPE)) == "DSV4_ERR_WEIGHTS_SHAPE");
    CHECK(std::string(dsv4_status_name(dsv4_status(9999))) == "DSV4_UNKNOWN_STATUS");
    CHECK(std::string(dsv4_dtype_name(DSV4_DTYPE_F8_E4M3)) == "F8_E4M3");
}

TEST_CASE("params init fills defaults and checks the size", "[api]") {
    dsv4_model_params mp{};
    CHECK(dsv4_model_params_init(&mp, sizeof mp) == DSV4_OK);
    CHECK(mp.struct_size == sizeof mp);
    CHECK(mp.use_mmap == 1);
    CHECK(mp.repack_weights == 1);
    CHECK(dsv4_model_params_init(&mp, 4) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK(dsv4_model_params_init(nullptr, sizeof mp) == DSV4_ERR_INVALID_ARGUMENT);
    dsv4_context_params cp = dsv4_context_default_params();
    CHECK(cp.n_ctx == 4096);
    CHECK(cp.n_seq_max == 1);
    CHECK(cp.n_rewind == 32);
}

TEST_CASE("a caller built against an older header (a shorter params struct) inits and creates a context", "[api]") {
    // As a program compiled before dsv4_context_params::eval_ask existed: its struct ends at eval_user_data.
    const size_t old_size = offsetof(dsv4_context_params, eval_ask);
    union {
        dsv4_context_params p;
        unsigned char bytes[sizeof(dsv4_context_params)];
    } u;
    std::memset(u.bytes, 0xAB, sizeof u.bytes);  // what lies past the old struct must not be read
    REQUIRE(dsv4_context_params_init(&u.p, old_size) == DSV4_OK);
    CHECK(u.p.struct_size == old_size);
    CHECK(u.p.n_ctx == 4096);
    CHECK(u.bytes[old_size] == 0xAB);  // nothing written past the caller's struct
    dsv4_model *m = nullptr;
    REQUIRE(dsv4_model_load(dsv4::test::tiny_flash_dir().c_str(), nullptr, &m) == DSV4_OK);
    dsv4_context *ctx = nullptr;
    REQUIRE(dsv4_context_create(m, &u.p, &ctx) == DSV4_OK);
    int32_t token = 5;
    dsv4_batch b{};
    b.struct_size = sizeof b;
    b.tokens = &token;
    b.n_tokens = 1;
    CHECK(dsv4_decode(ctx, &b) == DSV4_OK);  // the unknown eval_ask bytes (0xAB...) were never read
    dsv4_context_free(ctx);
    dsv4_model_free(m);
    // and a newer caller's longer struct: the library's fields filled, the tail zeroed
    unsigned char longer[sizeof(dsv4_context_params) + 16];
    std::memset(longer, 0xAB, sizeof longer);
    REQUIRE(dsv4_context_params_init(reinterpret_cast<dsv4_context_params *>(longer), sizeof longer) == DSV4_OK);
    CHECK(longer[sizeof longer - 1] == 0);
}

TEST_CASE("devices: the query lists the CPU first, and a device that cannot be had fails before any reading", "[api]") {
    REQUIRE(dsv4_device_count() >= 1);
    dsv4_device_info d{};
    d.struct_size = sizeof d;
    REQUIRE(dsv4_device_get_info(0, &d) == DSV4_OK);
    CHECK(std::string(d.spec) == "cpu");
    CHECK(std::string(d.description).rfind("cpu-", 0) == 0);
    CHECK(dsv4_device_get_info(dsv4_device_count(), &d) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK(std::string(dsv4_build_info()).find("backends: cpu") != std::string::npos);

    dsv4_model_params mp = dsv4_model_default_params();
    CHECK(mp.device == nullptr);
    dsv4_model *m = nullptr;
    mp.device = "cuda:x";
    CHECK(dsv4_model_load(dsv4::test::tiny_flash_dir().c_str(), &mp, &m) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK(std::string(dsv4_last_error_message()).find("cuda:x") != std::string::npos);
    CHECK(m == nullptr);
    mp.device = "tpu";
    CHECK(dsv4_model_load(dsv4::test::tiny_flash_dir().c_str(), &mp, &m) == DSV4_ERR_INVALID_ARGUMENT);
    // one past the GPUs this machine has (devices after the CPU): unsupported without CUDA in the build, else absent
    const std::string beyond = "cuda:" + std::to_string(dsv4_device_count() - 1);
    mp.device = beyond.c_str();
    const dsv4_status st = dsv4_model_load(dsv4::test::tiny_flash_dir().c_str(), &mp, &m);
    CHECK((st == DSV4_ERR_UNSUPPORTED || st == DSV4_ERR_BACKEND));
    CHECK(m == nullptr);

    mp.device = "cpu";
    REQUIRE(dsv4_model_load(dsv4::test::tiny_flash_dir().c_str(), &mp, &m) == DSV4_OK);
    dsv4_model_info info{};
    info.struct_size = sizeof info;
    REQUIRE(dsv4_model_get_info(m, &info) == DSV4_OK);
    CHECK(std::string(info.device).rfind("cpu-", 0) == 0);
    dsv4_model_free(m);
}

TEST_CASE("the last error is per thread and names the culprit", "[api]") {
    dsv4_model *m = nullptr;
    REQUIRE(dsv4_model_load("/no/such/dir", nullptr, &m) == DSV4_ERR_IO_NOT_FOUND);
    CHECK(dsv4_last_error_status() == DSV4_ERR_IO_NOT_FOUND);
    CHECK_THAT(std::string(dsv4_last_error_message()), Catch::Contains("/no/such/dir"));
    std::string other;
    std::thread([&] { other = dsv4_last_error_message(); }).join();
    CHECK(other.empty());
    dsv4_clear_last_error();
    CHECK(dsv4_last_error_status() == DSV4_OK);
    CHECK(std::string(dsv4_last_error_message()).empty());
}

TEST_CASE("an older, smaller info struct is filled only up to its size", "[api]") {
    dsv4_model *m = nullptr;
    REQUIRE(dsv4_model_load(dsv4::test::tiny_flash_dir().c_str(), nullptr, &m) == DSV4_OK);
    struct Padded {
        dsv4_model_info info;
        unsigned char guard[16];
    } p;
    std::memset(&p, 0xAB, sizeof p);
    p.info.struct_size = offsetof(dsv4_model_info, dim);  // knows name and vocab_size only
    REQUIRE(dsv4_model_get_info(m, &p.info) == DSV4_OK);
    CHECK(p.info.vocab_size == 2048);
    CHECK(p.info.dim == int32_t(0xABABABAB));
    CHECK(p.guard[0] == 0xAB);
    dsv4_layer_info li{};
    li.struct_size = sizeof li;
    REQUIRE(dsv4_model_get_layer_info(m, 2, &li) == DSV4_OK);
    CHECK(li.kind == DSV4_LAYER_KIND_CSA);
    CHECK(li.compress_ratio == 4);
    CHECK(dsv4_model_get_layer_info(m, 5, &li) == DSV4_ERR_INVALID_ARGUMENT);
    dsv4_model_free(m);
}

TEST_CASE("the log callback receives messages at or above the level", "[api]") {
    struct Log {
        std::vector<std::pair<dsv4_log_level, std::string>> lines;
    } log;
    dsv4_log_set([](dsv4_log_level level, const char *message, void *u) {
        static_cast<Log *>(u)->lines.emplace_back(level, message);
    }, &log);
    dsv4_log_set_level(DSV4_LOG_LEVEL_WARN);
    dsv4_model *m = nullptr;
    REQUIRE(dsv4_model_load(dsv4::test::tiny_flash_dir().c_str(), nullptr, &m) == DSV4_OK);
    dsv4_model_free(m);
    CHECK(log.lines.empty());  // loading logs at INFO only
    dsv4_log_set_level(DSV4_LOG_LEVEL_INFO);
    REQUIRE(dsv4_model_load(dsv4::test::tiny_flash_dir().c_str(), nullptr, &m) == DSV4_OK);
    dsv4_model_free(m);
    REQUIRE(!log.lines.empty());
    CHECK(log.lines.back().first == DSV4_LOG_LEVEL_INFO);
    CHECK_THAT(log.lines.back().second, Catch::Contains("loaded"));
    dsv4_log_set(nullptr, nullptr);
    dsv4_log_set_level(DSV4_LOG_LEVEL_WARN);
}
