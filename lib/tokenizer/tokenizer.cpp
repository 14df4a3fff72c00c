#include "tokenizer/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <thread>
#include <climits>
#include <span>
#include <vector>

#include "core/error.h"
#include "io/json.h"
#include "io/mapped_file.h"
#include "tokenizer/unicode.h"
#include "tokenizer/utf8.h"

namespace dsv4::tokenizer {
namespace {
using nlohmann::json;

// PCRE2 classifies by the Unicode of its build (Debian 12's 10.42: Unicode 14.0); Hugging Face `tokenizers` by a
// newer one, and Oniguruma's \s (White_Space, with U+0085) differs slightly from PCRE2's. So the translated
// pattern spells out \s, \S and the general categories' \p{..} / \P{..} as Unicode 16.0 code point ranges (other
// properties, such as scripts, are left to PCRE2). Long range lists cost a scan per non-ASCII character (encode
// of the shared vectors' texts alone: 34 MB/s with PCRE2's \p{..}, 24 with the ranges); PCRE2's own \p{..} plus
// the few ranges added since 14.0 measured slower still under 10.42's JIT (19 MB/s).
std::vector<unicode::CodePointRange> complement(std::span<const unicode::CodePointRange> ranges) {
    std::vector<unicode::CodePointRange> out;
    uint32_t next = 0;
    for (const auto &r : ranges) {
        if (r.first > next) out.push_back({next, r.first - 1});
        next = r.last + 1;
    }
    if (next <= 0x10ffff) out.push_back({next, 0x10ffff});
    return out;
}

// Surrogates are left out: valid UTF-8 never holds them, and PCRE2's UTF mode refuses them in a class.
void append_class_body(std::string &out, std::span<const unicode::CodePointRange> ranges) {
    auto emit = [&](uint32_t first, uint32_t last) {
        if (first > last) return;
        out += fmt::format("\\x{{{:X}}}", first);
        if (last > first) out += fmt::format("-\\x{{{:X}}}", last);
    };
    for (const auto &r : ranges) {
        emit(r.first, std::min(r.last, 0xd7ffu));
        emit(std::max(r.first, 0xe000u), r.last);
    }
}

std::string translate_pattern(const std::string &p, const std::string &source) {
    std::string out;
    bool in_class = false;
    auto append_set = [&](std::span<const unicode::CodePointRange> ranges, bool negate) {
        if (in_class) {
            if (negate) append_class_body(out, complement(ranges));
            else append_class_body(out, ranges);
            return;
        }
        out += negate ? "[^" : "[";
        append_class_body(out, ranges);
        out += ']';
    };
    for (size_t i = 0; i < p.size(); ++i) {
        const char c = p[i];
        if (c == '\\' && i + 1 < p.size()) {
            const char n = p[++i];
            if (n == 's' || n == 'S') {
                append_set(unicode::white_space(), n == 'S');
                continue;
            }
            if ((n == 'p' || n == 'P') && i + 1 < p.size()) {
                size_t end = i + 1;
                std::string_view name;
                if (p[i + 1] == '{') {
                    end = p.find('}', i + 2);
                    if (end == std::string::npos) fail(DSV4_ERR_UNSUPPORTED, "{}: regex '{}': unterminated \\{}{{", source, p, n);
                    name = std::string_view(p).substr(i + 2, end - i - 2);
                } else {
                    name = std::string_view(p).substr(i + 1, 1);
                }
                if (const unicode::GeneralCategory *cat = unicode::find_general_category(name)) {
                    append_set(cat->code_points(), n == 'P');
                    i = end;
                    continue;
                }
            }
            out += c;
            out += n;
            continue;
        }
        if (c == '[' && !in_class) in_class = true;
        else if (c == ']' && in_class) in_class = false;
        out += c;
    }
    return out;
}

// GPT-2's reversible byte → printable-character map.
void build_byte_map(std::string (&byte_char)[256], std::unordered_map<uint32_t, uint8_t> &char_byte) {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
        const bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
        const uint32_t cp = printable ? uint32_t(b) : uint32_t(256 + n++);
        byte_char[b].clear();
        utf8_append(byte_char[b], cp);
        char_byte[cp] = uint8_t(b);
    }
}

uint32_t decode_cp(std::string_view s, size_t &i) {
    const size_t n = utf8_sequence_length(s, i);
    const uint8_t b0 = uint8_t(s[i]);
    uint32_t cp = n == 1 ? b0 : n == 2 ? b0 & 0x1f : n == 3 ? b0 & 0x0f : b0 & 0x07;
    for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (uint8_t(s[i + k]) & 0x3f);
    i += n ? n : 1;
    return cp;
}

}  // namespace

