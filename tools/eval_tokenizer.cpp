// `dsv4 eval-tokenizer TOKENIZER_JSON VECTORS_JSONL`: checks every vector (ids, token strings, both decodes)
// of a file in the format of shared/tokenizer/vectors/ and reports each mismatch.
#include "eval_tokenizer.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <fstream>

#include "core/error.h"
#include "io/json.h"
#include "tokenizer/tokenizer.h"

namespace dsv4::tools {

bool eval_tokenizer(const std::string &tokenizer_path, const std::string &vectors_path, bool verbose) {
    const auto tok = tokenizer::Tokenizer::load(tokenizer_path);
    std::ifstream in(vectors_path);
    if (!in) fail(DSV4_ERR_IO_NOT_FOUND, "{}: cannot open", vectors_path);
    std::string line;
    int n = 0, bad = 0, line_no = 0;
    while (std::getline(in, line)) {
        ++line_no;
        if (line.empty()) continue;
        const auto v = io::parse_json(line, fmt::format("{}:{}", vectors_path, line_no));
        const std::string id = v.value("id", fmt::format("line {}", line_no));
        std::vector<std::string> problems;
        std::vector<int32_t> ids;
        if (v.value("kind", "encode") == "encode") {
            const std::string text = v.at("text");
            try {
                ids = tok->encode(text);
            } catch (const Error &e) {
                problems.push_back(std::string("encode failed: ") + e.what());
            }
            const auto want = v.at("ids").get<std::vector<int32_t>>();
            if (problems.empty() && ids != want)
                problems.push_back(fmt::format("ids [{}], expected [{}]", fmt::join(ids, ", "), fmt::join(want, ", ")));
            if (problems.empty() && v.contains("tokens")) {
                std::vector<std::string> strings;
                for (int32_t t : ids) strings.push_back(tok->token_string(t));
                if (strings != v.at("tokens").get<std::vector<std::string>>()) problems.push_back("token strings differ");
            }
        } else {
            ids = v.at("ids").get<std::vector<int32_t>>();
        }
        if (problems.empty()) {
            for (const auto &[key, skip] : {std::pair{"decoded", false}, std::pair{"decoded_skip_special", true}}) {
                if (!v.contains(key)) continue;
                const std::string got = tok->decode(ids.data(), ids.size(), skip);
                if (got != v.at(key).get<std::string>())
                    problems.push_back(fmt::format("{}: got {}, expected {}", key, nlohmann::json(got).dump(), v.at(key).dump()));
            }
        }
        ++n;
        if (!problems.empty()) {
            ++bad;
            if (verbose || bad <= 20)
                for (const auto &p : problems) fmt::print("{} ({}): {}\n", id, v.value("gen", ""), p);
        }
    }
    fmt::print("eval-tokenizer: {} vectors, {} mismatched: {}\n", n, bad, bad ? "FAIL" : "PASS");
    return bad == 0 && n > 0;
}

}  // namespace dsv4::tools
