// Named intermediate tensors, observed during evaluation (the eval callback of the C API, and the layer
// replay of eval-golden).
#pragma once
#include <dsv4/dsv4.h>

#include <cstdint>
#include <functional>
#include <string>

namespace dsv4::model {

// name: e.g. "kv", "attn_out"; rows x cols row-major values of dtype (F32, BF16 as fp32 values, I32).
using Observer = std::function<void(const std::string &name, int layer, dsv4_dtype dtype, int64_t rows,
                                    int64_t cols, const void *data)>;

inline void observe(const Observer *obs, const std::string &name, int layer, dsv4_dtype dtype, int64_t rows,
                    int64_t cols, const void *data) {
    if (obs && *obs) (*obs)(name, layer, dtype, rows, cols, data);
}

}  // namespace dsv4::model