class Regex {
public:
    Regex(const std::string &pattern, const std::string &source) {
        int err = 0;
        PCRE2_SIZE offset = 0;
        const std::string translated = translate_pattern(pattern, source);
        code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                              PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &offset, nullptr);
        if (!code_) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(err, msg, sizeof msg);
            fail(DSV4_ERR_UNSUPPORTED, "{}: regex '{}' does not compile at offset {}: {}", source, pattern, offset,
                 reinterpret_cast<const char *>(msg));
        }
        jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
    }
    ~Regex() { pcre2_code_free(code_); }
    Regex(const Regex &) = delete;
    Regex &operator=(const Regex &) = delete;

    // Splits `text` into the pieces between and including the matches ("Isolated" behaviour).
    void split_isolated(std::string_view text, std::vector<std::string_view> &out, pcre2_match_data *md) const {
        size_t pos = 0, last = 0;
        while (pos <= text.size()) {
            const int rc = jit_ ? pcre2_jit_match(code_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), pos, 0, md, nullptr)
                                : pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), pos,
                                              PCRE2_NO_UTF_CHECK, md, nullptr);
            if (rc < 0) break;
            const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            const size_t start = ov[0], end = ov[1];
            if (end == start) {  // empty match: step one character, as the reference's splitter does
                if (start >= text.size()) break;
                pos = start + std::max<size_t>(1, utf8_sequence_length(text, start));
                continue;
            }
            if (start > last) out.push_back(text.substr(last, start - last));
            out.push_back(text.substr(start, end - start));
            last = pos = end;
        }
        if (last < text.size()) out.push_back(text.substr(last));
    }
    pcre2_code *code() const { return code_; }

private:
    pcre2_code *code_ = nullptr;
    bool jit_ = false;
};

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string &path) {
    return from_json(io::read_text_file(path), io::base_name(path));
}

