// The backend interface: devices, and the steps of DeepSeek-V4's forward pass over device tensors.
//
// A Device (owned by the model) prepares the weights it computes with and makes a Backend per context: the
// context's stream of work, with its own scratch memory. The model definition (model/forward.cpp) is a schedule
// of the steps below and does no arithmetic of its own; each step is the unit of cross-backend parity
// (tests/backend). Tensors are the backend's: the host plans from positions only (the batch's spans, positions,
// output rows), and data-dependent results (indexer top-k, router choices) stay in device tensors that later
// steps read, so a decode step reads nothing back before its logits. Every step rounds exactly where the
// reference does (spec §16).
//
// Activation tensors hold F32 elements whose values are already rounded to the dtype the reference holds them in
// (bf16 unless stated), I32 for ids and positions.
#pragma once
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/rope.h"
#include "core/tensor.h"
#include "core/weights.h"
#include "io/config.h"
#include "kvcache/cache.h"

namespace dsv4::backend {
using core::Tensor;

constexpr int kBackendApiVersion = 2;

// Consecutive tokens of one sequence in a batch: rows [row0, row0 + n) at positions start_pos ... start_pos + n - 1.
struct Span {
    int64_t row0 = 0, n = 0, start_pos = 0;
};

// What the attention steps of one layer read and write besides activations: the batch's spans and, per span, that
// sequence's cache of this layer (written inside the caller's transaction).
struct LayerBatch {
    const std::vector<Span> &spans;
    const std::vector<kvcache::LayerCache *> &caches;  // one per span
    const Tensor &positions;                           // I32 [N, 1]: each row's position
};

// hc from the width (2 + hc)·hc of hc_pre's mix tensor (pre, post, comb).
inline int hc_of_mix(int64_t mix_cols) {
    int hc = 1;
    while (int64_t(2 + hc) * hc < mix_cols) ++hc;
    return hc;
}
// The indexer weights' scale (spec §6): omega = bf16(weights_proj · x · dI^-1/2 · nI^-1/2), in double then rounded.
inline float index_weight_scale(const io::ModelConfig &c) {
    return float(1.0 / std::sqrt(double(c.index_head_dim)) / std::sqrt(double(c.index_n_heads)));
}

// One block as every step of it sees it.
struct Layer {
    const io::ModelConfig &config;
    const io::LayerSpec &spec;
    const core::LayerWeights &weights;  // as the device prepared them
    const core::Rope &rope;
    int index;  // main layers 0.., then the MTP blocks
};

// Memory of one device, released with the object: a tensor the backend allocated.
class Buffer {
public:
    virtual ~Buffer() = default;
    Tensor tensor;
};

class Backend {
public:
    virtual ~Backend() = default;
    virtual int api_version() const { return kBackendApiVersion; }
    virtual std::string name() const = 0;

    // ---- memory -------------------------------------------------------------------------------------------
    // A tensor of the device's memory, valid until the Buffer is freed; contents unspecified.
    virtual std::unique_ptr<Buffer> allocate(core::DType dtype, int64_t rows, int64_t cols) = 0;
    virtual void upload(const void *host, const Tensor &dst) = 0;
    // The tensor's elements on the host: a pointer into the tensor where the host can read the device's memory
    // (the CPU's), else into `staging` after a copy. Only observed tensors are read this way.
    virtual const void *read(const Tensor &t, std::vector<uint8_t> &staging) = 0;
    // Memory the backend keeps for its steps' temporaries between calls.
    virtual size_t workspace_bytes() const { return 0; }

    // ---- steps (spec sections in brackets) ----------------------------------------------------------------
    // h[i, k·D + j] = embed[tokens[i], j] for each of the hc streams k (§2).
    virtual void embed(const core::Bf16Matrix &table, const Tensor &tokens, int hc, Tensor &h) = 0;
    // hc_pre (§3.1): mixes of the streams h [N, hc·D] with their RMS factor, Sinkhorn of the combination, the
    // collapse x = bf16(Σ pre_j h_j) [N, D] and its RMSNorm xn [N, D] with `norm`. mix [N, (2 + hc)·hc] holds
    // pre (hc), post (hc) and comb (hc·hc) for hc_post.
    virtual void hc_pre(const io::ModelConfig &c, const core::HcWeights &w, const std::vector<float> &norm,
                        const Tensor &h, Tensor &mix, Tensor &x, Tensor &xn) = 0;
    // hc_post (§3.2): out[i, k] = bf16(post_k · y_i + Σ_j comb[j, k] · h[i, j]).
    virtual void hc_post(const Tensor &mix, const Tensor &y, const Tensor &h, Tensor &out) = 0;

