#include "kvcache/cache.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace dsv4::kvcache {

std::vector<LayerGeometry> cache_geometry(const io::ModelConfig &c, int rewind) {
    std::vector<LayerGeometry> out;
    for (const io::LayerSpec &l : c.layers) {
        LayerGeometry g;
        g.ratio = l.compress_ratio;
        g.head_dim = c.head_dim;
        g.rope_dim = c.rope_head_dim;
        g.index_head_dim = l.compress_ratio == 4 ? c.index_head_dim : 0;
        g.window = c.window_size;
        g.rewind = rewind;
        out.push_back(g);
    }
    return out;
}

MemoryPlan plan_memory(const std::vector<LayerGeometry> &layers) {
    MemoryPlan p;
    for (const LayerGeometry &g : layers) {
        p.constant_bytes += uint64_t(g.window + g.rewind) * uint64_t(g.head_dim) * 2;
        if (g.ratio)
            p.constant_bytes += uint64_t(g.kappa() * g.ratio + g.rewind) * uint64_t(2 * g.kappa() * g.head_dim) * 4;
        if (g.ratio == 4) {
            p.constant_bytes += uint64_t(8 + g.rewind) * uint64_t(4 * g.index_head_dim) * 4;
            p.bytes_per_4_tokens_csa = g.kv_entry_bytes() + g.index_entry_bytes();
            p.bytes_per_1024_tokens += 256 * p.bytes_per_4_tokens_csa;
            ++p.n_csa;
        } else if (g.ratio == 128) {
            p.bytes_per_128_tokens_hca = g.kv_entry_bytes();
            p.bytes_per_1024_tokens += 8 * p.bytes_per_128_tokens_hca;
            ++p.n_hca;
        }
    }
    return p;
}

uint64_t MemoryPlan::sequence_bytes(int64_t n) const {
    if (n <= 0) return 0;
    auto pages = [](int64_t entries) { return uint64_t((entries + int64_t(PagedEntries::kPageEntries) - 1) / int64_t(PagedEntries::kPageEntries)) * PagedEntries::kPageEntries; };
    return constant_bytes + uint64_t(n_csa) * pages(n / 4) * bytes_per_4_tokens_csa +
           uint64_t(n_hca) * pages(n / 128) * bytes_per_128_tokens_hca;
}

namespace {
class HostStorage final : public Storage {
public:
    std::string name() const override { return "host"; }
    uint8_t *allocate(size_t bytes) override {
        void *p = std::calloc(bytes ? bytes : 1, 1);
        if (!p) fail(DSV4_ERR_OUT_OF_MEMORY, "KV cache: {} bytes of host memory not available", bytes);
        return static_cast<uint8_t *>(p);
    }
    void release(uint8_t *p, size_t) noexcept override { std::free(p); }
    void copy(uint8_t *dst, const uint8_t *src, size_t bytes) override { std::memcpy(dst, src, bytes); }
    void zero(uint8_t *dst, size_t bytes) override { std::memset(dst, 0, bytes); }
    void download(void *host, const uint8_t *src, size_t bytes) override { std::memcpy(host, src, bytes); }
    void upload(uint8_t *dst, const void *host, size_t bytes) override { std::memcpy(dst, host, bytes); }
};
}  // namespace

const std::shared_ptr<Storage> &host_storage() {
    static const std::shared_ptr<Storage> storage = std::make_shared<HostStorage>();
    return storage;
}

template <typename T>
PositionRing<T>::PositionRing(const PositionRing &other)
    : capacity_(other.capacity_), row_len_(other.row_len_), storage_(other.storage_), undo_(other.undo_) {
    if (!other.data_) return;
    data_ = std::make_unique<Block>(storage_, other.data_->size());
    storage_->copy(data_->data(), other.data_->data(), data_->size());
}

template <typename T>
PositionRing<T> &PositionRing<T>::operator=(const PositionRing &other) {
    if (this != &other) *this = PositionRing(other);
    return *this;
}

template <typename T>
T *PositionRing<T>::write_row(int64_t pos) {
    if (!data_) data_ = std::make_unique<Block>(storage_, size_t(capacity_) * row_bytes());
    const size_t s = slot(pos);
    T *row = base() + s * size_t(row_len_);
    bool saved = false;
    for (const auto &u : undo_) saved = saved || u.first == s;
    if (!saved) {
        std::vector<T> old(static_cast<size_t>(row_len_));
        storage_->download(old.data(), bytes_of(row), row_bytes());
        undo_.emplace_back(s, std::move(old));
    }
    return row;
}

