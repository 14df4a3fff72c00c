// DeepSeek-V4 semantics shared by the server's APIs: a completion streamed into reasoning, content and tool calls
// (through the library's chat stream parser), and the memory of each tool-calling turn, so a client that drops
// the reasoning still gets the prompt the model expects.
#pragma once
#include <dsv4/dsv4.h>

#include <cstdint>
#include <list>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine.h"

namespace dsv4::serve {

using json = nlohmann::ordered_json;

// JSON text of a value; invalid UTF-8 (a model may emit any bytes) becomes U+FFFD instead of throwing.
std::string dump(const json &value);

// A fresh id: prefix + 24 random alphanumerics ("call_", "toolu_", "chatcmpl-", "msg_", "resp_").
std::string make_id(const std::string &prefix);

struct ToolCall {
    std::string id, name, arguments;  // arguments: a JSON object's text as the model wrote it
};

// A call arrives as call_begin (id, name), call_arguments fragments (text) as its parameters complete, then
// tool_call (the whole call, the same id; its arguments are the fragments concatenated).
struct ReplyEvent {
    enum class Kind { reasoning, content, call_begin, call_arguments, tool_call } kind;
    std::string text;   // reasoning / content delta, or an arguments fragment
    ToolCall call;      // call_begin (id, name), call_arguments (id), tool_call
};

// Turns the generated text of one request into reply events. DSML never reaches content, reasoning or arguments:
// text that may begin a marker is held back; a completion cut short (length, stop string, cancel) drops its
// unfinished markup; malformed markup ends the reply at the last good event. A call of a tool that was not
// offered (or with tool_choice "none") is not reported as a call: it is left as content text, without the
// markup, as name(arguments).
// Calls beyond max_calls (1 when a client turns parallel tool calls off) are dropped.
class ReplyParser {
public:
    ReplyParser(bool thinking, std::set<std::string> tool_names, std::string id_prefix, size_t max_calls = SIZE_MAX);
    ~ReplyParser();
    ReplyParser(const ReplyParser &) = delete;
    ReplyParser &operator=(const ReplyParser &) = delete;

    void push(const std::string &text, std::vector<ReplyEvent> &out);
    void finish(Finish how, std::vector<ReplyEvent> &out);
    bool malformed() const { return malformed_; }
    // Malformed markup broke the reply off inside a call already announced (call_begin): the client holds a
    // call that will never be complete.
    bool dangling() const { return dangling_; }

private:
    static void on_event(dsv4_chat_event event, const char *text, size_t len, void *user_data);
    void broke_off();
    dsv4_chat_stream *stream_ = nullptr;
    std::set<std::string> tool_names_;
    std::string id_prefix_;
    size_t calls_ = 0, max_calls_;  // calls reported, and the most that may be
    ToolCall writing_;              // the call being written (id set if it is reported)
    std::vector<ReplyEvent> *out_ = nullptr;
    bool malformed_ = false, dangling_ = false;
};

// Text the prompt ends with to force a tool call (tool_choice "required" / a named tool): the opening of a
// tool-call block, with the invoke's name when one is named, which the reply parser is then fed first as if the
// model had written it. Empty in thinking mode: the reasoning comes first, so there the choice only instructs.
std::string forced_call_prefix(bool thinking, bool required, const std::string &name);

// The reasoning and arguments of assistant turns that called tools, by tool-call id (bounded, least recently used
// forgotten first). Clients often send such a turn back without its reasoning_content; the model expects it.
class TurnMemory {
public:
    explicit TurnMemory(size_t capacity = 4096) : capacity_(capacity) {}
    void remember(const std::vector<ToolCall> &calls, const std::string &reasoning);
    // Fills a missing or empty reasoning_content of assistant messages with tool_calls, and replaces arguments
    // that parse to the same JSON as the remembered ones by the model's own text.
    void restore(json &messages);

private:
    struct Turn {
        std::string reasoning;
        std::unordered_map<std::string, std::string> arguments;  // id -> arguments as generated
    };
    std::mutex mu_;
    size_t capacity_;
    std::list<std::pair<std::string, Turn>> lru_;  // id of the turn's first call -> turn
    std::unordered_map<std::string, std::list<std::pair<std::string, Turn>>::iterator> by_id_;
};

}  // namespace dsv4::serve
