#include "core/scratch.h"

#include <new>

namespace dsv4::core {
namespace {

constexpr size_t kKeepFrom = size_t(1) << 20;  // smaller blocks: malloc reuses them without page faults anyway

struct Block {
    void *p;
    size_t bytes;
};

struct Pool {
    int depth = 0;
    std::vector<Block> kept;
};

thread_local Pool pool;

void release_kept() noexcept {
    for (const Block &b : pool.kept) ::operator delete(b.p);
    pool.kept.clear();
}

}  // namespace

namespace scratch_detail {

void *allocate(size_t bytes) {
    if (pool.depth > 0 && bytes >= kKeepFrom) {
        // the smallest kept block that holds the request without wasting more than half of itself
        size_t best = pool.kept.size();
        for (size_t i = 0; i < pool.kept.size(); ++i) {
            const size_t have = pool.kept[i].bytes;
            if (have >= bytes && have / 2 <= bytes && (best == pool.kept.size() || have < pool.kept[best].bytes)) best = i;
        }
        if (best != pool.kept.size()) {
            void *p = pool.kept[best].p;
            pool.kept[best] = pool.kept.back();
            pool.kept.pop_back();
            return p;
        }
    }
    return ::operator new(bytes);
}

void deallocate(void *p, size_t bytes) noexcept {
    if (pool.depth > 0 && bytes >= kKeepFrom) {
        try {
            pool.kept.push_back({p, bytes});
            return;
        } catch (...) {  // no room to remember it: free it
        }
    }
    ::operator delete(p);
}

}  // namespace scratch_detail

ScratchScope::ScratchScope() { ++pool.depth; }

ScratchScope::~ScratchScope() {
    if (--pool.depth == 0) release_kept();
}

}  // namespace dsv4::core
