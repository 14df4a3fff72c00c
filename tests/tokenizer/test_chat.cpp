// The chat format: the four official vectors byte for byte, their parsing round trips (encoding README), every
// shared case through the C ABI, Python-compatible JSON, and malformed completions.
#include <catch2/catch.hpp>
#include <dsv4/dsv4.h>
#include <fstream>

#include "core/error.h"
#include "io/mapped_file.h"
#include "support/fixtures.h"
#include "tokenizer/chat.h"

using namespace dsv4;
using json = nlohmann::ordered_json;

namespace {
std::string enc_dir() { return test::data_dir() + "/encoding"; }

std::string encode_c(const json &messages, int thinking, const char *effort = nullptr, int drop = 1) {
    dsv4_chat_params p = dsv4_chat_default_params();
    p.thinking = thinking;
    p.drop_thinking = drop;
    p.reasoning_effort = effort;
    const std::string text = messages.dump();
    size_t len = 0;
    (void)dsv4_chat_encode(text.c_str(), &p, nullptr, 0, &len);
    std::string out(len + 1, '\0');
    const dsv4_status st = dsv4_chat_encode(text.c_str(), &p, out.data(), out.size(), &len);
    INFO(dsv4_last_error_message());
    REQUIRE(st == DSV4_OK);
    out.resize(len);
    return out;
}

json parse_c(const std::string &completion, int thinking) {
    size_t len = 0;
    (void)dsv4_chat_parse(completion.data(), completion.size(), thinking, nullptr, 0, &len);
    std::string out(len + 1, '\0');
    const dsv4_status st = dsv4_chat_parse(completion.data(), completion.size(), thinking, out.data(), out.size(), &len);
    INFO(dsv4_last_error_message());
    REQUIRE(st == DSV4_OK);
    out.resize(len);
    return json::parse(out);
}
}  // namespace

TEST_CASE("the four official encoding vectors, byte for byte", "[chat]") {
    for (int n = 1; n <= 4; ++n) {
        json input = json::parse(io::read_text_file(enc_dir() + "/test_input_" + std::to_string(n) + ".json"));
        json messages = input;
        if (input.is_object()) {  // case 1: tools go onto the first message
            messages = input.at("messages");
            messages[0]["tools"] = input.at("tools");
        }
        const std::string expected = io::read_text_file(enc_dir() + "/test_output_" + std::to_string(n) + ".txt");
        INFO("case " << n);
        CHECK(encode_c(messages, n == 4 ? 0 : 1) == expected);
    }
}

TEST_CASE("official vectors parse back (encoding README)", "[chat]") {
    const std::string out1 = io::read_text_file(enc_dir() + "/test_output_1.txt");
    const std::string open = "<｜Assistant｜><think>";
    const size_t first = out1.find(open) + open.size();
    const std::string turn1 = out1.substr(first, out1.find("<｜User｜>", first) - first);
    json m = parse_c(turn1, 1);
    CHECK(m["reasoning_content"] == "The user wants to know the weather in Beijing. I should use the get_weather tool.");
    CHECK(m["content"] == "");
    REQUIRE(m["tool_calls"].size() == 1);
    CHECK(m["tool_calls"][0]["function"]["name"] == "get_weather");
    CHECK(nlohmann::json::parse(m["tool_calls"][0]["function"]["arguments"].get<std::string>()) ==
          nlohmann::json::parse(R"({"location": "Beijing", "unit": "celsius"})"));
    const std::string last = out1.substr(out1.rfind(open) + open.size());
    m = parse_c(last, 1);
    CHECK(m["reasoning_content"] == "Got the weather data. Let me format a nice response.");
    CHECK_THAT(m["content"].get<std::string>(), Catch::Contains("22°C"));
    CHECK(m["tool_calls"].empty());

    const std::string out2 = io::read_text_file(enc_dir() + "/test_output_2.txt");
    CHECK(out2.find("The user said hello") == std::string::npos);
    m = parse_c(out2.substr(out2.rfind(open) + open.size()), 1);
    CHECK(m["reasoning_content"] == "The user asks about the capital of France. It is Paris.");
    CHECK(m["content"] == "The capital of France is Paris.");
}

