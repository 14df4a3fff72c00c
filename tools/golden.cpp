// `dsv4 eval-golden DIR`: checks the engine against a fixture folder in the dsv4-golden format (golden.json,
// golden.safetensors, optionally layers.safetensors; see shared/fixtures/*/README.md). Every tolerance is read
// from golden.json.
#include "golden.h"

#include <algorithm>
#include <cmath>
#include <fmt/format.h>
#include <map>
#include <set>
#include <sys/stat.h>

#include "backend/cpu/isa.h"
#include "core/error.h"
#include "core/numeric.h"
#include "io/json.h"
#include "io/mapped_file.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "runtime/context.h"

namespace dsv4::tools {
namespace {
using nlohmann::json;

// Tensors of a safetensors file decoded to fp32 / int64 by name.
class TensorFile {
public:
    explicit TensorFile(const std::string &path) : file_(path, true) {
        for (const auto &t : file_.tensors()) by_name_[t.name] = &t;
    }
    bool has(const std::string &name) const { return by_name_.count(name) != 0; }
    const io::TensorView &view(const std::string &name) const {
        auto it = by_name_.find(name);
        if (it == by_name_.end()) fail(DSV4_ERR_FORMAT, "{}: tensor {} not found", file_.name(), name);
        return *it->second;
    }
    std::vector<float> floats(const std::string &name) const {
        const io::TensorView &t = view(name);
        std::vector<float> out(static_cast<size_t>(t.numel()));
        for (size_t i = 0; i < out.size(); ++i) {
            if (t.dtype == core::DType::F32) std::memcpy(&out[i], t.data + 4 * i, 4);
            else if (t.dtype == core::DType::BF16) out[i] = core::load_bf16(t.data, i);
            else fail(DSV4_ERR_FORMAT, "{}: {}: expected F32 or BF16", file_.name(), name);
        }
        return out;
    }
    std::vector<int64_t> ints(const std::string &name) const {
        const io::TensorView &t = view(name);
        std::vector<int64_t> out(static_cast<size_t>(t.numel()));
        for (size_t i = 0; i < out.size(); ++i) {
            if (t.dtype == core::DType::I64) std::memcpy(&out[i], t.data + 8 * i, 8);
            else if (t.dtype == core::DType::I32) {
                int32_t v;
                std::memcpy(&v, t.data + 4 * i, 4);
                out[i] = v;
            } else fail(DSV4_ERR_FORMAT, "{}: {}: expected I64 or I32", file_.name(), name);
        }
        return out;
    }

private:
    io::SafetensorsFile file_;
    std::map<std::string, const io::TensorView *> by_name_;
};

bool file_exists(const std::string &p) {
    struct stat st {};
    return ::stat(p.c_str(), &st) == 0;
}

std::vector<int32_t> to_i32(const json &arr) {
    std::vector<int32_t> v;
    for (const json &x : arr) v.push_back(x.get<int32_t>());
    return v;
}

int64_t argmax(const float *x, int64_t n) { return std::max_element(x, x + n) - x; }

float top_margin(const float *x, int64_t n) {
    float a = -INFINITY, b = -INFINITY;
    for (int64_t i = 0; i < n; ++i) {
        if (x[i] > a) {
            b = a;
            a = x[i];
        } else if (x[i] > b) b = x[i];
    }
    return a - b;
}

// ---- logits ---------------------------------------------------------------------------------------------
struct ClassTolerance {
    double max_abs = 0, max_rms = 0, argmax_margin = 0;
    double sq_sum = 0;
    int64_t count = 0;
};

bool check_logits(const model::Model &model, const json &g, const TensorFile &golden, const GoldenOptions &opt) {
    const json &tol = g.at("tolerance");
    std::map<std::string, ClassTolerance> classes;
    const bool v2 = tol.contains("classes");
    auto class_of = [&](const json &c) { return v2 ? c.at("class").get<std::string>() : std::string("all"); };
    if (v2) {
        for (auto it = tol.at("classes").begin(); it != tol.at("classes").end(); ++it)
            classes[it.key()] = {it->at("max_abs_logit_err").get<double>(), it->at("max_rms_logit_err").get<double>(),
                                 it->at("argmax_margin").get<double>()};
    } else {
        classes["all"] = {tol.at("max_abs_logit_err").get<double>(), tol.at("max_rms_logit_err").get<double>(),
                          tol.at("argmax_margin").get<double>()};
    }
    const int64_t V = model.config().vocab_size;
    bool ok = true;
    runtime::ContextOptions co;
    co.n_ctx = std::max<int>(g.value("max_seq_len_used", 4096), 4096);
    co.n_threads = opt.n_threads;
    for (const json &c : g.at("cases")) {
        const std::string name = c.at("name");
        ClassTolerance &ct = classes.at(class_of(c));
        const std::vector<int32_t> prompt = to_i32(c.at("prompt"));
        for (const char *mode : {"teacher", "greedy"}) {
            const std::vector<int32_t> feed = to_i32(c.at(std::string(mode) + "_tokens"));
            const std::vector<float> ref = golden.floats(name + "." + mode + ".logits");
            if (ref.size() != (feed.size() + 1) * size_t(V))
                fail(DSV4_ERR_FORMAT, "golden.safetensors: {}.{}.logits has {} values, expected {} rows of {}", name, mode,
                     ref.size(), feed.size() + 1, V);
            runtime::Context ctx(model, co);
            double worst = 0;
            int argmax_checked = 0, argmax_bad = 0, greedy_agree = 0;
            for (size_t row = 0; row <= feed.size(); ++row) {
                if (row == 0) ctx.decode(prompt.data(), nullptr, nullptr, 0, nullptr, int32_t(prompt.size()));
                else ctx.decode(&feed[row - 1], nullptr, nullptr, 0, nullptr, 1);
                const float *mine = ctx.logits(-1);
                const float *gold = &ref[row * size_t(V)];
                double row_max = 0;
                for (int64_t v = 0; v < V; ++v) {
                    const double dlt = double(mine[v]) - double(gold[v]);
                    row_max = std::max(row_max, std::fabs(dlt));
                    ct.sq_sum += dlt * dlt;
                }
                ct.count += V;
                worst = std::max(worst, row_max);
                const bool row_ok = row_max <= ct.max_abs;
                const int64_t gold_arg = argmax(gold, V), my_arg = argmax(mine, V);
                if (top_margin(gold, V) > ct.argmax_margin) {
                    ++argmax_checked;
                    if (gold_arg != my_arg) ++argmax_bad;
                }
                if (std::string(mode) == "greedy" && row < feed.size() && my_arg == feed[row]) ++greedy_agree;
                if (opt.verbose)
                    fmt::print("  {}.{} row {:2}: max|dlogit| {:.4f}{} argmax {} (golden {})\n", name, mode, row, row_max,
                               row_ok ? "" : " FAIL", my_arg, gold_arg);
                ok = ok && row_ok;
            }
            ok = ok && argmax_bad == 0;
            fmt::print("{:8} {:7} rows {:2}  max|dlogit| {:.4f} (tol {:.4f})  argmax checked {} mismatched {}", name, mode,
                       feed.size() + 1, worst, ct.max_abs, argmax_checked, argmax_bad);
            if (std::string(mode) == "greedy") fmt::print("  greedy agree {}/{}", greedy_agree, feed.size());
            fmt::print("{}\n", worst <= ct.max_abs && argmax_bad == 0 ? "" : "  FAIL");
        }
    }
    for (auto &[name, ct] : classes) {
        const double rms = std::sqrt(ct.sq_sum / double(std::max<int64_t>(ct.count, 1)));
        const bool rms_ok = rms <= ct.max_rms;
        fmt::print("class {:6} rms dlogit {:.4f} (tol {:.4f}){}\n", name, rms, ct.max_rms, rms_ok ? "" : "  FAIL");
        ok = ok && rms_ok;
    }
    return ok;
}

// ---- layer replay -----------------------------------------------------------------------------------------
struct Recorded {
    std::map<std::string, std::vector<float>> values;  // concatenated rows, fp32
    std::map<std::string, int64_t> cols;
    std::map<std::string, std::vector<std::vector<float>>> ragged;  // per-call rows for index_scores / topk
};

struct Quantity {
    double max_err = 0, sq_err = 0, sq_ref = 0, ref_max = 0;
    int64_t n = 0;
};

bool replay_layers(const model::Model &model, const json &lr, const TensorFile &layers, const GoldenOptions &opt) {
    const io::ModelConfig &cfg = model.config();
    const int hc = lr.at("hc").get<int>(), D = lr.at("dim").get<int>();
    if (hc != cfg.hc_mult || D != cfg.dim) fail(DSV4_ERR_FORMAT, "layers.safetensors: hc/dim do not match the model");
    const int n_layers = lr.at("n_layers").get<int>();
    const json &tol = lr.at("tolerance");
    const json &floors = tol.at("floors").at("margin_rel_to_kth_score");
    const double f_index = floors.at("index").get<double>(), f_gate = floors.at("gate").get<double>();
    const auto be = model.device().make_backend(opt.n_threads);  // the ISA path DSV4_MAX_CPU_ISA selects
    const std::vector<kvcache::LayerGeometry> geo = model.cache_geometry(0);
    bool ok = true;

    for (int l = 0; l < n_layers; ++l) {
        const json &lt = tol.at("layers").at(std::to_string(l));
        const double margin_index = lt.at("margins").value("index", 0.0), margin_gate = lt.at("margins").value("gate", 0.0);
        const io::LayerSpec &spec = cfg.layers[size_t(l)];
        const int k = cfg.n_activated_experts, E = cfg.n_routed_experts;
        std::map<std::string, Quantity> q;
        int index_rows_swapped = 0, index_rows_bad = 0, gate_rows_swapped = 0, gate_rows_bad = 0;

        for (const json &c : lr.at("cases")) {
            const std::string name = c.at("name");
            const int64_t P = c.at("n_prompt").get<int64_t>(), T = P + c.at("n_decode").get<int64_t>();
            const std::vector<int64_t> tok64 = layers.ints(name + ".tokens");
            std::vector<int32_t> tokens(tok64.begin(), tok64.end());
            const std::string L = fmt::format("{}.L{}.", name, l);
            const std::vector<float> h_in = layers.floats(fmt::format("{}.h.{}", name, l));
            const std::vector<float> h_mid_gold = layers.floats(L + "h_mid");
            const int64_t row = int64_t(hc) * D;

            Recorded rec;
            model::Observer obs;
            obs.get = [&](const std::string qn, int, dsv4_dtype, int64_t rows, int64_t cols, const void *data) {
                std::vector<float> v(static_cast<size_t>(rows * cols));
                for (size_t i = 0; i < v.size(); ++i)
                    v[i] = qn == "gate_ids" || qn == "index_topk" ? float(static_cast<const int32_t *>(data)[i])
                                                                  : static_cast<const float *>(data)[i];
                if (qn == "index_scores" || qn == "index_topk") {
                    for (int64_t r = 0; r < rows; ++r)
                        rec.ragged[qn].emplace_back(v.begin() + r * cols, v.begin() + (r + 1) * cols);
                    return;
                }
                auto &dst = rec.values[qn];
                dst.insert(dst.end(), v.begin(), v.end());
                rec.cols[qn] = cols;
            };
            kvcache::LayerCache cache(geo[size_t(l)], model.device().kv_storage());
            std::vector<std::pair<int64_t, int64_t>> calls{{0, P}};
            for (int64_t t = P; t < T; ++t) calls.emplace_back(t, 1);
            std::vector<float> out_mid, out_h;
            for (const auto &call : calls) {
                const int64_t start = call.first, n = call.second;  // not a structured binding: the lambda captures them
                cache.begin();
                // Each sub-layer from the golden input of this call, on the backend's tensors.
                const auto upload = [&](core::DType dtype, int64_t cols, const void *host) {
                    auto t = be->allocate(dtype, n, cols);
                    be->upload(host, t->tensor);
                    return t;
                };
                std::vector<int32_t> positions(static_cast<size_t>(n));
                for (int64_t t = 0; t < n; ++t) positions[size_t(t)] = int32_t(start + t);
                const auto h = upload(core::DType::F32, row, &h_in[size_t(start * row)]);
                const auto h_mid = upload(core::DType::F32, row, &h_mid_gold[size_t(start * row)]);
                const auto tok = upload(core::DType::I32, 1, &tokens[size_t(start)]);
                const auto pos = upload(core::DType::I32, 1, positions.data());
                const auto mid = be->allocate(core::DType::F32, n, row), out = be->allocate(core::DType::F32, n, row);
                const std::vector<backend::Span> spans{{0, n, start}};
                const std::vector<kvcache::LayerCache *> caches{&cache};
                model.attention_sublayer(*be, l, h->tensor, {spans, caches, pos->tensor}, mid->tensor, &obs);
                model.ffn_sublayer(*be, l, h_mid->tensor, tok->tensor, out->tensor, &obs);
            }

            // Discrete choices first: rows whose selection legitimately differs are left out below.
            std::set<int64_t> index_excluded, gate_excluded;
            const std::vector<float> gate_scores_gold = layers.floats(L + "gate_scores");
            const std::vector<int64_t> gate_ids_gold = layers.ints(L + "gate_ids");
            const std::vector<float> &my_ids = rec.values["gate_ids"];
            for (int64_t t = 0; t < T; ++t) {
                std::vector<float> sel(static_cast<size_t>(E));
                for (int e = 0; e < E; ++e)
                    sel[size_t(e)] = gate_scores_gold[size_t(t * E + e)] + (spec.hash_routed ? 0.0f : model.weights().layers[size_t(l)].gate_bias[size_t(e)]);
                std::set<int64_t> gold_set(&gate_ids_gold[size_t(t * k)], &gate_ids_gold[size_t(t * k)] + k), mine;
                for (int j = 0; j < k; ++j) mine.insert(int64_t(my_ids[size_t(t * k + j)]));
                if (mine == gold_set) continue;
                bool allowed = !spec.hash_routed;
                std::vector<float> sorted = sel;
                std::sort(sorted.begin(), sorted.end(), std::greater<float>());
                const double tk = sorted[size_t(k - 1)], m = std::max(margin_gate, f_gate * std::fabs(tk));
                for (int64_t e : mine)
                    if (!gold_set.count(e)) allowed = allowed && std::fabs(sel[size_t(e)] - tk) <= m;
                for (int64_t e : gold_set)
                    if (!mine.count(e)) allowed = allowed && std::fabs(sel[size_t(e)] - tk) <= m;
                gate_excluded.insert(t);
                allowed ? ++gate_rows_swapped : ++gate_rows_bad;
            }
            if (spec.compress_ratio == 4) {
                const io::TensorView &tv = layers.view(L + "index_topk");
                const int64_t K = tv.shape[1], NE = layers.view(L + "index_scores").shape[1];
                const std::vector<int64_t> topk_gold = layers.ints(L + "index_topk");
                const std::vector<float> scores_gold = layers.floats(L + "index_scores");
                const auto &my_topk = rec.ragged["index_topk"];
                const auto &my_scores = rec.ragged["index_scores"];
                for (int64_t t = 0; t < T; ++t) {
                    std::set<int64_t> gold_set, mine;
                    for (int64_t j = 0; j < K; ++j)
                        if (topk_gold[size_t(t * K + j)] >= 0) gold_set.insert(topk_gold[size_t(t * K + j)]);
                    for (float v : my_topk[size_t(t)])
                        if (v >= 0) mine.insert(int64_t(v));
                    // index scores: finite golden entries compared, -inf pattern must match
                    const std::vector<float> &ms = my_scores[size_t(t)];
                    for (int64_t j = 0; j < NE; ++j) {
                        const float g = scores_gold[size_t(t * NE + j)];
                        const float y = j < int64_t(ms.size()) ? ms[size_t(j)] : -INFINITY;
                        Quantity &qq = q["index_scores"];
                        if (std::isinf(g) != std::isinf(y)) {
                            qq.max_err = INFINITY;
                            continue;
                        }
                        if (std::isinf(g)) continue;
                        qq.max_err = std::max(qq.max_err, std::fabs(double(y) - g));
                        qq.sq_err += (double(y) - g) * (double(y) - g);
                        qq.sq_ref += double(g) * g;
                        ++qq.n;
                    }
                    if (mine == gold_set) continue;
                    std::vector<float> finite;
                    for (int64_t j = 0; j < NE; ++j)
                        if (std::isfinite(scores_gold[size_t(t * NE + j)])) finite.push_back(scores_gold[size_t(t * NE + j)]);
                    std::sort(finite.begin(), finite.end(), std::greater<float>());
                    bool allowed = mine.size() == gold_set.size() && !finite.empty();
                    if (allowed) {
                        const double tk = finite[gold_set.size() - 1], m = std::max(margin_index, f_index * std::fabs(tk));
                        auto near = [&](int64_t e) { return std::fabs(scores_gold[size_t(t * NE + e)] - tk) <= m; };
                        for (int64_t e : mine)
                            if (!gold_set.count(e)) allowed = allowed && e < NE && near(e);
                        for (int64_t e : gold_set)
                            if (!mine.count(e)) allowed = allowed && near(e);
                    }
                    index_excluded.insert(t);
                    allowed ? ++index_rows_swapped : ++index_rows_bad;
                }
            }

            // Continuous quantities.
            auto compare = [&](const std::string &qn, const std::string &gold_name, const std::set<int64_t> &excluded) {
                if (!layers.has(L + gold_name)) return;
                const std::vector<float> gold = layers.floats(L + gold_name);
                const std::vector<float> &mine = rec.values[qn];
                if (mine.size() != gold.size()) {
                    fmt::print("layer {} {}: {} values recorded, golden has {}  FAIL\n", l, qn, mine.size(), gold.size());
                    q[qn].max_err = INFINITY;
                    return;
                }
                const int64_t cols = rec.cols[qn], rows = int64_t(gold.size()) / std::max<int64_t>(cols, 1);
                Quantity &qq = q[qn];
                for (int64_t r = 0; r < rows; ++r) {
                    const bool skip = excluded.count(r) != 0;
                    for (int64_t cc = 0; cc < cols; ++cc) {
                        const double g = gold[size_t(r * cols + cc)], y = mine[size_t(r * cols + cc)];
                        qq.sq_ref += g * g;
                        qq.ref_max = std::max(qq.ref_max, std::fabs(g));
                        ++qq.n;
                        if (skip) continue;
                        qq.max_err = std::max(qq.max_err, std::fabs(y - g));
                        qq.sq_err += (y - g) * (y - g);
                    }
                }
            };
            // The golden h.<l+1> is the FFN sub-layer's output streams.
            const std::string next_h = fmt::format("{}.h.{}", name, l + 1);
            const std::set<int64_t> none;
            for (const char *qn : {"kv", "hc_attn_pre", "hc_attn_post", "hc_attn_comb", "hc_ffn_pre", "hc_ffn_post",
                                   "hc_ffn_comb", "gate_scores", "kv_comp", "index_kv_comp"})
                compare(qn, qn, none);
            compare("attn_out", "attn_out", index_excluded);
            compare("h_mid", "h_mid", index_excluded);
            compare("ffn_out", "ffn_out", gate_excluded);
            {
                // h_out against h.<l+1>
                const std::vector<float> gold = layers.floats(next_h);
                const std::vector<float> &mine = rec.values["h_out"];
                Quantity &qq = q["h_out"];
                const int64_t rows = T;
                for (int64_t r = 0; r < rows; ++r)
                    for (int64_t cc = 0; cc < row; ++cc) {
                        const double g = gold[size_t(r * row + cc)], y = mine[size_t(r * row + cc)];
                        qq.sq_ref += g * g;
                        ++qq.n;
                        if (gate_excluded.count(r)) continue;
                        qq.max_err = std::max(qq.max_err, std::fabs(y - g));
                        qq.sq_err += (y - g) * (y - g);
                    }
            }
            {
                // gate weights per expert id, rows with the same selection only
                const std::vector<float> gold_w = layers.floats(L + "gate_weights");
                const std::vector<float> &my_w = rec.values["gate_weights"];
                Quantity &qq = q["gate_weights"];
                for (int64_t t = 0; t < T; ++t) {
                    for (int j = 0; j < k; ++j) qq.sq_ref += double(gold_w[size_t(t * k + j)]) * gold_w[size_t(t * k + j)];
                    qq.n += k;
                    if (gate_excluded.count(t)) continue;
                    for (int j = 0; j < k; ++j) {
                        const int64_t id = gate_ids_gold[size_t(t * k + j)];
                        for (int jj = 0; jj < k; ++jj)
                            if (int64_t(my_ids[size_t(t * k + jj)]) == id) {
                                const double d = double(my_w[size_t(t * k + jj)]) - gold_w[size_t(t * k + j)];
                                qq.max_err = std::max(qq.max_err, std::fabs(d));
                                qq.sq_err += d * d;
                            }
                    }
                }
            }
        }

        bool layer_ok = index_rows_bad == 0 && gate_rows_bad == 0;
        fmt::print("layer {} ({}): router rows swapped within margin {}, outside {}; index rows swapped within margin {}, outside {}{}\n",
                   l, spec.compress_ratio == 0 ? "window" : spec.compress_ratio == 4 ? "CSA" : "HCA", gate_rows_swapped,
                   gate_rows_bad, index_rows_swapped, index_rows_bad, layer_ok ? "" : "  FAIL");
        for (auto it = lt.at("quantities").begin(); it != lt.at("quantities").end(); ++it) {
            const std::string qn = it.key();
            const Quantity &qq = q[qn];
            const double rms_ref = std::sqrt(qq.sq_ref / double(std::max<int64_t>(qq.n, 1)));
            const double max_rel = qq.max_err / rms_ref, rms_rel = std::sqrt(qq.sq_err / double(std::max<int64_t>(qq.n, 1))) / rms_ref;
            const double tmax = it->at("max_rel").get<double>(), trms = it->at("rms_rel").get<double>();
            const bool q_ok = qq.n > 0 && max_rel <= tmax && rms_rel <= trms;
            layer_ok = layer_ok && q_ok;
            if (opt.verbose || !q_ok)
                fmt::print("  {:14} max_rel {:.3g} / {:.3g}  rms_rel {:.3g} / {:.3g}  ({:.2f} of tol){}\n", qn, max_rel, tmax,
                           rms_rel, trms, std::max(max_rel / tmax, rms_rel / trms), q_ok ? "" : "  FAIL");
        }
        double worst = 0;
        std::string worst_name;
        for (auto it = lt.at("quantities").begin(); it != lt.at("quantities").end(); ++it) {
            const Quantity &qq = q[it.key()];
            const double rms_ref = std::sqrt(qq.sq_ref / double(std::max<int64_t>(qq.n, 1)));
            const double ratio = std::max(qq.max_err / rms_ref / it->at("max_rel").get<double>(),
                                          std::sqrt(qq.sq_err / double(std::max<int64_t>(qq.n, 1))) / rms_ref / it->at("rms_rel").get<double>());
            if (ratio > worst) {
                worst = ratio;
                worst_name = it.key();
            }
        }
        fmt::print("layer {}: worst quantity {} at {:.2f} of its tolerance{}\n", l, worst_name, worst, layer_ok ? "" : "  FAIL");
        ok = ok && layer_ok;
    }
    return ok;
}

}  // namespace

bool eval_golden(const std::string &dir, const GoldenOptions &opt) {
    const json g = io::parse_json(io::read_text_file(dir + "/golden.json"), dir + "/golden.json");
    const std::string format = g.value("format", "");
    if (format.rfind("dsv4-golden/", 0) != 0) fail(DSV4_ERR_FORMAT, "{}/golden.json: unknown format '{}'", dir, format);
    model::LoadOptions lo;
    lo.device = opt.device;
    auto model = model::Model::load(dir + "/" + g.value("model_dir", "model"), lo);
    fmt::print("fixture {} ({} cases), device {}\n", g.value("fixture", dir), g.at("cases").size(), model->device_name());
    bool ok = true;
    if (!opt.layers_only) {
        TensorFile golden(dir + "/golden.safetensors");
        ok = check_logits(*model, g, golden, opt) && ok;
    }
    if (g.contains("layer_replay") && !opt.logits_only) {
        const json &lr = g.at("layer_replay");
        const std::string path = dir + "/" + lr.value("file", "layers.safetensors");
        if (file_exists(path)) {
            TensorFile layers(path);
            ok = replay_layers(*model, lr, layers, opt) && ok;
        }
    }
    fmt::print("{}\n", ok ? "eval-golden: PASS" : "eval-golden: FAIL");
    return ok;
}

}  // namespace dsv4::tools
