// Interleaved rotary embedding on the tail dims, with static YaRN on compressed layers (spec §4.4).
#pragma once
#include <vector>

namespace dsv4::core {

class Rope {
public:
    // yarn: scale frequencies between the correction bounds by 1/factor (original_seq_len > 0).
    Rope(int rope_dim, float base, bool yarn, float factor, int original_seq_len, float beta_fast, float beta_slow);
    // Rotates pairs (x[2i], x[2i+1]) by pos·θ_i in fp32 and rounds to bf16; inverse uses the conjugate.
    void apply(float *x, int pos, bool inverse = false) const;
    const std::vector<float> &frequencies() const { return theta_; }

private:
    std::vector<float> theta_;  // fp32 [rope_dim / 2]
};

}  // namespace dsv4::core
