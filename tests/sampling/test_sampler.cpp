// Sampling: exact tests for the deterministic parts, chi-square tests against known distributions for the
// random ones, and seed reproducibility.
#include <catch2/catch.hpp>
#include <cmath>
#include <dsv4/dsv4.h>
#include <vector>

#include "sampling/sampler.h"

using dsv4::sampling::Sampler;
using dsv4::sampling::SamplerConfig;

namespace {
// Pearson chi-square of observed counts against expected probabilities (all expected > 0).
double chi_square(const std::vector<int> &counts, const std::vector<double> &p, int n) {
    double x2 = 0;
    for (size_t i = 0; i < p.size(); ++i) {
        const double e = p[i] * n;
        x2 += (counts[i] - e) * (counts[i] - e) / e;
    }
    return x2;
}
std::vector<double> softmax(const std::vector<float> &l, double t) {
    std::vector<double> p(l.size());
    double mx = *std::max_element(l.begin(), l.end()), s = 0;
    for (size_t i = 0; i < l.size(); ++i) s += (p[i] = std::exp((l[i] - mx) / t));
    for (double &v : p) v /= s;
    return p;
}
std::vector<int> draw(Sampler &s, const std::vector<float> &logits, int n) {
    std::vector<int> counts(logits.size(), 0);
    for (int i = 0; i < n; ++i) ++counts[size_t(s.sample(logits.data(), int32_t(logits.size())))];
    return counts;
}
const std::vector<float> kLogits = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 0.0f};
}  // namespace

TEST_CASE("greedy, top-k 1 and ties are exact", "[sampling]") {
    SamplerConfig c;
    c.temperature = 0;
    Sampler greedy(c);
    CHECK(greedy.sample(kLogits.data(), 6) == 4);
    c.temperature = 1;
    c.top_k = 1;
    Sampler k1(c);
    for (int i = 0; i < 100; ++i) REQUIRE(k1.sample(kLogits.data(), 6) == 4);
    const std::vector<float> tie = {1.0f, 5.0f, 5.0f};
    CHECK(greedy.sample(tie.data(), 3) == 1);  // lowest id among equal maxima
}

TEST_CASE("temperature sampling matches softmax(logits / T) (chi-square)", "[sampling]") {
    for (float t : {1.0f, 0.5f, 2.0f}) {
        SamplerConfig c;
        c.temperature = t;
        c.seed = 12345;
        Sampler s(c);
        const int n = 60000;
        const auto counts = draw(s, kLogits, n);
        // 5 degrees of freedom: P(chi2 > 20.52) = 0.001
        INFO("T = " << t);
        CHECK(chi_square(counts, softmax(kLogits, t), n) < 20.52);
    }
}

TEST_CASE("top-k, top-p and min-p keep exactly the right support, in proportion", "[sampling]") {
    const auto p = softmax(kLogits, 1.0);  // order by probability: 4, 1, 0, 2, 5, 3
    SamplerConfig c;
    c.seed = 7;
    c.top_k = 3;
    Sampler topk(c);
    auto counts = draw(topk, kLogits, 30000);
    CHECK(counts[2] + counts[3] + counts[5] == 0);
    std::vector<double> q = {p[0], p[1], p[4]};
    double s = q[0] + q[1] + q[2];
    for (double &v : q) v /= s;
    // 2 degrees of freedom: P(chi2 > 13.82) = 0.001
    CHECK(chi_square({counts[0], counts[1], counts[4]}, q, 30000) < 13.82);

    c.top_k = 0;
    c.top_p = float(p[4] + p[1]) - 1e-4f;  // the nucleus is tokens 4 and 1
    Sampler topp(c);
    counts = draw(topp, kLogits, 20000);
    CHECK(counts[0] + counts[2] + counts[3] + counts[5] == 0);
    CHECK(counts[4] > 0);
    CHECK(counts[1] > 0);

    c.top_p = 1;
    c.min_p = 0.3f;  // keeps tokens with p >= 0.3 p_max: 4 (1.0), 1 (e^-1 = 0.37)
    Sampler minp(c);
    counts = draw(minp, kLogits, 20000);
    CHECK(counts[0] + counts[2] + counts[3] + counts[5] == 0);
    CHECK(counts[1] > 0);
}