std::unique_ptr<Tokenizer> Tokenizer::from_json(std::string_view text, const std::string &source) {
    const json j = io::parse_json(text, source);
    std::unique_ptr<Tokenizer> t(new Tokenizer());
    auto field = [&](const json &obj, const char *key, const std::string &path) -> const json & {
        if (!obj.is_object() || !obj.contains(key)) fail(DSV4_ERR_FORMAT_JSON, "{}: field '{}' is missing", source, path);
        return obj.at(key);
    };
    auto unsupported = [&](const std::string &path, const json &v) {
        fail(DSV4_ERR_UNSUPPORTED, "{}: field '{}' = {} is not supported", source, path, v.dump().substr(0, 200));
    };

    const json &model = field(j, "model", "model");
    if (field(model, "type", "model.type") != "BPE") unsupported("model.type", model.at("type"));
    for (const char *k : {"dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix"})
        if (model.contains(k) && !model.at(k).is_null()) unsupported(std::string("model.") + k, model.at(k));
    if (model.value("byte_fallback", false)) unsupported("model.byte_fallback", model.at("byte_fallback"));
    if (model.value("ignore_merges", false)) unsupported("model.ignore_merges", model.at("ignore_merges"));

    const json &vocab = field(model, "vocab", "model.vocab");
    if (!vocab.is_object()) fail(DSV4_ERR_FORMAT_JSON, "{}: model.vocab is not an object", source);
    int64_t max_id = -1;
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
        if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() >= INT32_MAX / 2)
            fail(DSV4_ERR_FORMAT_JSON, "{}: model.vocab[\"{}\"] is not a valid id", source, it.key());
        max_id = std::max(max_id, it->get<int64_t>());
    }
    const json &added = j.contains("added_tokens") ? j.at("added_tokens") : json::array();
    for (const json &a : added) max_id = std::max(max_id, a.value("id", int64_t(-1)));
    t->id_to_token_.resize(size_t(max_id + 1));
    t->is_special_.assign(size_t(max_id + 1), 0);
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
        const int32_t id = it->get<int32_t>();
        t->id_to_token_[size_t(id)] = it.key();
        t->token_to_id_[it.key()] = id;
    }
    for (const json &a : added) {
        if (!a.is_object() || !a.contains("id") || !a.contains("content") || !a.at("content").is_string() ||
            !a.at("id").is_number_integer() || a.at("id").get<int64_t>() < 0)
            fail(DSV4_ERR_FORMAT_JSON, "{}: added_tokens entry {} is malformed", source, a.dump().substr(0, 200));
        for (const char *k : {"single_word", "lstrip", "rstrip"})
            if (a.value(k, false)) unsupported(std::string("added_tokens[") + a.at("content").get<std::string>() + "]." + k, a.at(k));
        AddedToken tok{a.at("content").get<std::string>(), a.at("id").get<int32_t>(), a.value("special", false),
                       a.value("normalized", false)};
        if (tok.content.empty()) fail(DSV4_ERR_FORMAT_JSON, "{}: added token {} has empty content", source, tok.id);
        t->id_to_token_[size_t(tok.id)] = tok.content;
        t->token_to_id_[tok.content] = tok.id;
        t->is_special_[size_t(tok.id)] = tok.special;
        t->added_.push_back(std::move(tok));
    }
    for (const AddedToken &a : t->added_) (a.normalized ? t->normalized_trie_ : t->special_trie_).insert(a.content, a.id);

    const json &merges = field(model, "merges", "model.merges");
    if (!merges.is_array()) fail(DSV4_ERR_FORMAT_JSON, "{}: model.merges is not an array", source);
    int32_t rank = 0;
    for (const json &m : merges) {
        std::string a, b;
        if (m.is_string()) {
            const std::string s = m.get<std::string>();
            const size_t sp = s.find(' ');
            if (sp == std::string::npos) fail(DSV4_ERR_FORMAT_JSON, "{}: merge {} '{}' has no space", source, rank, s);
            a = s.substr(0, sp);
            b = s.substr(sp + 1);
        } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
            a = m[0].get<std::string>();
            b = m[1].get<std::string>();
        } else {
            fail(DSV4_ERR_FORMAT_JSON, "{}: merge {} is malformed", source, rank);
        }
        auto ia = t->token_to_id_.find(a), ib = t->token_to_id_.find(b), im = t->token_to_id_.find(a + b);
        if (ia == t->token_to_id_.end() || ib == t->token_to_id_.end() || im == t->token_to_id_.end())
            fail(DSV4_ERR_FORMAT_JSON, "{}: merge {} '{} {}' uses a token missing from the vocabulary", source, rank, a, b);
        t->merges_.emplace((uint64_t(uint32_t(ia->second)) << 32) | uint32_t(ib->second), std::make_pair(rank, im->second));
        ++rank;
    }

    // Normalizer: none or an empty sequence (V4). Pre-tokenizer: Split regexes (Isolated) then ByteLevel.
    if (j.contains("normalizer") && !j.at("normalizer").is_null()) {
        const json &n = j.at("normalizer");
        if (!(n.value("type", "") == "Sequence" && n.contains("normalizers") && n.at("normalizers").empty()))
            unsupported("normalizer", n);
    }
    const json &pre = field(j, "pre_tokenizer", "pre_tokenizer");
    std::vector<json> steps;
    if (pre.value("type", "") == "Sequence") steps = field(pre, "pretokenizers", "pre_tokenizer.pretokenizers").get<std::vector<json>>();
    else steps.push_back(pre);
    bool byte_level = false;
    for (size_t i = 0; i < steps.size(); ++i) {
        const json &s = steps[i];
        const std::string path = fmt::format("pre_tokenizer.pretokenizers[{}]", i);
        const std::string type = s.value("type", "");
        if (type == "Split") {
            if (s.value("behavior", "") != "Isolated" || s.value("invert", false)) unsupported(path, s);
            const json &pattern = field(s, "pattern", path + ".pattern");
            if (!pattern.contains("Regex")) unsupported(path + ".pattern", pattern);
            t->splits_.push_back(std::make_unique<Regex>(pattern.at("Regex").get<std::string>(), source));
        } else if (type == "ByteLevel" && i + 1 == steps.size()) {
            if (s.value("add_prefix_space", false) || s.value("use_regex", true)) unsupported(path, s);
            byte_level = true;
        } else {
            unsupported(path, s);
        }
    }
    if (!byte_level) fail(DSV4_ERR_UNSUPPORTED, "{}: the pre-tokenizer must end in ByteLevel", source);
    if (j.contains("decoder") && j.at("decoder").value("type", "") != "ByteLevel") unsupported("decoder", j.at("decoder"));

    build_byte_map(t->byte_char_, t->char_byte_);
    for (int b = 0; b < 256; ++b) {
        auto it = t->token_to_id_.find(t->byte_char_[b]);
        if (it == t->token_to_id_.end())
            fail(DSV4_ERR_FORMAT_JSON, "{}: the vocabulary lacks the byte-level token of byte 0x{:02x}", source, b);
        t->byte_token_[b] = it->second;
    }
    return t;
}

