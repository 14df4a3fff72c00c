#include "core/huge_buffer.h"

#include <sys/mman.h>
#include <utility>

#include "core/error.h"

namespace dsv4::core {

HugeBuffer::HugeBuffer(size_t bytes, const std::string &what) : size_(bytes) {
    if (bytes == 0) return;
    constexpr size_t kHugePage = size_t(2) << 20;
    map_bytes_ = (bytes + kHugePage - 1) / kHugePage * kHugePage + kHugePage;
    void *p = ::mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        map_bytes_ = size_ = 0;
        fail(DSV4_ERR_OUT_OF_MEMORY, "{}: cannot allocate {} bytes", what, bytes);
    }
    map_ = p;
    data_ = reinterpret_cast<uint8_t *>((reinterpret_cast<uintptr_t>(p) + kHugePage - 1) & ~(kHugePage - 1));
    (void)::madvise(data_, map_bytes_ - size_t(data_ - static_cast<uint8_t *>(p)), MADV_HUGEPAGE);
}

HugeBuffer::~HugeBuffer() { release(); }

HugeBuffer::HugeBuffer(HugeBuffer &&other) noexcept { *this = std::move(other); }

HugeBuffer &HugeBuffer::operator=(HugeBuffer &&other) noexcept {
    if (this != &other) {
        release();
        map_ = std::exchange(other.map_, nullptr);
        map_bytes_ = std::exchange(other.map_bytes_, 0);
        size_ = std::exchange(other.size_, 0);
        data_ = std::exchange(other.data_, nullptr);
    }
    return *this;
}

void HugeBuffer::release() {
    if (map_) ::munmap(map_, map_bytes_);
    map_ = nullptr;
}

}  // namespace dsv4::core
