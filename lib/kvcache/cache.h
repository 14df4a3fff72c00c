// The KV-cache manager's storage: everything one sequence keeps per layer (spec §11), in a lossless
// production layout, with transactions so that a failed evaluation leaves the cache exactly as it was.
//
// Per layer and sequence:
//   window ring      bf16 [W + R, head_dim]        positions len-(W+R) .. len-1 (R = rewind capacity)
//   compressed KV    paged entries, FP8 nope dims + e8m0 per 64 + bf16 rope dims (values were FP8-simulated)
//   indexer keys     paged entries, FP4 + e8m0 per 32 (CSA only; values were FP4-simulated)
//   compressor rows  fp32 (a, score+ape) of the last κm + R positions, for the attention and indexer
//                    compressors: the carried state of spec §5.3, kept per position so truncation works.
//
// Rows and pages live in a Storage of the device that computes on them (backend::Device::kv_storage); the
// bookkeeping (lengths, undo logs, page refcounts, copy-on-write) stays on the host. row() and entry() give
// device addresses, which the host may dereference only on a host storage (the CPU's).
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/config.h"

namespace dsv4::kvcache {

struct LayerGeometry {
    int ratio = 0;           // 0, 4 or 128
    int head_dim = 0;        // 512
    int rope_dim = 0;        // 64
    int index_head_dim = 0;  // 128 (CSA only)
    int window = 0;          // W
    int rewind = 0;          // R

    bool overlap() const { return ratio == 4; }
    int kappa() const { return overlap() ? 2 : 1; }
    int nope_dim() const { return head_dim - rope_dim; }
    size_t kv_entry_bytes() const { return size_t(nope_dim()) + size_t(nope_dim() / 64) + 2 * size_t(rope_dim); }
    size_t index_entry_bytes() const { return size_t(index_head_dim / 2 + index_head_dim / 32); }
};

// Memory for the cache's rows and pages on one device.
class Storage {
public:
    virtual ~Storage() = default;
    virtual std::string name() const = 0;
    // `bytes` of zeroed memory; throws dsv4::Error(DSV4_ERR_OUT_OF_MEMORY) naming the request when there is none.
    virtual uint8_t *allocate(size_t bytes) = 0;
    virtual void release(uint8_t *p, size_t bytes) noexcept = 0;
    virtual void copy(uint8_t *dst, const uint8_t *src, size_t bytes) = 0;  // within the storage
    virtual void zero(uint8_t *dst, size_t bytes) = 0;
    virtual void download(void *host, const uint8_t *src, size_t bytes) = 0;
    virtual void upload(uint8_t *dst, const void *host, size_t bytes) = 0;
};
// Host memory: the CPU device's storage, and the default.
const std::shared_ptr<Storage> &host_storage();

// A block of a storage's memory, released with the object.
class Block {
public:
    Block(std::shared_ptr<Storage> storage, size_t bytes)
        : storage_(std::move(storage)), data_(storage_->allocate(bytes)), size_(bytes) {}
    ~Block() { storage_->release(data_, size_); }
    Block(const Block &) = delete;
    Block &operator=(const Block &) = delete;
    uint8_t *data() const { return data_; }
    size_t size() const { return size_; }

private:
    std::shared_ptr<Storage> storage_;
    uint8_t *data_;
    size_t size_;
};

// Geometry of every layer of a config (main layers, then MTP blocks) for a rewind capacity.
std::vector<LayerGeometry> cache_geometry(const io::ModelConfig &config, int rewind);

// Exact memory plan of one sequence of the main layers (FP8/FP4 production layout).
struct MemoryPlan {
    uint64_t constant_bytes = 0;         // window rings and compressor rows, allocated at the first token
    uint64_t bytes_per_4_tokens_csa = 0;  // one compressed entry + one indexer key per CSA layer
    uint64_t bytes_per_128_tokens_hca = 0;
    uint64_t bytes_per_1024_tokens = 0;   // all layers
    int n_csa = 0, n_hca = 0;
    // Bytes one sequence of n positions holds, counting whole pages as allocated.
    uint64_t sequence_bytes(int64_t n_tokens) const;
};
MemoryPlan plan_memory(const std::vector<LayerGeometry> &main_layers);

// Rows of fixed length addressed by position modulo the capacity, with an undo log per transaction. Copies are
// deep (a fork's rings are its own).
template <typename T>
class PositionRing {
public:
    PositionRing() = default;
    PositionRing(int capacity, int row_len, std::shared_ptr<Storage> storage = host_storage())
        : capacity_(capacity), row_len_(row_len), storage_(std::move(storage)) {}
    PositionRing(const PositionRing &other);
    PositionRing &operator=(const PositionRing &other);
    PositionRing(PositionRing &&) noexcept = default;
    PositionRing &operator=(PositionRing &&) noexcept = default;
    int capacity() const { return capacity_; }
    int row_len() const { return row_len_; }
    const T *row(int64_t pos) const { return base() + slot(pos) * size_t(row_len_); }
    T *write_row(int64_t pos);  // saves the slot's old content for rollback once per transaction
    void read_row(int64_t pos, T *host) const { storage_->download(host, bytes_of(row(pos)), row_bytes()); }
    void begin() { undo_.clear(); }
    void rollback();
    // Back to a new ring's state, keeping the rows' memory, zeroed as a new ring's first write leaves it: a
    // sequence that restarts would otherwise free and fault in its rings again (5 ms per restart, tiny model).
    void clear() {
        if (data_) storage_->zero(data_->data(), data_->size());
        undo_.clear();
    }
    size_t bytes() const { return data_ ? data_->size() : 0; }

private:
    size_t slot(int64_t pos) const { return size_t(pos % capacity_); }
    size_t row_bytes() const { return size_t(row_len_) * sizeof(T); }
    T *base() const { return data_ ? reinterpret_cast<T *>(data_->data()) : nullptr; }
    static const uint8_t *bytes_of(const T *p) { return reinterpret_cast<const uint8_t *>(p); }
    int capacity_ = 0, row_len_ = 0;
    std::shared_ptr<Storage> storage_ = host_storage();
    std::unique_ptr<Block> data_;  // capacity rows from the first write, never up front for unused layers
    std::vector<std::pair<size_t, std::vector<T>>> undo_;  // host copies of the slots a transaction overwrote
};

// Append-only entries in refcounted pages of kPageEntries; fork shares pages, writes copy a shared page.
class PagedEntries {
public:
    static constexpr size_t kPageEntries = 64;
    PagedEntries() = default;
    explicit PagedEntries(size_t entry_bytes, std::shared_ptr<Storage> storage = host_storage())
        : entry_bytes_(entry_bytes), storage_(std::move(storage)) {}
    size_t size() const { return count_; }
    size_t entry_bytes() const { return entry_bytes_; }
    const uint8_t *entry(size_t j) const { return pages_[j / kPageEntries]->data() + (j % kPageEntries) * entry_bytes_; }
    uint8_t *append();
    void truncate(size_t n);
    void begin();
    void rollback();
    // Bytes of pages allocated; pages shared with another sequence are counted by each holder.
    size_t allocated_bytes() const { return pages_.size() * kPageEntries * entry_bytes_; }
    const std::vector<std::shared_ptr<Block>> &pages() const { return pages_; }
    Storage &storage() const { return *storage_; }
    // Back to no entries, keeping the storage.
    void clear() { *this = PagedEntries(entry_bytes_, storage_); }

private:
    size_t entry_bytes_ = 0, count_ = 0;
    std::shared_ptr<Storage> storage_ = host_storage();
    std::vector<std::shared_ptr<Block>> pages_;
    // transaction snapshot: count, page count and the last page as they were
    size_t saved_count_ = 0, saved_pages_ = 0;
    std::shared_ptr<Block> saved_last_;
};

struct LayerCache {
    LayerGeometry geo;
    PositionRing<uint16_t> window;   // bf16
    PositionRing<float> comp_rows;   // [κm + R, 2·κ·head_dim]: a then score+ape
    PositionRing<float> index_rows;  // [8 + R, 2·2·index_head_dim] (CSA)
    PagedEntries kv;                 // compressed entries
    PagedEntries index_keys;         // CSA indexer keys

