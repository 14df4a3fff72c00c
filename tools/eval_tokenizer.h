#pragma once
#include <string>

namespace dsv4::tools {
// Checks every vector of a JSONL file against the tokenizer; prints mismatches; true when all pass.
bool eval_tokenizer(const std::string &tokenizer_path, const std::string &vectors_path, bool verbose);
}  // namespace dsv4::tools
