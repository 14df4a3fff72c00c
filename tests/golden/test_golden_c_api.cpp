// The shared fixture through the public C ABI only: a short and a long case, teacher-forced, against the
// golden logits with the fixture's own class tolerances (golden.json). eval-golden runs every case.
#include <catch2/catch.hpp>
#include <cmath>
#include <dsv4/dsv4.h>
#include <nlohmann/json.hpp>

#include "io/mapped_file.h"
#include "io/safetensors.h"
#include "support/fixtures.h"

TEST_CASE("golden logits through the C ABI", "[golden]") {
    const std::string dir = dsv4::test::data_dir() + "/tiny-flash";
    const auto g = nlohmann::json::parse(dsv4::io::read_text_file(dir + "/golden.json"));
    dsv4::io::SafetensorsFile golden(dir + "/golden.safetensors", true);
    dsv4_model *model = nullptr;
    REQUIRE(dsv4_model_load((dir + "/model").c_str(), nullptr, &model) == DSV4_OK);
    for (const auto &c : g["cases"]) {
        const std::string name = c["name"];
        if (name != "len5" && name != "len130") continue;
        const auto &tol = g["tolerance"]["classes"][c["class"].get<std::string>()];
        const double max_abs = tol["max_abs_logit_err"];
        const dsv4::io::TensorView *ref = nullptr;
        for (const auto &t : golden.tensors())
            if (t.name == name + ".teacher.logits") ref = &t;
        REQUIRE(ref);
        dsv4_context *ctx = nullptr;
        REQUIRE(dsv4_context_create(model, nullptr, &ctx) == DSV4_OK);
        std::vector<int32_t> prompt = c["prompt"].get<std::vector<int32_t>>();
        std::vector<int32_t> feed = c["teacher_tokens"].get<std::vector<int32_t>>();
        for (size_t row = 0; row <= feed.size(); ++row) {
            dsv4_batch b = row == 0 ? dsv4_batch_for_sequence(prompt.data(), int32_t(prompt.size()), 0)
                                    : dsv4_batch_for_sequence(&feed[row - 1], 1, 0);
            REQUIRE(dsv4_decode(ctx, &b) == DSV4_OK);
            const float *logits;
            int32_t n;
            REQUIRE(dsv4_get_logits(ctx, -1, &logits, &n) == DSV4_OK);
            REQUIRE(n == 2048);
            double worst = 0;
            for (int32_t v = 0; v < n; ++v) {
                float gv;
                std::memcpy(&gv, ref->data + 4 * (row * size_t(n) + size_t(v)), 4);
                worst = std::max(worst, std::fabs(double(logits[v]) - gv));
            }
            INFO(name << " row " << row);
            REQUIRE(worst <= max_abs);
        }
        dsv4_context_free(ctx);
    }
    dsv4_model_free(model);
}
