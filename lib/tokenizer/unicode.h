// The Unicode character classes of the tokenizer's Split regexes: the general categories and White_Space of
// Unicode 16.0 (what Hugging Face `tokenizers` classifies by), generated from the Unicode Character Database by
// tools/unicode/generate.mjs, so that the pre-tokenizer does not depend on the Unicode version of the PCRE2
// library it links (Debian 12's 10.42 has Unicode 14.0).
#pragma once
#include <cstdint>
#include <span>
#include <string_view>

namespace dsv4::tokenizer::unicode {

struct CodePointRange {
    uint32_t first, last;  // inclusive
};

struct GeneralCategory {
    const char *alias;  // "L", "Lu", ...
    const char *name;   // "Letter", "Uppercase_Letter", ...
    const CodePointRange *ranges;
    size_t size;
    std::span<const CodePointRange> code_points() const { return {ranges, size}; }
};

// "16.0.0"
std::string_view version();

// The White_Space property: Oniguruma's \s under Unicode, which Hugging Face's regexes use.
std::span<const CodePointRange> white_space();
// The category of an alias or a property value name, or nullptr.
const GeneralCategory *find_general_category(std::string_view name);

}  // namespace dsv4::tokenizer::unicode
