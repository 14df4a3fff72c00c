// Whole checkpoints through the C ABI: sharded loading, the tensor inventory check, and every kind of
// broken checkpoint with its own status and a message naming the file, tensor or field.
#include <catch2/catch.hpp>
#include <dsv4/dsv4.h>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "support/fixtures.h"
#include "support/forge.h"

using namespace dsv4::test;

namespace {
struct Loaded {
    dsv4_status status;
    std::string message;
    dsv4_model *model = nullptr;
    ~Loaded() { dsv4_model_free(model); }
};
std::unique_ptr<Loaded> load(const std::string &dir) {
    auto l = std::make_unique<Loaded>();
    l->status = dsv4_model_load(dir.c_str(), nullptr, &l->model);
    l->message = dsv4_last_error_message();
    return l;
}
ForgedTensor &find(std::vector<ForgedTensor> &ts, const std::string &name) {
    for (auto &t : ts)
        if (t.name == name) return t;
    throw std::runtime_error("no tensor " + name);
}
}  // namespace

TEST_CASE("the fixture checkpoint loads, single file and sharded, with the same content", "[checkpoint]") {
    auto single = load(tiny_flash_dir());
    REQUIRE(single->status == DSV4_OK);
    auto sharded = load(forge_sharded_checkpoint("sharded", tiny_flash_tensors(), tiny_flash_config(), 3));
    REQUIRE(sharded->status == DSV4_OK);
    dsv4_model_info a{}, b{};
    a.struct_size = b.struct_size = sizeof a;
    REQUIRE(dsv4_model_get_info(single->model, &a) == DSV4_OK);
    REQUIRE(dsv4_model_get_info(sharded->model, &b) == DSV4_OK);
    CHECK(a.n_bytes == b.n_bytes);
    CHECK(a.n_params == b.n_params);
    CHECK(a.n_layers == 4);
    CHECK(a.n_csa_layers == 1);
    CHECK(a.n_hca_layers == 1);
    CHECK(a.n_window_layers == 2);
    CHECK(a.expert_dtype == DSV4_DTYPE_FP4_E2M1);
    uint64_t fp4 = 0, total = 0;
    REQUIRE(dsv4_model_param_bytes(single->model, DSV4_DTYPE_FP4_E2M1, &fp4) == DSV4_OK);
    CHECK(fp4 == 5u * 8u * (128u * 128u + 256u * 64u + 128u * 128u));  // 5 blocks x 8 experts x (w1, w2, w3)
    for (int t = 0; t < DSV4_DTYPE_COUNT; ++t) {
        uint64_t n = 0;
        REQUIRE(dsv4_model_param_bytes(single->model, dsv4_dtype(t), &n) == DSV4_OK);
        total += n;
    }
    CHECK(total == a.n_bytes);
}

TEST_CASE("the progress callback reports and can cancel", "[checkpoint]") {
    struct State {
        uint64_t last = 0, total = 0;
        int calls = 0;
        bool cancel = false;
    } st;
    dsv4_model_params p = dsv4_model_default_params();
    p.progress_user_data = &st;
    p.progress_callback = [](uint64_t done, uint64_t total, void *u) {
        auto *s = static_cast<State *>(u);
        s->last = done;
        s->total = total;
        ++s->calls;
        return s->cancel ? 0 : 1;
    };
    dsv4_model *m = nullptr;
    REQUIRE(dsv4_model_load(tiny_flash_dir().c_str(), &p, &m) == DSV4_OK);
    CHECK(st.calls >= 1);
    CHECK(st.last == st.total);
    CHECK(st.total > 0);
    dsv4_model_free(m);
    st.cancel = true;
    CHECK(dsv4_model_load(tiny_flash_dir().c_str(), &p, &m) == DSV4_ERR_CANCELLED);
    CHECK(m == nullptr);
}

