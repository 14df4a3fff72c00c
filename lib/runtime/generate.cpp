#include "runtime/generate.h"

#include <algorithm>
#include <chrono>
#include <set>

#include "core/error.h"
#include "core/text.h"
#include "tokenizer/utf8.h"

namespace dsv4::runtime {
namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Per-request streaming state: tokens become text in complete characters; stop strings are searched in text.
class Stream {
public:
    Stream(GenerateRequest &r, const tokenizer::Tokenizer *tok, int32_t eos) : r_(r), tok_(tok), eos_(eos) {
        for (const std::string &s : r.options.stop_strings) longest_stop_ = std::max(longest_stop_, s.size());
    }
    // Handles one sampled token; false when the request ends with it.
    bool take(int32_t token, Clock::time_point t_start) {
        GenerateStats &st = r_.stats;
        r_.sampler->accept(token);
        if (++st.n_generated == 1) st.time_to_first_token_s = since(t_start);
        if (token == eos_ && !r_.options.ignore_eos) return end(StopReason::eos);
        if (std::find(r_.options.stop_tokens.begin(), r_.options.stop_tokens.end(), token) != r_.options.stop_tokens.end())
            return end(StopReason::stop_token);
        std::string piece;
        if (tok_) {
            raw_ += tok_->token_bytes(token);
            const size_t ready = tokenizer::utf8_complete_prefix(raw_);
            const std::string text = held_ + tokenizer::utf8_lossy(raw_.substr(0, ready));
            raw_.erase(0, ready);
            const std::string candidate = emitted_ + text;
            size_t stop_at = std::string::npos;
            const size_t from = emitted_.size() >= longest_stop_ ? emitted_.size() - longest_stop_ + 1 : 0;
            for (const std::string &s : r_.options.stop_strings) stop_at = std::min(stop_at, candidate.find(s, from));
            if (stop_at != std::string::npos) {
                piece = candidate.substr(emitted_.size(), stop_at - std::min(stop_at, emitted_.size()));
                if (!piece.empty()) r_.on_token(token, piece);
                return end(StopReason::stop_string);
            }
            const size_t hold = std::min(text.size(), core::marker_prefix_suffix(candidate, r_.options.stop_strings));
            piece = text.substr(0, text.size() - hold);
            held_ = text.substr(text.size() - hold);
            emitted_ += piece;
        }
        if (!r_.on_token(token, piece)) return end(StopReason::callback);
        if (st.n_generated >= r_.options.max_tokens) return end(StopReason::max_tokens);
        return true;
    }
    bool end(StopReason why) {
        r_.stats.stop = why;
        // Text held back for a stop string that never came, or an unfinished character, is delivered at the end.
        if (tok_ && why != StopReason::stop_string && why != StopReason::callback) {
            const std::string rest = held_ + tokenizer::utf8_lossy(raw_);
            if (!rest.empty()) r_.on_token(-1, rest);
        }
        return false;
    }

private:
    GenerateRequest &r_;
    const tokenizer::Tokenizer *tok_;
    int32_t eos_;
    size_t longest_stop_ = 0;
    std::string raw_;      // bytes ending inside a UTF-8 character, not yet decoded
    std::string emitted_;  // text streamed so far
    std::string held_;     // decoded text held back because it may begin a stop string
};

}  // namespace

void generate(Context &ctx, const tokenizer::Tokenizer *tok, std::vector<GenerateRequest> &requests) {
    std::set<int32_t> seqs;
    for (const GenerateRequest &r : requests) {
        if (r.prompt.empty()) fail(DSV4_ERR_INVALID_ARGUMENT, "generate: sequence {}: empty prompt", r.seq);
        if (!r.sampler) fail(DSV4_ERR_INVALID_ARGUMENT, "generate: sequence {}: no sampler", r.seq);
        if (r.options.max_tokens < 0) fail(DSV4_ERR_INVALID_ARGUMENT, "generate: max_tokens {} < 0", r.options.max_tokens);
        for (const std::string &s : r.options.stop_strings)
            if (s.empty()) fail(DSV4_ERR_INVALID_ARGUMENT, "generate: empty stop string");
        if (!r.options.stop_strings.empty() && !tok) fail(DSV4_ERR_INVALID_ARGUMENT, "generate: stop strings need a tokenizer");
        if (!seqs.insert(r.seq).second) fail(DSV4_ERR_INVALID_ARGUMENT, "generate: sequence {} appears in two requests", r.seq);
        for (const GenerateRequest &o : requests)
            if (&o != &r && o.sampler == r.sampler) fail(DSV4_ERR_INVALID_ARGUMENT, "generate: two requests share a sampler");
    }
    const int32_t eos = ctx.model().config().eos_token_id, vocab = ctx.model().config().vocab_size;

    // Prefill: every prompt in one batch, one output per request (its last prompt token).
    std::vector<int32_t> tokens, seq_ids;
    std::vector<int8_t> want;
    for (GenerateRequest &r : requests) {
        r.stats = GenerateStats{};
        r.stats.n_prompt = int64_t(r.prompt.size());
        for (size_t i = 0; i < r.prompt.size(); ++i) {
            r.sampler->accept(r.prompt[i]);
            tokens.push_back(r.prompt[i]);
            seq_ids.push_back(r.seq);
            want.push_back(i + 1 == r.prompt.size());
        }
    }
    std::vector<Stream> streams;
    for (GenerateRequest &r : requests) streams.emplace_back(r, tok, eos);
    const auto t0 = Clock::now();
    ctx.decode(tokens.data(), nullptr, seq_ids.data(), 0, want.data(), int32_t(tokens.size()));
    const double prefill_s = since(t0);
    for (GenerateRequest &r : requests) r.stats.prefill_s = prefill_s;

    // Decode steps: sample every running request from its output, then evaluate their tokens in one batch.
    std::vector<size_t> running;
    for (size_t i = 0; i < requests.size(); ++i)
        if (requests[i].options.max_tokens > 0) running.push_back(i);
        else requests[i].stats.stop = StopReason::max_tokens;
    const auto t1 = Clock::now();
    while (!running.empty()) {
        std::vector<size_t> next;
        tokens.clear();
        seq_ids.clear();
        const bool cancelled = ctx.take_abort();
        for (size_t k = 0; k < running.size(); ++k) {
            GenerateRequest &r = requests[running[k]];
            if (cancelled) {
                streams[running[k]].end(StopReason::cancelled);
                r.stats.decode_s = since(t1);
                continue;
            }
            const int32_t token = r.sampler->sample(ctx.logits(int32_t(k)), vocab);
            if (streams[running[k]].take(token, t0)) {
                next.push_back(running[k]);
                tokens.push_back(token);
                seq_ids.push_back(r.seq);
            } else {
                r.stats.decode_s = since(t1);
            }
        }
        running.swap(next);
        if (running.empty()) break;
        want.assign(tokens.size(), 1);
        try {
            ctx.decode(tokens.data(), nullptr, seq_ids.data(), 0, want.data(), int32_t(tokens.size()));
        } catch (const Error &e) {
            if (e.status() != DSV4_ERR_CANCELLED) throw;
            for (size_t i : running) {  // the sequences keep everything before the cancelled step
                streams[i].end(StopReason::cancelled);
                requests[i].stats.decode_s = since(t1);
            }
            running.clear();
        }
    }
}

}  // namespace dsv4::runtime