TEST_CASE("penalties and logit bias change the logits exactly", "[sampling]") {
    SamplerConfig c;
    c.repetition_penalty = 2.0f;
    c.presence_penalty = 0.5f;
    c.frequency_penalty = 0.25f;
    c.logit_bias = {{0, 10.0f}};
    Sampler s(c);
    s.accept(4);
    s.accept(4);
    s.accept(3);
    std::vector<float> l = kLogits;
    s.apply_bias_and_penalties(l);
    CHECK(l[0] == 11.0f);                         // bias only
    CHECK(l[4] == 3.0f / 2.0f - 0.5f - 0.5f);     // positive: divided; presence once; frequency x2
    CHECK(l[3] == -1.0f * 2.0f - 0.5f - 0.25f);   // negative: multiplied
    CHECK(l[1] == 2.0f);                          // unseen: unchanged
    c.penalty_last_n = 1;
    Sampler recent(c);
    recent.accept(4);
    recent.accept(3);
    l = kLogits;
    recent.apply_bias_and_penalties(l);
    CHECK(l[4] == 3.0f);  // outside the window
}

TEST_CASE("a seed reproduces a run exactly; reset restarts it", "[sampling]") {
    dsv4_sampler_params p = dsv4_sampler_default_params();
    p.seed = 99;
    p.temperature = 1.3f;
    p.top_p = 0.95f;
    dsv4_sampler *a = nullptr, *b = nullptr;
    REQUIRE(dsv4_sampler_create(&p, &a) == DSV4_OK);
    REQUIRE(dsv4_sampler_create(&p, &b) == DSV4_OK);
    std::vector<int32_t> ra, rb, rc;
    for (int i = 0; i < 200; ++i) {
        int32_t x, y;
        REQUIRE(dsv4_sampler_sample_logits(a, kLogits.data(), 6, &x) == DSV4_OK);
        REQUIRE(dsv4_sampler_sample_logits(b, kLogits.data(), 6, &y) == DSV4_OK);
        ra.push_back(x);
        rb.push_back(y);
    }
    CHECK(ra == rb);
    dsv4_sampler_reset(a);
    for (int i = 0; i < 200; ++i) {
        int32_t x;
        REQUIRE(dsv4_sampler_sample_logits(a, kLogits.data(), 6, &x) == DSV4_OK);
        rc.push_back(x);
    }
    CHECK(rc == ra);
    p.seed = 100;
    dsv4_sampler *c = nullptr;
    REQUIRE(dsv4_sampler_create(&p, &c) == DSV4_OK);
    std::vector<int32_t> other;
    for (int i = 0; i < 200; ++i) {
        int32_t x;
        REQUIRE(dsv4_sampler_sample_logits(c, kLogits.data(), 6, &x) == DSV4_OK);
        other.push_back(x);
    }
    CHECK(other != ra);
    dsv4_sampler_free(a);
    dsv4_sampler_free(b);
    dsv4_sampler_free(c);
}

TEST_CASE("invalid sampler parameters are named", "[sampling]") {
    dsv4_sampler_params p = dsv4_sampler_default_params();
    dsv4_sampler *s = nullptr;
    p.top_p = 0;
    CHECK(dsv4_sampler_create(&p, &s) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK_THAT(std::string(dsv4_last_error_message()), Catch::Contains("top_p"));
    p = dsv4_sampler_default_params();
    p.temperature = -1;
    CHECK(dsv4_sampler_create(&p, &s) == DSV4_ERR_INVALID_ARGUMENT);
    p = dsv4_sampler_default_params();
    const int32_t tok = 99;
    const float bias = 1;
    p.logit_bias_tokens = &tok;
    p.logit_bias_values = &bias;
    p.n_logit_bias = 1;
    REQUIRE(dsv4_sampler_create(&p, &s) == DSV4_OK);
    int32_t out;
    CHECK(dsv4_sampler_sample_logits(s, kLogits.data(), 6, &out) == DSV4_ERR_INVALID_ARGUMENT);
    CHECK_THAT(std::string(dsv4_last_error_message()), Catch::Contains("logit bias token 99"));
    dsv4_sampler_free(s);
}
