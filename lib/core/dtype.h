// Storage dtypes of safetensors files and their element sizes.
#pragma once
#include <dsv4/dsv4.h>

#include <cstddef>
#include <optional>
#include <string_view>

namespace dsv4::core {

enum class DType { F64, F32, F16, BF16, F8_E4M3, F8_E8M0, I8, U8, I16, I32, I64, BOOL };

size_t dtype_size(DType t);
std::string_view dtype_name(DType t);
std::optional<DType> dtype_from_name(std::string_view name);
// The public enum for a storage dtype (I8 stays I8; the packed-FP4 reading is the model's business).
dsv4_dtype to_public(DType t);

}  // namespace dsv4::core
