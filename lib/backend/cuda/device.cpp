// The CUDA device: uploads the weights into one allocation of device memory, keeps the KV caches in device memory,
// and makes CUDA backends; plus the device query and the backends' memory pool.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "backend/cuda/backend.h"
#include "core/error.h"

namespace dsv4::backend::cuda {

void check(cudaError_t e, const char *what) {
    if (e == cudaSuccess) return;
    cudaGetLastError();  // a failed allocation leaves no sticky error; clear it so that the next call starts clean
    const dsv4_status status = e == cudaErrorMemoryAllocation ? DSV4_ERR_OUT_OF_MEMORY : DSV4_ERR_BACKEND;
    fail(status, "CUDA: {}: {} ({})", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

DeviceInfo device_info(int index) {
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, index), "cudaGetDeviceProperties");
    DeviceInfo info;
    info.name = prop.name;
    info.total_bytes = prop.totalGlobalMem;
    info.major = prop.major;
    info.minor = prop.minor;
    check(cudaSetDevice(index), "cudaSetDevice");
    size_t total = 0;
    check(cudaMemGetInfo(&info.free_bytes, &total), "cudaMemGetInfo");
    return info;
}

// ---- pool -------------------------------------------------------------------------------------------------
size_t Pool::size_class(size_t bytes) {
    // 256-byte granules up to 64 KiB, then steps of a quarter of the power of two: little waste, few classes
    constexpr size_t kGranule = 256;
    if (bytes <= 65536) return std::max<size_t>(kGranule, (bytes + kGranule - 1) / kGranule * kGranule);
    size_t p = 65536;
    while (p * 2 < bytes) p *= 2;
    const size_t step = p / 4;
    return (bytes + step - 1) / step * step;
}

void *Pool::take(size_t bytes) {
    if (bytes == 0) return nullptr;
    const size_t size = size_class(bytes);
    if (auto it = free_.find(size); it != free_.end()) {
        void *p = it->second;
        free_.erase(it);
        return p;
    }
    check(cudaSetDevice(device_), "cudaSetDevice");
    void *p = nullptr;
    if (cudaMalloc(&p, size) != cudaSuccess) {
        cudaGetLastError();
        release_free();  // memory of other sizes kept for reuse: give it back, then try again
        const cudaError_t e = cudaMalloc(&p, size);
        if (e != cudaSuccess) {
            cudaGetLastError();
            fail(DSV4_ERR_OUT_OF_MEMORY, "CUDA device {}: no memory for a {}-byte activation buffer ({} bytes held by "
                 "this context's pool): {}", device_, size, held_, cudaGetErrorString(e));
        }
    }
    held_ += size;
    return p;
}

void Pool::give(void *p, size_t bytes) noexcept {
    if (p) free_.emplace(size_class(bytes), p);
}

void Pool::release_free() noexcept {
    for (const auto &[size, p] : free_) {
        cudaFree(p);
        held_ -= size;
    }
    free_.clear();
}

Pool::~Pool() {
    cudaSetDevice(device_);
    release_free();
}

namespace {

// ---- KV storage -------------------------------------------------------------------------------------------
// Cache rows and pages in device memory. Copies go through the legacy default stream, which waits for the
// backends' streams: the cache manager's reads see every step enqueued before them.
class CudaStorage final : public kvcache::Storage {
public:
    explicit CudaStorage(int device) : device_(device) {}
    std::string name() const override { return fmt::format("cuda:{}", device_); }
    uint8_t *allocate(size_t bytes) override {
        check(cudaSetDevice(device_), "cudaSetDevice");
        void *p = nullptr;
        const cudaError_t e = cudaMalloc(&p, std::max<size_t>(bytes, 1));
        if (e != cudaSuccess) {
            cudaGetLastError();
            fail(DSV4_ERR_OUT_OF_MEMORY, "CUDA device {}: no memory for {} bytes of KV cache: {}", device_, bytes,
                 cudaGetErrorString(e));
        }
        const cudaError_t z = cudaMemset(p, 0, bytes);
        if (z != cudaSuccess) {
            cudaFree(p);
            check(z, "cudaMemset (KV cache)");
        }
        return static_cast<uint8_t *>(p);
    }
    void release(uint8_t *p, size_t) noexcept override {
        cudaSetDevice(device_);
        cudaFree(p);
    }
    void copy(uint8_t *dst, const uint8_t *src, size_t bytes) override {
        check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice), "KV cache copy");
    }
    void zero(uint8_t *dst, size_t bytes) override { check(cudaMemset(dst, 0, bytes), "KV cache clear"); }
    void download(void *host, const uint8_t *src, size_t bytes) override {
        check(cudaMemcpy(host, src, bytes, cudaMemcpyDeviceToHost), "KV cache download");
    }
    void upload(uint8_t *dst, const void *host, size_t bytes) override {
        check(cudaMemcpy(dst, host, bytes, cudaMemcpyHostToDevice), "KV cache upload");
    }

private:
    int device_;
};