template <typename T>
void PositionRing<T>::rollback() {
    for (auto &u : undo_)
        storage_->upload(data_->data() + u.first * row_bytes(), u.second.data(), row_bytes());
    undo_.clear();
}

template class PositionRing<uint16_t>;
template class PositionRing<float>;

uint8_t *PagedEntries::append() {
    const size_t page = count_ / kPageEntries;
    if (page == pages_.size()) {
        pages_.push_back(std::make_shared<Block>(storage_, kPageEntries * entry_bytes_));
    } else if (pages_[page].use_count() > 1) {  // copy-on-write after a fork
        auto own = std::make_shared<Block>(storage_, pages_[page]->size());
        storage_->copy(own->data(), pages_[page]->data(), own->size());
        pages_[page] = std::move(own);
    }
    return pages_[page]->data() + (count_++ % kPageEntries) * entry_bytes_;
}

void PagedEntries::truncate(size_t n) {
    count_ = std::min(count_, n);
    pages_.resize((count_ + kPageEntries - 1) / kPageEntries);
}

void PagedEntries::begin() {
    saved_count_ = count_;
    saved_pages_ = pages_.size();
    saved_last_ = pages_.empty() ? nullptr : pages_.back();
}

void PagedEntries::rollback() {
    count_ = saved_count_;
    pages_.resize(saved_pages_);
    if (saved_last_) pages_.back() = saved_last_;
    saved_last_.reset();
}

LayerCache::LayerCache(const LayerGeometry &g, const std::shared_ptr<Storage> &storage)
    : geo(g),
      window(g.window + g.rewind, g.head_dim, storage),
      comp_rows(g.ratio ? g.kappa() * g.ratio + g.rewind : 0, 2 * g.kappa() * g.head_dim, storage),
      index_rows(g.ratio == 4 ? 8 + g.rewind : 0, 2 * 2 * g.index_head_dim, storage),
      kv(g.kv_entry_bytes(), storage),
      index_keys(g.index_entry_bytes(), storage) {}

void LayerCache::begin() {
    window.begin();
    comp_rows.begin();
    index_rows.begin();
    kv.begin();
    index_keys.begin();
}

void LayerCache::rollback() {
    window.rollback();
    comp_rows.rollback();
    index_rows.rollback();
    kv.rollback();
    index_keys.rollback();
}

void LayerCache::clear() {
    window.clear();
    comp_rows.clear();
    index_rows.clear();
    kv.clear();
    index_keys.clear();
}

size_t LayerCache::allocated_bytes() const {
    return window.bytes() + comp_rows.bytes() + index_rows.bytes() + kv.allocated_bytes() + index_keys.allocated_bytes();
}

SequenceCache::SequenceCache(const std::vector<LayerGeometry> &geos, const std::shared_ptr<Storage> &storage) {
    layers.reserve(geos.size());
    for (const LayerGeometry &g : geos) layers.emplace_back(g, storage);
}

void SequenceCache::begin() {
    for (LayerCache &l : layers) l.begin();
}
void SequenceCache::rollback() {
    for (LayerCache &l : layers) l.rollback();
}

void SequenceCache::truncate(int64_t n) {
    length = std::min(length, n);
    for (LayerCache &l : layers) {
        if (!l.geo.ratio) continue;
        l.kv.truncate(size_t(length / l.geo.ratio));
        l.index_keys.truncate(l.geo.ratio == 4 ? size_t(length / 4) : 0);
    }
}

void SequenceCache::clear() {
    length = high_water = 0;
    for (LayerCache &l : layers) l.clear();
}

size_t SequenceCache::allocated_bytes() const {
    size_t n = 0;
    for (const LayerCache &l : layers) n += l.allocated_bytes();
    return n;
}

