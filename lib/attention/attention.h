// The attention sub-layer of one block (spec §4–§7): query/KV paths, the compressors, the lightning
// indexer, sparse attention with sink over window + compressed entries, and the grouped output projection.
#pragma once
#include <cstdint>
#include <vector>

#include "attention/rope.h"
#include "backend/backend.h"
#include "io/config.h"
#include "kvcache/cache.h"
#include "model/observer.h"
#include "model/weights.h"

namespace dsv4::attention {

// A run of consecutive tokens of one sequence inside a batch: rows [row0, row0+n) at positions start_pos…
struct Span {
    int64_t row0 = 0, n = 0, start_pos = 0;
    kvcache::LayerCache *cache = nullptr;
};

struct LayerContext {
    const io::ModelConfig &config;
    const io::LayerSpec &spec;
    const model::LayerWeights &weights;
    const Rope &rope;
    backend::Backend &backend;
    const model::Observer *observer;
    int layer;
};

// x: attn_norm output, bf16 values [N, D]; y: attention output, bf16 values [N, D]. Writes each span's new
// KV, compressed entries and compressor rows into its cache (inside the caller's transaction).
void attention_forward(const LayerContext &ctx, const float *x, int64_t n_rows, const std::vector<Span> &spans,
                       float *y);

// Lossless cache entry codecs: FP8 nope dims + e8m0 per 64 + bf16 rope dims (backend::Fp8Entries decodes them).
void encode_kv_entry(const kvcache::LayerGeometry &g, const float *values, uint8_t *entry);
// FP4 codes + e8m0 per 32 (backend::Fp4Keys decodes them).
void encode_index_entry(const kvcache::LayerGeometry &g, const float *values, uint8_t *entry);

// Top-k indices of scores, sorted by descending score, ties broken by the lower index (spec §6, §17.3).
std::vector<int32_t> topk_desc(const float *scores, int64_t n, int64_t k);

}  // namespace dsv4::attention
