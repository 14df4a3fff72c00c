#include "core/numeric.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

namespace dsv4::core {
namespace {

uint32_t float_bits(float f) {
    uint32_t b;
    std::memcpy(&b, &f, 4);
    return b;
}

// RNE rounding of a finite a >= 0 onto a float format with `mantissa_bits` and minimum normal exponent `min_exp`:
// the quantum is q = 2^(max(floor(log2 a), min_exp) - mantissa_bits). Adding c = 1.5·2^23·q (ulp q, and a < c/2)
// rounds a to a multiple of q, half to even (c / q is even), and subtracting c again is exact. Bit arithmetic and
// two additions instead of frexp, ldexp and a division: the FP4/FP8 simulations run this per value.
float round_to_format(float a, int mantissa_bits, int min_exp) {
    const int exp = std::max(int(float_bits(a) >> 23) - 127, min_exp);
    const float c = exp2i(exp - mantissa_bits + 23) * 1.5f;
    return (a + c) - c;  // (no -ffast-math anywhere: the compiler keeps both roundings)
}

std::array<float, 256> make_fp8_table() {
    std::array<float, 256> t{};
    for (int c = 0; c < 256; ++c) {
        int sign = c >> 7, exp = (c >> 3) & 0xf, man = c & 7;
        float v;
        if (exp == 0xf && man == 7) v = NAN;
        else if (exp == 0) v = std::ldexp(float(man), -9);
        else v = std::ldexp(1.0f + float(man) / 8.0f, exp - 7);
        t[size_t(c)] = sign ? -v : v;
    }
    return t;
}
const std::array<float, 256> kFp8Table = make_fp8_table();
constexpr float kFp4Table[16] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
                                 -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

}  // namespace

float fp8_e4m3_to_f32(uint8_t code) { return kFp8Table[code]; }

void decode_fp8_scaled(const uint8_t *codes, size_t n, float scale, float *out) {
    const float *table = kFp8Table.data();
    for (size_t i = 0; i < n; ++i) out[i] = table[codes[i]] * scale;
}

uint8_t f32_to_fp8_e4m3(float f) {
    uint8_t sign = std::signbit(f) ? 0x80 : 0x00;
    if (std::isnan(f)) return uint8_t(sign | 0x7f);
    float a = std::min(std::fabs(f), kFp8Max);
    a = std::min(round_to_format(a, 3, -6), kFp8Max);
    if (a < 0.015625f) return uint8_t(sign | uint8_t(a * 512.0f));  // subnormal: multiples of 2^-9
    const uint32_t bits = float_bits(a);  // normal: the float's exponent rebiased, its top 3 mantissa bits
    return uint8_t(sign | uint32_t(int(bits >> 23) - 127 + 7) << 3 | (bits >> 20 & 7));
}

float fp4_e2m1_to_f32(uint8_t nibble) { return kFp4Table[nibble & 0x0f]; }

uint8_t f32_to_fp4_e2m1(float f) {
    uint8_t sign = std::signbit(f) ? 0x8 : 0x0;
    float a = std::isnan(f) ? kFp4Max : std::min(std::fabs(f), kFp4Max);
    a = std::min(round_to_format(a, 1, 0), kFp4Max);
    if (a < 1.0f) return uint8_t(sign | uint8_t(a * 2.0f));  // 0 and the subnormal 0.5
    const uint32_t bits = float_bits(a);  // 1 .. 6: exponent field 1 .. 3, then the top mantissa bit
    return uint8_t(sign | uint32_t(int(bits >> 23) - 127 + 1) << 1 | (bits >> 22 & 1));
}

void decode_fp4_blocks32(const uint8_t *packed, const uint8_t *scales, size_t n, float *out) {
    for (size_t i = 0; i < n; ++i) out[i] = kFp4Table[fp4_unpack(packed, i)] * e8m0_to_f32(scales[i / 32]);
}

float e8m0_to_f32(uint8_t code) { return code == 0xff ? NAN : exp2i(int(code) - 127); }

uint8_t e8m0_from_exponent(int exponent) { return uint8_t(std::clamp(exponent, -127, 127) + 127); }

float exp2i(int e) {
    if (e < -126 || e > 127) return std::ldexp(1.0f, e);  // subnormal (or overflow)
    const uint32_t bits = uint32_t(e + 127) << 23;      // decoders call this per block: no libm call
    float v;
    std::memcpy(&v, &bits, 4);
    return v;
}

int pow2_scale_exponent(float amax, float q_max) {
    float v = amax * (1.0f / q_max);
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    int e = int((bits >> 23) & 0xff) - 127;
    if (bits & 0x7fffffu) ++e;
    return e;
}

namespace {
struct FormatTraits {
    float q_max, amax_floor;
    uint8_t (*encode)(float);
    float (*decode)(uint8_t);
};
FormatTraits traits(BlockFormat format) {
    if (format == BlockFormat::fp8_e4m3) return {kFp8Max, 1e-4f, f32_to_fp8_e4m3, fp8_e4m3_to_f32};
    return {kFp4Max, 6.0f * std::ldexp(1.0f, -126), f32_to_fp4_e2m1, fp4_e2m1_to_f32};
}
}  // namespace

void quantize_blocks(BlockFormat format, const float *x, size_t n, size_t block, uint8_t *codes,
                     int8_t *scale_exponents) {
    const FormatTraits t = traits(format);
    for (size_t b0 = 0, bi = 0; b0 < n; b0 += block, ++bi) {
        size_t b1 = std::min(n, b0 + block);
        float amax = 0.0f;
        for (size_t i = b0; i < b1; ++i) amax = std::max(amax, std::fabs(x[i]));
        amax = std::max(amax, t.amax_floor);
        int e = pow2_scale_exponent(amax, t.q_max);
        float inv_s = exp2i(-e);
        for (size_t i = b0; i < b1; ++i) codes[i] = t.encode(std::clamp(x[i] * inv_s, -t.q_max, t.q_max));
        scale_exponents[bi] = int8_t(e);
    }
}

void dequantize_blocks(BlockFormat format, const uint8_t *codes, const int8_t *scale_exponents, size_t n,
                       size_t block, float *out) {
    const FormatTraits t = traits(format);
    for (size_t i = 0; i < n; ++i) out[i] = t.decode(codes[i]) * exp2i(scale_exponents[i / block]);
}

void simulate_blocks(BlockFormat format, float *x, size_t n, size_t block) {
    uint8_t codes[128];
    int8_t exps[1];
    for (size_t b0 = 0; b0 < n; b0 += block) {
        size_t len = std::min(block, n - b0);
        quantize_blocks(format, x + b0, len, block, codes, exps);
        dequantize_blocks(format, codes, exps, len, block, x + b0);
        for (size_t i = 0; i < len; ++i) x[b0 + i] = round_bf16(x[b0 + i]);
    }
}

}  // namespace dsv4::core
