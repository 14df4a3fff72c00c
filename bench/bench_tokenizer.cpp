// Tokenizer throughput: encode (one thread, and a parallel batch over all cores) and decode MB/s on a few MB of
// mixed English / Chinese / code text assembled from files in this repository (no download).
//   bench_tokenizer TOKENIZER_JSON [MB] [FILES...]
#include <chrono>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;

namespace {
std::string slurp(const fs::path &p) {
    std::ifstream f(p, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}
double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

int main(int argc, char **argv) {
    if (argc < 2) {
        fmt::print(stderr, "usage: {} TOKENIZER_JSON [MB] [FILES...]\n", argv[0]);
        return 2;
    }
    const auto tok = dsv4::tokenizer::Tokenizer::load(argv[1]);
    const double target_mb = argc > 2 ? std::atof(argv[2]) : 4.0;
    // Documents: English prose and code from the repository, plus every text of the tokenizer vectors (CJK,
    // emoji, RTL, mixed), each kept whole; the set repeats until the target size.
    std::vector<std::string> docs;
    const fs::path root = fs::path(argv[0]).parent_path() / "../../..";
    std::vector<fs::path> files;
    for (int i = 3; i < argc; ++i) files.emplace_back(argv[i]);
    if (files.empty())
        for (const char *dir : {"lib", "include", "tests/support"})
            for (const auto &e : fs::recursive_directory_iterator(root / dir))
                // Hand-written sources only: generated tables (.inc) are hex, not code as people write it.
                if (e.is_regular_file() && e.path().extension() != ".inc") files.push_back(e.path());
    for (const auto &f : files) docs.push_back(slurp(f));
    std::ifstream vec(root / "tests/data/tokenizer/vectors.jsonl");
    for (std::string line; std::getline(vec, line);) {
        const auto v = nlohmann::json::parse(line);
        if (v.contains("text")) docs.push_back(v["text"].get<std::string>());
    }
    std::vector<std::string> corpus;
    size_t bytes = 0;
    for (size_t i = 0; bytes < size_t(target_mb * 1e6); ++i) {
        corpus.push_back(docs[i % docs.size()]);
        bytes += corpus.back().size();
    }
    const double mb = double(bytes) / 1e6;
    fmt::print("corpus: {:.2f} MB in {} documents\n", mb, corpus.size());

    // Cold: a fresh tokenizer (empty piece cache) over each distinct document once.
    size_t unique_bytes = 0;
    for (const auto &d : docs) unique_bytes += d.size();
    auto t0 = std::chrono::steady_clock::now();
    const auto fresh = dsv4::tokenizer::Tokenizer::load(argv[1]);
    const double load = seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    for (const auto &d : docs) (void)fresh->encode(d);
    const double cold = seconds_since(t0);

    t0 = std::chrono::steady_clock::now();
    std::vector<std::vector<int32_t>> ids(corpus.size());
    size_t n_tokens = 0;
    for (size_t i = 0; i < corpus.size(); ++i) n_tokens += (ids[i] = tok->encode(corpus[i])).size();
    const double enc1 = seconds_since(t0);

    const unsigned threads = std::max(1u, std::thread::hardware_concurrency());
    t0 = std::chrono::steady_clock::now();
    (void)tok->encode_batch(std::vector<std::string_view>(corpus.begin(), corpus.end()), int(threads));
    const double encn = seconds_since(t0);

    t0 = std::chrono::steady_clock::now();
    size_t out_bytes = 0;
    for (const auto &v : ids) out_bytes += tok->decode(v.data(), v.size(), false).size();
    const double dec = seconds_since(t0);

    fmt::print("tokenizer.json load    {:7.3f} s\n", load);
    fmt::print("encode, 1 thread, cold {:7.2f} MB/s  ({:.2f} MB of distinct documents, empty cache)\n",
               unique_bytes / 1e6 / cold, unique_bytes / 1e6);
    fmt::print("encode, 1 thread       {:7.2f} MB/s  ({} tokens, {:.2f} bytes/token)\n", mb / enc1, n_tokens, bytes / double(n_tokens));
    fmt::print("encode, {:2} threads     {:7.2f} MB/s\n", threads, mb / encn);
    fmt::print("decode, 1 thread       {:7.2f} MB/s  ({} bytes out)\n", out_bytes / 1e6 / dec, out_bytes);
    return 0;
}
