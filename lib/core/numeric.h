// Exact numeric formats of DeepSeek-V4 (spec §10): bf16, fp8 e4m3fn, fp4 e2m1, e8m0 scales, and the
// power-of-two block quantisation used for activations and for the KV/indexer simulation.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace dsv4::core {

// ---- bf16 ------------------------------------------------------------------------------------------
inline float bf16_to_f32(uint16_t bits) {
    uint32_t u = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
// Round to nearest, ties to even; NaN stays a (quiet) NaN of the same sign.
inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}
inline float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

// ---- fp8 e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa; max 448; no inf; 0x7f/0xff are NaN ---------
float fp8_e4m3_to_f32(uint8_t code);
// n e4m3 codes times one scale: out[i] = fp8_e4m3_to_f32(codes[i]) · scale (a cache entry's block).
void decode_fp8_scaled(const uint8_t *codes, size_t n, float scale, float *out);
// RNE, saturating to ±448; NaN → 0x7f (sign kept).
uint8_t f32_to_fp8_e4m3(float f);
constexpr float kFp8Max = 448.0f;

// ---- fp4 e2m1: 1 sign, 2 exponent (bias 1), 1 mantissa: {0, .5, 1, 1.5, 2, 3, 4, 6} -------------------
float fp4_e2m1_to_f32(uint8_t nibble);
// RNE, saturating to ±6; NaN → +0 is not representable, so NaN saturates to 6 with its sign (never produced
// by the model path, which clamps first).
uint8_t f32_to_fp4_e2m1(float f);
constexpr float kFp4Max = 6.0f;
// Checkpoint packing: element 2k in the low nibble, 2k+1 in the high nibble of byte k (spec §10.1).
inline uint8_t fp4_unpack(const uint8_t *packed, size_t i) {
    uint8_t byte = packed[i >> 1];
    return (i & 1) ? uint8_t(byte >> 4) : uint8_t(byte & 0x0f);
}

// n values stored as packed e2m1 codes (fp4_unpack order) with one e8m0 scale per 32: out[i] = value · scale.
void decode_fp4_blocks32(const uint8_t *packed, const uint8_t *scales, size_t n, float *out);

// ---- e8m0 (ue8m0): value 2^(e-127); 0xff is NaN ------------------------------------------------------
float e8m0_to_f32(uint8_t code);
// The e8m0 code of 2^exponent; exponent must lie in [-127, 127].
uint8_t e8m0_from_exponent(int exponent);
inline int e8m0_exponent(uint8_t code) { return int(code) - 127; }

// ---- power-of-two block scales (spec §10.3) ---------------------------------------------------------
// s = 2^ceil(log2(v)) with v = amax · (1/q_max) in fp32; the ceil-log2 is taken on the IEEE bits.
int pow2_scale_exponent(float amax, float q_max);
// 2^e as a float, for -149 <= e <= 127.
float exp2i(int e);

// One quantised block format: FP8 (q_max 448, amax floor 1e-4) or FP4 (q_max 6, amax floor 6·2^-126).
enum class BlockFormat { fp8_e4m3, fp4_e2m1 };

// Quantises n values (fp32, usually bf16-representable) in blocks of `block` along the row:
// codes[i] = format(clamp(x[i]/s_b, ±q_max)) and scale_exponents[b] = log2(s_b) for each block b.
// This is act_quant / fp4_act_quant of the reference. n need not be a multiple of block.
void quantize_blocks(BlockFormat format, const float *x, size_t n, size_t block, uint8_t *codes,
                     int8_t *scale_exponents);
// Dequantises back to fp32 (exact: code × 2^e).
void dequantize_blocks(BlockFormat format, const uint8_t *codes, const int8_t *scale_exponents, size_t n,
                       size_t block, float *out);
// In-place simulation x ← bf16(decode(encode(x/s))·s): the reference's FP8 KV and FP4 indexer simulation.
void simulate_blocks(BlockFormat format, float *x, size_t n, size_t block);

}  // namespace dsv4::core
