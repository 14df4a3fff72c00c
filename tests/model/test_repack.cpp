// The load-time repack (dsv4_model_params::repack_weights): which matrices get a packed copy, and that the model
// computes the same function from it (only fp32 summation order differs from the checkpoint-layout kernels).
#include <catch2/catch.hpp>
#include <cmath>
#include <dsv4/dsv4.h>

#include "backend/cpu/isa.h"
#include "model/model.h"
#include "support/fixtures.h"

using namespace dsv4;

namespace {
std::vector<float> last_logits(bool repack, const std::vector<int32_t> &tokens) {
    dsv4_model_params mp = dsv4_model_default_params();
    mp.repack_weights = repack;
    dsv4_model *model = nullptr;
    REQUIRE(dsv4_model_load(test::tiny_flash_dir().c_str(), &mp, &model) == DSV4_OK);
    dsv4_context *ctx = nullptr;
    REQUIRE(dsv4_context_create(model, nullptr, &ctx) == DSV4_OK);
    dsv4_batch b = dsv4_batch_for_sequence(tokens.data(), int32_t(tokens.size()), 0);
    REQUIRE(dsv4_decode(ctx, &b) == DSV4_OK);
    const float *l;
    int32_t n;
    REQUIRE(dsv4_get_logits(ctx, 0, &l, &n) == DSV4_OK);
    std::vector<float> out(l, l + n);
    dsv4_context_free(ctx);
    dsv4_model_free(model);
    return out;
}
}  // namespace

TEST_CASE("repacked weights: every FP4/FP8 matrix gets a packed copy where the kernels use it, same logits", "[repack]") {
    const bool kernels = backend::cpu::selected_isa() >= backend::cpu::Isa::avx512_bf16;
    model::LoadOptions options;
    for (const bool repack : {false, true}) {
        options.repack_weights = repack;
        const auto m = model::Model::load(test::tiny_flash_dir(), options);
        int fp4 = 0, fp8 = 0, packed = 0;
        for (const model::LayerWeights &l : m->weights().layers) {
            for (const core::Fp8Matrix *w : {&l.wq_a, &l.wq_b, &l.wkv, &l.wo_a, &l.wo_b, &l.shared.w1, &l.shared.w2, &l.shared.w3}) {
                ++fp8;
                packed += w->packed != nullptr;
            }
            for (const model::ExpertWeights &x : l.experts)
                for (const core::ExpertMatrix *w : {&x.w1, &x.w2, &x.w3}) {
                    ++fp4;
                    packed += w->fp4.packed != nullptr;
                    CHECK(w->fp4.w != w->fp4.packed);  // the checkpoint's view stays for the other paths
                }
        }
        CHECK(fp4 == 5 * 8 * 3);  // 4 layers and the MTP block, 8 experts each
        CHECK(packed == (repack && kernels ? fp4 + fp8 : 0));
    }
    // The kernels of both layouts sum in different orders; the logits agree to fp32 rounding noise carried through
    // bf16 activations (on this fixture exactly: its short rows leave few fp32 sums inexact); a wrong weight or
    // activation moves them by units.
    const std::vector<int32_t> tokens = {0, 194, 916, 623, 292, 17, 1500, 3};
    const auto in_place = last_logits(false, tokens), packed = last_logits(true, tokens);
    REQUIRE(in_place.size() == packed.size());
    double worst = 0;
    for (size_t v = 0; v < packed.size(); ++v) worst = std::max(worst, double(std::fabs(packed[v] - in_place[v])));
    INFO("max |dlogit| packed vs checkpoint layout: " << worst);
    CHECK(worst < 0.25);
}
