#include "reply.h"

#include <random>
#include <utility>

namespace dsv4::serve {
namespace {

const std::string kEosText = "<｜end▁of▁sentence｜>";
const std::string kInvoke = "<｜DSML｜invoke";

}  // namespace

std::string dump(const json &value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string make_id(const std::string &prefix) {
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    std::string id = prefix;
    for (int i = 0; i < 24; ++i) id += alphabet[rng() % (sizeof alphabet - 1)];
    return id;
}

ReplyParser::ReplyParser(bool thinking, std::set<std::string> tool_names, std::string id_prefix, size_t max_calls)
    : tool_names_(std::move(tool_names)), id_prefix_(std::move(id_prefix)), max_calls_(max_calls) {
    if (dsv4_chat_stream_create_v2(thinking ? 1 : 0, DSV4_CHAT_STREAM_PARTIAL_CALLS, &stream_) != DSV4_OK) malformed_ = true;
}

ReplyParser::~ReplyParser() { dsv4_chat_stream_free(stream_); }

void ReplyParser::on_event(dsv4_chat_event event, const char *text, size_t len, void *user_data) {
    auto &self = *static_cast<ReplyParser *>(user_data);
    ReplyEvent e;
    if (event == DSV4_CHAT_EVENT_TOOL_CALL_BEGIN) {  // every call is announced (DSV4_CHAT_STREAM_PARTIAL_CALLS)
        self.writing_ = {"", std::string(text, len), ""};
        if (!self.tool_names_.count(self.writing_.name) || self.calls_ >= self.max_calls_) return;  // not reported
        ++self.calls_;
        self.writing_.id = make_id(self.id_prefix_);
        e.kind = ReplyEvent::Kind::call_begin;
        e.call = self.writing_;
    } else if (event == DSV4_CHAT_EVENT_TOOL_CALL_ARGUMENTS) {
        self.writing_.arguments.append(text, len);
        if (self.writing_.id.empty()) return;
        e.kind = ReplyEvent::Kind::call_arguments;
        e.text.assign(text, len);
        e.call.id = self.writing_.id;
    } else if (event == DSV4_CHAT_EVENT_TOOL_CALL) {  // complete: its arguments are the fragments announced
        ToolCall call = std::exchange(self.writing_, ToolCall{});
        if (!json::accept(call.arguments)) {  // a non-string value that is no JSON: the markup is malformed
            self.malformed_ = true;
            self.dangling_ = !call.id.empty();
            return;
        }
        if (!call.id.empty()) {
            e.kind = ReplyEvent::Kind::tool_call;
            e.call = std::move(call);
        } else if (!self.tool_names_.count(call.name)) {  // not offered: left as text, without the markup
            e.kind = ReplyEvent::Kind::content;
            e.text = call.name + "(" + call.arguments + ")";
        } else {
            return;  // beyond max_calls: dropped
        }
    } else {
        e.kind = event == DSV4_CHAT_EVENT_REASONING ? ReplyEvent::Kind::reasoning : ReplyEvent::Kind::content;
        e.text.assign(text, len);
    }
    self.out_->push_back(std::move(e));
}

void ReplyParser::push(const std::string &text, std::vector<ReplyEvent> &out) {
    if (malformed_ || text.empty()) return;
    out_ = &out;
    if (dsv4_chat_stream_push(stream_, text.data(), text.size(), on_event, this) != DSV4_OK) broke_off();
}

void ReplyParser::broke_off() {
    malformed_ = true;
    dangling_ = dangling_ || !writing_.id.empty();
}

void ReplyParser::finish(Finish how, std::vector<ReplyEvent> &out) {
    // Only a completion that reached its end-of-sentence token is flushed: anything held back by a cut-short one
    // is a possible marker start or an unfinished tool-call block, dropped.
    if (how != Finish::stop || malformed_) return;
    out_ = &out;
    if (dsv4_chat_stream_push(stream_, kEosText.data(), kEosText.size(), on_event, this) != DSV4_OK ||
        dsv4_chat_stream_finish(stream_, on_event, this) != DSV4_OK)
        broke_off();
}

std::string forced_call_prefix(bool thinking, bool required, const std::string &name) {
    if (thinking || (!required && name.empty())) return {};
    return "\n\n<｜DSML｜tool_calls>\n" + kInvoke + " name=\"" + (name.empty() ? "" : name + "\">\n");
}

void TurnMemory::remember(const std::vector<ToolCall> &calls, const std::string &reasoning) {
    if (calls.empty()) return;
    std::lock_guard<std::mutex> lock(mu_);
    Turn turn;
    turn.reasoning = reasoning;
    for (const ToolCall &c : calls) turn.arguments[c.id] = c.arguments;
    lru_.emplace_front(calls.front().id, std::move(turn));
    for (const ToolCall &c : calls) by_id_[c.id] = lru_.begin();
    while (lru_.size() > capacity_) {
        for (const auto &[id, _] : lru_.back().second.arguments) by_id_.erase(id);
        lru_.pop_back();
    }
}

void TurnMemory::restore(json &messages) {
    std::lock_guard<std::mutex> lock(mu_);
    for (json &m : messages) {
        if (!m.is_object() || m.value("role", "") != "assistant" || !m.contains("tool_calls") || !m["tool_calls"].is_array())
            continue;
        for (json &call : m["tool_calls"]) {
            if (!call.is_object() || !call.contains("id") || !call["id"].is_string()) continue;
            auto it = by_id_.find(call["id"].get<std::string>());
            if (it == by_id_.end()) continue;
            lru_.splice(lru_.begin(), lru_, it->second);
            const Turn &turn = it->second->second;
            const json r = m.value("reasoning_content", json());
            if (!r.is_string() || r.get<std::string>().empty()) m["reasoning_content"] = turn.reasoning;
            auto a = turn.arguments.find(call["id"].get<std::string>());
            if (a != turn.arguments.end() && call.contains("function") && call["function"].is_object()) {
                json &fn = call["function"];
                const json given = fn.contains("arguments") && fn["arguments"].is_string()
                                       ? json::parse(fn["arguments"].get<std::string>(), nullptr, false)
                                       : fn.value("arguments", json());
                if (given == json::parse(a->second, nullptr, false)) fn["arguments"] = a->second;
            }
        }
    }
}

}  // namespace dsv4::serve
