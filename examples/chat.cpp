// chat.cpp: a multi-turn chat through the header-only C++ layer (dsv4.hpp). One user turn per stdin line; the
// reply streams through the dsv4::Generation iterator; each turn evaluates only the tokens that are not cached
// yet (the conversation so far stays in the sequence).
// Usage: dsv4_chat MODEL_DIR [TOKENIZER_JSON] [MAX_TOKENS]
#include <dsv4/dsv4.hpp>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>

namespace {

// JSON string literal of s (the chat encoder takes OpenAI-style JSON messages).
std::string json_string(const std::string &s) {
    std::string out = "\"";
    for (unsigned char c : s) {
        if (c == '"' || c == '\\') out += '\\', out += char(c);
        else if (c < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
        } else out += char(c);
    }
    return out + "\"";
}

}  // namespace

int main(int argc, char **argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL_DIR [TOKENIZER_JSON] [MAX_TOKENS]\n", argv[0]);
        return 2;
    }
    try {
        dsv4::Model model(argv[1]);
        const dsv4::Tokenizer tok = argc > 2 ? dsv4::Tokenizer::load(argv[2]) : model.tokenizer();
        dsv4::Context ctx(model);
        dsv4::Sampler sampler;  // greedy
        dsv4_generate_params gp = dsv4_generate_default_params();
        gp.max_tokens = argc > 3 ? std::atoi(argv[3]) : 32;

        std::string messages;  // JSON objects of the conversation so far, comma-separated
        std::vector<int32_t> cached;  // the tokens sequence 0 holds
        for (std::string line; std::getline(std::cin, line);) {
            messages += (messages.empty() ? "" : ",") + std::string("{\"role\":\"user\",\"content\":") +
                        json_string(line) + "}";
            const std::vector<int32_t> prompt = tok.encode(dsv4::chat_encode("[" + messages + "]"));
            // Keep the cached prefix the new prompt shares; evaluate the rest.
            size_t common = 0;
            while (common < cached.size() && common + 1 < prompt.size() && cached[common] == prompt[common]) ++common;
            ctx.seq_truncate(0, int32_t(common));
            std::string reply;
            std::cout << "assistant: " << std::flush;
            dsv4::Generation gen(ctx, sampler, tok, std::span(prompt).subspan(common), gp);
            std::vector<int32_t> generated;
            for (const dsv4::Piece &piece : gen) {
                if (piece.token >= 0) generated.push_back(piece.token);
                reply += piece.text;
                std::cout << piece.text << std::flush;
            }
            const dsv4_generate_stats st = gen.stats();
            std::cout << "\n[" << st.n_prompt << " new prompt tokens of " << prompt.size() << ", " << st.n_generated
                      << " generated, " << int(st.decode_tokens_per_second) << " tokens/s]\n";
            cached = prompt;
            cached.insert(cached.end(), generated.begin(), generated.end());
            cached.resize(size_t(ctx.seq_length()));
            messages += ",{\"role\":\"assistant\",\"content\":" + json_string(reply) + "}";
        }
        ctx.seq_truncate(0, 1 << 30);  // past the end: throws, showing the error path
    } catch (const dsv4::Error &e) {
        std::printf("caught %s\n", e.what());
        return e.status() == DSV4_ERR_INVALID_ARGUMENT_POSITION ? 0 : 1;
    }
    return 1;
}
