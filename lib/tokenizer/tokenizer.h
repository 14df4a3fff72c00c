// Byte-level BPE tokenizer read from a Hugging Face tokenizer.json of the kind DeepSeek-V4 ships (spec §12.1):
// added/special tokens matched first (leftmost-longest, special then normalized), then the Split pre-tokenizer
// regexes (PCRE2 with Unicode properties, JIT), the GPT-2 byte-to-unicode map, and BPE merges by rank.
// Immutable after load; encode/decode may run concurrently from any number of threads.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace dsv4::tokenizer {

class Regex;  // a compiled PCRE2 pattern (pimpl: pcre2.h stays out of this header)

class Tokenizer {
public:
    // Throws dsv4::Error: DSV4_ERR_IO_* for the file, DSV4_ERR_FORMAT_JSON / DSV4_ERR_UNSUPPORTED naming the field.
    static std::unique_ptr<Tokenizer> load(const std::string &path);
    static std::unique_ptr<Tokenizer> from_json(std::string_view json_text, const std::string &source);
    ~Tokenizer();

    // Text → ids, without adding BOS/EOS; special-token text is recognised as Hugging Face does. Invalid UTF-8
    // input is an error (DSV4_ERR_INVALID_ARGUMENT naming the byte offset).
    std::vector<int32_t> encode(std::string_view text) const;
    // encode() of every text, spread over n_threads threads (0 = all cores). The first failing text (in order)
    // is the error, naming its index.
    std::vector<std::vector<int32_t>> encode_batch(const std::vector<std::string_view> &texts, int n_threads) const;
    // Ids → text; invalid UTF-8 produced by the byte tokens becomes U+FFFD per maximal invalid subpart.
    // Out-of-range ids are DSV4_ERR_INVALID_TOKEN.
    std::string decode(const int32_t *ids, size_t n, bool skip_special) const;
    // The raw bytes one token contributes to a decode (possibly a partial UTF-8 sequence).
    std::string token_bytes(int32_t id) const;
    // The token's string as written in tokenizer.json.
    const std::string &token_string(int32_t id) const;
    std::optional<int32_t> token_id(std::string_view token) const;
    bool is_special(int32_t id) const;
    int32_t vocab_size() const { return int32_t(id_to_token_.size()); }

private:
    Tokenizer();
    struct AddedToken {
        std::string content;
        int32_t id;
        bool special;
        bool normalized;
    };
    // Splits text into runs: added-token ids (>= 0) or plain text (id -1), in order.
    void split_added(std::string_view text, std::vector<std::pair<std::string_view, int32_t>> &out) const;
    void bpe(std::string_view piece, std::vector<int32_t> &out) const;

    std::vector<std::string> id_to_token_;
    std::vector<uint8_t> is_special_;
    std::unordered_map<std::string, int32_t> token_to_id_;  // model vocab + added tokens
    std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (left id, right id) → (rank, merged id)
    std::vector<AddedToken> added_;
    // Byte tries of the added tokens' contents, special (non-normalized) ones and normalized ones.
    struct Trie {
        std::unordered_map<uint64_t, int32_t> next;  // (node << 8 | byte) → node
        std::vector<int32_t> token;                  // node → token id ending there, or -1
        std::array<bool, 256> first{};               // bytes that start some token
        Trie() : token(1, -1) {}
        void insert(std::string_view s, int32_t id);
        // Longest token starting at s[i]: its length (0 if none) and id.
        size_t longest(std::string_view s, size_t i, int32_t &id) const;
    };
    Trie special_trie_, normalized_trie_;
    // Piece → ids cache: most words repeat, and BPE on a word is the expensive step (as in the reference).
    // Lookups by string_view, without building a std::string per piece.
    struct PieceHash {
        using is_transparent = void;
        size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
    };
    // One cache line per shard: threads working on different shards do not share lines.
    struct alignas(64) CacheShard {
        std::mutex mutex;
        std::unordered_map<std::string, std::vector<int32_t>, PieceHash, std::equal_to<>> map;
    };
    static constexpr size_t kCacheShards = 16, kCacheShardEntries = 1 << 14;
    mutable std::array<CacheShard, kCacheShards> cache_;
    std::vector<std::unique_ptr<Regex>> splits_;  // Split pre-tokenizers, applied in order (Isolated)
    int32_t byte_token_[256];                     // id of each byte's byte-level character
    std::string byte_char_[256];                  // the byte-level character (UTF-8) of each byte
    std::unordered_map<uint32_t, uint8_t> char_byte_;  // inverse map, for decoding
};

}  // namespace dsv4::tokenizer