TEST_CASE("every shared encoding case through the C ABI", "[chat]") {
    std::ifstream in(enc_dir() + "/cases.jsonl");
    int n = 0;
    for (std::string line; std::getline(in, line); ++n) {
        const json c = json::parse(line);
        INFO(c.at("id").get<std::string>());
        const int thinking = c.at("thinking_mode") == "thinking";
        if (c.at("kind") == "encode") {
            const std::string effort = c.value("reasoning_effort", json()).is_string() ? c.at("reasoning_effort").get<std::string>() : "";
            if (c.value("error", false)) {
                dsv4_chat_params p = dsv4_chat_default_params();
                p.thinking = thinking;
                size_t len = 0;
                CHECK(dsv4_chat_encode(c.at("messages").dump().c_str(), &p, nullptr, 0, &len) == DSV4_ERR_INVALID_ARGUMENT);
                CHECK_THAT(std::string(dsv4_last_error_message()), Catch::Contains("messages"));
            } else {
                CHECK(encode_c(c.at("messages"), thinking, effort.empty() ? nullptr : effort.c_str(), c.value("drop_thinking", true)) ==
                      c.at("prompt").get<std::string>());
            }
        } else {
            const json m = parse_c(c.at("completion").get<std::string>(), thinking);
            CHECK(m["content"] == c["message"]["content"]);
            CHECK(m["reasoning_content"] == c["message"]["reasoning_content"]);
            REQUIRE(m["tool_calls"].size() == c["message"]["tool_calls"].size());
            for (size_t i = 0; i < m["tool_calls"].size(); ++i)
                CHECK(nlohmann::json::parse(m["tool_calls"][i]["function"]["arguments"].get<std::string>()) ==
                      nlohmann::json::parse(c["message"]["tool_calls"][i]["function"]["arguments"].get<std::string>()));
        }
    }
    CHECK(n == 60);
}

TEST_CASE("JSON is rendered as Python's json.dumps(ensure_ascii=False)", "[chat]") {
    using tokenizer::python_json_dumps;
    CHECK(python_json_dumps(json::parse(R"({"a": [1, 2.5, true, null], "b": {"c": "ü\n\"\\"}})")) ==
          R"({"a": [1, 2.5, true, null], "b": {"c": "ü\n\"\\"}})");
    CHECK(python_json_dumps(json(1.0)) == "1.0");
    CHECK(python_json_dumps(json(1e16)) == "1e+16");
    CHECK(python_json_dumps(json(1e-05)) == "1e-05");
    CHECK(python_json_dumps(json(0.0001)) == "0.0001");
    CHECK(python_json_dumps(json(123456789012345678.0)) == "1.2345678901234568e+17");
    CHECK(python_json_dumps(json(-2.5e-7)) == "-2.5e-07");
    CHECK(python_json_dumps(json(std::string("\x01\x1f\x7f"))) == "\"\\u0001\\u001f\x7f\"");
    CHECK(python_json_dumps(json::object()) == "{}");
}

