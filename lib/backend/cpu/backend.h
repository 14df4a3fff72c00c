// The CPU backend: the steps of backend/backend.h on host memory, composed of the host arithmetic of the
// reference's precision and the heavy primitives (backend/cpu/primitives.h) of one implementation: the reference
// loops or the optimised kernels. The same steps over the reference primitives are the reference backend that the
// parity harness (tests/backend) holds every backend against.
#pragma once
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/primitives.h"

namespace dsv4::backend::cpu {

class CpuBackend final : public Backend {
public:
    explicit CpuBackend(std::unique_ptr<Primitives> primitives) : p_(std::move(primitives)) {}
    std::string name() const override { return p_->name(); }
    Primitives &primitives() { return *p_; }

    std::unique_ptr<Buffer> allocate(core::DType dtype, int64_t rows, int64_t cols) override;
    void upload(const void *host, const Tensor &dst) override;
    const void *read(const Tensor &t, std::vector<uint8_t> &staging) override;

    void embed(const core::Bf16Matrix &table, const Tensor &tokens, int hc, Tensor &h) override;
    void hc_pre(const io::ModelConfig &c, const core::HcWeights &w, const std::vector<float> &norm, const Tensor &h,
                Tensor &mix, Tensor &x, Tensor &xn) override;
    void hc_post(const Tensor &mix, const Tensor &y, const Tensor &h, Tensor &out) override;
    void query(const Layer &l, const Tensor &x, const Tensor &positions, Tensor &q, Tensor &q_r) override;
    void kv(const Layer &l, const Tensor &x, const Tensor &positions, Tensor &kv) override;
    void compress(const Layer &l, const Tensor &x, const LayerBatch &b, Tensor *kv_entries,
                  Tensor *index_entries) override;
    void index_query(const Layer &l, const Tensor &x, const Tensor &q_r, const Tensor &positions, Tensor &qI,
                     Tensor &omega) override;
    void index_topk(const Layer &l, const Tensor &qI, const Tensor &omega, const LayerBatch &b, Tensor &topk,
                    Tensor *scores) override;
    void sparse_attention(const Layer &l, const Tensor &q, const Tensor &kv, const Tensor &topk, const LayerBatch &b,
                          Tensor &o) override;
    void output_projection(const Layer &l, const Tensor &o, Tensor &y) override;
    void route(const Layer &l, const Tensor &x, const Tensor &tokens, Tensor &scores, Tensor &ids,
               Tensor &weights) override;
    void experts(const Layer &l, const Tensor &x, const Tensor &ids, const Tensor &weights, Tensor &y) override;
    void head(const io::ModelConfig &c, const core::HcWeights &hc_head, const std::vector<float> &norm,
              const core::Bf16Matrix &lm_head, const Tensor &h, const Tensor &rows, Tensor &logits) override;
    void mtp_input(const Layer &l, const core::Bf16Matrix &table, const Tensor &h, const Tensor &next_tokens,
                   Tensor &out) override;

    size_t workspace_bytes() const override;

private:
    // Step temporaries kept from call to call, sized by the largest pass so far: later passes up to that size
    // allocate nothing and fault in no pages (a fresh page cost about 3 ms per MB on this machine's hypervisor:
    // the 32 MB output-projection temporary of a 1,024-token prefill took 100 ms to allocate, pooled or not).
    struct Workspace {
        std::vector<float> qa, raw, comp_a, comp_z, idx_a, idx_z, row_scores, z, acc, shared_g, shared_u, shared_a,
            shared_out, rw, xe, g, u, a, out;
        std::vector<uint16_t> rows, own;
        std::vector<uint8_t> valid;
        std::vector<const uint8_t *> entries;
        std::vector<int64_t> gathered;
    };
    // v holding at least n elements (contents unspecified).
    template <typename T>
    static T *sized(std::vector<T> &v, size_t n) {
        if (v.size() < n) v.resize(n);
        return v.data();
    }
    std::unique_ptr<Primitives> p_;
    Workspace ws_;
};

// Lossless cache entry codecs: FP8 nope dims + e8m0 per 64 + bf16 rope dims (Fp8Entries decodes them), and FP4
// codes + e8m0 per 32 (Fp4Keys decodes them).
void encode_kv_entry(const kvcache::LayerGeometry &g, const float *values, uint8_t *entry);
void encode_index_entry(const kvcache::LayerGeometry &g, const float *values, uint8_t *entry);

// Top-k indices of scores, sorted by descending score, ties broken by the lower index (spec §6, §17.3).
std::vector<int32_t> topk_desc(const float *scores, int64_t n, int64_t k);

}  // namespace dsv4::backend::cpu
