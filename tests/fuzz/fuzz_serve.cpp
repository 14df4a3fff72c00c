// libFuzzer target: dsv4 serve's request parsing and reply parsing. A body either renders to a prompt through each
// chat API (OpenAI chat completions, Responses, Anthropic messages) or is refused with ApiError 400 or a JSON type
// error (which the endpoints' guard also answers with 400); any bytes as a completion, split anywhere, give reply
// events without markup in content or reasoning, or a malformed flag.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "serve/reply.h"
#include "serve/service.h"

using namespace dsv4::serve;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const std::string text(reinterpret_cast<const char *>(data), size);
    static Service service;
    try {
        const json body = parse_body(text);
        for (auto render : {chat_completions_prompt, responses_prompt, messages_prompt}) {
            try {
                if (render(service, body).empty()) std::abort();
            } catch (const ApiError &e) {
                if (e.status != 400) std::abort();
            } catch (const json::exception &) {
                // a field of the wrong JSON type read with value(): the endpoints' guard answers 400 to it too
            }
        }
    } catch (const ApiError &) {
    }
    const size_t split = size ? data[0] % (size + 1) : 0;
    for (bool thinking : {false, true}) {
        ReplyParser parser(thinking, {"get_weather"}, "call_");
        std::vector<ReplyEvent> events;
        parser.push(text.substr(0, split), events);
        parser.push(text.substr(split), events);
        parser.finish(Finish::stop, events);
        for (const ReplyEvent &e : events)
            if (e.kind == ReplyEvent::Kind::reasoning && e.text.find("｜DSML｜") != std::string::npos) std::abort();
    }
    return 0;
}
