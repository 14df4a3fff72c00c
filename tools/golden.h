#pragma once
#include <string>

namespace dsv4::tools {

struct GoldenOptions {
    bool verbose = false;
    bool logits_only = false;
    bool layers_only = false;
    int n_threads = 0;
    std::string device = "cpu";  // the device whose backend is judged
};

// Runs every case of a dsv4-golden fixture folder; prints per-step errors; returns true when all pass.
bool eval_golden(const std::string &dir, const GoldenOptions &options);

}  // namespace dsv4::tools
