// Reuse of large temporaries within one forward pass.
//
// A forward pass allocates the same large activation buffers (tokens x heads x head_dim and the like) in every
// layer. Freshly allocated, each costs page faults and the kernel's zeroing of every page: a third of a 1,024-token
// prefill's time went there (bench_layers, perf). While a ScratchScope is open on a thread, ScratchAllocator keeps
// the blocks of 1 MiB and more that are freed on that thread and hands them out again to requests that fit; the
// outermost scope's end frees them, so nothing is kept between passes. Without a scope it is plain operator new.
#pragma once
#include <cstddef>
#include <memory>
#include <vector>

namespace dsv4::core {

namespace scratch_detail {
void *allocate(size_t bytes);
void deallocate(void *p, size_t bytes) noexcept;
}  // namespace scratch_detail

// Opens a reuse scope on the calling thread (scopes nest; the outermost one releases the kept blocks).
class ScratchScope {
public:
    ScratchScope();
    ~ScratchScope();
    ScratchScope(const ScratchScope &) = delete;
    ScratchScope &operator=(const ScratchScope &) = delete;
};

template <typename T>
struct ScratchAllocator {
    using value_type = T;
    ScratchAllocator() = default;
    template <typename U>
    ScratchAllocator(const ScratchAllocator<U> &) noexcept {}
    T *allocate(size_t n) { return static_cast<T *>(scratch_detail::allocate(n * sizeof(T))); }
    void deallocate(T *p, size_t n) noexcept { scratch_detail::deallocate(p, n * sizeof(T)); }
    template <typename U>
    bool operator==(const ScratchAllocator<U> &) const noexcept { return true; }
    template <typename U>
    bool operator!=(const ScratchAllocator<U> &) const noexcept { return false; }
};

// The activation buffers of the model code.
using FloatBuffer = std::vector<float, ScratchAllocator<float>>;

}  // namespace dsv4::core