    explicit LayerCache(const LayerGeometry &g, const std::shared_ptr<Storage> &storage = host_storage());
    void begin();
    void rollback();
    // Back to a new layer cache's state; the rings keep their memory (PositionRing::clear).
    void clear();
    size_t allocated_bytes() const;
};

class SequenceCache {
public:
    explicit SequenceCache(const std::vector<LayerGeometry> &layers,
                           const std::shared_ptr<Storage> &storage = host_storage());
    int64_t length = 0;      // positions held
    int64_t high_water = 0;  // most positions held since the last clear: rings are valid back to high_water - capacity
    std::vector<LayerCache> layers;

    void begin();
    void rollback();
    // Whether truncating to n keeps every ring row the continuation needs (spec §5.3, §7): going back at most
    // `rewind` positions from the furthest position ever written.
    bool can_truncate_to(int64_t n, int rewind) const { return n == 0 || high_water - n <= rewind; }
    // Truncates to n positions; the caller has checked can_truncate_to.
    void truncate(int64_t n);
    void clear();
    size_t allocated_bytes() const;
    // Bit-exact serialisation of everything the sequence holds.
    void serialize(std::vector<uint8_t> &out) const;
    // The bytes serialize() appends, from the lengths alone.
    size_t serialized_size() const;
    // Throws dsv4::Error(DSV4_ERR_FORMAT) on damaged input; *this is only modified on success.
    void deserialize(const uint8_t *data, size_t size);
};

}  // namespace dsv4::kvcache
