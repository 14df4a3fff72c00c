// The CPU backend's primitives: the heavy operations its steps (backend/cpu/steps_*.cpp) are made of, in two
// implementations, the reference loops (reference.cpp) and the optimised kernels (primitives_optimized.cpp), so that
// the parity harness can hold one against the other. Activations are fp32 arrays whose values are already rounded
// to the dtype the reference holds them in (bf16 unless stated); each operation rounds its output exactly where the
// reference does (spec §16).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "core/matrix.h"

namespace dsv4::backend::cpu {

struct AttentionProblem {
    const float *q = nullptr;        // bf16 values [n_heads, head_dim]
    const uint16_t *kv = nullptr;    // bf16 [n_rows, head_dim]: K = V (one shared KV head), as the reference holds it
    const uint8_t *valid = nullptr;  // [n_rows]: 0 = empty slot (index -1), contributes nothing
    int64_t n_rows = 0;
    int n_heads = 0, head_dim = 0;
    const float *sink = nullptr;     // fp32 [n_heads] logit added to the denominator only
    float scale = 0;                 // softmax scale (head_dim^-0.5)
    float *out = nullptr;            // bf16 values [n_heads, head_dim]
};

// Indexer keys as the KV cache stores them: per entry, dim/2 bytes of packed e2m1 codes (element 2c in the low
// nibble) then dim/32 e8m0 scales, in pages of entries_per_page entries. Backends decode while they score, so a
// decode step reads the compact cache once instead of a decoded copy of it.
struct Fp4Keys {
    const uint8_t *const *pages;
    int64_t entries_per_page, entry_bytes;
    const uint8_t *entry(int64_t j) const { return pages[j / entries_per_page] + (j % entries_per_page) * entry_bytes; }
};

// Compressed KV entries as the cache stores them (attention::encode_kv_entry): nope_dim e4m3 codes, one e8m0 scale
// per kKvEntryScaleBlock of them, then rope_dim bf16 values. Backends decode the entries a query attends to.
constexpr int kKvEntryScaleBlock = 64;
struct Fp8Entries {
    const uint8_t *const *entries;  // count entry pointers
    int64_t count;
    int nope_dim, rope_dim;
};

// One routed- or shared-expert linear of a batch: y[n, rows] = linear_expert(x[n, cols], *w).
struct ExpertLinear {
    const float *x;
    int64_t n;
    const core::ExpertMatrix *w;
    float *y;
};

class Primitives {
public:
    virtual ~Primitives() = default;
    virtual std::string name() const = 0;
    // The threads its parallel regions use (the steps' host loops use as many).
    virtual int threads() const = 0;

    // y[n, w.rows] = bf16(fp8_gemm(act_quant_128(x[n, w.cols]), w)) (spec §10.3).
    virtual void linear_fp8(const float *x, int64_t n, const core::Fp8Matrix &w, float *y) = 0;
    // Routed-expert GEMM in the checkpoint's expert format (FP4 per-32 scales, or FP8 128x128).
    virtual void linear_expert(const float *x, int64_t n, const core::ExpertMatrix &w, float *y) = 0;
    // Several expert linears at once (a layer's w1 and w3, then its w2): each y exactly as linear_expert gives it.
    // A backend may run them in one parallel region and quantise an input that several share (w1, w3) once.
    virtual void linear_experts(const ExpertLinear *jobs, size_t count) {
        for (size_t j = 0; j < count; ++j) linear_expert(jobs[j].x, jobs[j].n, *jobs[j].w, jobs[j].y);
    }
    // The grouped projection (wo_a, spec §4.6): w's rows in `groups` groups of R = w.rows / groups, group g of x
    // (x[i, g·w.cols ..], x's rows groups · w.cols long) through group g of the rows:
    // y[i, g·R + r] = bf16(Σ_c x[i, g·w.cols + c] · dequant(w)[g·R + r, c]). The reference's bf16 linear over FP8
    // weights that convert.py dequantises to bf16, read in their FP8 form: x is bf16 and not quantised; e4m3 times
    // its power-of-two block scale is exactly the bf16 weight, so only the fp32 summation order may differ.
    virtual void linear_dequant_fp8(const float *x, int64_t n, const core::Fp8Matrix &w, int groups, float *y) = 0;
    // y = bf16(x · wᵀ) with bf16 inputs, fp32 accumulation and one rounding (indexer weights_proj).
    virtual void linear_bf16(const float *x, int64_t n, const core::Bf16Matrix &w, float *y) = 0;
    // y = x · wᵀ in fp32 with bf16-stored weights (compressor, router gate, LM head).
    virtual void linear_f32(const float *x, int64_t n, const core::Bf16Matrix &w, float *y) = 0;
    // y = x · wᵀ in fp32 with fp32 weights [rows, cols] (mHC mixes).
    virtual void linear_f32w(const float *x, int64_t n, const float *w, int64_t rows, int64_t cols, float *y) = 0;
    // Sparse attention with sink over an explicit row list, online softmax in chunks of 64 rows (spec §4.5).
    virtual void attention(const AttentionProblem &p) = 0;
    // rows[j, ·] = entry j's values in bf16, the reference's KV dtype: each code's e4m3 value times its block's
    // 2^(scale - 127) (an fp32 product, rounded to bf16: exact but for results below bf16's normal range), then the
    // bf16 rope dims. rows holds count × (nope_dim + rope_dim) values.
    virtual void decode_kv_entries(const Fp8Entries &e, uint16_t *rows) = 0;
    // Lightning-indexer scores of one query over n keys (spec §6): for key j,
    // score[j] = bf16(Σ_h bf16(relu(bf16(q_h · k_j)) · w_h)), q [n_heads, dim], w [n_heads], keys as cached.
    virtual void index_scores(const float *q, const float *w, int n_heads, int dim, const Fp4Keys &keys, int64_t n,
                              float *scores) = 0;
};

enum class Isa;
// The reference loops (exact reference numerics, OpenMP across output rows); n_threads 0 = default.
std::unique_ptr<Primitives> make_reference_primitives(int n_threads);
// The optimised kernels of `isa` (see backend/cpu/isa.h), or of the CPU's best ISA capped by DSV4_MAX_CPU_ISA.
std::unique_ptr<Primitives> make_primitives(int n_threads, Isa isa);
std::unique_ptr<Primitives> make_primitives(int n_threads);

}  // namespace dsv4::backend::cpu
