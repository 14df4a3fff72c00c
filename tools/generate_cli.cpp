// `dsv4 run` and `dsv4 chat`, written against the public C API only.
#include "generate_cli.h"

#include <dsv4/dsv4.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <utility>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <sys/stat.h>
#include <unistd.h>

namespace dsv4::tools {
namespace {

constexpr const char *kEos = "<｜end▁of▁sentence｜>";  // the EOS token's text, which ends a parsed completion

int report(dsv4_status st) {
    std::fprintf(stderr, "dsv4: %s: %s\n", dsv4_status_name(st), dsv4_last_error_message());
    return 1;
}

struct Session {
    dsv4_model *model = nullptr;
    dsv4_context *ctx = nullptr;
    dsv4_sampler *sampler = nullptr;
    dsv4_tokenizer *own_tok = nullptr;
    const dsv4_tokenizer *tok = nullptr;
    ~Session() {
        dsv4_sampler_free(sampler);
        dsv4_context_free(ctx);
        dsv4_tokenizer_free(own_tok);
        dsv4_model_free(model);
    }
    // Returns false (with a message printed) when no model directory can be found.
    bool open(const RunOptions &o) {
        std::string dir = o.model_dir.empty() ? embedded_model_dir() : o.model_dir;
        if (dir.empty()) {
            std::fprintf(stderr, "dsv4: no --model given and the embedded model (%s) is not installed\n", DSV4_EMBEDDED_MODEL);
            return false;
        }
        if (dsv4_status st = load(o, dir)) return report(st), false;
        return true;
    }
    dsv4_status load(const RunOptions &o, const std::string &dir) {
        dsv4_model_params mp = dsv4_model_default_params();
        if (!o.quiet) mp.progress_callback = show_load_progress;
        mp.repack_weights = !o.no_repack;
        mp.device = o.device.c_str();
        if (dsv4_status st = dsv4_model_load(dir.c_str(), &mp, &model)) return st;
        tok = dsv4_model_tokenizer(model);
        if (!o.tokenizer_path.empty()) {
            if (dsv4_status st = dsv4_tokenizer_load(o.tokenizer_path.c_str(), &own_tok)) return st;
            tok = own_tok;
        }
        dsv4_context_params cp = dsv4_context_default_params();
        cp.n_threads = o.threads;
        cp.n_ctx = o.n_ctx;
        if (dsv4_status st = dsv4_context_create(model, &cp, &ctx)) return st;
        dsv4_sampler_params sp = dsv4_sampler_default_params();
        sp.temperature = o.temperature;
        sp.top_p = o.top_p;
        sp.top_k = o.top_k;
        sp.seed = o.seed;
        return dsv4_sampler_create(&sp, &sampler);
    }
    dsv4_status tokenize(const std::string &text, std::vector<int32_t> &ids) const {
        size_t n = 0;
        dsv4_status st = dsv4_tokenize(tok, text.data(), text.size(), nullptr, 0, &n);
        if (st != DSV4_OK && st != DSV4_ERR_BUFFER_TOO_SMALL) return st;
        ids.resize(n);
        return dsv4_tokenize(tok, text.data(), text.size(), ids.data(), ids.size(), &n);
    }
};

// The reply as the chat format parses it (an assistant message), or nullopt when it does not parse.
std::optional<nlohmann::json> parse_reply(const std::string &text, dsv4_stop_reason stop, bool think) {
    std::string completion = text + (stop == DSV4_STOP_EOS ? kEos : "");
    if (think && completion.find("</think>") == std::string::npos) completion = "</think>" + completion;
    size_t len = 0;
    (void)dsv4_chat_parse(completion.data(), completion.size(), think, nullptr, 0, &len);
    std::string parsed(len + 1, '\0');
    if (dsv4_chat_parse(completion.data(), completion.size(), think, parsed.data(), parsed.size(), &len) != DSV4_OK)
        return std::nullopt;
    parsed.resize(len);
    return nlohmann::json::parse(parsed);
}

std::string chat_prompt(const nlohmann::json &messages, bool think) {
    dsv4_chat_params p = dsv4_chat_default_params();
    p.thinking = think;
    const std::string text = messages.dump();
    size_t len = 0;
    (void)dsv4_chat_encode(text.c_str(), &p, nullptr, 0, &len);
    std::string out(len + 1, '\0');
    if (dsv4_chat_encode(text.c_str(), &p, out.data(), out.size(), &len) != DSV4_OK) return {};
    out.resize(len);
    return out;
}

struct Stream {
    std::string text;
    std::vector<int32_t> tokens;
    dsv4_chat_stream *chat = nullptr;  // set in chat mode: reasoning, answer and tool calls are shown apart
    int shown = -1;                    // the chat event kind printed last
};
void show_event(dsv4_chat_event event, const char *text, size_t len, void *user) {
    auto *s = static_cast<Stream *>(user);
    if (event == DSV4_CHAT_EVENT_TOOL_CALL) {
        std::printf("%s[tool call] %.*s\n", s->shown >= 0 ? "\n" : "", int(len), text);
        s->shown = -1;
    } else {
        if (int(event) != s->shown) {
            std::fputs(event == DSV4_CHAT_EVENT_REASONING ? "[thinking] " : s->shown >= 0 ? "\n[answer] " : "", stdout);
            s->shown = int(event);
        }
        std::fwrite(text, 1, len, stdout);
    }
    std::fflush(stdout);
}
int print_piece(int32_t token, const char *text, size_t len, void *user) {
    auto *s = static_cast<Stream *>(user);
    if (token >= 0) s->tokens.push_back(token);
    s->text.append(text, len);
    if (s->chat) {
        // A completion the parser rejects (a random model's, say) is shown raw from there on.
        if (dsv4_chat_stream_push(s->chat, text, len, show_event, s) != DSV4_OK) {
            dsv4_chat_stream_free(std::exchange(s->chat, nullptr));
            std::fwrite(text, 1, len, stdout);
        }
    } else {
        std::fwrite(text, 1, len, stdout);
    }
    std::fflush(stdout);
    return 1;
}

void print_stats(const dsv4_generate_stats &st) {
    static const char *reasons[] = {"eos", "stop token", "stop string", "max tokens", "callback", "cancelled"};
    std::fprintf(stderr, "\n[%lld prompt tokens: %.1f tok/s; %lld generated: %.2f tok/s; first token after %.3f s; stop: %s]\n",
                 static_cast<long long>(st.n_prompt), st.prefill_tokens_per_second, static_cast<long long>(st.n_generated),
                 st.decode_tokens_per_second, st.time_to_first_token_seconds, reasons[int(st.stop_reason)]);
}

}  // namespace

int show_load_progress(uint64_t done, uint64_t total, void *) {
    std::fprintf(stderr, "\rloading %3d%%", total ? int(100 * done / total) : 100);
    if (done >= total) std::fprintf(stderr, "\n");
    return 1;
}

std::string embedded_model_dir() {
    auto is_model = [](const std::string &dir) {
        struct stat info{};
        return stat((dir + "/config.json").c_str(), &info) == 0;
    };
    std::string exe(4096, '\0');
    const ssize_t n = readlink("/proc/self/exe", exe.data(), exe.size() - 1);
    if (n > 0) {
        exe.resize(size_t(n));
        const std::string installed = exe.substr(0, exe.rfind('/')) + "/../share/dsv4/models/" DSV4_EMBEDDED_MODEL;
        if (is_model(installed)) return installed;
    }
    const std::string source = DSV4_SOURCE_MODELS_DIR "/" DSV4_EMBEDDED_MODEL;
    return is_model(source) ? source : std::string();
}

int run(const RunOptions &o) {
    Session s;
    if (!s.open(o)) return 1;
    std::vector<int32_t> prompt = o.prompt_ids;
    nlohmann::json messages;
    if (!o.messages_path.empty()) {
        std::ifstream in(o.messages_path);
        std::stringstream text;
        text << in.rdbuf();
        messages = nlohmann::json::parse(text.str(), nullptr, false);
        if (!messages.is_array()) {
            std::fprintf(stderr, "dsv4: %s: not a JSON array of chat messages\n", o.messages_path.c_str());
            return 1;
        }
    } else if (!o.prompt.empty() && o.chat) {
        messages = nlohmann::json::array({{{"role", "user"}, {"content", o.prompt}}});
    }
    if (!o.prompt.empty() || !messages.is_null()) {
        if (!s.tok) {
            std::fprintf(stderr, "dsv4: a text prompt needs a tokenizer (MODEL_DIR/tokenizer.json or --tokenizer)\n");
            return 1;
        }
        const std::string text = messages.is_null() ? o.prompt : chat_prompt(messages, o.think);
        if (text.empty()) return report(DSV4_ERR_INVALID_ARGUMENT);
        if (dsv4_status st = s.tokenize(text, prompt)) return report(st);
    }
    if (prompt.empty()) prompt = {0};
    dsv4_generate_params gp = dsv4_generate_default_params();
    gp.max_tokens = o.n_predict;
    Stream stream;
    dsv4_generate_stats st{};
    st.struct_size = sizeof st;
    if (dsv4_status rc = dsv4_generate(s.ctx, s.sampler, s.tok, 0, prompt.data(), int32_t(prompt.size()), &gp, print_piece,
                                       &stream, &st))
        return report(rc);
    if (!s.tok) fmt::print("prompt ids  [{}]\ngenerated   [{}]\n", fmt::join(prompt, ", "), fmt::join(stream.tokens, ", "));
    else if (o.print_ids)
        fmt::print(stderr, "\nprompt ids  [{}]\ngenerated   [{}]", fmt::join(prompt, ", "), fmt::join(stream.tokens, ", "));
    print_stats(st);
    if (o.json) {
        const std::optional<nlohmann::json> reply = parse_reply(stream.text, st.stop_reason, o.think && !messages.is_null());
        if (!reply) {
            std::fprintf(stderr, "dsv4: the reply does not parse as an assistant message of the chat format\n");
            return 1;
        }
        std::printf("\n%s\n", reply->dump().c_str());
    }
    return 0;
}

int chat(const RunOptions &o) {
    Session s;
    if (!s.open(o)) return 1;
    if (!s.tok) {
        std::fprintf(stderr, "dsv4: chat needs a tokenizer (MODEL_DIR/tokenizer.json or --tokenizer)\n");
        return 1;
    }
    nlohmann::json messages = nlohmann::json::array();
    bool think = o.think;
    std::vector<int32_t> cached;  // tokens held by sequence 0
    dsv4_generate_params gp = dsv4_generate_default_params();
    gp.max_tokens = o.n_predict;
    for (std::string line; std::fprintf(stderr, "> "), std::getline(std::cin, line);) {
        if (line == "/exit") break;
        if (line == "/think" || line == "/nothink") {
            think = line == "/think";
            std::fprintf(stderr, "[thinking mode %s]\n", think ? "on" : "off");
            continue;
        }
        if (line == "/clear") {
            messages = nlohmann::json::array();
            cached.clear();
            (void)dsv4_seq_truncate(s.ctx, 0, 0);
            continue;
        }
        messages.push_back({{"role", "user"}, {"content", line}});
        std::vector<int32_t> prompt;
        if (dsv4_status st = s.tokenize(chat_prompt(messages, think), prompt)) return report(st);
        // Reuse the cached prefix: keep the longest common prefix (within the context's rewind capacity).
        size_t common = 0;
        while (common < cached.size() && common < prompt.size() - 1 && cached[common] == prompt[common]) ++common;
        if (dsv4_seq_truncate(s.ctx, 0, int32_t(common)) != DSV4_OK) {
            common = 0;
            (void)dsv4_seq_truncate(s.ctx, 0, 0);
        }
        Stream stream;
        if (dsv4_status rc = dsv4_chat_stream_create(think, &stream.chat)) return report(rc);
        dsv4_generate_stats st{};
        st.struct_size = sizeof st;
        const dsv4_status rc = dsv4_generate(s.ctx, s.sampler, s.tok, 0, prompt.data() + common,
                                             int32_t(prompt.size() - common), &gp, print_piece, &stream, &st);
        if (stream.chat) {
            if (st.stop_reason == DSV4_STOP_EOS) (void)dsv4_chat_stream_push(stream.chat, kEos, std::strlen(kEos), show_event, &stream);
            (void)dsv4_chat_stream_finish(stream.chat, show_event, &stream);  // an unfinished reply: what came is shown
            dsv4_chat_stream_free(stream.chat);
        }
        std::fputc('\n', stdout);  // replies stay apart when stdout is not the terminal
        if (rc) return report(rc);
        print_stats(st);
        std::fprintf(stderr, "[reused %zu of %zu prompt tokens]\n", common, prompt.size());
        cached.assign(prompt.begin(), prompt.end());
        if (!stream.tokens.empty()) cached.insert(cached.end(), stream.tokens.begin(), stream.tokens.end() - 1);
        // The reply joins the conversation as the chat format parses it (content only; reasoning is dropped).
        messages.push_back(parse_reply(stream.text, st.stop_reason, think)
                               .value_or(nlohmann::json{{"role", "assistant"}, {"content", stream.text}}));
    }
    return 0;
}

int bench(const BenchOptions &o) {
    RunOptions ro;
    ro.model_dir = o.model_dir;
    ro.threads = o.threads;
    ro.device = o.device;
    ro.n_ctx = std::max(o.n_prompt + o.n_gen, 1);
    Session s;
    if (!s.open(ro)) return 1;
    dsv4_model_info info{};
    info.struct_size = sizeof info;
    (void)dsv4_model_get_info(s.model, &info);
    std::mt19937 rng(1234);
    std::uniform_int_distribution<int32_t> any_token(0, info.vocab_size - 1);
    std::vector<int32_t> prompt(size_t(o.n_prompt));
    for (int32_t &t : prompt) t = any_token(rng);
    using Clock = std::chrono::steady_clock;
    auto seconds = [](Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); };
    std::vector<double> prefill, decode;
    for (int r = 0; r < o.repetitions; ++r) {
        if (dsv4_status st = dsv4_seq_truncate(s.ctx, 0, 0)) return report(st);
        dsv4_batch b = dsv4_batch_for_sequence(prompt.data(), int32_t(prompt.size()), 0);
        auto t0 = Clock::now();
        if (dsv4_status st = dsv4_decode(s.ctx, &b)) return report(st);
        prefill.push_back(double(o.n_prompt) / seconds(t0));
        t0 = Clock::now();
        for (int i = 0; i < o.n_gen; ++i) {
            const int32_t token = any_token(rng);
            dsv4_batch one = dsv4_batch_for_sequence(&token, 1, 0);
            if (dsv4_status st = dsv4_decode(s.ctx, &one)) return report(st);
        }
        decode.push_back(double(o.n_gen) / seconds(t0));
    }
    auto median = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
    };
    fmt::print("model    {} ({} layers, dim {}, {} experts, {})\n", info.name, info.n_layers, info.dim,
               info.n_routed_experts, dsv4_build_info());
    fmt::print("prefill  {:4} tokens  {:10.1f} tokens/s  (median of {})\n", o.n_prompt, median(prefill), o.repetitions);
    fmt::print("decode   {:4} tokens  {:10.1f} tokens/s  (after the {}-token prompt)\n", o.n_gen, median(decode), o.n_prompt);
    return 0;
}

}  // namespace dsv4::tools
