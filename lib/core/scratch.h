// Reuse of large temporaries within and across forward passes.
//
// A forward pass allocates the same large activation buffers (tokens x heads x head_dim and the like) in every
// layer. Freshly allocated, each costs page faults and the kernel's zeroing of every page: a third of a 1,024-token
// prefill's time went there (bench_layers, perf), and more under a hypervisor that makes page faults dear. While a
// ScratchScope is open on a thread, ScratchAllocator keeps the blocks of 1 MiB and more that are freed on that
// thread in the scope's pool and hands them out again to requests that fit. A pool given to the scope (a context's)
// keeps them across passes, so a context pays the faults once, for its largest pass, like a compute buffer sized
// at first use; without one the outermost scope's end frees them. Without a scope it is plain operator new.
#pragma once
#include <cstddef>
#include <memory>
#include <vector>

namespace dsv4::core {

namespace scratch_detail {
void *allocate(size_t bytes);
void deallocate(void *p, size_t bytes) noexcept;
}  // namespace scratch_detail

// Blocks kept for reuse; freed with the pool (or by release()). Not thread-safe: one thread's scope at a time.
class ScratchPool {
public:
    ScratchPool() = default;
    ~ScratchPool() { release(); }
    ScratchPool(const ScratchPool &) = delete;
    ScratchPool &operator=(const ScratchPool &) = delete;
    void release() noexcept;
    size_t bytes() const;  // held now

private:
    friend void *scratch_detail::allocate(size_t);
    friend void scratch_detail::deallocate(void *, size_t) noexcept;
    struct Block {
        void *p;
        size_t bytes;
    };
    std::vector<Block> kept_;
};

// Opens a reuse scope on the calling thread with `pool` (null: a pool of the scope's own, freed at its end).
// Scopes nest; an inner scope uses the outer one's pool.
class ScratchScope {
public:
    explicit ScratchScope(ScratchPool *pool = nullptr);
    ~ScratchScope();
    ScratchScope(const ScratchScope &) = delete;
    ScratchScope &operator=(const ScratchScope &) = delete;

private:
    ScratchPool own_;
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
