#include "core/scratch.h"

#include <new>

namespace dsv4::core {
namespace {

constexpr size_t kKeepFrom = size_t(1) << 20;  // smaller blocks: malloc reuses them without page faults anyway

struct ThreadScope {
    int depth = 0;
    ScratchPool *pool = nullptr;
};
thread_local ThreadScope scope;

}  // namespace

void ScratchPool::release() noexcept {
    for (const Block &b : kept_) ::operator delete(b.p);
    kept_.clear();
}

size_t ScratchPool::bytes() const {
    size_t total = 0;
    for (const Block &b : kept_) total += b.bytes;
    return total;
}

namespace scratch_detail {

void *allocate(size_t bytes) {
    if (scope.pool && bytes >= kKeepFrom) {
        // the smallest kept block that holds the request without wasting more than half of itself
        std::vector<ScratchPool::Block> &kept = scope.pool->kept_;
        size_t best = kept.size();
        for (size_t i = 0; i < kept.size(); ++i) {
            const size_t have = kept[i].bytes;
            if (have >= bytes && have / 2 <= bytes && (best == kept.size() || have < kept[best].bytes)) best = i;
        }
        if (best != kept.size()) {
            void *p = kept[best].p;
            kept[best] = kept.back();
            kept.pop_back();
            return p;
        }
        try {
            return ::operator new(bytes);
        } catch (const std::bad_alloc &) {  // the kept blocks fit no request now: give them back and try again
            scope.pool->release();
        }
    }
    return ::operator new(bytes);
}

void deallocate(void *p, size_t bytes) noexcept {
    if (scope.pool && bytes >= kKeepFrom) {
        try {
            scope.pool->kept_.push_back({p, bytes});
            return;
        } catch (...) {  // no room to remember it: free it
        }
    }
    ::operator delete(p);
}

}  // namespace scratch_detail

ScratchScope::ScratchScope(ScratchPool *pool) {
    if (scope.depth++ == 0) scope.pool = pool ? pool : &own_;
}

ScratchScope::~ScratchScope() {
    if (--scope.depth == 0) scope.pool = nullptr;
    // own_ (unused by nested scopes) frees its blocks as it goes
}

}  // namespace dsv4::core
