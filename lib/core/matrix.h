// Zero-copy views of quantised weight matrices as stored in the checkpoint (spec §10.1).
#pragma once
#include <cstdint>
#include <cstring>

#include "core/numeric.h"

namespace dsv4::core {

enum class ExpertFormat { fp4, fp8 };

// Unaligned little-endian reads: safetensors offsets carry no alignment guarantee.
inline float load_bf16(const uint8_t *base, size_t i) {
    uint16_t v;
    std::memcpy(&v, base + 2 * i, 2);
    return core::bf16_to_f32(v);
}

// FP8 e4m3 weight [rows, cols] with one e8m0 scale per 128x128 block: scales [ceil(rows/128), ceil(cols/128)].
struct Fp8Matrix {
    const uint8_t *w = nullptr, *scale = nullptr;
    int64_t rows = 0, cols = 0;
    const uint8_t *packed = nullptr;  // optional copy of w in the CPU kernels' layout (backend/cpu/packed.h)
    int64_t scale_cols() const { return (cols + 127) / 128; }
};
// FP4 e2m1 weight [rows, cols] packed two per byte along cols, one e8m0 scale per 32 columns: [rows, cols/32].
struct Fp4Matrix {
    const uint8_t *w = nullptr, *scale = nullptr;
    int64_t rows = 0, cols = 0;
    const uint8_t *packed = nullptr;  // optional copy of w and scale in the CPU kernels' layout (backend/cpu/packed.h)
};
// A routed-expert matrix in the checkpoint's expert format.
struct ExpertMatrix {
    ExpertFormat format = ExpertFormat::fp4;
    Fp4Matrix fp4;
    Fp8Matrix fp8;
};
struct Bf16Matrix {
    const uint8_t *w = nullptr;  // bf16 [rows, cols], possibly unaligned
    int64_t rows = 0, cols = 0;
};

}  // namespace dsv4::core
