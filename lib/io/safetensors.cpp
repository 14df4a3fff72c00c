#include "io/safetensors.h"

#include <algorithm>
#include <fmt/ranges.h>

#include "core/error.h"
#include "io/json.h"

namespace dsv4::io {

int64_t TensorView::numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

std::string TensorView::shape_string() const { return fmt::format("[{}]", fmt::join(shape, ", ")); }

namespace {
using nlohmann::json;

uint64_t read_u64_le(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
    return v;
}

bool is_nonnegative_int(const json &j) { return j.is_number_unsigned() || (j.is_number_integer() && j.get<int64_t>() >= 0); }

TensorView parse_entry(const std::string &file, const std::string &name, const json &e, uint64_t data_size) {
    if (!e.is_object()) fail(DSV4_ERR_FORMAT_JSON, "{}: {}: header entry is not an object", file, name);
    auto dtype_it = e.find("dtype");
    auto shape_it = e.find("shape");
    auto offsets_it = e.find("data_offsets");
    if (dtype_it == e.end() || !dtype_it->is_string())
        fail(DSV4_ERR_FORMAT_JSON, "{}: {}: missing or non-string 'dtype'", file, name);
    if (shape_it == e.end() || !shape_it->is_array())
        fail(DSV4_ERR_FORMAT_JSON, "{}: {}: missing or non-array 'shape'", file, name);
    if (offsets_it == e.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
        !is_nonnegative_int((*offsets_it)[0]) || !is_nonnegative_int((*offsets_it)[1]))
        fail(DSV4_ERR_FORMAT_JSON, "{}: {}: 'data_offsets' must be two non-negative integers", file, name);

    TensorView t;
    t.name = name;
    auto dtype = core::dtype_from_name(dtype_it->get<std::string>());
    if (!dtype) fail(DSV4_ERR_FORMAT_DTYPE, "{}: {}: unknown dtype '{}'", file, name, dtype_it->get<std::string>());
    t.dtype = *dtype;
    if (shape_it->size() > 8) fail(DSV4_ERR_FORMAT_SHAPE, "{}: {}: {} dimensions", file, name, shape_it->size());
    // Element count with overflow checks: any product past 2^62 cannot match a byte range anyway.
    uint64_t numel = 1;
    for (const json &d : *shape_it) {
        if (!is_nonnegative_int(d)) fail(DSV4_ERR_FORMAT_SHAPE, "{}: {}: shape entries must be non-negative integers", file, name);
        uint64_t dim = d.get<uint64_t>();
        if (dim > (uint64_t(1) << 40) || (dim != 0 && numel > (uint64_t(1) << 62) / dim))
            fail(DSV4_ERR_FORMAT_SHAPE, "{}: {}: shape too large", file, name);
        numel *= dim;
        t.shape.push_back(int64_t(dim));
    }
    uint64_t begin = (*offsets_it)[0].get<uint64_t>(), end = (*offsets_it)[1].get<uint64_t>();
    if (begin > end || end > data_size)
        fail(DSV4_ERR_FORMAT_OFFSET, "{}: {}: data_offsets [{}, {}] outside the data section of {} bytes", file,
             name, begin, end, data_size);
    uint64_t expected = numel * core::dtype_size(t.dtype);
    if (end - begin != expected)
        fail(DSV4_ERR_FORMAT_SHAPE, "{}: {}: {} {} needs {} bytes but data_offsets give {}", file, name,
             core::dtype_name(t.dtype), t.shape_string(), expected, end - begin);
    t.nbytes = expected;
    t.data = reinterpret_cast<const uint8_t *>(uintptr_t(begin));  // rebased by the caller
    return t;
}

}  // namespace

void SafetensorsFile::validate_buffer(const uint8_t *data, size_t size, const std::string &file,
                                      std::vector<TensorView> *out) {
    if (size < 8) fail(DSV4_ERR_FORMAT_TRUNCATED, "{}: {} bytes, too short for a safetensors header", file, size);
    uint64_t header_len = read_u64_le(data);
    if (header_len > kMaxHeaderBytes)
        fail(DSV4_ERR_FORMAT_HEADER_SIZE, "{}: header length {} exceeds the {} byte limit", file, header_len,
             kMaxHeaderBytes);
    if (header_len > size - 8)
        fail(DSV4_ERR_FORMAT_HEADER_SIZE, "{}: header length {} runs past the end of the {} byte file", file,
             header_len, size);
    std::string_view header(reinterpret_cast<const char *>(data + 8), size_t(header_len));
    json j = parse_json(header, file + ": header", /*allow_duplicate_keys=*/false);
    if (!j.is_object()) fail(DSV4_ERR_FORMAT_JSON, "{}: header is not a JSON object", file);

    const uint64_t data_size = size - 8 - header_len;
    const uint8_t *base = data + 8 + header_len;
    std::vector<TensorView> tensors;
    for (auto it = j.begin(); it != j.end(); ++it) {
        if (it.key() == "__metadata__") {
            if (!it->is_object()) fail(DSV4_ERR_FORMAT_JSON, "{}: __metadata__ is not an object", file);
            continue;
        }
        tensors.push_back(parse_entry(file, it.key(), *it, data_size));
    }
    // Overlap check on the byte ranges, in file order (empty tensors occupy nothing).
    std::vector<const TensorView *> order;
    for (const TensorView &t : tensors)
        if (t.nbytes) order.push_back(&t);
    std::sort(order.begin(), order.end(), [](auto *a, auto *b) { return a->data < b->data; });
    for (size_t i = 1; i < order.size(); ++i) {
        uintptr_t prev_end = uintptr_t(order[i - 1]->data) + order[i - 1]->nbytes;
        if (uintptr_t(order[i]->data) < prev_end)
            fail(DSV4_ERR_FORMAT_OVERLAP, "{}: tensors {} and {} overlap", file, order[i - 1]->name, order[i]->name);
    }
    if (out) {
        for (TensorView &t : tensors) t.data = base + uintptr_t(t.data);
        *out = std::move(tensors);
    }
}

SafetensorsFile::SafetensorsFile(const std::string &path, bool use_mmap) : name_(base_name(path)) {
    file_ = std::make_unique<MappedFile>(path, use_mmap);
    validate_buffer(file_->data(), file_->size(), name_, &tensors_);
    for (TensorView &t : tensors_) t.file = &name_;
}

uint64_t SafetensorsFile::data_bytes() const {
    uint64_t n = 0;
    for (const TensorView &t : tensors_) n += t.nbytes;
    return n;
}

}  // namespace dsv4::io
