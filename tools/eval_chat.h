#pragma once
#include <string>

namespace dsv4::tools {
// Checks every case of a JSONL file in the format of shared/fixtures/encoding/cases.jsonl (encode cases byte
// for byte, parse cases as parsed JSON, rejected cases rejected); true when all pass.
bool eval_chat(const std::string &cases_path, bool verbose);
}  // namespace dsv4::tools
