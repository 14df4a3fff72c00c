#include "kvcache/cache.h"

#include <algorithm>
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

template <typename T>
T *PositionRing<T>::write_row(int64_t pos) {
    if (data_.empty()) data_.resize(size_t(capacity_) * size_t(row_len_));
    const size_t s = slot(pos);
    T *row = data_.data() + s * size_t(row_len_);
    bool saved = false;
    for (const auto &u : undo_) saved = saved || u.first == s;
    if (!saved) undo_.emplace_back(s, std::vector<T>(row, row + row_len_));
    return row;
}

template <typename T>
void PositionRing<T>::rollback() {
    for (auto &u : undo_) std::copy(u.second.begin(), u.second.end(), data_.begin() + ptrdiff_t(u.first * size_t(row_len_)));
    undo_.clear();
}

template class PositionRing<uint16_t>;
template class PositionRing<float>;

uint8_t *PagedEntries::append() {
    const size_t page = count_ / kPageEntries;
    if (page == pages_.size()) {
        pages_.push_back(std::make_shared<std::vector<uint8_t>>(kPageEntries * entry_bytes_));
    } else if (pages_[page].use_count() > 1) {
        pages_[page] = std::make_shared<std::vector<uint8_t>>(*pages_[page]);  // copy-on-write after a fork
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

LayerCache::LayerCache(const LayerGeometry &g)
    : geo(g),
      window(g.window + g.rewind, g.head_dim),
      kv(g.kv_entry_bytes()),
      index_keys(g.index_entry_bytes()) {
    if (g.ratio) comp_rows = PositionRing<float>(g.kappa() * g.ratio + g.rewind, 2 * g.kappa() * g.head_dim);
    if (g.ratio == 4) index_rows = PositionRing<float>(8 + g.rewind, 2 * 2 * g.index_head_dim);
}

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
    kv = PagedEntries(kv.entry_bytes());
    index_keys = PagedEntries(index_keys.entry_bytes());
}

size_t LayerCache::allocated_bytes() const {
    return window.bytes() + comp_rows.bytes() + index_rows.bytes() + kv.allocated_bytes() + index_keys.allocated_bytes();
}

SequenceCache::SequenceCache(const std::vector<LayerGeometry> &geos) {
    layers.reserve(geos.size());
    for (const LayerGeometry &g : geos) layers.emplace_back(g);
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

template <typename T>
void write_ring(Writer &w, const PositionRing<T> &ring, int64_t length) {
    const int64_t first = std::max<int64_t>(0, length - ring.capacity());
    for (int64_t pos = first; pos < length; ++pos) w.bytes(ring.row(pos), sizeof(T) * size_t(ring.row_len()));
}
template <typename T>
void read_ring(Reader &r, PositionRing<T> &ring, int64_t length) {
    const int64_t first = std::max<int64_t>(0, length - ring.capacity());
    for (int64_t pos = first; pos < length; ++pos) r.bytes(ring.write_row(pos), sizeof(T) * size_t(ring.row_len()));
    ring.begin();  // not a transaction: forget the undo log
}
void write_entries(Writer &w, const PagedEntries &e) {
    w.u64(e.size());
    for (size_t j = 0; j < e.size(); ++j) w.bytes(e.entry(j), e.entry_bytes());
}
void read_entries(Reader &r, PagedEntries &e, size_t expected) {
    if (r.u64() != expected) fail(DSV4_ERR_FORMAT, "state blob: compressed entry count does not match the length");
    for (size_t j = 0; j < expected; ++j) r.bytes(e.append(), e.entry_bytes());
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
        read_ring(r, l.window, fresh.length);
        if (!l.geo.ratio) continue;
        read_ring(r, l.comp_rows, fresh.length);
        read_entries(r, l.kv, size_t(fresh.length / l.geo.ratio));
        if (l.geo.ratio != 4) continue;
        read_ring(r, l.index_rows, fresh.length);
        read_entries(r, l.index_keys, size_t(fresh.length / 4));
    }
    if (r.left) fail(DSV4_ERR_FORMAT, "state blob: {} trailing bytes", r.left);
    *this = std::move(fresh);
}

}  // namespace dsv4::kvcache
