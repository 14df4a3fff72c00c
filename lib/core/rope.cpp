#include "core/rope.h"

#include <algorithm>
#include <cmath>

#include "core/numeric.h"

namespace dsv4::core {

Rope::Rope(int rope_dim, float base, bool yarn, float factor, int original_seq_len, float beta_fast, float beta_slow) {
    const int half = rope_dim / 2;
    theta_.resize(size_t(half));
    for (int i = 0; i < half; ++i) theta_[size_t(i)] = 1.0f / std::pow(base, float(2 * i) / float(rope_dim));
    if (!yarn || original_seq_len <= 0) return;
    // Correction range: dims whose wavelength crosses beta_fast / beta_slow rotations over the original length.
    // Computed in double, as the reference does in Python.
    auto correction_dim = [&](double rotations) {
        return double(rope_dim) * std::log(double(original_seq_len) / (rotations * 2.0 * M_PI)) /
               (2.0 * std::log(double(base)));
    };
    float low = float(std::max(std::floor(correction_dim(beta_fast)), 0.0));
    float high = float(std::min(std::ceil(correction_dim(beta_slow)), double(rope_dim - 1)));
    if (low == high) high += 0.001f;
    for (int i = 0; i < half; ++i) {
        float ramp = std::clamp((float(i) - low) / (high - low), 0.0f, 1.0f);
        float smooth = 1.0f - ramp;
        theta_[size_t(i)] = theta_[size_t(i)] / factor * (1.0f - smooth) + theta_[size_t(i)] * smooth;
    }
}

void Rope::apply(float *x, int pos, bool inverse) const {
    for (size_t i = 0; i < theta_.size(); ++i) {
        const float angle = float(pos) * theta_[i];
        const float c = std::cos(angle), s = inverse ? -std::sin(angle) : std::sin(angle);
        const float a = x[2 * i], b = x[2 * i + 1];
        x[2 * i] = round_bf16(a * c - b * s);
        x[2 * i + 1] = round_bf16(a * s + b * c);
    }
}

}  // namespace dsv4::core
