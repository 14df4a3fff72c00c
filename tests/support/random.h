// Random test data in the reference's dtypes.
#pragma once
#include <random>
#include <vector>

#include "core/numeric.h"

namespace dsv4::test {

// n values of N(0, scale²) rounded to bf16: an activation as the reference holds it.
inline std::vector<float> bf16_values(std::mt19937 &rng, size_t n, float scale) {
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<float> v(n);
    for (float &x : v) x = core::round_bf16(d(rng));
    return v;
}

}  // namespace dsv4::test
