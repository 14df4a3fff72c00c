// `dsv4 run` and `dsv4 chat`, written against the public C API only.
#include "generate_cli.h"

#include <dsv4/dsv4.h>

#include <cstdio>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sys/stat.h>

namespace dsv4::tools {
namespace {

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
    dsv4_status open(const RunOptions &o) {
        if (dsv4_status st = dsv4_model_load(o.model_dir.c_str(), nullptr, &model)) return st;
        tok = dsv4_model_tokenizer(model);
        if (!o.tokenizer_path.empty()) {
            if (dsv4_status st = dsv4_tokenizer_load(o.tokenizer_path.c_str(), &own_tok)) return st;
            tok = own_tok;
        }
        dsv4_context_params cp = dsv4_context_default_params();
        cp.n_threads = o.threads;
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
};
int print_piece(int32_t token, const char *text, size_t len, void *user) {
    auto *s = static_cast<Stream *>(user);
    if (token >= 0) s->tokens.push_back(token);
    s->text.append(text, len);
    std::fwrite(text, 1, len, stdout);
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

int run(const RunOptions &o) {
    Session s;
    if (dsv4_status st = s.open(o)) return report(st);
    std::vector<int32_t> prompt = o.prompt_ids;
    if (!o.prompt.empty()) {
        if (!s.tok) {
            std::fprintf(stderr, "dsv4: a text prompt needs a tokenizer (MODEL_DIR/tokenizer.json or --tokenizer)\n");
            return 1;
        }
        const std::string text = o.chat ? chat_prompt(nlohmann::json::array({{{"role", "user"}, {"content", o.prompt}}}), o.think)
                                        : o.prompt;
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
    print_stats(st);
    return 0;
}

int chat(const RunOptions &o) {
    Session s;
    if (dsv4_status st = s.open(o)) return report(st);
    if (!s.tok) {
        std::fprintf(stderr, "dsv4: chat needs a tokenizer (MODEL_DIR/tokenizer.json or --tokenizer)\n");
        return 1;
    }
    nlohmann::json messages = nlohmann::json::array();
    std::vector<int32_t> cached;  // tokens held by sequence 0
    dsv4_generate_params gp = dsv4_generate_default_params();
    gp.max_tokens = o.n_predict;
    for (std::string line; std::fprintf(stderr, "> "), std::getline(std::cin, line);) {
        if (line == "/exit") break;
        if (line == "/clear") {
            messages = nlohmann::json::array();
            cached.clear();
            (void)dsv4_seq_truncate(s.ctx, 0, 0);
            continue;
        }
        messages.push_back({{"role", "user"}, {"content", line}});
        std::vector<int32_t> prompt;
        if (dsv4_status st = s.tokenize(chat_prompt(messages, o.think), prompt)) return report(st);
        // Reuse the cached prefix: keep the longest common prefix (within the context's rewind capacity).
        size_t common = 0;
        while (common < cached.size() && common < prompt.size() - 1 && cached[common] == prompt[common]) ++common;
        if (dsv4_seq_truncate(s.ctx, 0, int32_t(common)) != DSV4_OK) {
            common = 0;
            (void)dsv4_seq_truncate(s.ctx, 0, 0);
        }
        Stream stream;
        dsv4_generate_stats st{};
        st.struct_size = sizeof st;
        if (dsv4_status rc = dsv4_generate(s.ctx, s.sampler, s.tok, 0, prompt.data() + common, int32_t(prompt.size() - common),
                                           &gp, print_piece, &stream, &st))
            return report(rc);
        print_stats(st);
        std::fprintf(stderr, "[reused %zu of %zu prompt tokens]\n", common, prompt.size());
        cached.assign(prompt.begin(), prompt.end());
        if (!stream.tokens.empty()) cached.insert(cached.end(), stream.tokens.begin(), stream.tokens.end() - 1);
        // The reply joins the conversation as the chat format parses it (content only; reasoning is dropped).
        std::string completion = stream.text + (st.stop_reason == DSV4_STOP_EOS ? "<｜end▁of▁sentence｜>" : "");
        if (o.think && completion.find("</think>") == std::string::npos) completion = "</think>" + completion;
        size_t len = 0;
        (void)dsv4_chat_parse(completion.data(), completion.size(), o.think, nullptr, 0, &len);
        std::string parsed(len + 1, '\0');
        if (dsv4_chat_parse(completion.data(), completion.size(), o.think, parsed.data(), parsed.size(), &len) == DSV4_OK) {
            parsed.resize(len);
            messages.push_back(nlohmann::json::parse(parsed));
        } else {
            messages.push_back({{"role", "assistant"}, {"content", stream.text}});
        }
    }
    return 0;
}

}  // namespace dsv4::tools
