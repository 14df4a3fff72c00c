#include "tokenizer/unicode.h"

#include <iterator>

namespace dsv4::tokenizer::unicode {
namespace {
#include "tokenizer/unicode_tables.inc"
}  // namespace

std::string_view version() { return kUnicodeVersion; }

std::span<const CodePointRange> white_space() { return kWhiteSpace; }

const GeneralCategory *find_general_category(std::string_view name) {
    for (const GeneralCategory &c : kGeneralCategories)
        if (name == c.alias || name == c.name) return &c;
    return nullptr;
}

}  // namespace dsv4::tokenizer::unicode
