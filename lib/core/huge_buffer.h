// Anonymous memory on 2 MiB boundaries, asked for as transparent huge pages before the first touch: the kernels
// stream weights, and on 4 KiB pages every expert matrix costs a TLB miss per page (transparent huge pages are
// often enabled only on request, "madvise"). Best effort: without THP this is plain memory.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace dsv4::core {

class HugeBuffer {
public:
    HugeBuffer() = default;
    // Throws dsv4::Error (DSV4_ERR_OUT_OF_MEMORY) naming `what` if the memory cannot be had.
    HugeBuffer(size_t bytes, const std::string &what);
    ~HugeBuffer();
    HugeBuffer(HugeBuffer &&other) noexcept;
    HugeBuffer &operator=(HugeBuffer &&other) noexcept;
    HugeBuffer(const HugeBuffer &) = delete;
    HugeBuffer &operator=(const HugeBuffer &) = delete;

    uint8_t *data() const { return data_; }
    size_t size() const { return size_; }

private:
    void release();
    void *map_ = nullptr;
    size_t map_bytes_ = 0, size_ = 0;
    uint8_t *data_ = nullptr;
};

}  // namespace dsv4::core
