#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace dsv4::sampling {

void validate(const SamplerConfig &c) {
    if (!(c.temperature >= 0.0f) || !std::isfinite(c.temperature))
        fail(DSV4_ERR_INVALID_ARGUMENT, "sampler: temperature {} must be a finite number >= 0", c.temperature);
    if (c.top_k < 0) fail(DSV4_ERR_INVALID_ARGUMENT, "sampler: top_k {} must be >= 0", c.top_k);
    if (!(c.top_p > 0.0f && c.top_p <= 1.0f)) fail(DSV4_ERR_INVALID_ARGUMENT, "sampler: top_p {} must be in (0, 1]", c.top_p);
    if (!(c.min_p >= 0.0f && c.min_p <= 1.0f)) fail(DSV4_ERR_INVALID_ARGUMENT, "sampler: min_p {} must be in [0, 1]", c.min_p);
    if (!(c.repetition_penalty > 0.0f) || !std::isfinite(c.repetition_penalty))
        fail(DSV4_ERR_INVALID_ARGUMENT, "sampler: repetition_penalty {} must be > 0", c.repetition_penalty);
    if (!std::isfinite(c.presence_penalty) || !std::isfinite(c.frequency_penalty))
        fail(DSV4_ERR_INVALID_ARGUMENT, "sampler: presence/frequency penalties must be finite");
    if (c.penalty_last_n < -1) fail(DSV4_ERR_INVALID_ARGUMENT, "sampler: penalty_last_n {} must be >= -1", c.penalty_last_n);
}

Sampler::Sampler(const SamplerConfig &config) : config_(config), rng_(config.seed) { validate(config); }

void Sampler::reset() {
    rng_.seed(config_.seed);
    history_.clear();
}

void Sampler::accept(int32_t token) {
    history_.push_back(token);
    if (config_.penalty_last_n >= 0)
        while (int32_t(history_.size()) > config_.penalty_last_n) history_.pop_front();
}

double Sampler::uniform() { return double(rng_() >> 11) * (1.0 / 9007199254740992.0); }

void Sampler::apply_bias_and_penalties(std::vector<float> &logits) const {
    const int32_t n = int32_t(logits.size());
    for (const auto &[token, bias] : config_.logit_bias) {
        if (token < 0 || token >= n) fail(DSV4_ERR_INVALID_ARGUMENT, "sampler: logit bias token {} outside the vocabulary of {}", token, n);
        logits[size_t(token)] += bias;
    }
    if (history_.empty()) return;
    std::unordered_map<int32_t, int32_t> counts;
    for (int32_t t : history_)
        if (t >= 0 && t < n) ++counts[t];
    for (const auto &[t, count] : counts) {
        float &l = logits[size_t(t)];
        // Repetition penalty (CTRL / HF): shrink a seen token's logit toward 0 from either side.
        if (config_.repetition_penalty != 1.0f) l = l > 0 ? l / config_.repetition_penalty : l * config_.repetition_penalty;
        // Presence / frequency penalties (OpenAI): subtract once, and per occurrence.
        l -= config_.presence_penalty + config_.frequency_penalty * float(count);
    }
}

int32_t Sampler::sample(const float *raw, int32_t n_vocab) {
    if (n_vocab < 1 || !raw) fail(DSV4_ERR_INVALID_ARGUMENT, "sampler: {} logits", n_vocab);
    std::vector<float> logits(raw, raw + n_vocab);
    apply_bias_and_penalties(logits);
    if (config_.temperature == 0.0f || config_.top_k == 1)
        return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());

    // Candidates in descending logit order (ties: lower id first), cut to top-k.
    std::vector<int32_t> ids(static_cast<size_t>(n_vocab));
    std::iota(ids.begin(), ids.end(), 0);
    const size_t k = config_.top_k > 0 ? std::min<size_t>(size_t(config_.top_k), ids.size()) : ids.size();
    std::partial_sort(ids.begin(), ids.begin() + ptrdiff_t(k), ids.end(), [&](int32_t a, int32_t b) {
        return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b);
    });
    ids.resize(k);
    // softmax(logits / max(T, 1e-5)) in fp32, as the reference.
    const float t = std::max(config_.temperature, 1e-5f);
    const float mx = logits[size_t(ids[0])] / t;
    std::vector<float> p(k);
    float sum = 0.0f;
    for (size_t i = 0; i < k; ++i) sum += (p[i] = std::exp(logits[size_t(ids[i])] / t - mx));
    for (float &v : p) v /= sum;
    size_t keep = k;
    if (config_.top_p < 1.0f) {  // smallest prefix whose mass reaches top_p
        float mass = 0.0f;
        for (size_t i = 0; i < k; ++i) {
            mass += p[i];
            if (mass >= config_.top_p) {
                keep = i + 1;
                break;
            }
        }
    }
    if (config_.min_p > 0.0f) {  // drop tokens below min_p × the top probability
        const float floor = config_.min_p * p[0];
        size_t i = 1;
        while (i < keep && p[i] >= floor) ++i;
        keep = i;
    }
    // Exponential race over the kept candidates: argmax p_i / E_i, E_i ~ Exp(1), drawn in candidate order so
    // that a seed fixes the outcome.
    int32_t best = ids[0];
    double best_score = -1.0;
    for (size_t i = 0; i < keep; ++i) {
        const double e = -std::log1p(-uniform());
        const double score = double(p[i]) / e;
        if (score > best_score) {
            best_score = score;
            best = ids[i];
        }
    }
    return best;
}

}  // namespace dsv4::sampling
