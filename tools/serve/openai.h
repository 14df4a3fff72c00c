// Pieces the OpenAI endpoints share (openai.cpp: chat completions, completions, models; responses.cpp).
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "service.h"

namespace dsv4::serve {

// Message content as text: a string, null, or an array of text parts (text, input_text, output_text).
std::string content_text(const json &content, const std::string &where);

// DeepSeek's `thinking` toggle and OpenAI's reasoning effort ("low"/"medium" map to the model's "high").
Thinking thinking_of(const json &body, bool default_on, const std::optional<std::string> &effort);

// Sampling and limits of an OpenAI request (max_output_tokens for the Responses API, else max_completion_tokens
// or max_tokens), the test hook included.
JobRequest openai_job(const Service &s, const json &body, std::vector<int32_t> prompt, bool responses_api);

// Counts the tokens generated while the reply was still reasoning.
struct ReasoningCounter {
    bool thinking;
    int32_t tokens = 0;
    bool ended = false;
    void see(const std::vector<ReplyEvent> &events, size_t n_deltas) {
        if (thinking && !ended) tokens += int32_t(n_deltas);
        for (const ReplyEvent &e : events)
            if (e.kind != ReplyEvent::Kind::reasoning) ended = true;
    }
};

void responses(Service &s, const HttpRequest &req, HttpResponse &res);

}  // namespace dsv4::serve