void Tokenizer::Trie::insert(std::string_view s, int32_t id) {
    int32_t node = 0;
    for (unsigned char c : s) {
        auto [it, inserted] = next.emplace((uint64_t(uint32_t(node)) << 8) | c, int32_t(token.size()));
        if (inserted) token.push_back(-1);
        node = it->second;
    }
    token[size_t(node)] = id;
    first[uint8_t(s[0])] = true;
}

size_t Tokenizer::Trie::longest(std::string_view s, size_t i, int32_t &id) const {
    size_t best = 0;
    int32_t node = 0;
    for (size_t k = i; k < s.size(); ++k) {
        auto it = next.find((uint64_t(uint32_t(node)) << 8) | uint8_t(s[k]));
        if (it == next.end()) break;
        node = it->second;
        if (token[size_t(node)] >= 0) {
            best = k + 1 - i;
            id = token[size_t(node)];
        }
    }
    return best;
}

void Tokenizer::split_added(std::string_view text, std::vector<std::pair<std::string_view, int32_t>> &out) const {
    // Leftmost-longest matching, first of the special (non-normalized) tokens, then of the normalized ones in
    // what is left (the normalizer is the identity), as Hugging Face's AddedVocabulary does.
    auto split_with = [](std::string_view s, const Trie &trie, std::vector<std::pair<std::string_view, int32_t>> &dst) {
        size_t last = 0;
        for (size_t i = 0; i < s.size();) {
            int32_t id = -1;
            const size_t len = trie.first[uint8_t(s[i])] ? trie.longest(s, i, id) : 0;
            if (!len) {
                ++i;
                continue;
            }
            if (i > last) dst.emplace_back(s.substr(last, i - last), -1);
            dst.emplace_back(s.substr(i, len), id);
            i += len;
            last = i;
        }
        if (last < s.size()) dst.emplace_back(s.substr(last), -1);
    };
    std::vector<std::pair<std::string_view, int32_t>> first;
    split_with(text, special_trie_, first);
    for (const auto &[piece, id] : first) {
        if (id >= 0) out.emplace_back(piece, id);
        else split_with(piece, normalized_trie_, out);
    }
}

void Tokenizer::bpe(std::string_view piece, std::vector<int32_t> &out) const {
    if (piece.size() == 1) {
        out.push_back(byte_token_[uint8_t(piece[0])]);
        return;
    }
    CacheShard &shard = cache_[std::hash<std::string_view>{}(piece) % kCacheShards];
    {
        std::lock_guard<std::mutex> lock(shard.mutex);
        auto it = shard.map.find(piece);
        if (it != shard.map.end()) {
            out.insert(out.end(), it->second.begin(), it->second.end());
            return;
        }
    }
    std::vector<int32_t> sym;
    sym.reserve(piece.size());
    for (unsigned char c : piece) sym.push_back(byte_token_[c]);
    // Merge the lowest-rank adjacent pair, leftmost first, until none is left (the order of the reference's
    // priority queue). ranks[i] is the rank of (sym[i], sym[i+1]); a merge only changes its two neighbours.
    auto pair_rank = [&](size_t i, int32_t &merged) {
        auto it = merges_.find((uint64_t(uint32_t(sym[i])) << 32) | uint32_t(sym[i + 1]));
        if (it == merges_.end()) return INT32_MAX;
        merged = it->second.second;
        return it->second.first;
    };
    std::vector<int32_t> ranks(sym.size() - 1), merged_ids(sym.size() - 1, -1);
    for (size_t i = 0; i + 1 < sym.size(); ++i) ranks[i] = pair_rank(i, merged_ids[i]);
    while (!ranks.empty()) {
        const size_t i = size_t(std::min_element(ranks.begin(), ranks.end()) - ranks.begin());
        if (ranks[i] == INT32_MAX) break;
        sym[i] = merged_ids[i];
        sym.erase(sym.begin() + ptrdiff_t(i) + 1);
        ranks.erase(ranks.begin() + ptrdiff_t(i));
        merged_ids.erase(merged_ids.begin() + ptrdiff_t(i));
        if (i < ranks.size()) ranks[i] = pair_rank(i, merged_ids[i]);
        if (i > 0) ranks[i - 1] = pair_rank(i - 1, merged_ids[i - 1]);
    }
    out.insert(out.end(), sym.begin(), sym.end());
    std::lock_guard<std::mutex> lock(shard.mutex);
    if (shard.map.size() >= kCacheShardEntries) shard.map.clear();  // bounded memory
    shard.map.emplace(std::string(piece), std::move(sym));
}

