// Both routed-expert formats load and agree: the tiny-flash FP4 experts re-encoded to FP8 with 128x128 e8m0
// block scales the way convert.py --expert-dtype fp8 does it (block scale = max of the per-32 scales / 2^6; every
// FP4 value times its power-of-two ratio is exact in e4m3) give the same weights, so logits agree to FP8 noise.
#include <catch2/catch.hpp>
#include <cmath>
#include <dsv4/dsv4.h>
#include <nlohmann/json.hpp>

#include "core/numeric.h"
#include "support/fixtures.h"
#include "support/forge.h"

using namespace dsv4;

namespace {
// FP4 [rows, cols] packed + per-32 scales → FP8 [rows, cols] + 128x128 scales.
void fp4_to_fp8(const test::ForgedTensor &w, const test::ForgedTensor &s, test::ForgedTensor &w8, test::ForgedTensor &s8) {
    const int64_t rows = w.shape[0], cols = w.shape[1] * 2, br = (rows + 127) / 128, bc = (cols + 127) / 128;
    std::vector<int> block_max(size_t(br * bc), -1000);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t g = 0; g < cols / 32; ++g) {
            int &mx = block_max[size_t((r / 128) * bc + (g * 32) / 128)];
            mx = std::max(mx, core::e8m0_exponent(s.data[size_t(r * (cols / 32) + g)]));
        }
    w8 = {w.name, "F8_E4M3", {rows, cols}, std::vector<uint8_t>(size_t(rows * cols))};
    s8 = {s.name, "F8_E8M0", {br, bc}, std::vector<uint8_t>(size_t(br * bc))};
    for (size_t b = 0; b < block_max.size(); ++b) s8.data[b] = core::e8m0_from_exponent(block_max[b] - 6);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) {
            const float v = core::fp4_e2m1_to_f32(core::fp4_unpack(&w.data[size_t(r * cols / 2)], size_t(c)));
            const int e32 = core::e8m0_exponent(s.data[size_t(r * (cols / 32) + c / 32)]);
            const float scaled = std::ldexp(v, e32 - (block_max[size_t((r / 128) * bc + c / 128)] - 6));
            const uint8_t code = core::f32_to_fp8_e4m3(scaled);
            REQUIRE(core::fp8_e4m3_to_f32(code) == scaled);  // lossless
            w8.data[size_t(r * cols + c)] = code;
        }
}

std::vector<std::vector<float>> logits_of(const std::string &dir, const std::vector<int32_t> &tokens) {
    dsv4_model *model = nullptr;
    REQUIRE(dsv4_model_load(dir.c_str(), nullptr, &model) == DSV4_OK);
    dsv4_context *ctx = nullptr;
    REQUIRE(dsv4_context_create(model, nullptr, &ctx) == DSV4_OK);
    std::vector<int8_t> want(tokens.size(), 1);
    dsv4_batch b = dsv4_batch_for_sequence(tokens.data(), int32_t(tokens.size()), 0);
    b.want_output = want.data();
    REQUIRE(dsv4_decode(ctx, &b) == DSV4_OK);
    std::vector<std::vector<float>> out;
    for (int32_t i = 0; i < dsv4_n_outputs(ctx); ++i) {
        const float *l;
        int32_t n;
        REQUIRE(dsv4_get_logits(ctx, i, &l, &n) == DSV4_OK);
        out.emplace_back(l, l + n);
    }
    dsv4_context_free(ctx);
    dsv4_model_free(model);
    return out;
}
}  // namespace

TEST_CASE("FP8 routed experts load and agree with the FP4 original", "[experts]") {
    auto tensors = test::tiny_flash_tensors();
    std::map<std::string, size_t> index;
    for (size_t i = 0; i < tensors.size(); ++i) index[tensors[i].name] = i;
    int converted = 0;
    for (auto &t : tensors) {
        if (t.name.find(".experts.") == std::string::npos || t.name.size() < 7 || t.name.substr(t.name.size() - 7) != ".weight") continue;
        auto &scale = tensors[index.at(t.name.substr(0, t.name.size() - 7) + ".scale")];
        test::ForgedTensor w8, s8;
        fp4_to_fp8(t, scale, w8, s8);
        t = w8;
        scale = s8;
        ++converted;
    }
    CHECK(converted == 5 * 8 * 3);
    auto config = nlohmann::json::parse(test::tiny_flash_config());
    config["expert_dtype"] = "fp8";
    const std::string fp8_dir = test::forge_checkpoint("fp8-experts", tensors, config.dump());

    dsv4_model *model = nullptr;
    REQUIRE(dsv4_model_load(fp8_dir.c_str(), nullptr, &model) == DSV4_OK);
    dsv4_model_info info{};
    info.struct_size = sizeof info;
    REQUIRE(dsv4_model_get_info(model, &info) == DSV4_OK);
    CHECK(info.expert_dtype == DSV4_DTYPE_F8_E4M3);
    dsv4_model_free(model);

    // Without expert_dtype the stored dtype decides (older root configs lack the key, spec §15.3).
    config.erase("expert_dtype");
    const std::string implicit_dir = test::forge_checkpoint("fp8-implicit", tensors, config.dump());
    REQUIRE(dsv4_model_load(implicit_dir.c_str(), nullptr, &model) == DSV4_OK);
    REQUIRE(dsv4_model_get_info(model, &info) == DSV4_OK);
    CHECK(info.expert_dtype == DSV4_DTYPE_F8_E4M3);
    dsv4_model_free(model);

    // A config that says fp4 over FP8 tensors is a dtype mismatch, named.
    config["expert_dtype"] = "fp4";
    const std::string wrong_dir = test::forge_checkpoint("fp8-wrong", tensors, config.dump());
    CHECK(dsv4_model_load(wrong_dir.c_str(), nullptr, &model) == DSV4_ERR_WEIGHTS_MISMATCH);
    CHECK_THAT(std::string(dsv4_last_error_message()), Catch::Contains("layers.0.ffn.experts.0.w1.weight: dtype F8_E4M3, expected I8"));

    const std::vector<int32_t> tokens = {0, 194, 916, 623, 292, 17, 1500, 3};
    const auto fp4 = logits_of(test::tiny_flash_dir(), tokens), fp8 = logits_of(fp8_dir, tokens);
    double worst = 0;
    for (size_t i = 0; i < fp4.size(); ++i)
        for (size_t v = 0; v < fp4[i].size(); ++v) worst = std::max(worst, double(std::fabs(fp4[i][v] - fp8[i][v])));
    INFO("max |dlogit| FP4 vs FP8 experts: " << worst);
    CHECK(worst < 0.5);  // same weights; only the GEMM scale blocking differs (FP8 noise)
}
