// Small string helpers shared by the streaming text paths.
#pragma once
#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

namespace dsv4::core {

// Length of the longest suffix of text that is a proper prefix of one of the markers: text a streaming consumer
// must hold back because the next piece may complete a marker.
inline size_t marker_prefix_suffix(const std::string &text, const std::vector<std::string> &markers) {
    size_t best = 0;
    for (const std::string &m : markers)
        for (size_t n = std::min(m.size() - 1, text.size()); n > best; --n)
            if (text.compare(text.size() - n, n, m, 0, n) == 0) {
                best = n;
                break;
            }
    return best;
}

// Depth of [ and { outside JSON strings, counted until it passes limit: recursive JSON readers and writers are
// refused input deeper than they can take on the stack before they see it.
inline int json_nesting(std::string_view text, int limit) {
    int depth = 0, deepest = 0;
    bool in_string = false, escaped = false;
    for (char c : text) {
        if (in_string) {
            if (escaped) escaped = false;
            else if (c == '\\') escaped = true;
            else if (c == '"') in_string = false;
            continue;
        }
        if (c == '"') in_string = true;
        else if (c == '[' || c == '{') {
            deepest = std::max(deepest, ++depth);
            if (deepest > limit) return deepest;
        } else if (c == ']' || c == '}') --depth;
    }
    return deepest;
}

}  // namespace dsv4::core