// One tensor of the weights' upload plan.
struct Item {
    std::string name;
    const void *src;  // host bytes (the mapped checkpoint or a vector); nullptr: filled after the upload
    size_t bytes;
    const uint8_t **repoint;  // the matrix pointer to point at the copy; nullptr: a vector (device_copy)
    size_t offset = 0;
};

constexpr size_t kAlign = 256;

}  // namespace

// ---- device -----------------------------------------------------------------------------------------------
CudaDevice::CudaDevice(int index) : index_(index) {
    const int n = device_count();
    if (index < 0 || index >= n)
        fail(DSV4_ERR_BACKEND, "cuda:{}: no such CUDA device ({} visible{})", index, n,
             n == 0 ? ": no GPU or no driver" : "");
    const DeviceInfo info = device_info(index);
    name_ = fmt::format("cuda:{} ({})", index, info.name);
    storage_ = std::make_shared<CudaStorage>(index);
}

CudaDevice::~CudaDevice() {
    cudaSetDevice(index_);
    cudaFree(arena_);
}

std::string CudaDevice::name() const { return name_; }

const void *CudaDevice::device_copy(const void *host) const {
    if (!host) return nullptr;
    const auto it = copies_.find(host);
    if (it == copies_.end()) fail(DSV4_ERR_INTERNAL, "{}: a weight vector was not uploaded", name_);
    return it->second;
}

