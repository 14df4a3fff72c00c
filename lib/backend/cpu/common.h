// Pieces both CPU backends share: the thread count they run with, and the attention's online softmax.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "backend/backend.h"
#include "core/numeric.h"
#if defined(_OPENMP)
#include <omp.h>
#endif

namespace dsv4::backend::cpu {

// Threads of a backend created with n_threads: 0 = OpenMP's default (OMP_NUM_THREADS, else every core).
inline int resolve_threads(int n_threads) {
#if defined(_OPENMP)
    return n_threads > 0 ? n_threads : omp_get_max_threads();
#else
    (void)n_threads;
    return 1;
#endif
}

// Rows per online-softmax chunk of the attention (spec §4.5).
constexpr int64_t kAttentionChunk = 64;

// The reference's sparse attention with sink for head h of p: online softmax over chunks of 64 rows, P rounded
// to bf16 before P·V, fp32 accumulation. The inner loops over head_dim are the caller's: dot(q, k) returns
// q·k, scale(acc, alpha) does acc *= alpha, axpy(acc, prob, v) does acc += prob·v element by element.
// acc holds head_dim floats and scores kAttentionChunk, both scratch.
template <typename Dot, typename Scale, typename Axpy>
void attention_head(const AttentionProblem &p, int h, float *acc, float *scores, Dot &&dot, Scale &&scale,
                    Axpy &&axpy) {
    const int d = p.head_dim;
    const float *q = p.q + int64_t(h) * d;
    std::fill_n(acc, d, 0.0f);
    float m = -INFINITY, l = 0.0f;
    for (int64_t c0 = 0; c0 < p.n_rows; c0 += kAttentionChunk) {
        const int64_t c1 = std::min(p.n_rows, c0 + kAttentionChunk);
        float chunk_max = -INFINITY;
        for (int64_t j = c0; j < c1; ++j) {
            const float s = p.valid[j] ? dot(q, p.kv + j * d) * p.scale : -INFINITY;
            scores[j - c0] = s;
            chunk_max = std::max(chunk_max, s);
        }
        const float m_new = std::max(m, chunk_max);
        if (m_new == -INFINITY) continue;  // nothing valid yet
        const float alpha = m == -INFINITY ? 0.0f : std::exp(m - m_new);
        l *= alpha;
        scale(acc, alpha);
        for (int64_t j = c0; j < c1; ++j) {
            if (!p.valid[j]) continue;
            const float prob = std::exp(scores[j - c0] - m_new);
            l += prob;
            axpy(acc, core::round_bf16(prob), p.kv + j * d);  // P is bf16 in the P·V product
        }
        m = m_new;
    }
    l += std::exp(p.sink[h] - m);
    float *o = p.out + int64_t(h) * d;
    for (int t = 0; t < d; ++t) o[t] = core::round_bf16(acc[t] / l);
}

}  // namespace dsv4::backend::cpu
