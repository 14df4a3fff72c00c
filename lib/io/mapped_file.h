// A read-only file, memory-mapped (zero-copy) or read into memory.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/huge_buffer.h"

namespace dsv4::io {

class MappedFile {
public:
    // Throws dsv4::Error (DSV4_ERR_IO_NOT_FOUND / DSV4_ERR_IO_READ) naming the path.
    MappedFile(const std::string &path, bool use_mmap);
    ~MappedFile();
    MappedFile(const MappedFile &) = delete;
    MappedFile &operator=(const MappedFile &) = delete;

    const uint8_t *data() const { return data_; }
    size_t size() const { return size_; }
    const std::string &path() const { return path_; }

private:
    std::string path_;
    const uint8_t *data_ = nullptr;
    size_t size_ = 0;
    void *map_ = nullptr;  // the file mapping
    size_t map_bytes_ = 0;
    core::HugeBuffer buffer_;  // or the memory the file was read into
};

// Reads a whole (small) file; throws like MappedFile.
std::string read_text_file(const std::string &path);
// The last path component, e.g. "model-00001-of-00002.safetensors".
std::string base_name(const std::string &path);

}  // namespace dsv4::io
