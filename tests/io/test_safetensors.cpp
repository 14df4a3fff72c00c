// Broken safetensors files: each gives its own status and a message naming the file and tensor.
#include <catch2/catch.hpp>

#include "core/error.h"
#include "io/safetensors.h"
#include "support/forge.h"

using namespace dsv4;
using dsv4::test::raw_image;

namespace {
struct Outcome {
    dsv4_status status = DSV4_OK;
    std::string message;
};
Outcome validate(const std::vector<uint8_t> &image) {
    try {
        std::vector<io::TensorView> tensors;
        io::SafetensorsFile::validate_buffer(image.data(), image.size(), "forged.safetensors", &tensors);
        return {};
    } catch (const Error &e) {
        return {e.status(), e.what()};
    }
}
std::vector<uint8_t> bytes(size_t n) { return std::vector<uint8_t>(n, 0); }
}  // namespace

TEST_CASE("a valid image parses with zero-copy views", "[safetensors]") {
    std::vector<test::ForgedTensor> t = {{"a", "F32", {2, 3}, bytes(24)}, {"b", "BF16", {4}, bytes(8)}, {"c", "I8", {0}, {}}};
    t[0].data[4] = 0x80;
    auto image = test::safetensors_image(t);
    std::vector<io::TensorView> views;
    io::SafetensorsFile::validate_buffer(image.data(), image.size(), "x", &views);
    REQUIRE(views.size() == 3);
    CHECK(views[0].name == "a");
    CHECK(views[0].shape == std::vector<int64_t>{2, 3});
    CHECK(views[0].nbytes == 24);
    CHECK(views[0].data[4] == 0x80);
    CHECK(views[0].data >= image.data());
    CHECK(views[0].data < image.data() + image.size());
}

TEST_CASE("broken safetensors headers are rejected with specific statuses", "[safetensors]") {
    SECTION("truncated file") {
        auto o = validate({1, 2, 3});
        CHECK(o.status == DSV4_ERR_FORMAT_TRUNCATED);
        CHECK_THAT(o.message, Catch::Contains("forged.safetensors"));
    }
    SECTION("header length past the end") {
        auto o = validate(raw_image("{}", {}, 1000));
        CHECK(o.status == DSV4_ERR_FORMAT_HEADER_SIZE);
        CHECK_THAT(o.message, Catch::Contains("runs past the end"));
    }
    SECTION("header length over the format limit") {
        auto o = validate(raw_image("{}", {}, uint64_t(1) << 40));
        CHECK(o.status == DSV4_ERR_FORMAT_HEADER_SIZE);
    }
    SECTION("garbage JSON") {
        auto o = validate(raw_image("{\"a\": [1, 2,, }", {}));
        CHECK(o.status == DSV4_ERR_FORMAT_JSON);
        CHECK_THAT(o.message, Catch::Contains("forged.safetensors"));
    }
    SECTION("deeply nested JSON") {
        std::string deep(100000, '[');
        auto o = validate(raw_image(deep, {}));
        CHECK(o.status == DSV4_ERR_FORMAT_NESTING);
    }
    SECTION("not an object") {
        CHECK(validate(raw_image("[1]", {})).status == DSV4_ERR_FORMAT_JSON);
    }
    SECTION("offsets out of range") {
        auto o = validate(raw_image(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", bytes(8)));
        CHECK(o.status == DSV4_ERR_FORMAT_OFFSET);
        CHECK_THAT(o.message, Catch::Contains("w"));
    }
    SECTION("begin after end") {
        auto o = validate(raw_image(R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", bytes(8)));
        CHECK(o.status == DSV4_ERR_FORMAT_OFFSET);
    }
    SECTION("overlapping tensors") {
        auto o = validate(raw_image(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", bytes(12)));
        CHECK(o.status == DSV4_ERR_FORMAT_OVERLAP);
        CHECK_THAT(o.message, Catch::Contains("a") && Catch::Contains("b"));
    }
    SECTION("unknown dtype") {
        auto o = validate(raw_image(R"({"w": {"dtype": "F7", "shape": [1], "data_offsets": [0, 1]}})", bytes(1)));
        CHECK(o.status == DSV4_ERR_FORMAT_DTYPE);
        CHECK_THAT(o.message, Catch::Contains("F7") && Catch::Contains("w"));
    }
    SECTION("shape does not match the byte range") {
        auto o = validate(raw_image(R"({"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 8]}})", bytes(8)));
        CHECK(o.status == DSV4_ERR_FORMAT_SHAPE);
        CHECK_THAT(o.message, Catch::Contains("needs 6 bytes"));
    }
    SECTION("shape overflow") {
        auto o = validate(raw_image(R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 4294967296], "data_offsets": [0, 8]}})", bytes(8)));
        CHECK(o.status == DSV4_ERR_FORMAT_SHAPE);
    }
    SECTION("negative shape") {
        auto o = validate(raw_image(R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", bytes(4)));
        CHECK(o.status == DSV4_ERR_FORMAT_SHAPE);
    }
    SECTION("missing fields") {
        CHECK(validate(raw_image(R"({"w": {"shape": [1], "data_offsets": [0, 4]}})", bytes(4))).status == DSV4_ERR_FORMAT_JSON);
        CHECK(validate(raw_image(R"({"w": {"dtype": "F32", "data_offsets": [0, 4]}})", bytes(4))).status == DSV4_ERR_FORMAT_JSON);
        CHECK(validate(raw_image(R"({"w": {"dtype": "F32", "shape": [1]}})", bytes(4))).status == DSV4_ERR_FORMAT_JSON);
        CHECK(validate(raw_image(R"({"w": 7})", bytes(4))).status == DSV4_ERR_FORMAT_JSON);
    }
    SECTION("duplicate tensor name") {
        auto o = validate(raw_image(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                        "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", bytes(8)));
        CHECK(o.status == DSV4_ERR_FORMAT_DUPLICATE);
    }
}
