#include "tokenizer/utf8.h"

namespace dsv4::tokenizer {
namespace {
// Number of bytes a well-formed sequence starting with lead byte b has, 0 for a byte that cannot lead.
size_t lead_length(uint8_t b) {
    if (b < 0x80) return 1;
    if (b >= 0xc2 && b <= 0xdf) return 2;
    if (b >= 0xe0 && b <= 0xef) return 3;
    if (b >= 0xf0 && b <= 0xf4) return 4;
    return 0;
}
// Valid range of the second byte for a lead (Unicode Table 3-7); later bytes are 80..BF.
bool second_ok(uint8_t lead, uint8_t b) {
    if (lead == 0xe0) return b >= 0xa0 && b <= 0xbf;
    if (lead == 0xed) return b >= 0x80 && b <= 0x9f;
    if (lead == 0xf0) return b >= 0x90 && b <= 0xbf;
    if (lead == 0xf4) return b >= 0x80 && b <= 0x8f;
    return b >= 0x80 && b <= 0xbf;
}
// Bytes of s[i..] that form a valid prefix of a sequence (the maximal subpart), and whether it is complete.
size_t valid_prefix(std::string_view s, size_t i, bool &complete) {
    const uint8_t lead = uint8_t(s[i]);
    const size_t need = lead_length(lead);
    complete = false;
    if (need == 0) return 0;
    if (need == 1) {
        complete = true;
        return 1;
    }
    size_t k = 1;
    for (; k < need && i + k < s.size(); ++k) {
        const uint8_t b = uint8_t(s[i + k]);
        if (k == 1 ? !second_ok(lead, b) : (b < 0x80 || b > 0xbf)) return k;
    }
    complete = k == need;
    return k;
}
}  // namespace

size_t utf8_sequence_length(std::string_view s, size_t i) {
    bool complete;
    const size_t n = valid_prefix(s, i, complete);
    return complete ? n : 0;
}

size_t utf8_first_invalid(std::string_view s) {
    for (size_t i = 0; i < s.size();) {
        const size_t n = utf8_sequence_length(s, i);
        if (!n) return i;
        i += n;
    }
    return std::string_view::npos;
}

std::string utf8_lossy(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
        bool complete;
        const size_t n = valid_prefix(s, i, complete);
        if (complete) {
            out.append(s.substr(i, n));
            i += n;
        } else {
            out += "\xef\xbf\xbd";
            i += n ? n : 1;
        }
    }
    return out;
}

size_t utf8_complete_prefix(std::string_view s) {
    // Only the last up-to-3 bytes can belong to an unfinished sequence.
    for (size_t back = 1; back <= 3 && back <= s.size(); ++back) {
        const size_t i = s.size() - back;
        const uint8_t b = uint8_t(s[i]);
        if (b >= 0x80 && b <= 0xbf) continue;  // continuation byte: look further back
        bool complete;
        const size_t n = valid_prefix(s, i, complete);
        return !complete && n == back ? i : s.size();
    }
    return s.size();
}

void utf8_append(std::string &out, uint32_t cp) {
    if (cp < 0x80) {
        out += char(cp);
    } else if (cp < 0x800) {
        out += char(0xc0 | (cp >> 6));
        out += char(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        out += char(0xe0 | (cp >> 12));
        out += char(0x80 | ((cp >> 6) & 0x3f));
        out += char(0x80 | (cp & 0x3f));
    } else {
        out += char(0xf0 | (cp >> 18));
        out += char(0x80 | ((cp >> 12) & 0x3f));
        out += char(0x80 | ((cp >> 6) & 0x3f));
        out += char(0x80 | (cp & 0x3f));
    }
}

}  // namespace dsv4::tokenizer
