#include "io/json.h"

#include <unordered_set>

#include "core/error.h"
#include "core/text.h"

namespace dsv4::io {
namespace {
void check_nesting(std::string_view text, const std::string &what, int max_depth) {
    if (core::json_nesting(text, max_depth) > max_depth)
        fail(DSV4_ERR_FORMAT_NESTING, "{}: JSON nests deeper than {} levels", what, max_depth);
}
}  // namespace

nlohmann::ordered_json parse_ordered_json(std::string_view text, const std::string &what, int max_depth) {
    check_nesting(text, what, max_depth);
    try {
        return nlohmann::ordered_json::parse(text.begin(), text.end());
    } catch (const nlohmann::json::exception &e) {
        fail(DSV4_ERR_FORMAT_JSON, "{}: invalid JSON: {}", what, e.what());
    }
}

nlohmann::json parse_json(std::string_view text, const std::string &what, bool allow_duplicate_keys,
                          int max_depth) {
    check_nesting(text, what, max_depth);
    std::unordered_set<std::string> top_keys;
    std::string duplicate;
    auto callback = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json &value) {
        if (!allow_duplicate_keys && depth == 1 && event == nlohmann::json::parse_event_t::key &&
            !top_keys.insert(value.get<std::string>()).second && duplicate.empty())
            duplicate = value.get<std::string>();
        return true;
    };
    try {
        nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), callback);
        if (!duplicate.empty()) fail(DSV4_ERR_FORMAT_DUPLICATE, "{}: key '{}' appears twice", what, duplicate);
        return j;
    } catch (const nlohmann::json::exception &e) {
        fail(DSV4_ERR_FORMAT_JSON, "{}: invalid JSON: {}", what, e.what());
    }
}

}  // namespace dsv4::io
