// JSON parsing with the limits every untrusted file gets: a nesting bound checked before the (recursive)
// parser runs, and errors that name the file.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace dsv4::io {

constexpr int kMaxJsonDepth = 64;

// Throws DSV4_ERR_FORMAT_NESTING if brackets nest deeper than max_depth, DSV4_ERR_FORMAT_JSON if the text is
// not JSON. Unless allow_duplicate_keys, a repeated top-level key is DSV4_ERR_FORMAT_DUPLICATE.
nlohmann::json parse_json(std::string_view text, const std::string &what, bool allow_duplicate_keys = true,
                          int max_depth = kMaxJsonDepth);
// The same, keeping object keys in document order (for re-serialising user JSON faithfully).
nlohmann::ordered_json parse_ordered_json(std::string_view text, const std::string &what, int max_depth = kMaxJsonDepth);

}  // namespace dsv4::io