std::vector<std::vector<int32_t>> Tokenizer::encode_batch(const std::vector<std::string_view> &texts,
                                                          int n_threads) const {
    if (n_threads < 0) fail(DSV4_ERR_INVALID_ARGUMENT, "encode_batch: n_threads = {} < 0", n_threads);
    const size_t threads = std::min<size_t>(texts.size(), n_threads ? size_t(n_threads)
                                                                    : std::max(1u, std::thread::hardware_concurrency()));
    std::vector<std::vector<int32_t>> out(texts.size());
    std::vector<std::exception_ptr> errors(texts.size());
    std::atomic<size_t> next{0};
    auto work = [&] {
        for (size_t i; (i = next.fetch_add(1)) < texts.size();) {
            try {
                out[i] = encode(texts[i]);
            } catch (...) {
                errors[i] = std::current_exception();
            }
        }
    };
    std::vector<std::thread> pool;
    for (size_t t = 1; t < threads; ++t) pool.emplace_back(work);
    work();
    for (std::thread &t : pool) t.join();
    for (size_t i = 0; i < texts.size(); ++i) {
        if (!errors[i]) continue;
        try {
            std::rethrow_exception(errors[i]);
        } catch (const Error &e) {
            fail(e.status(), "text {} of the batch: {}", i, e.what());
        }
    }
    return out;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
    const size_t bad = utf8_first_invalid(text);
    if (bad != std::string_view::npos)
        fail(DSV4_ERR_INVALID_ARGUMENT, "tokenize: invalid UTF-8 at byte offset {}", bad);
    std::vector<int32_t> ids;
    std::vector<std::pair<std::string_view, int32_t>> runs;
    split_added(text, runs);
    std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data *)> md(
        splits_.empty() ? nullptr : pcre2_match_data_create_from_pattern(splits_[0]->code(), nullptr), pcre2_match_data_free);
    std::vector<std::string_view> pieces, next;
    for (const auto &[run, id] : runs) {
        if (id >= 0) {
            ids.push_back(id);
            continue;
        }
        pieces.assign(1, run);
        for (const auto &re : splits_) {
            next.clear();
            for (std::string_view p : pieces) re->split_isolated(p, next, md.get());
            pieces.swap(next);
        }
        for (std::string_view p : pieces) bpe(p, ids);
    }
    return ids;
}

std::string Tokenizer::token_bytes(int32_t id) const {
    if (id < 0 || id >= vocab_size() || id_to_token_[size_t(id)].empty())
        fail(DSV4_ERR_INVALID_TOKEN, "token id {} outside the vocabulary of {}", id, vocab_size());
    // ByteLevel decoding: every character maps back to its byte; a token holding any other character (the
    // added tokens) contributes its UTF-8 text unchanged.
    const std::string &s = id_to_token_[size_t(id)];
    std::string bytes;
    for (size_t i = 0; i < s.size();) {
        auto it = char_byte_.find(decode_cp(s, i));
        if (it == char_byte_.end()) return s;
        bytes += char(it->second);
    }
    return bytes;
}

std::string Tokenizer::decode(const int32_t *ids, size_t n, bool skip_special) const {
    std::string bytes;
    for (size_t i = 0; i < n; ++i) {
        if (skip_special && ids[i] >= 0 && ids[i] < vocab_size() && is_special_[size_t(ids[i])]) continue;
        bytes += token_bytes(ids[i]);
    }
    return utf8_lossy(bytes);
}

const std::string &Tokenizer::token_string(int32_t id) const {
    if (id < 0 || id >= vocab_size()) fail(DSV4_ERR_INVALID_TOKEN, "token id {} outside the vocabulary of {}", id, vocab_size());
    return id_to_token_[size_t(id)];
}

std::optional<int32_t> Tokenizer::token_id(std::string_view token) const {
    auto it = token_to_id_.find(std::string(token));
    if (it == token_to_id_.end()) return std::nullopt;
    return it->second;
}

bool Tokenizer::is_special(int32_t id) const { return id >= 0 && id < vocab_size() && is_special_[size_t(id)]; }

}  // namespace dsv4::tokenizer
