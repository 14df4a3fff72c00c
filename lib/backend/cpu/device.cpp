// The CPU device: prepares the weights (the packed copy its kernels stream) and makes CPU backends over the
// optimised primitives of the selected ISA; the backends' memory is host memory.
#include <algorithm>
#include <cstring>

#include "backend/cpu/backend.h"
#include "backend/cpu/isa.h"
#include "backend/cpu/packed.h"
#include "core/huge_buffer.h"
#include "core/scratch.h"

namespace dsv4::backend::cpu {
namespace {

class HostBuffer final : public Buffer {
public:
    HostBuffer(core::DType dtype, int64_t rows, int64_t cols)
        : storage_((size_t(rows) * size_t(cols) * core::dtype_size(dtype) + 3) / 4) {
        tensor = {storage_.data(), dtype, rows, cols};
    }

private:
    core::FloatBuffer storage_;  // scratch memory: a forward pass's buffers reuse earlier passes' (core/scratch.h)
};

// Copies every FP4 and FP8 matrix that the packed layout covers (backend/cpu/packed.h) into one buffer and points
// the matrices at it (their checkpoint views stay). The copy has the size of the tensors it covers: nearly the
// whole checkpoint.
core::HugeBuffer repack_weights(core::ModelWeights &weights) {
    struct Matrix {
        core::Fp4Matrix *fp4;
        core::Fp8Matrix *fp8;
        size_t offset;
    };
    std::vector<Matrix> matrices;
    size_t total = 0;
    const auto add = [&](core::Fp4Matrix *fp4, core::Fp8Matrix *fp8) {
        const size_t bytes = fp4 ? packed_fp4_bytes(*fp4) : packed_fp8_bytes(*fp8);
        if (bytes == 0) return;  // absent in this layer, or a shape the layout does not cover
        matrices.push_back({fp4, fp8, total});
        total += (bytes + 63) / 64 * 64;
    };
    for (core::LayerWeights &l : weights.layers) {
        for (core::Fp8Matrix *m : {&l.wq_a, &l.wq_b, &l.wkv, &l.wo_a, &l.wo_b, &l.index_wq_b, &l.shared.w1, &l.shared.w2, &l.shared.w3,
                             &l.e_proj, &l.h_proj})
            add(nullptr, m);
        for (core::ExpertWeights &x : l.experts)
            for (core::ExpertMatrix *m : {&x.w1, &x.w2, &x.w3})
                m->format == core::ExpertFormat::fp4 ? add(&m->fp4, nullptr) : add(nullptr, &m->fp8);
    }
    core::HugeBuffer storage(total, "packed weights (dsv4_model_params::repack_weights)");
    // pieces of 256 rows, spread over the threads (each writes its own rows of one copy: no exceptions inside)
    constexpr int64_t kPieceRows = 256;
    std::vector<std::pair<size_t, int64_t>> pieces;
    for (size_t i = 0; i < matrices.size(); ++i)
        for (int64_t r = 0, rows = matrices[i].fp4 ? matrices[i].fp4->rows : matrices[i].fp8->rows; r < rows; r += kPieceRows)
            pieces.emplace_back(i, r);
#pragma omp parallel for schedule(dynamic)
    for (size_t p = 0; p < pieces.size(); ++p) {
        const Matrix &m = matrices[pieces[p].first];
        const int64_t r0 = pieces[p].second;
        uint8_t *dst = storage.data() + m.offset;
        if (m.fp4) pack_fp4_rows(*m.fp4, r0, std::min(m.fp4->rows, r0 + kPieceRows), dst);
        else pack_fp8_rows(*m.fp8, r0, std::min(m.fp8->rows, r0 + kPieceRows), dst);
    }
    for (const Matrix &m : matrices) (m.fp4 ? m.fp4->packed : m.fp8->packed) = storage.data() + m.offset;
    return storage;
}


class CpuDevice final : public Device {
public:
    std::string name() const override { return std::string("cpu-") + isa_name(selected_isa()); }
    size_t prepare(core::ModelWeights &weights, const PrepareOptions &options) override {
        if (!options.repack_weights || selected_isa() < Isa::avx512_bf16) return 0;  // only those kernels read it
        packed_ = repack_weights(weights);
        return packed_.size();
    }
    std::unique_ptr<Backend> make_backend(int n_threads) const override {
        return std::make_unique<CpuBackend>(make_primitives(n_threads));
    }
    std::shared_ptr<kvcache::Storage> kv_storage() const override { return kvcache::host_storage(); }

private:
    core::HugeBuffer packed_;  // the packed copies the weights point at
};

}  // namespace

std::unique_ptr<Buffer> CpuBackend::allocate(core::DType dtype, int64_t rows, int64_t cols) {
    return std::make_unique<HostBuffer>(dtype, rows, cols);
}
void CpuBackend::upload(const void *host, const Tensor &dst) { std::memcpy(dst.data, host, dst.bytes()); }
const void *CpuBackend::read(const Tensor &t, std::vector<uint8_t> &) { return t.data; }

size_t CpuBackend::workspace_bytes() const {
    const Workspace &w = ws_;
    size_t n = 0;
    for (const std::vector<float> *v : {&w.qa, &w.raw, &w.comp_a, &w.comp_z, &w.idx_a, &w.idx_z, &w.row_scores, &w.z, &w.acc,
                                        &w.shared_g, &w.shared_u, &w.shared_a, &w.shared_out, &w.rw, &w.xe, &w.g, &w.u, &w.a,
                                        &w.out})
        n += v->capacity() * sizeof(float);
    n += (w.rows.capacity() + w.own.capacity()) * 2 + w.valid.capacity() + w.entries.capacity() * sizeof(void *) +
         w.gathered.capacity() * sizeof(int64_t);
    return n;
}

}  // namespace dsv4::backend::cpu

namespace dsv4::backend {
std::unique_ptr<Device> make_cpu_device() { return std::make_unique<cpu::CpuDevice>(); }
}  // namespace dsv4::backend
