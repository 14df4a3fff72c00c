#include "core/dtype.h"

#include <array>

namespace dsv4::core {
namespace {
struct Entry {
    DType type;
    std::string_view name;
    size_t size;
    dsv4_dtype public_type;
};
constexpr std::array<Entry, 12> kTable = {{
    {DType::F64, "F64", 8, DSV4_DTYPE_COUNT},
    {DType::F32, "F32", 4, DSV4_DTYPE_F32},
    {DType::F16, "F16", 2, DSV4_DTYPE_F16},
    {DType::BF16, "BF16", 2, DSV4_DTYPE_BF16},
    {DType::F8_E4M3, "F8_E4M3", 1, DSV4_DTYPE_F8_E4M3},
    {DType::F8_E8M0, "F8_E8M0", 1, DSV4_DTYPE_F8_E8M0},
    {DType::I8, "I8", 1, DSV4_DTYPE_I8},
    {DType::U8, "U8", 1, DSV4_DTYPE_COUNT},
    {DType::I16, "I16", 2, DSV4_DTYPE_COUNT},
    {DType::I32, "I32", 4, DSV4_DTYPE_I32},
    {DType::I64, "I64", 8, DSV4_DTYPE_I64},
    {DType::BOOL, "BOOL", 1, DSV4_DTYPE_COUNT},
}};
const Entry &entry(DType t) { return kTable[size_t(t)]; }
}  // namespace

size_t dtype_size(DType t) { return entry(t).size; }
std::string_view dtype_name(DType t) { return entry(t).name; }
dsv4_dtype to_public(DType t) { return entry(t).public_type; }
std::optional<DType> dtype_from_name(std::string_view name) {
    for (const Entry &e : kTable)
        if (e.name == name) return e.type;
    return std::nullopt;
}

}  // namespace dsv4::core
