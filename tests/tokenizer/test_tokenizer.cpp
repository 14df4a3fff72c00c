// The DeepSeek-V4 tokenizer through the C ABI: every shared vector, the special-token ids of spec §12.1,
// buffer rules, invalid input, lossy UTF-8 decoding, streaming pieces, concurrency, malformed files and the
// Unicode 16 character classes.
#include <catch2/catch.hpp>
#include <dsv4/dsv4.h>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "io/mapped_file.h"
#include "support/fixtures.h"
#include "support/forge.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "tokenizer/utf8.h"

using namespace dsv4;

namespace {
std::string tokenizer_path() { return test::data_dir() + "/tokenizer/tokenizer.json"; }

struct Tok {
    dsv4_tokenizer *t = nullptr;
    Tok() { REQUIRE(dsv4_tokenizer_load(tokenizer_path().c_str(), &t) == DSV4_OK); }
    ~Tok() { dsv4_tokenizer_free(t); }
    std::vector<int32_t> encode(const std::string &s) const {
        size_t n = 0;
        const dsv4_status st = dsv4_tokenize(t, s.data(), s.size(), nullptr, 0, &n);
        REQUIRE((st == DSV4_OK || st == DSV4_ERR_BUFFER_TOO_SMALL));
        std::vector<int32_t> ids(n);
        REQUIRE(dsv4_tokenize(t, s.data(), s.size(), ids.data(), ids.size(), &n) == DSV4_OK);
        return ids;
    }
    std::string decode(const std::vector<int32_t> &ids, uint32_t flags = 0) const {
        size_t len = 0;
        (void)dsv4_detokenize(t, ids.data(), ids.size(), flags, nullptr, 0, &len);
        std::string out(len + 1, '\0');
        REQUIRE(dsv4_detokenize(t, ids.data(), ids.size(), flags, out.data(), out.size(), &len) == DSV4_OK);
        out.resize(len);
        return out;
    }
};
const Tok &tok() {
    static Tok t;
    return t;
}
}  // namespace

TEST_CASE("every shared tokenizer vector passes through the C ABI", "[tokenizer]") {
    std::ifstream in(test::data_dir() + "/tokenizer/vectors.jsonl");
    std::string line;
    int n = 0;
    while (std::getline(in, line)) {
        const auto v = nlohmann::json::parse(line);
        INFO(v.at("id").get<std::string>());
        const auto ids = v.at("ids").get<std::vector<int32_t>>();
        if (v.at("kind") == "encode") REQUIRE(tok().encode(v.at("text").get<std::string>()) == ids);
        REQUIRE(tok().decode(ids) == v.at("decoded").get<std::string>());
        REQUIRE(tok().decode(ids, DSV4_DETOKENIZE_SKIP_SPECIAL) == v.at("decoded_skip_special").get<std::string>());
        ++n;
    }
    CHECK(n == 557);
}

TEST_CASE("special tokens have the ids of spec 12.1", "[tokenizer]") {
    const std::vector<std::pair<std::string, int32_t>> known = {
        {"<｜begin▁of▁sentence｜>", 0}, {"<｜end▁of▁sentence｜>", 1}, {"<｜▁pad▁｜>", 2}, {"<｜User｜>", 128803},
        {"<｜Assistant｜>", 128804}, {"<think>", 128821}, {"</think>", 128822}, {"｜DSML｜", 128825},
        {"<｜latest_reminder｜>", 128828}, {"<｜action｜>", 128829}, {"<｜query｜>", 128830}};
    for (const auto &[text, id] : known) {
        INFO(text);
        CHECK(tok().encode(text) == std::vector<int32_t>{id});
        CHECK(tok().decode({id}) == text);
    }
    CHECK(dsv4_tokenizer_vocab_size(tok().t) == 129280);
    CHECK(dsv4_token_is_special(tok().t, 0) == 1);
    CHECK(dsv4_token_is_special(tok().t, 128803) == 0);  // <｜User｜> is an added token not marked special
    CHECK(dsv4_token_is_special(tok().t, 1000) == 0);
    // special text inside running text is matched; a partial one is not
    const auto ids = tok().encode("Hi<｜User｜>there<｜Use");
    CHECK(std::count(ids.begin(), ids.end(), 128803) == 1);
    CHECK(tok().decode(ids) == "Hi<｜User｜>there<｜Use");
}

