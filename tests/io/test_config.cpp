// config.json → ModelConfig: the real values are read, and every missing or inconsistent field is named.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/config.h"
#include "support/forge.h"

using namespace dsv4;
using nlohmann::json;

namespace {
std::pair<dsv4_status, std::string> parse(const json &j) {
    try {
        io::parse_config(j.dump());
        return {DSV4_OK, ""};
    } catch (const Error &e) {
        return {e.status(), e.what()};
    }
}
json tiny() { return json::parse(test::tiny_flash_config()); }
}  // namespace

TEST_CASE("the tiny-flash config parses into the layer schedule", "[config]") {
    io::ModelConfig c = io::parse_config(test::tiny_flash_config());
    CHECK(c.dim == 256);
    CHECK(c.n_layers == 4);
    CHECK(c.n_mtp_layers == 1);
    REQUIRE(c.layers.size() == 5);
    CHECK(c.layers[0].kind == DSV4_LAYER_KIND_WINDOW);
    CHECK(c.layers[2].kind == DSV4_LAYER_KIND_CSA);
    CHECK(c.layers[3].kind == DSV4_LAYER_KIND_HCA);
    CHECK(c.layers[4].mtp);
    CHECK(c.layers[0].hash_routed);
    CHECK(c.layers[1].hash_routed);
    CHECK_FALSE(c.layers[2].hash_routed);
    CHECK_FALSE(c.layers[4].hash_routed);
    CHECK(c.layers[0].rope_theta == 10000.0f);
    CHECK_FALSE(c.layers[0].yarn);
    CHECK(c.layers[2].rope_theta == 160000.0f);
    CHECK(c.layers[2].yarn);
    CHECK(c.rope_factor == 16.0f);
    CHECK(c.original_seq_len == 65536);
    CHECK(c.index_topk == 16);
    CHECK(c.route_scale == 1.5f);
    REQUIRE(c.expert_format);
    CHECK(*c.expert_format == io::ExpertFormat::fp4);
}

TEST_CASE("missing and invalid config fields are named", "[config]") {
    for (const char *field : {"hidden_size", "num_hidden_layers", "compress_ratios", "rope_scaling", "quantization_config",
                              "index_topk", "hc_sinkhorn_iters", "compress_rope_theta", "routed_scaling_factor"}) {
        json j = tiny();
        j.erase(field);
        auto [st, msg] = parse(j);
        INFO(field);
        CHECK(st == DSV4_ERR_CONFIG_MISSING_FIELD);
        CHECK_THAT(msg, Catch::Contains(field));
    }
    json j = tiny();
    j["rope_scaling"].erase("factor");
    auto [st, msg] = parse(j);
    CHECK(st == DSV4_ERR_CONFIG_MISSING_FIELD);
    CHECK_THAT(msg, Catch::Contains("rope_scaling.factor"));

    j = tiny();
    j["hidden_size"] = "big";
    CHECK(parse(j).first == DSV4_ERR_CONFIG_INVALID_FIELD);
    j = tiny();
    j["hidden_size"] = -4;
    CHECK(parse(j).first == DSV4_ERR_CONFIG_INVALID_FIELD);
    j = tiny();
    j["compress_ratios"][2] = 8;
    auto r = parse(j);
    CHECK(r.first == DSV4_ERR_CONFIG_INVALID_FIELD);
    CHECK_THAT(r.second, Catch::Contains("compress_ratios[2]"));
    j = tiny();
    j["quantization_config"]["weight_block_size"] = {64, 64};
    CHECK(parse(j).first == DSV4_ERR_CONFIG_INVALID_FIELD);
    j = tiny();
    j["scoring_func"] = "softmax";
    CHECK(parse(j).first == DSV4_ERR_CONFIG_INVALID_FIELD);
    j = tiny();
    j["expert_dtype"] = "int4";
    CHECK(parse(j).first == DSV4_ERR_CONFIG_INVALID_FIELD);
}

TEST_CASE("inconsistent configs are rejected", "[config]") {
    json j = tiny();
    j["compress_ratios"].erase(0);
    auto r = parse(j);
    CHECK(r.first == DSV4_ERR_CONFIG_INCONSISTENT);
    CHECK_THAT(r.second, Catch::Contains("compress_ratios"));
    j = tiny();
    j["o_groups"] = 3;
    CHECK(parse(j).first == DSV4_ERR_CONFIG_INCONSISTENT);
    j = tiny();
    j["num_experts_per_tok"] = 9;
    CHECK(parse(j).first == DSV4_ERR_CONFIG_INCONSISTENT);
    j = tiny();
    j["compress_ratios"][4] = 4;  // an MTP block must be window-only
    CHECK(parse(j).first == DSV4_ERR_CONFIG_INCONSISTENT);
    j = tiny();
    j["index_head_dim"] = 96;
    CHECK(parse(j).first == DSV4_ERR_CONFIG_INCONSISTENT);
    CHECK(parse(json::array()).first == DSV4_ERR_FORMAT_JSON);
    try {
        io::parse_config("{\"hidden_size\": ");
        FAIL("no error");
    } catch (const Error &e) {
        CHECK(e.status() == DSV4_ERR_FORMAT_JSON);
        CHECK_THAT(std::string(e.what()), Catch::Contains("config.json"));
    }
}
