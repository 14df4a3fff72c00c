// Pieces both CPU backends share: the thread count they run with, and the attention's online softmax.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "backend/cpu/primitives.h"
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

// Per-thread rows of scratch, sized before a parallel region (an exception, bad_alloc, must never leave an OpenMP
// region, where it would terminate the process instead of becoming DSV4_ERR_OUT_OF_MEMORY); row() is the calling
// thread's. Sizing again keeps the memory, so a member reused across calls does not reallocate.
template <typename T>
class ThreadRows {
public:
    ThreadRows() = default;
    ThreadRows(int threads, int64_t len) { size(threads, len); }
    void size(int threads, int64_t len) {
        len_ = size_t(len);
        data_.resize(size_t(threads) * len_);
    }
    T *row() {
#if defined(_OPENMP)
        return data_.data() + size_t(omp_get_thread_num()) * len_;
#else
        return data_.data();
#endif
    }

private:
    size_t len_ = 0;
    std::vector<T> data_;
};

// Rows per online-softmax chunk of the attention (spec §4.5).
constexpr int64_t kAttentionChunk = 64;

// Heads per block of the attention: a block's heads share every row they load.
constexpr int kMaxHeadBlock = 4;

// The reference's sparse attention with sink for heads [h0, h0 + nh) of p (nh <= kMaxHeadBlock): online softmax
// over chunks of 64 rows, P rounded to bf16 before P·V, fp32 accumulation. Each head runs the reference's
// operations in the reference's order; a block only lets them share each loaded row. The inner loops over
// head_dim are the caller's (rows: the chunk's bf16 rows): dots(h0, nh, rows, valid, n, out) writes
// out[h·kAttentionChunk + j] = q_h·row j for
// the block's heads and the valid rows j < n (any summation order), scale(acc, alpha) does
// acc *= alpha, and pv(acc, nh, probs, rows, valid, n) does, for each head h and each element i of head_dim,
// acc_h[i] = acc_h[i] + probs[h·kAttentionChunk + j]·rows[j·head_dim + i] (product rounded, then the sum) for the
// valid rows j = 0, 1, ..., n - 1 in that order. acc holds nh·head_dim floats and scores nh·kAttentionChunk,
// both scratch.
template <typename Dots, typename Scale, typename PV>
void attention_heads(const AttentionProblem &p, int h0, int nh, float *acc, float *scores, Dots &&dots, Scale &&scale,
                     PV &&pv) {
    const int d = p.head_dim;
    std::fill_n(acc, size_t(nh) * size_t(d), 0.0f);
    float m[kMaxHeadBlock], l[kMaxHeadBlock];
    std::fill_n(m, nh, -INFINITY);
    std::fill_n(l, nh, 0.0f);
    for (int64_t c0 = 0; c0 < p.n_rows; c0 += kAttentionChunk) {
        const int64_t c1 = std::min(p.n_rows, c0 + kAttentionChunk);
        float chunk_max[kMaxHeadBlock];
        std::fill_n(chunk_max, nh, -INFINITY);
        dots(h0, nh, p.kv + c0 * d, p.valid + c0, int(c1 - c0), scores);
        for (int64_t j = c0; j < c1; ++j)
            for (int h = 0; h < nh; ++h) {
                float &s = scores[h * kAttentionChunk + (j - c0)];
                s = p.valid[j] ? s * p.scale : -INFINITY;
                chunk_max[h] = std::max(chunk_max[h], s);
            }
        // The heads see the same valid rows, so all of them or none have seen one by now.
        if (std::max(m[0], chunk_max[0]) == -INFINITY) continue;
        float m_new[kMaxHeadBlock];
        for (int h = 0; h < nh; ++h) {
            m_new[h] = std::max(m[h], chunk_max[h]);
            const float alpha = m[h] == -INFINITY ? 0.0f : std::exp(m[h] - m_new[h]);
            l[h] *= alpha;
            scale(acc + size_t(h) * size_t(d), alpha);
        }
        // the chunk's probabilities in place of its scores (l sums them unrounded, in row order), then P·V
        for (int64_t j = c0; j < c1; ++j) {
            if (!p.valid[j]) continue;
            for (int h = 0; h < nh; ++h) {
                float &slot = scores[h * kAttentionChunk + (j - c0)];
                const float prob = std::exp(slot - m_new[h]);
                l[h] += prob;
                slot = core::round_bf16(prob);  // P is bf16 in the P·V product
            }
        }
        pv(acc, nh, scores, p.kv + c0 * d, p.valid + c0, int(c1 - c0));
        std::copy_n(m_new, nh, m);
    }
    for (int h = 0; h < nh; ++h) {
        const float total = l[h] + std::exp(p.sink[h0 + h] - m[h]);
        float *o = p.out + int64_t(h0 + h) * d;
        for (int t = 0; t < d; ++t) o[t] = core::round_bf16(acc[size_t(h) * size_t(d) + size_t(t)] / total);
    }
}

}  // namespace dsv4::backend::cpu