TEST_CASE("tokenizer buffer rules and invalid input", "[tokenizer]") {
    int32_t small[1];
    size_t n = 0;
    const std::string text = "hello world, hello";
    CHECK(dsv4_tokenize(tok().t, text.data(), text.size(), small, 1, &n) == DSV4_ERR_BUFFER_TOO_SMALL);
    CHECK(n == tok().encode(text).size());
    const std::string bad = "ok\xff\xfe";
    CHECK(dsv4_tokenize(tok().t, bad.data(), bad.size(), nullptr, 0, &n) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK_THAT(std::string(dsv4_last_error_message()), Catch::Contains("byte offset 2"));
    const int32_t ids[2] = {100, 999999};
    char buf[64];
    size_t len = 0;
    CHECK(dsv4_detokenize(tok().t, ids, 2, 0, buf, sizeof buf, &len) == DSV4_ERR_INVALID_TOKEN);
    CHECK(dsv4_detokenize(tok().t, ids, 1, 0, buf, 1, &len) == DSV4_ERR_BUFFER_TOO_SMALL);
    CHECK(dsv4_token_to_piece(tok().t, -1, buf, sizeof buf, &len) == DSV4_ERR_INVALID_TOKEN);
    CHECK(dsv4_tokenize(tok().t, "", 0, nullptr, 0, &n) == DSV4_OK);
    CHECK(n == 0);
    dsv4_tokenizer *t = nullptr;
    CHECK(dsv4_tokenizer_load("/no/such/tokenizer.json", &t) == DSV4_ERR_IO_NOT_FOUND);
    CHECK(t == nullptr);
}

TEST_CASE("lossy UTF-8: each maximal invalid subpart becomes one U+FFFD", "[tokenizer]") {
    using tokenizer::utf8_lossy;
    const std::string R = "\xef\xbf\xbd";
    CHECK(utf8_lossy("a\x80" "b") == "a" + R + "b");
    CHECK(utf8_lossy("\xe2\x82") == R);                    // truncated 3-byte sequence: one replacement
    CHECK(utf8_lossy("\xe2\x82\x41") == R + "A");
    CHECK(utf8_lossy("\xf0\x9f\x98") == R);
    CHECK(utf8_lossy("\xc0\xaf") == R + R);                // overlong lead: two
    CHECK(utf8_lossy("\xed\xa0\x80") == R + R + R);        // surrogate: three
    CHECK(utf8_lossy("\xf4\x90\x80\x80") == R + R + R + R);  // above U+10FFFF
    CHECK(utf8_lossy("é漢😀") == "é漢😀");
    CHECK(tokenizer::utf8_complete_prefix("ab\xe6\xbc") == 2);
    CHECK(tokenizer::utf8_complete_prefix("ab\xe6\xbc\xa2") == 5);
    CHECK(tokenizer::utf8_complete_prefix("ab\x80") == 3);  // invalid, not incomplete: nothing to wait for
}

TEST_CASE("streaming pieces: holding back incomplete UTF-8 reproduces the full decode", "[tokenizer]") {
    const std::string text = "Streaming 漢字 and emoji 😀🚀 with ünïcödé, then <｜User｜> and code: for(i=0;i<3;i++){}";
    const auto ids = tok().encode(text);
    std::string pending, shown;
    for (int32_t id : ids) {
        char buf[256];
        size_t len = 0;
        REQUIRE(dsv4_token_to_piece(tok().t, id, buf, sizeof buf, &len) == DSV4_OK);
        pending.append(buf, len);
        const size_t ready = tokenizer::utf8_complete_prefix(pending);
        shown += pending.substr(0, ready);
        REQUIRE(tokenizer::utf8_first_invalid(shown) == std::string::npos);  // never shows half a character
        pending.erase(0, ready);
    }
    CHECK(pending.empty());
    CHECK(shown == text);
}

TEST_CASE("concurrent encodes agree", "[tokenizer]") {
    const std::string text = "The quick brown fox 跳过了懒狗 1234567 times; def f(x): return x**2\n";
    const auto expected = tok().encode(text);
    std::vector<std::thread> threads;
    std::atomic<int> mismatches{0};
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&] {
            for (int i = 0; i < 50; ++i)
                if (tok().encode(text) != expected) ++mismatches;
        });
    for (auto &th : threads) th.join();
    CHECK(mismatches == 0);
}

