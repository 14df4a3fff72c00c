// Small elementwise and row operations with the reference's precision (spec §2, §4.2, §16).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "core/numeric.h"

namespace dsv4::core {

// An fp32 sum of term(i), i < n, in the order of PyTorch's vectorised CPU reduction (AVX-512: 4 accumulators
// of 16 lanes, combined pairwise, then the lanes by halving, then the tail). The reference's norms reduce this
// way; a plain left-to-right fp32 loop drifts enough to flip the bf16 rounding of a normalised value now and then.
template <typename Term>
float sum_reference_order(size_t n, Term term) {
    constexpr size_t kLanes = 16, kAcc = 4, kStep = kLanes * kAcc;
    float acc[kAcc][kLanes] = {};
    const size_t full = n / kStep * kStep;
    for (size_t i = 0; i < full; i += kStep)
        for (size_t a = 0; a < kAcc; ++a)
            for (size_t l = 0; l < kLanes; ++l) acc[a][l] += term(i + a * kLanes + l);
    for (size_t l = 0; l < kLanes; ++l) {
        acc[0][l] += acc[1][l];
        acc[2][l] += acc[3][l];
        acc[0][l] += acc[2][l];
    }
    for (size_t width = kLanes / 2; width >= 1; width /= 2)
        for (size_t l = 0; l < width; ++l) acc[0][l] += acc[0][l + width];
    float sum = acc[0][0];
    for (size_t i = full; i < n; ++i) sum += term(i);
    return sum;
}

// mean(x²) with fp32 squares, reduced in the reference's order.
inline float mean_of_squares(const float *x, size_t n) {
    return sum_reference_order(n, [x](size_t i) { return x[i] * x[i]; }) / float(n);
}

// RMSNorm: fp32 math, fp32 weight, bf16 output: y = bf16(w ⊙ x · rsqrt(mean(x²) + eps)).
inline void rms_norm(const float *x, size_t n, const float *w, float eps, float *y) {
    const float r = 1.0f / std::sqrt(mean_of_squares(x, n) + eps);
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

// expf with the 1-ulp polynomial of SLEEF's expf_u10, the vectorised exp of PyTorch's CPU kernels: the
// reference's fp32 mHC gates go through it, and matching it bit for bit keeps the bf16 branch inputs
// (rounded right after) identical to the reference's.
inline float exp_sleef_u10(float d) {
    if (d < -104.0f) return 0.0f;
    if (d > 100.0f) return INFINITY;
    if (std::isnan(d)) return d;
    const int q = int(std::nearbyint(d * 1.442695040888963407359924681001892137426645954152985934135449406931f));
    const float qf = float(q);
    float s = std::fma(qf, -0.693145751953125f, d);
    s = std::fma(qf, -1.428606765330187045e-06f, s);
    float u = 0.000198527617612853646278381f;
    u = std::fma(u, s, 0.00139304355252534151077271f);
    u = std::fma(u, s, 0.00833336077630519866943359f);
    u = std::fma(u, s, 0.0416664853692054748535156f);
    u = std::fma(u, s, 0.166666671633720397949219f);
    u = std::fma(u, s, 0.5f);
    u = 1.0f + std::fma(s * s, u, s);
    return std::ldexp(u, q);
}

// PyTorch's vectorised sigmoid: reciprocal(1 + exp(-x)).
inline float sigmoid(float x) { return 1.0f / (1.0f + exp_sleef_u10(-x)); }
inline float silu(float x) { return x / (1.0f + std::exp(-x)); }
// PyTorch softplus with beta 1 and threshold 20.
inline float softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

}  // namespace dsv4::core
