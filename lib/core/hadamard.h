#pragma once
#include <cmath>
#include <cstddef>

#include "core/numeric.h"

namespace dsv4::core {

// y = bf16(H_n · x / sqrt(n)) with Sylvester ordering (fast_hadamard_transform's), fp32 butterflies; n = 2^k.
inline void hadamard_bf16(float *x, size_t n) {
    for (size_t h = 1; h < n; h *= 2)
        for (size_t i = 0; i < n; i += 2 * h)
            for (size_t j = i; j < i + h; ++j) {
                const float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
    const float scale = 1.0f / std::sqrt(float(n));
    for (size_t i = 0; i < n; ++i) x[i] = round_bf16(x[i] * scale);
}

}  // namespace dsv4::core