TEST_CASE("a batch encode equals one encode per text, in order; a bad text is named by its index", "[tokenizer]") {
    Tok t;
    std::vector<std::string> texts;
    for (int i = 0; i < 40; ++i)
        texts.push_back(std::string(size_t(i % 7), 'x') + "Text " + std::to_string(i * 7919) + " 中文 <｜User｜> def f(): pass");
    texts.push_back("");
    std::vector<const char *> ptrs;
    std::vector<size_t> lens;
    for (const std::string &s : texts) {
        ptrs.push_back(s.data());
        lens.push_back(s.size());
    }
    for (int32_t threads : {1, 3, 0}) {
        dsv4_token_lists *lists = nullptr;
        REQUIRE(dsv4_tokenize_batch(t.t, ptrs.data(), lens.data(), texts.size(), threads, &lists) == DSV4_OK);
        REQUIRE(dsv4_token_lists_count(lists) == texts.size());
        for (size_t i = 0; i < texts.size(); ++i) {
            const int32_t *ids = nullptr;
            size_t n = 0;
            REQUIRE(dsv4_token_lists_get(lists, i, &ids, &n) == DSV4_OK);
            CHECK(std::vector<int32_t>(ids, ids + n) == t.encode(texts[i]));
        }
        const int32_t *ids = nullptr;
        size_t n = 0;
        CHECK(dsv4_token_lists_get(lists, texts.size(), &ids, &n) == DSV4_ERR_INVALID_ARGUMENT);
        dsv4_token_lists_free(lists);
    }
    const std::string bad = "ok \xC3\x28 broken";
    ptrs[17] = bad.data();
    lens[17] = bad.size();
    dsv4_token_lists *lists = nullptr;
    CHECK(dsv4_tokenize_batch(t.t, ptrs.data(), lens.data(), texts.size(), 2, &lists) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK(lists == nullptr);
    CHECK(std::string(dsv4_last_error_message()).find("text 17 of the batch") != std::string::npos);
    CHECK(dsv4_tokenize_batch(t.t, ptrs.data(), lens.data(), texts.size(), -1, &lists) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK(dsv4_tokenize_batch(t.t, nullptr, lens.data(), 1, 1, &lists) == DSV4_ERR_INVALID_ARGUMENT);
}

TEST_CASE("malformed or unsupported tokenizer.json files are named", "[tokenizer]") {
    auto j = nlohmann::json::parse(io::read_text_file(tokenizer_path()));
    auto expect = [&](const nlohmann::json &doc, dsv4_status status, const std::string &needle) {
        try {
            tokenizer::Tokenizer::from_json(doc.dump(), "tokenizer.json");
            FAIL("accepted");
        } catch (const Error &e) {
            CHECK(e.status() == status);
            CHECK_THAT(std::string(e.what()), Catch::Contains(needle));
        }
    };
    auto k = j;
    k["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed";
    expect(k, DSV4_ERR_UNSUPPORTED, "pre_tokenizer.pretokenizers[0]");
    k = j;
    k["model"]["merges"][5] = "nonexistenttoken Ġ";
    expect(k, DSV4_ERR_FORMAT_JSON, "merge 5");
    k = j;
    k["model"]["type"] = "Unigram";
    expect(k, DSV4_ERR_UNSUPPORTED, "model.type");
    k = j;
    k["normalizer"] = {{"type", "NFKC"}};
    expect(k, DSV4_ERR_UNSUPPORTED, "normalizer");
    k = j;
    k["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
    expect(k, DSV4_ERR_UNSUPPORTED, "does not compile");
    k = j;
    k.erase("model");
    expect(k, DSV4_ERR_FORMAT_JSON, "model");
}

TEST_CASE("the Split regexes classify code points by Unicode 16.0", "[tokenizer]") {
    using tokenizer::unicode::CodePointRange;
    CHECK(tokenizer::unicode::version() == "16.0.0");
    auto contains = [](const char *alias, uint32_t cp) {
        const auto *c = tokenizer::unicode::find_general_category(alias);
        REQUIRE(c != nullptr);
        for (const CodePointRange &r : c->code_points())
            if (cp >= r.first && cp <= r.last) return true;
        return false;
    };
    const char *const subcategories[] = {"Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps", "Pe",
                                         "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn"};
    auto category_of = [&](uint32_t cp) {
        std::string found;
        for (const char *alias : subcategories)
            if (contains(alias, cp)) found += found.empty() ? alias : std::string("+") + alias;
        return found;
    };
    // The subcategories partition the code space, and the major class of a code point's subcategory is the one
    // major class holding it (sampled every 97 code points, plus the ones named below).
    std::vector<uint32_t> samples{'A', 0x1c89, 0x1f8c0, 0x31350, 0x10ffff};
    for (uint32_t cp = 0; cp <= 0x10ffff; cp += 97) samples.push_back(cp);
    for (uint32_t c : samples) {
        const std::string sub = category_of(c);
        REQUIRE(sub.size() == 2);
        for (const char *major : {"L", "M", "N", "P", "S", "Z", "C"}) REQUIRE(contains(major, c) == (sub[0] == major[0]));
    }
    CHECK(category_of(0x10ffff) == "Cn");
    // Ranges ascend without overlap.
    for (const char *alias : subcategories) {
        const auto *c = tokenizer::unicode::find_general_category(alias);
        for (size_t i = 1; i < c->size; ++i) REQUIRE(c->ranges[i - 1].last < c->ranges[i].first);
    }
    CHECK(category_of('A') == "Lu");
    CHECK(category_of(0x1c89) == "Lu");   // CYRILLIC CAPITAL LETTER TJE, new in 16.0
    CHECK(category_of(0x1f8c0) == "So");  // LEFT ARROW FROM DOWNWARDS ARROW, new in 16.0
    CHECK(category_of(0x31350) == "Lo");  // CJK Extension H, new in 15.0
    CHECK(tokenizer::unicode::find_general_category("Letter") == tokenizer::unicode::find_general_category("L"));
    CHECK(tokenizer::unicode::find_general_category("Han") == nullptr);
    // White_Space as Oniguruma's \s: U+0085 in, U+200B (a format character) out.
    auto is_space = [](uint32_t cp) {
        for (const CodePointRange &r : tokenizer::unicode::white_space())
            if (cp >= r.first && cp <= r.last) return true;
        return false;
    };
    CHECK(is_space(0x85));
    CHECK_FALSE(is_space(0x200b));
    // Under Unicode 14 a space and U+1F8C0 fell into separate pieces; as a symbol (16.0) they form one, so the
    // first token carries the space (Ġ) together with the symbol's first bytes.
    const auto t = tokenizer::Tokenizer::load(tokenizer_path());
    const auto ids = t->encode(" \U0001F8C0");
    REQUIRE(!ids.empty());
    CHECK(t->token_bytes(ids[0]) == " \xF0\x9F");
}

TEST_CASE("\\P{..} and \\S inside a class translate to their complements", "[tokenizer]") {
    auto j = nlohmann::json::parse(io::read_text_file(tokenizer_path()));
    auto &splits = j["pre_tokenizer"]["pretokenizers"];
    // One split into runs of letters, of white space and of everything else, the last two written with
    // complements inside classes.
    splits = nlohmann::json::array({splits[0], splits[3]});
    splits[0]["pattern"]["Regex"] = "\\p{L}+|[^\\S]+|[\\P{L}]+";
    const auto t = tokenizer::Tokenizer::from_json(j.dump(), "tokenizer.json");
    const std::string text = "ab, cd \u0100\u0101 12";
    const auto ids = t->encode(text);
    CHECK(t->decode(ids.data(), ids.size(), false) == text);
    // Every piece is a letter run or a non-letter run: no token mixes the two (the text's only non-ASCII
    // characters are letters).
    for (int32_t id : ids) {
        const std::string piece = t->token_bytes(id);
        const bool letters = std::isalpha(uint8_t(piece[0])) || uint8_t(piece[0]) >= 0x80;
        for (char c : piece) CHECK(bool(std::isalpha(uint8_t(c)) || uint8_t(c) >= 0x80) == letters);
    }
}

TEST_CASE("[^\\P{X}] splits as \\p{X}: the complement inside a class is exact", "[tokenizer]") {
    // On the texts of every code point whose category changed since Unicode 14.0 and on a sweep of the code space.
    auto j = nlohmann::json::parse(io::read_text_file(tokenizer_path()));
    auto &splits = j["pre_tokenizer"]["pretokenizers"];
    splits = nlohmann::json::array({splits[0], splits[3]});
    std::vector<std::string> texts;
    std::ifstream in(test::data_dir() + "/tokenizer/unicode16_vectors.jsonl");
    for (std::string line; std::getline(in, line);) texts.push_back(nlohmann::json::parse(line).at("text"));
    REQUIRE(texts.size() > 10000);
    // The sweep: every eleventh code point (surrogates left out), 16 to a text so that BPE pieces stay short.
    for (uint32_t cp = 1, n = 0; cp <= 0x10ffff; cp += 11) {
        if (cp >= 0xd800 && cp <= 0xdfff) continue;
        if (n++ % 16 == 0) texts.emplace_back();
        tokenizer::utf8_append(texts.back(), cp);
    }
    for (const char *alias : {"L", "N", "P", "S", "Mn", "LC", "Cn"}) {
        INFO(alias);
        splits[0]["pattern"]["Regex"] = fmt::format("\\p{{{0}}}+|\\P{{{0}}}+", alias);
        const auto direct = tokenizer::Tokenizer::from_json(j.dump(), "tokenizer.json");
        splits[0]["pattern"]["Regex"] = fmt::format("[^\\P{{{0}}}]+|[\\P{{{0}}}]+", alias);
        const auto twice_negated = tokenizer::Tokenizer::from_json(j.dump(), "tokenizer.json");
        for (const std::string &t : texts) REQUIRE(direct->encode(t) == twice_negated->encode(t));
    }
}