    // Query path (§4.2): q_r = q_norm(wq_a · x) [N, q_lora_rank]; q = wq_b · q_r [N, H·d], each head RMS-scaled
    // in bf16 and its rope dims rotated at the row's position.
    virtual void query(const Layer &l, const Tensor &x, const Tensor &positions, Tensor &q, Tensor &q_r) = 0;
    // KV path (§4.3): kv = kv_norm(wkv · x) [N, d], rope dims rotated, nope dims FP8-simulated in blocks of 64.
    virtual void kv(const Layer &l, const Tensor &x, const Tensor &positions, Tensor &kv) = 0;
    // Both compressors of the layer (§5), in position order per span: each token's projections join the carried
    // state, and every completed window appends its entry to the cache (the indexer's key too on CSA layers).
    // Where asked (non-null), the emitted entries' values [emitted, d] / [emitted, index_head_dim] in emission order.
    virtual void compress(const Layer &l, const Tensor &x, const LayerBatch &b, Tensor *kv_entries,
                          Tensor *index_entries) = 0;
    // Indexer queries (§6, CSA layers): qI [N, nI·dI] (wq_b · q_r, RoPE, Hadamard, FP4-simulated), omega [N, nI].
    virtual void index_query(const Layer &l, const Tensor &x, const Tensor &q_r, const Tensor &positions, Tensor &qI,
                             Tensor &omega) = 0;
    // Indexer scores of every row over the entries visible at its position, and their top-k (§6): topk I32
    // [N, index_topk] sorted by score (ties: lower index), -1 past the visible count. Where asked, scores
    // [N, entries at the batch's end] (-inf past a row's visible count). Runs after compress.
    virtual void index_topk(const Layer &l, const Tensor &qI, const Tensor &omega, const LayerBatch &b, Tensor &topk,
                            Tensor *scores) = 0;
    // Sparse attention with sink (§4.5, §7) of every query row over its window (the W positions up to its own, from
    // the ring and this batch's kv) and its compressed entries (CSA: topk's; HCA: all visible), values de-rotated
    // at the query position (§4.6): o [N, H·d]. Then the batch's kv joins the window ring.
    virtual void sparse_attention(const Layer &l, const Tensor &q, const Tensor &kv, const Tensor &topk,
                                  const LayerBatch &b, Tensor &o) = 0;
    // Grouped output projection (§4.6): y = wo_b · (wo_a per group of o) [N, D].
    virtual void output_projection(const Layer &l, const Tensor &o, Tensor &y) = 0;

    // Router (§8.1): scores = sqrt(softplus(gate · x)) [N, E] (F32); ids I32 [N, k] by biased score or the hash
    // table of the row's token; weights [N, k] (F32) normalised unbiased scores times route_scale.
    virtual void route(const Layer &l, const Tensor &x, const Tensor &tokens, Tensor &scores, Tensor &ids,
                       Tensor &weights) = 0;
    // Experts (§8.2-8.3): y = bf16(Σ_j weights_j · routed expert ids_j(x), in expert-id order, + shared(x)) [N, D].
    virtual void experts(const Layer &l, const Tensor &x, const Tensor &ids, const Tensor &weights, Tensor &y) = 0;

    // Head (§9.2): hc_head of the streams h rows `rows` (I32 [n, 1]), the final norm, the fp32 LM head: logits
    // [n, vocab] (F32).
    virtual void head(const io::ModelConfig &c, const core::HcWeights &hc_head, const std::vector<float> &norm,
                      const core::Bf16Matrix &lm_head, const Tensor &h, const Tensor &rows, Tensor &logits) = 0;
    // MTP input (§9.3): out[i, k] = bf16(e_proj(enorm(embed(next[i]))) + h_proj(hnorm(h[i, k]))) [n, hc·D].
    virtual void mtp_input(const Layer &l, const core::Bf16Matrix &table, const Tensor &h, const Tensor &next_tokens,
                           Tensor &out) = 0;
};

// Options of a device's weight preparation.
struct PrepareOptions {
    bool repack_weights = true;  // CPU: copy FP4/FP8 matrices into the packed layout where its kernels use it
    // Called as a GPU device copies the weights into its memory (done <= total bytes); returning false cancels
    // the preparation (DSV4_ERR_CANCELLED) and frees what it allocated.
    bool (*progress)(uint64_t done, uint64_t total, void *user) = nullptr;
    void *progress_user = nullptr;
};

// A device: owns the weights it prepared and makes the backends (streams of work) of contexts. Thread-safe.
class Device {
public:
    virtual ~Device() = default;
    virtual std::string name() const = 0;
    // Prepares `weights` (views of the mapped checkpoint) for this device's steps, in place; what it allocates
    // lives as long as the device. Returns the bytes it allocated.
    virtual size_t prepare(core::ModelWeights &weights, const PrepareOptions &options) = 0;
    // A backend for one context; n_threads: CPU compute threads, 0 = OMP_NUM_THREADS if set, else all cores.
    virtual std::unique_ptr<Backend> make_backend(int n_threads) const = 0;
    // The memory the KV caches of this device's contexts live in (their steps read and write it in place).
    virtual std::shared_ptr<kvcache::Storage> kv_storage() const = 0;
};

// The CPU device with the kernels of the best ISA the CPU allows, capped by DSV4_MAX_CPU_ISA.
std::unique_ptr<Device> make_cpu_device();

// The device a spec names: "cpu", "cuda" (device 0) or "cuda:N". Throws DSV4_ERR_INVALID_ARGUMENT for another
// spec, DSV4_ERR_UNSUPPORTED when this build has no CUDA backend, DSV4_ERR_BACKEND when the device is absent.
std::unique_ptr<Device> make_device(const std::string &spec);

// A device this build and machine offer, for the device query of the C ABI.
struct DeviceDescription {
    std::string spec;         // what make_device takes: "cpu", "cuda:0", ...
    std::string description;  // "cpu-avx512_bf16", "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)"
    size_t memory_bytes = 0;  // device memory (0 for the CPU: host memory)
};
std::vector<DeviceDescription> available_devices();
// The backends compiled into this build: "cpu", and "cuda" with -DDSV4_CUDA=ON.
std::vector<std::string> compiled_backends();

}  // namespace dsv4::backend
