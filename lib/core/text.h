// Small string helpers shared by the streaming text paths.
#pragma once
#include <algorithm>
#include <string>
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

}  // namespace dsv4::core
