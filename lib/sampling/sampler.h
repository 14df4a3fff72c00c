// Token sampling (spec §13 semantics, plus the usual filters), as one fixed chain:
//   logit bias → repetition / presence / frequency penalties → greedy if temperature is 0, else
//   top-k → softmax(logits / temperature) in fp32 → top-p → min-p → exponential race (argmax p_i / E_i).
// The exponential race is the reference's sampler (generate.py): equivalent to drawing from p, and exactly
// reproducible from a seed (the generator and its uniform → exponential mapping are fixed here).
#pragma once
#include <cstdint>
#include <deque>
#include <random>
#include <unordered_map>
#include <vector>

namespace dsv4::sampling {

struct SamplerConfig {
    float temperature = 1.0f;        // 0 = greedy
    int32_t top_k = 0;               // 0 = off
    float top_p = 1.0f;              // 1 = off
    float min_p = 0.0f;              // 0 = off
    float repetition_penalty = 1.0f; // 1 = off; > 0
    float presence_penalty = 0.0f;
    float frequency_penalty = 0.0f;
    int32_t penalty_last_n = 64;     // tokens of history the penalties look at; -1 = all
    uint64_t seed = 0;
    std::vector<std::pair<int32_t, float>> logit_bias;
};

class Sampler {
public:
    explicit Sampler(const SamplerConfig &config);
    // Throws DSV4_ERR_INVALID_ARGUMENT for n_vocab < 1 or a logit bias token outside the vocabulary.
    int32_t sample(const float *logits, int32_t n_vocab);
    void accept(int32_t token);
    void reset();
    // The penalised, biased logits (exposed for tests).
    void apply_bias_and_penalties(std::vector<float> &logits) const;

private:
    double uniform();  // [0, 1) from the top 53 bits
    SamplerConfig config_;
    std::mt19937_64 rng_;
    std::deque<int32_t> history_;
};

void validate(const SamplerConfig &config);

}  // namespace dsv4::sampling
