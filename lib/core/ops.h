// Small elementwise and row operations with the reference's precision (spec §2, §4.2, §16).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "core/numeric.h"

namespace dsv4::core {

// RMSNorm: fp32 math, fp32 weight, bf16 output: y = bf16(w ⊙ x · rsqrt(mean(x²) + eps)).
inline void rms_norm(const float *x, size_t n, const float *w, float eps, float *y) {
    float ss = 0.0f;
    for (size_t i = 0; i < n; ++i) ss += x[i] * x[i];
    const float r = 1.0f / std::sqrt(ss / float(n) + eps);
    for (size_t i = 0; i < n; ++i) y[i] = round_bf16(w[i] * (x[i] * r));
}

// Correctly rounded bf16 of a double (RNE), for operations the reference performs in bf16 arithmetic.
inline float round_bf16_exact(double v) {
    if (v == 0.0 || !std::isfinite(v)) return float(v);
    int e;
    std::frexp(v, &e);                               // v = m·2^e, |m| in [0.5, 1)
    const double quantum = std::ldexp(1.0, e - 8);  // bf16 keeps 8 significant bits
    return float(std::nearbyint(v / quantum) * quantum);
}

// Per-head RMS scaling without weight, every step in bf16 (spec §4.2 step 3, §17.1):
// sq = bf16(x²), m = bf16(mean(sq)), m = bf16(m + eps), r = bf16(rsqrt(m)) correctly rounded, x = bf16(x·r).
inline void head_rms_scale_bf16(float *x, size_t n, float eps) {
    float sum = 0.0f;
    for (size_t i = 0; i < n; ++i) sum += round_bf16(x[i] * x[i]);
    const float mean = round_bf16(sum / float(n));
    const float shifted = round_bf16(mean + eps);
    const float r = round_bf16_exact(1.0 / std::sqrt(double(shifted)));
    for (size_t i = 0; i < n; ++i) x[i] = round_bf16(x[i] * r);
}

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
inline float silu(float x) { return x / (1.0f + std::exp(-x)); }
// PyTorch softplus with beta 1 and threshold 20.
inline float softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

}  // namespace dsv4::core