TEST_CASE("broken checkpoints give their own status and name what is wrong", "[checkpoint]") {
    const std::string config = tiny_flash_config();
    SECTION("missing tensor") {
        auto ts = tiny_flash_tensors();
        ts.erase(std::remove_if(ts.begin(), ts.end(), [](auto &t) { return t.name == "layers.2.attn.indexer.wq_b.weight"; }), ts.end());
        auto l = load(forge_checkpoint("missing", ts, config));
        CHECK(l->status == DSV4_ERR_WEIGHTS_MISSING);
        CHECK_THAT(l->message, Catch::Contains("layers.2.attn.indexer.wq_b.weight: missing"));
    }
    SECTION("wrong dtype") {
        auto ts = tiny_flash_tensors();
        find(ts, "layers.1.attn.attn_sink").dtype = "I32";
        auto l = load(forge_checkpoint("dtype", ts, config));
        CHECK(l->status == DSV4_ERR_WEIGHTS_DTYPE);
        CHECK_THAT(l->message, Catch::Contains("model.safetensors: layers.1.attn.attn_sink: dtype I32, expected F32"));
    }
    SECTION("wrong shape") {
        auto ts = tiny_flash_tensors();
        find(ts, "layers.0.attn.wq_a.weight").shape = {256, 128};
        auto l = load(forge_checkpoint("shape", ts, config));
        CHECK(l->status == DSV4_ERR_WEIGHTS_SHAPE);
        CHECK_THAT(l->message, Catch::Contains("layers.0.attn.wq_a.weight: shape [256, 128], expected [128, 256]"));
    }
    SECTION("several problems are reported at once") {
        auto ts = tiny_flash_tensors();
        find(ts, "layers.0.attn.wq_a.weight").shape = {256, 128};
        find(ts, "norm.weight").dtype = "F16";
        ts.erase(std::remove_if(ts.begin(), ts.end(), [](auto &t) { return t.name == "mtp.0.e_proj.scale"; }), ts.end());
        auto l = load(forge_checkpoint("several", ts, config));
        CHECK(l->status == DSV4_ERR_WEIGHTS_MISMATCH);
        CHECK_THAT(l->message, Catch::Contains("3 tensor problem(s)"));
        CHECK_THAT(l->message, Catch::Contains("layers.0.attn.wq_a.weight") && Catch::Contains("norm.weight") &&
                                   Catch::Contains("mtp.0.e_proj.scale"));
    }
    SECTION("hash table entries out of range") {
        auto ts = tiny_flash_tensors();
        find(ts, "layers.0.ffn.gate.tid2eid").data[0] = 99;
        auto l = load(forge_checkpoint("tid2eid", ts, config));
        CHECK(DSV4_STATUS_PRIMARY(l->status) == DSV4_ERR_WEIGHTS);
        CHECK_THAT(l->message, Catch::Contains("layers.0.ffn.gate.tid2eid"));
    }
    SECTION("non-finite norm weight") {
        auto ts = tiny_flash_tensors();
        auto &t = find(ts, "layers.3.ffn_norm.weight");
        t.data[0] = 0x80;
        t.data[1] = 0x7f;  // bf16 +inf
        auto l = load(forge_checkpoint("nan", ts, config));
        CHECK(DSV4_STATUS_PRIMARY(l->status) == DSV4_ERR_WEIGHTS);
        CHECK_THAT(l->message, Catch::Contains("layers.3.ffn_norm.weight: element 0 is not finite"));
    }
    SECTION("config inconsistent with the tensors") {
        auto j = nlohmann::json::parse(config);
        j["hidden_size"] = 512;
        auto l = load(forge_checkpoint("cfgshape", tiny_flash_tensors(), j.dump()));
        CHECK(DSV4_STATUS_PRIMARY(l->status) == DSV4_ERR_WEIGHTS);
        CHECK_THAT(l->message, Catch::Contains("embed.weight: shape [2048, 256], expected [2048, 512]"));
    }
    SECTION("missing config field") {
        auto j = nlohmann::json::parse(config);
        j.erase("index_n_heads");
        auto l = load(forge_checkpoint("cfgfield", tiny_flash_tensors(), j.dump()));
        CHECK(l->status == DSV4_ERR_CONFIG_MISSING_FIELD);
        CHECK_THAT(l->message, Catch::Contains("config.json: field 'index_n_heads'"));
    }
    SECTION("bad config JSON") {
        auto l = load(forge_checkpoint("cfgjson", tiny_flash_tensors(), "{ nope"));
        CHECK(l->status == DSV4_ERR_FORMAT_JSON);
        CHECK_THAT(l->message, Catch::Contains("config.json"));
    }
    SECTION("missing config.json") {
        const std::string dir = forge_checkpoint("nocfg", tiny_flash_tensors(), config);
        std::filesystem::remove(dir + "/config.json");
        auto l = load(dir);
        CHECK(l->status == DSV4_ERR_IO_NOT_FOUND);
        CHECK_THAT(l->message, Catch::Contains("config.json"));
    }
    SECTION("truncated shard") {
        const std::string dir = forge_checkpoint("trunc", tiny_flash_tensors(), config);
        std::filesystem::resize_file(dir + "/model.safetensors", 1000);
        auto l = load(dir);
        CHECK(l->status == DSV4_ERR_FORMAT_HEADER_SIZE);
        CHECK_THAT(l->message, Catch::Contains("model.safetensors"));
    }
    SECTION("unreadable shard") {
        const std::string dir = forge_checkpoint("unreadable", tiny_flash_tensors(), config);
        std::filesystem::remove(dir + "/model.safetensors");
        std::filesystem::create_directory(dir + "/model.safetensors");
        auto l = load(dir);
        CHECK(l->status == DSV4_ERR_IO_READ);
        CHECK_THAT(l->message, Catch::Contains("model.safetensors"));
    }
    SECTION("empty directory") {
        auto l = load(temp_dir("empty"));
        CHECK(l->status == DSV4_ERR_IO_NOT_FOUND);
    }
    SECTION("no such directory") {
        auto l = load("/nonexistent/dsv4/model");
        CHECK(l->status == DSV4_ERR_IO_NOT_FOUND);
        CHECK_THAT(l->message, Catch::Contains("/nonexistent/dsv4/model"));
    }
    SECTION("index naming a missing shard") {
        const std::string dir = forge_sharded_checkpoint("idxmissing", tiny_flash_tensors(), config, 2);
        std::filesystem::remove(dir + "/model-00002-of-00002.safetensors");
        auto l = load(dir);
        CHECK(l->status == DSV4_ERR_IO_NOT_FOUND);
        CHECK_THAT(l->message, Catch::Contains("model-00002-of-00002.safetensors"));
    }
    SECTION("index listing a tensor the shard lacks") {
        const std::string dir = forge_sharded_checkpoint("idxtensor", tiny_flash_tensors(), config, 2);
        auto index = nlohmann::json::parse(dsv4::io::read_text_file(dir + "/model.safetensors.index.json"));
        index["weight_map"]["ghost.weight"] = "model-00001-of-00002.safetensors";
        write_text(dir + "/model.safetensors.index.json", index.dump());
        auto l = load(dir);
        CHECK(l->status == DSV4_ERR_FORMAT_INDEX);
        CHECK_THAT(l->message, Catch::Contains("ghost.weight"));
    }
    SECTION("index with a path in a shard name") {
        const std::string dir = forge_sharded_checkpoint("idxpath", tiny_flash_tensors(), config, 2);
        write_text(dir + "/model.safetensors.index.json", R"({"weight_map": {"embed.weight": "../../etc/passwd"}})");
        auto l = load(dir);
        CHECK(l->status == DSV4_ERR_FORMAT_INDEX);
    }
    SECTION("tensor in two shards") {
        auto ts = tiny_flash_tensors();
        const std::string dir = forge_sharded_checkpoint("dup", ts, config, 2);
        // shard 1 holds the even-numbered tensors; put tensor 0 into shard 2 as well
        std::vector<ForgedTensor> second;
        for (size_t i = 1; i < ts.size(); i += 2) second.push_back(ts[i]);
        second.push_back(ts[0]);
        write_file(dir + "/model-00002-of-00002.safetensors", safetensors_image(second));
        auto l = load(dir);
        CHECK(DSV4_STATUS_PRIMARY(l->status) == DSV4_ERR_FORMAT);
        CHECK_THAT(l->message, Catch::Contains(ts[0].name));
    }
}

TEST_CASE("NULL arguments are rejected, not dereferenced", "[checkpoint]") {
    dsv4_model *m = reinterpret_cast<dsv4_model *>(0x1);
    CHECK(dsv4_model_load(nullptr, nullptr, &m) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK(m == nullptr);
    CHECK(dsv4_model_load(tiny_flash_dir().c_str(), nullptr, nullptr) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK_THAT(std::string(dsv4_last_error_message()), Catch::Contains("out_model"));
    dsv4_model_free(nullptr);
}