TEST_CASE("malformed completions and conversations are rejected with a reason", "[chat]") {
    auto rejects = [](const std::string &text, int thinking, const std::string &needle) {
        size_t len = 0;
        CHECK(dsv4_chat_parse(text.data(), text.size(), thinking, nullptr, 0, &len) == DSV4_ERR_INVALID_ARGUMENT);
        CHECK_THAT(std::string(dsv4_last_error_message()), Catch::Contains(needle));
    };
    rejects("no end token", 0, "end-of-sentence");
    rejects("reasoning but no end", 1, "</think>");
    rejects("a<｜end▁of▁sentence｜>trailing", 0, "unexpected text");
    rejects("x<think>y<｜end▁of▁sentence｜>", 0, "special token");
    rejects("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke nam=\"f\">\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>", 0, "invoke header");
    rejects("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"a\" string=\"true\">1</｜DSML｜parameter>\n"
            "<｜DSML｜parameter name=\"a\" string=\"true\">2</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>", 0,
            "duplicate parameter");
    dsv4_chat_params p = dsv4_chat_default_params();
    size_t len = 0;
    CHECK(dsv4_chat_encode("not json", &p, nullptr, 0, &len) == DSV4_ERR_FORMAT_JSON);
    CHECK(dsv4_chat_encode(R"([{"role": "wizard", "content": "x"}])", &p, nullptr, 0, &len) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK_THAT(std::string(dsv4_last_error_message()), Catch::Contains("messages[0]: unknown role 'wizard'"));
    p.reasoning_effort = "extreme";
    CHECK(dsv4_chat_encode(R"([{"role": "user", "content": "x"}])", &p, nullptr, 0, &len) == DSV4_ERR_INVALID_ARGUMENT);
}

namespace {
struct Events {
    std::string reasoning, content;
    std::vector<std::string> calls;
    std::string begun, fragments;  // the call being announced (partial calls)
    int announced = 0;
};
void on_event(dsv4_chat_event e, const char *text, size_t len, void *user) {
    auto *ev = static_cast<Events *>(user);
    const std::string t(text, len);
    if (e == DSV4_CHAT_EVENT_REASONING) ev->reasoning += t;
    else if (e == DSV4_CHAT_EVENT_CONTENT) {
        CHECK(t.find("｜DSML｜") == std::string::npos);  // DSML never leaks into content deltas
        ev->content += t;
    } else if (e == DSV4_CHAT_EVENT_TOOL_CALL_BEGIN) {
        CHECK(ev->begun.empty());
        ev->begun = t;
    } else if (e == DSV4_CHAT_EVENT_TOOL_CALL_ARGUMENTS) {
        CHECK(!ev->begun.empty());
        ev->fragments += t;
    } else {
        if (!ev->begun.empty()) {  // announced: the name and the fragments are the call's
            const json call = json::parse(t);
            CHECK(call["function"]["name"] == ev->begun);
            CHECK(call["function"]["arguments"] == ev->fragments);
            ++ev->announced;
            ev->begun.clear();
            ev->fragments.clear();
        }
        ev->calls.push_back(t);
    }
}
}  // namespace

TEST_CASE("streaming parse: deltas and tool calls add up to the whole-text parse, in any chunking", "[chat]") {
    std::ifstream in(enc_dir() + "/cases.jsonl");
    int parsed = 0;
    for (std::string line; std::getline(in, line);) {
        const json c = json::parse(line);
        if (c.at("kind") != "parse" || c.value("error", false)) continue;
        const std::string text = c.at("completion");
        const int thinking = c.at("thinking_mode") == "thinking";
        for (size_t chunk : {size_t(1), size_t(3), size_t(7), size_t(64)})
        for (uint32_t flags : {0u, DSV4_CHAT_STREAM_PARTIAL_CALLS}) {
            INFO(c.at("id").get<std::string>() << " chunk " << chunk << " flags " << flags);
            dsv4_chat_stream *s = nullptr;
            REQUIRE(dsv4_chat_stream_create_v2(thinking, flags, &s) == DSV4_OK);
            Events ev;
            for (size_t i = 0; i < text.size();) {
                size_t n = std::min(chunk, text.size() - i);
                while (i + n < text.size() && (uint8_t(text[i + n]) & 0xc0) == 0x80) ++n;  // whole characters
                REQUIRE(dsv4_chat_stream_push(s, text.data() + i, n, on_event, &ev) == DSV4_OK);
                i += n;
            }
            REQUIRE(dsv4_chat_stream_finish(s, on_event, &ev) == DSV4_OK);
            dsv4_chat_stream_free(s);
            CHECK(ev.reasoning == c["message"]["reasoning_content"].get<std::string>());
            CHECK(ev.content == c["message"]["content"].get<std::string>());
            REQUIRE(ev.calls.size() == c["message"]["tool_calls"].size());
            CHECK(ev.announced == (flags ? int(ev.calls.size()) : 0));  // every call announced, only when asked
            for (size_t k = 0; k < ev.calls.size(); ++k) {
                const auto call = json::parse(ev.calls[k]);
                CHECK(call["function"]["name"] == c["message"]["tool_calls"][k]["function"]["name"]);
                CHECK(nlohmann::json::parse(call["function"]["arguments"].get<std::string>()) ==
                      nlohmann::json::parse(c["message"]["tool_calls"][k]["function"]["arguments"].get<std::string>()));
            }
        }
        ++parsed;
    }
    CHECK(parsed >= 15);
    // a completion without EOS fails at finish; a stray special token fails at once; unknown flags are refused
    dsv4_chat_stream *s = nullptr;
    CHECK(dsv4_chat_stream_create_v2(0, 2u, &s) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK(s == nullptr);
    REQUIRE(dsv4_chat_stream_create(0, &s) == DSV4_OK);
    Events ev;
    REQUIRE(dsv4_chat_stream_push(s, "Hello", 5, on_event, &ev) == DSV4_OK);
    CHECK(ev.content == "Hello");
    CHECK(dsv4_chat_stream_finish(s, on_event, &ev) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK(dsv4_chat_stream_push(s, "x", 1, on_event, &ev) == DSV4_ERR_INVALID_ARGUMENT);  // failed streams stay failed
    dsv4_chat_stream_free(s);
    REQUIRE(dsv4_chat_stream_create(0, &s) == DSV4_OK);
    const std::string bad = "a <think> b";
    CHECK(dsv4_chat_stream_push(s, bad.data(), bad.size(), on_event, &ev) == DSV4_ERR_INVALID_ARGUMENT);
    dsv4_chat_stream_free(s);
}