// ---- serialisation: per layer the valid window rows, compressor rows and entries, little-endian ------
namespace {
struct Writer {
    std::vector<uint8_t> &out;
    void bytes(const void *p, size_t n) {
        const uint8_t *b = static_cast<const uint8_t *>(p);
        out.insert(out.end(), b, b + n);
    }
    void u64(uint64_t v) { bytes(&v, 8); }
};
struct Reader {
    const uint8_t *p;
    size_t left;
    void bytes(void *dst, size_t n) {
        if (n > left) fail(DSV4_ERR_FORMAT_TRUNCATED, "state blob: truncated");
        std::memcpy(dst, p, n);
        p += n;
        left -= n;
    }
    uint64_t u64() {
        uint64_t v;
        bytes(&v, 8);
        return v;
    }
};

// Rows and entries pass through host memory: the storage may be a device's.
template <typename T>
void write_ring(Writer &w, const PositionRing<T> &ring, int64_t length) {
    const int64_t first = std::max<int64_t>(0, length - ring.capacity());
    std::vector<T> row(static_cast<size_t>(ring.row_len()));
    for (int64_t pos = first; pos < length; ++pos) {
        ring.read_row(pos, row.data());
        w.bytes(row.data(), sizeof(T) * row.size());
    }
}
template <typename T>
void read_ring(Reader &r, Storage &storage, PositionRing<T> &ring, int64_t length) {
    const int64_t first = std::max<int64_t>(0, length - ring.capacity());
    std::vector<T> row(static_cast<size_t>(ring.row_len()));
    for (int64_t pos = first; pos < length; ++pos) {
        r.bytes(row.data(), sizeof(T) * row.size());
        storage.upload(reinterpret_cast<uint8_t *>(ring.write_row(pos)), row.data(), sizeof(T) * row.size());
    }
    ring.begin();  // not a transaction: forget the undo log
}
void write_entries(Writer &w, const PagedEntries &e) {
    w.u64(e.size());
    std::vector<uint8_t> entry(e.entry_bytes());
    for (size_t j = 0; j < e.size(); ++j) {
        e.storage().download(entry.data(), e.entry(j), entry.size());
        w.bytes(entry.data(), entry.size());
    }
}
void read_entries(Reader &r, PagedEntries &e, size_t expected) {
    if (r.u64() != expected) fail(DSV4_ERR_FORMAT, "state blob: compressed entry count does not match the length");
    std::vector<uint8_t> entry(e.entry_bytes());
    for (size_t j = 0; j < expected; ++j) {
        r.bytes(entry.data(), entry.size());
        e.storage().upload(e.append(), entry.data(), entry.size());
    }
}
}  // namespace

void SequenceCache::serialize(std::vector<uint8_t> &out) const {
    Writer w{out};
    w.u64(uint64_t(length));
    w.u64(uint64_t(high_water));
    w.u64(layers.size());
    for (const LayerCache &l : layers) {
        write_ring(w, l.window, length);
        if (!l.geo.ratio) continue;
        write_ring(w, l.comp_rows, length);
        write_entries(w, l.kv);
        if (l.geo.ratio != 4) continue;
        write_ring(w, l.index_rows, length);
        write_entries(w, l.index_keys);
    }
}

size_t SequenceCache::serialized_size() const {
    const auto ring = [this](const auto &r) {
        return size_t(length - std::max<int64_t>(0, length - r.capacity())) * size_t(r.row_len()) * sizeof(*r.row(0));
    };
    const auto entries = [](const PagedEntries &e) { return 8 + e.size() * e.entry_bytes(); };
    size_t n = 3 * 8;
    for (const LayerCache &l : layers) {
        n += ring(l.window);
        if (!l.geo.ratio) continue;
        n += ring(l.comp_rows) + entries(l.kv);
        if (l.geo.ratio == 4) n += ring(l.index_rows) + entries(l.index_keys);
    }
    return n;
}

void SequenceCache::deserialize(const uint8_t *data, size_t size) {
    Reader r{data, size};
    const uint64_t len = r.u64(), high = r.u64();
    if (r.u64() != layers.size()) fail(DSV4_ERR_FORMAT, "state blob: layer count does not match the model");
    if (len > (uint64_t(1) << 31) || high < len || high - len > (uint64_t(1) << 31))
        fail(DSV4_ERR_FORMAT, "state blob: length {} / high-water mark {} out of range", len, high);
    SequenceCache fresh = *this;
    fresh.clear();
    fresh.length = int64_t(len);
    fresh.high_water = int64_t(high);
    for (LayerCache &l : fresh.layers) {
        Storage &storage = l.kv.storage();
        read_ring(r, storage, l.window, fresh.length);
        if (!l.geo.ratio) continue;
        read_ring(r, storage, l.comp_rows, fresh.length);
        read_entries(r, l.kv, size_t(fresh.length / l.geo.ratio));
        if (l.geo.ratio != 4) continue;
        read_ring(r, storage, l.index_rows, fresh.length);
        read_entries(r, l.index_keys, size_t(fresh.length / 4));
    }
    if (r.left) fail(DSV4_ERR_FORMAT, "state blob: {} trailing bytes", r.left);
    *this = std::move(fresh);
}

}  // namespace dsv4::kvcache
