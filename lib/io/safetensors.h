// safetensors reader: validates the 8-byte header length and the JSON header (size limit, dtypes, shapes
// against byte ranges, ranges inside the file, no overlaps) and exposes zero-copy tensor views.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "io/mapped_file.h"

namespace dsv4::io {

constexpr uint64_t kMaxHeaderBytes = 100u << 20;  // the format's own limit (100 MB)

struct TensorView {
    std::string name;
    core::DType dtype;
    std::vector<int64_t> shape;
    const uint8_t *data = nullptr;  // points into the file's mapping; lives as long as the file
    uint64_t nbytes = 0;
    const std::string *file = nullptr;  // base name of the shard, for messages

    int64_t numel() const;
    std::string shape_string() const;  // "[2048, 4096]"
};

class SafetensorsFile {
public:
    // Opens and validates `path`. Throws dsv4::Error with DSV4_ERR_IO_* / DSV4_ERR_FORMAT_* naming the file
    // and, where one is at fault, the tensor.
    SafetensorsFile(const std::string &path, bool use_mmap);
    // Validates an in-memory image (used by the fuzz target and tests); `name` is used in messages.
    static void validate_buffer(const uint8_t *data, size_t size, const std::string &name,
                                std::vector<TensorView> *out = nullptr);

    const std::string &name() const { return name_; }
    const std::vector<TensorView> &tensors() const { return tensors_; }
    uint64_t data_bytes() const;
    uint64_t file_size() const { return file_->size(); }

private:
    std::string name_;
    std::unique_ptr<MappedFile> file_;
    std::vector<TensorView> tensors_;
};

}  // namespace dsv4::io
