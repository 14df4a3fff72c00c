// UTF-8 helpers for the tokenizer: validation, code point iteration, and lossy decoding that replaces each
// maximal invalid subpart with U+FFFD (the Unicode-recommended practice, as Rust's from_utf8_lossy does).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dsv4::tokenizer {

// Length of the valid UTF-8 sequence starting at s[i], or 0 if s[i..] starts an invalid one.
size_t utf8_sequence_length(std::string_view s, size_t i);
// Position of the first invalid byte, or npos when s is valid UTF-8.
size_t utf8_first_invalid(std::string_view s);
// Lossy conversion: valid sequences copied, each maximal invalid subpart replaced by U+FFFD.
std::string utf8_lossy(std::string_view bytes);
// Length of the longest prefix of s that does not end inside an incomplete (but so far valid) sequence.
size_t utf8_complete_prefix(std::string_view s);
void utf8_append(std::string &out, uint32_t cp);

}  // namespace dsv4::tokenizer
