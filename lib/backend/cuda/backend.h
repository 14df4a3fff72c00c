// The CUDA backend: the steps of backend/backend.h on one GPU, composed of the kernels of backend/cuda/kernels.h.
// Weights, activations, KV cache and compressor state live in device memory (plain cudaMalloc); the host plans
// from positions only (spans, page tables, compressor emissions), and a step reads nothing back. Each backend
// runs its work in order on its own stream; the KV storage's copies (the cache manager's undo logs, save/load) go
// through the legacy default stream, which waits for that stream's work, so every cache access sees the steps
// before it.
#pragma once
#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/kernels.h"

namespace dsv4::backend::cuda {

// Throws dsv4::Error naming `what` and CUDA's message when `e` is an error: DSV4_ERR_OUT_OF_MEMORY for memory,
// DSV4_ERR_BACKEND otherwise.
void check(cudaError_t e, const char *what);

// CUDA devices visible to this process (0 when there is no driver or no GPU).
int device_count();
// "NVIDIA H100 80GB HBM3", total memory and compute capability of device `index`.
struct DeviceInfo {
    std::string name;
    size_t total_bytes = 0, free_bytes = 0;
    int major = 0, minor = 0;
};
DeviceInfo device_info(int index);

// Device memory of one backend's temporaries, kept by size class for reuse: a forward pass asks for the same
// sizes layer after layer, and cudaMalloc/cudaFree synchronise the device.
class Pool {
public:
    explicit Pool(int device) : device_(device) {}
    ~Pool();
    void *take(size_t bytes);
    void give(void *p, size_t bytes) noexcept;
    size_t held_bytes() const { return held_; }
    static size_t size_class(size_t bytes);

private:
    void release_free() noexcept;
    int device_;
    std::multimap<size_t, void *> free_;
    size_t held_ = 0;  // taken and free, all of it cudaMalloc'd
};

class CudaDevice;

class CudaBackend final : public Backend {
public:
    explicit CudaBackend(const CudaDevice &device);
    ~CudaBackend() override;
    std::string name() const override;

    std::unique_ptr<Buffer> allocate(core::DType dtype, int64_t rows, int64_t cols) override;
    void upload(const void *host, const Tensor &dst) override;
    const void *read(const Tensor &t, std::vector<uint8_t> &staging) override;
    size_t workspace_bytes() const override { return pool_->held_bytes(); }

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

private:
    // The stream of this backend's work, with its device made current for the calling thread.
    cudaStream_t stream() const;
    // A table the host planned (descriptors, pointers, ids), copied to a temporary on the device.
    template <typename T>
    std::unique_ptr<Buffer> table(const std::vector<T> &host);
    // The FP8 activation quantisation of x [n, k] and the product with a weight: y [n, w.rows].
    void linear_fp8(const float *x, int64_t n, const core::Fp8Matrix &w, float *y);
    // The descriptors of a batch's spans for the attention kernels, with their caches' page tables.
    struct SpanTables {
        std::unique_ptr<Buffer> spans, row_span, pages;
    };
    SpanTables span_tables(const LayerBatch &b, int64_t rows, bool kv_pages, bool index_pages);
    // After a step's launches: a launch that failed names the step.
    void launched(const char *step) const;

    const CudaDevice &device_;
    cudaStream_t stream_ = nullptr;
    std::shared_ptr<Pool> pool_;  // shared with the buffers, which may outlive the backend
};

// The matrices of one layer's routed experts as the grouped kernels read them (device arrays of pointers).
struct LayerExperts {
    ExpertTable w1{}, w2{}, w3{};
};

class CudaDevice final : public Device {
public:
    explicit CudaDevice(int index);
    ~CudaDevice() override;
    std::string name() const override;
    // Uploads every tensor the steps read into one device allocation and points the matrices at it; the host
    // vectors (norms, mHC, biases, tables) get device copies that device_copy() finds. Too little device memory
    // fails before anything is allocated, naming the first tensor that does not fit.
    size_t prepare(core::ModelWeights &weights, const PrepareOptions &options) override;
    std::unique_ptr<Backend> make_backend(int n_threads) const override;
    std::shared_ptr<kvcache::Storage> kv_storage() const override { return storage_; }

    int index() const { return index_; }
    // The device copy of a host vector that prepare() uploaded (throws DSV4_ERR_INTERNAL for any other).
    const void *device_copy(const void *host) const;
    const LayerExperts &experts(int layer) const { return experts_.at(size_t(layer)); }

private:
    int index_;
    std::string name_;
    void *arena_ = nullptr;
    std::unordered_map<const void *, const void *> copies_;
    std::vector<LayerExperts> experts_;
    std::shared_ptr<kvcache::Storage> storage_;
};

// Device `index`; DSV4_ERR_BACKEND when there is no such GPU.
std::unique_ptr<Device> make_cuda_device(int index);

}  // namespace dsv4::backend::cuda