size_t CudaDevice::prepare(core::ModelWeights &weights, const PrepareOptions &options) {
    std::vector<Item> items;
    const auto matrix = [&](const std::string &name, const uint8_t *&w, size_t w_bytes, const uint8_t *&scale,
                            size_t scale_bytes) {
        if (!w) return;  // absent in this layer
        items.push_back({name, w, w_bytes, &w});
        if (scale) items.push_back({name + ".scale", scale, scale_bytes, &scale});
    };
    const auto fp8 = [&](const std::string &name, core::Fp8Matrix &m) {
        m.packed = nullptr;
        matrix(name, m.w, size_t(m.rows * m.cols), m.scale, size_t((m.rows + 127) / 128 * m.scale_cols()));
    };
    const auto fp4 = [&](const std::string &name, core::Fp4Matrix &m) {
        m.packed = nullptr;
        matrix(name, m.w, size_t(m.rows * m.cols / 2), m.scale, size_t(m.rows * m.cols / 32));
    };
    const auto bf16 = [&](const std::string &name, core::Bf16Matrix &m) {
        if (m.w) items.push_back({name, m.w, size_t(m.rows * m.cols) * 2, &m.w});
    };
    const auto vec = [&](const std::string &name, const auto &v) {
        if (!v.empty()) items.push_back({name, v.data(), v.size() * sizeof(v[0]), nullptr});
    };
    const auto hc = [&](const std::string &name, const core::HcWeights &w) {
        vec(name + ".fn", w.fn);
        vec(name + ".base", w.base);  // the scales stay on the host: the steps pass them by value
    };
    bf16("embed", weights.embed);
    bf16("head", weights.head);
    vec("norm", weights.norm);
    hc("hc_head", weights.hc_head);
    std::vector<size_t> tables(weights.layers.size(), 0);  // the item of each layer's expert pointer tables
    for (size_t il = 0; il < weights.layers.size(); ++il) {
        core::LayerWeights &l = weights.layers[il];
        const std::string p = fmt::format("layers.{}.", il);
        vec(p + "attn_norm", l.attn_norm);
        vec(p + "ffn_norm", l.ffn_norm);
        hc(p + "hc_attn", l.hc_attn);
        hc(p + "hc_ffn", l.hc_ffn);
        vec(p + "attn.attn_sink", l.attn_sink);
        fp8(p + "attn.wq_a", l.wq_a);
        fp8(p + "attn.wq_b", l.wq_b);
        fp8(p + "attn.wkv", l.wkv);
        fp8(p + "attn.wo_a", l.wo_a);
        fp8(p + "attn.wo_b", l.wo_b);
        vec(p + "attn.q_norm", l.q_norm);
        vec(p + "attn.kv_norm", l.kv_norm);
        for (auto [name, c] : {std::pair{"attn.compressor", &l.compressor}, std::pair{"attn.indexer.compressor", &l.index_compressor}}) {
            bf16(p + name + ".wkv", c->wkv);
            bf16(p + name + ".wgate", c->wgate);
            vec(p + name + ".ape", c->ape);
            vec(p + name + ".norm", c->norm);
        }
        fp8(p + "attn.indexer.wq_b", l.index_wq_b);
        bf16(p + "attn.indexer.weights_proj", l.index_weights_proj);
        bf16(p + "ffn.gate", l.gate);
        vec(p + "ffn.gate.bias", l.gate_bias);
        vec(p + "ffn.gate.tid2eid", l.tid2eid);
        for (size_t e = 0; e < l.experts.size(); ++e)
            for (auto [name, m] : {std::pair{"w1", &l.experts[e].w1}, std::pair{"w2", &l.experts[e].w2}, std::pair{"w3", &l.experts[e].w3}}) {
                const std::string n = fmt::format("{}ffn.experts.{}.{}", p, e, name);
                m->format == core::ExpertFormat::fp4 ? fp4(n, m->fp4) : fp8(n, m->fp8);
            }
        if (!l.experts.empty()) {
            tables[il] = items.size();
            items.push_back({p + "ffn.experts (pointer tables)", nullptr, 6 * l.experts.size() * sizeof(void *), nullptr});
        }
        fp8(p + "ffn.shared_experts.w1", l.shared.w1);
        fp8(p + "ffn.shared_experts.w2", l.shared.w2);
        fp8(p + "ffn.shared_experts.w3", l.shared.w3);
        fp8(p + "e_proj", l.e_proj);
        fp8(p + "h_proj", l.h_proj);
        vec(p + "enorm", l.enorm);
        vec(p + "hnorm", l.hnorm);
        vec(p + "norm", l.norm);
        hc(p + "hc_head", l.hc_head);
    }

    size_t total = 0;
    for (Item &it : items) {
        it.offset = total;
        total += (it.bytes + kAlign - 1) / kAlign * kAlign;
    }
    check(cudaSetDevice(index_), "cudaSetDevice");
    size_t free_bytes = 0, device_bytes = 0;
    check(cudaMemGetInfo(&free_bytes, &device_bytes), "cudaMemGetInfo");
    if (total > free_bytes) {
        const auto first = std::find_if(items.begin(), items.end(), [&](const Item &it) { return it.offset + it.bytes > free_bytes; });
        fail(DSV4_ERR_OUT_OF_MEMORY,
             "{}: the weights need {} bytes of device memory and {} of {} are free: tensor '{}' ({} bytes) is the first "
             "that does not fit", name_, total, free_bytes, device_bytes, first->name, first->bytes);
    }
    void *arena = nullptr;
    if (const cudaError_t e = cudaMalloc(&arena, total); e != cudaSuccess) {
        cudaGetLastError();
        fail(DSV4_ERR_OUT_OF_MEMORY, "{}: no device memory for the weights ({} bytes): {}", name_, total, cudaGetErrorString(e));
    }
    auto *base = static_cast<uint8_t *>(arena);
    std::unordered_map<const void *, const uint8_t *> copy_of;  // host bytes → their device copy
    for (const Item &it : items)
        if (it.src) copy_of[it.src] = base + it.offset;
    std::vector<LayerExperts> experts(weights.layers.size());
    try {
        size_t done = 0;
        for (const Item &it : items) {
            if (it.src) check(cudaMemcpy(base + it.offset, it.src, it.bytes, cudaMemcpyHostToDevice), "weight upload");
            done += it.bytes;
            if (options.progress && !options.progress(done, total, options.progress_user))
                fail(DSV4_ERR_CANCELLED, "{}: weight upload cancelled by the progress callback", name_);
        }
        // Per layer, w and scale of w1, w2, w3 for each expert id: six device arrays of pointers.
        for (size_t il = 0; il < weights.layers.size(); ++il) {
            const std::vector<core::ExpertWeights> &ex = weights.layers[il].experts;
            if (ex.empty()) continue;
            const size_t E = ex.size();
            uint8_t *at = base + items[tables[il]].offset;
            std::vector<const uint8_t *> ptrs(6 * E);
            int which = 0;
            for (auto [table, pick] : {std::pair{&experts[il].w1, &core::ExpertWeights::w1},
                                       std::pair{&experts[il].w2, &core::ExpertWeights::w2},
                                       std::pair{&experts[il].w3, &core::ExpertWeights::w3}}) {
                const core::ExpertMatrix &m0 = ex[0].*pick;
                const bool is_fp4 = m0.format == core::ExpertFormat::fp4;
                for (size_t e = 0; e < E; ++e) {
                    const core::ExpertMatrix &m = ex[e].*pick;
                    ptrs[which * E + e] = copy_of.at(is_fp4 ? m.fp4.w : m.fp8.w);
                    ptrs[(which + 1) * E + e] = copy_of.at(is_fp4 ? m.fp4.scale : m.fp8.scale);
                }
                const auto *slots = reinterpret_cast<const uint8_t *const *>(at);
                *table = {slots + which * E, slots + (which + 1) * E, is_fp4, is_fp4 ? m0.fp4.rows : m0.fp8.rows,
                          is_fp4 ? m0.fp4.cols : m0.fp8.cols};
                which += 2;
            }
            check(cudaMemcpy(at, ptrs.data(), ptrs.size() * sizeof(void *), cudaMemcpyHostToDevice),
                  "expert pointer tables");
        }
    } catch (...) {
        cudaFree(arena);
        throw;
    }
    // Nothing fails from here: point the weights at their copies.
    for (const Item &it : items) {
        if (!it.src) continue;
        if (it.repoint) *it.repoint = base + it.offset;
        else copies_[it.src] = base + it.offset;
    }
    experts_ = std::move(experts);
    arena_ = arena;
    return total;
}

std::unique_ptr<Backend> CudaDevice::make_backend(int) const { return std::make_unique<CudaBackend>(*this); }

std::unique_ptr<Device> make_cuda_device(int index) { return std::make_unique<CudaDevice>(index); }

}  // namespace dsv4::backend::cuda
