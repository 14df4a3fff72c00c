// A tensor handle: a non-owning view of rows x cols elements of one dtype, row-major, in the memory of the device
// that allocated it (host memory on the CPU). Activations are [tokens, features]; the steps of backend/backend.h
// take and produce them.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace dsv4::core {

struct Tensor {
    void *data = nullptr;
    DType dtype = DType::F32;
    int64_t rows = 0, cols = 0;

    size_t count() const { return size_t(rows) * size_t(cols); }
    size_t bytes() const { return count() * dtype_size(dtype); }
    template <typename T>
    T *as() const { return static_cast<T *>(data); }
    // Rows [r0, r0 + n) of this tensor.
    Tensor rows_view(int64_t r0, int64_t n) const {
        return {static_cast<uint8_t *>(data) + size_t(r0) * size_t(cols) * dtype_size(dtype), dtype, n, cols};
    }
};

}  // namespace dsv4::core
