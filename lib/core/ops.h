// Small elementwise and row operations with the reference's precision (spec §2, §4.2, §16).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "core/numeric.h"

namespace dsv4::core {

// Σ x² in double: fp32 squares are exact there and the sum's error (n·2^-53 relative) lies far below an fp32
// ulp, so an fp32 value rounded from it is the correctly rounded one, whichever order a device sums in. The
// reference reduces in fp32 in its device's order (a tree on CUDA, 4x16 lanes in PyTorch's AVX-512 CPU kernel),
// and an order-specific fp32 sum flips the bf16 rounding of a normalised value that lies within an fp32 ulp or
// two of a bf16 midpoint: the regenerated (CUDA) golden caught a q_norm output flipping that way in an indexer
// query. Eight partial sums so that the loop vectorises.
template <typename Square>
double sum_in_double(size_t n, Square square) {
    constexpr size_t kLanes = 8;
    double acc[kLanes] = {};
    const size_t full = n / kLanes * kLanes;
    for (size_t i = 0; i < full; i += kLanes)
        for (size_t l = 0; l < kLanes; ++l) acc[l] += double(square(i + l));
    for (size_t i = full; i < n; ++i) acc[0] += double(square(i));
    double sum = 0.0;
    for (double a : acc) sum += a;
    return sum;
}
inline double sum_of_squares(const float *x, size_t n) {
    return sum_in_double(n, [x](size_t i) { return double(x[i]) * double(x[i]); });
}

// rsqrt(mean(x²) + eps), the fp32 mean and the rsqrt each correctly rounded (spec §16: fp32 RMS factor); 1/sqrtf
// rounds twice, and against the CUDA golden the correctly rounded factor also removed an FP8 flip in a MoE input.
inline float rms_factor(const float *x, size_t n, float eps) {
    const float mean = float(sum_of_squares(x, n) / double(n));
    return float(1.0 / std::sqrt(double(mean + eps)));
}

// RMSNorm: fp32 math, fp32 weight, bf16 output: y = bf16(w ⊙ x · rsqrt(mean(x²) + eps)).
inline void rms_norm(const float *x, size_t n, const float *w, float eps, float *y) {
    const float r = rms_factor(x, n, eps);
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
    const double sum = sum_in_double(n, [x](size_t i) { return round_bf16(x[i] * x[i]); });  // as sum_of_squares
    const float mean = round_bf16(float(sum / double(n)));
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
