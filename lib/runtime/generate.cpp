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
}  // namespace

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

Generation::Generation(Context &ctx, const tokenizer::Tokenizer *tok, std::vector<GenerateRequest> &requests)
    : ctx_(ctx), requests_(requests) {
    if (requests.empty()) fail(DSV4_ERR_INVALID_ARGUMENT, "generate: no request");
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
    const int32_t eos = ctx.model().config().eos_token_id;
    for (GenerateRequest &r : requests) streams_.emplace_back(r, tok, eos);
}

Generation::~Generation() = default;

void Generation::prefill() {
    // Every prompt in one batch, one output per request (its last prompt token).
    std::vector<int32_t> tokens, seq_ids;
    std::vector<int8_t> want;
    for (GenerateRequest &r : requests_) {
        r.stats = GenerateStats{};
        r.stats.n_prompt = int64_t(r.prompt.size());
        for (size_t i = 0; i < r.prompt.size(); ++i) {
            tokens.push_back(r.prompt[i]);
            seq_ids.push_back(r.seq);
            want.push_back(i + 1 == r.prompt.size());
        }
    }
    t_prefill_ = Clock::now();
    ctx_.decode(tokens.data(), nullptr, seq_ids.data(), 0, want.data(), int32_t(tokens.size()));
    // The samplers learn the prompts only once they are in the cache, so a failed prefill leaves them untouched.
    evaluation_ = ctx_.n_evaluations();
    for (GenerateRequest &r : requests_)
        for (int32_t t : r.prompt) r.sampler->accept(t);
    const double prefill_s = since(t_prefill_);
    for (size_t i = 0; i < requests_.size(); ++i) {
        requests_[i].stats.prefill_s = prefill_s;
        if (requests_[i].options.max_tokens > 0) running_.push_back(i);
        else requests_[i].stats.stop = StopReason::max_tokens;
    }
    t_decode_ = Clock::now();
}

void Generation::end_running(StopReason why) {
    for (size_t i : running_) {
        streams_[i].end(why);
        requests_[i].stats.decode_s = since(t_decode_);
    }
    running_.clear();
}

bool Generation::step() {
    if (!prefilled_) {
        prefilled_ = true;
        prefill();
        return !running_.empty();
    }
    if (running_.empty()) return false;
    if (ctx_.n_evaluations() != evaluation_)
        fail(DSV4_ERR_INVALID_ARGUMENT, "generate: the context evaluated another batch while this generation was "
             "paused; its outputs are gone");
    if (ctx_.take_abort()) {
        end_running(StopReason::cancelled);
        return false;
    }
    const int32_t vocab = ctx_.model().config().vocab_size;
    std::vector<size_t> next;
    std::vector<int32_t> tokens, seq_ids;
    for (size_t k = 0; k < running_.size(); ++k) {
        GenerateRequest &r = requests_[running_[k]];
        const int32_t token = r.sampler->sample(ctx_.logits(int32_t(k)), vocab);
        if (streams_[running_[k]].take(token, t_prefill_)) {
            next.push_back(running_[k]);
            tokens.push_back(token);
            seq_ids.push_back(r.seq);
        } else {
            r.stats.decode_s = since(t_decode_);
        }
    }
    running_.swap(next);
    if (running_.empty()) return false;
    const std::vector<int8_t> want(tokens.size(), 1);
    try {
        ctx_.decode(tokens.data(), nullptr, seq_ids.data(), 0, want.data(), int32_t(tokens.size()));
        evaluation_ = ctx_.n_evaluations();
    } catch (const Error &e) {
        if (e.status() != DSV4_ERR_CANCELLED) throw;
        end_running(StopReason::cancelled);  // the sequences keep everything before the cancelled step
        return false;
    }
    return true;
}

void generate(Context &ctx, const tokenizer::Tokenizer *tok, std::vector<GenerateRequest> &requests) {
    Generation g(ctx, tok, requests);
    while (g.step()) {
    }
}

}  // namespace dsv4::runtime
