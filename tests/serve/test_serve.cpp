// dsv4 serve's core without HTTP: the reply parser (DSML never leaks, at any split of the text), the turn memory,
// and the engine (continuous batching gives each request what it gets alone; prefix reuse; cancel; admission).
#include <catch2/catch.hpp>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "serve/engine.h"
#include "serve/reply.h"

using namespace dsv4::serve;

namespace {

const std::string kEos = "<｜end▁of▁sentence｜>";
const std::string kCall =
    "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n"
    "<｜DSML｜parameter name=\"city\" string=\"true\">Paris</｜DSML｜parameter>\n"
    "<｜DSML｜parameter name=\"days\" string=\"false\">3</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";

struct Reply {
    std::string reasoning, content;
    std::vector<ToolCall> calls;
};

Reply parse(const std::vector<std::string> &pieces, bool thinking, Finish how, std::set<std::string> tools = {"get_weather"}) {
    ReplyParser p(thinking, std::move(tools), "call_");
    std::vector<ReplyEvent> events;
    for (const std::string &piece : pieces) p.push(piece, events);
    p.finish(how, events);
    Reply r;
    std::string fragments;
    for (const ReplyEvent &e : events) {
        if (e.kind == ReplyEvent::Kind::reasoning) r.reasoning += e.text;
        else if (e.kind == ReplyEvent::Kind::content) r.content += e.text;
        else if (e.kind == ReplyEvent::Kind::call_begin) fragments.clear();
        else if (e.kind == ReplyEvent::Kind::call_arguments) fragments += e.text;
        else {
            REQUIRE(fragments == e.call.arguments);  // the streamed fragments are the arguments
            r.calls.push_back(e.call);
        }
    }
    return r;
}

bool has_markup(const std::string &s) { return s.find("DSML") != std::string::npos || s.find("｜") != std::string::npos; }

std::string models_dir() { return DSV4_SOURCE_MODELS_DIR "/sotu-v4-tiny"; }

struct Loaded {
    dsv4_model *model = nullptr;
    Loaded() { REQUIRE(dsv4_model_load(models_dir().c_str(), nullptr, &model) == DSV4_OK); }
    ~Loaded() { dsv4_model_free(model); }
    const dsv4_tokenizer *tok() const { return dsv4_model_tokenizer(model); }
    std::vector<int32_t> tokenize(const std::string &text) const {
        std::vector<int32_t> ids(4096);
        size_t n = 0;
        REQUIRE(dsv4_tokenize(tok(), text.data(), text.size(), ids.data(), ids.size(), &n) == DSV4_OK);
        ids.resize(n);
        return ids;
    }
};

struct Result {
    std::string text;
    std::vector<int32_t> tokens;
    Finish finish;
    int32_t cached;
};

Result collect(Job &job) {
    Result r;
    std::vector<Delta> deltas;
    while (!job.wait(deltas, std::chrono::milliseconds(100))) {
    }
    for (const Delta &d : deltas) {
        r.text += d.text;
        r.tokens.push_back(d.token);
    }
    r.finish = job.finish();
    r.cached = job.n_cached();
    return r;
}

JobRequest greedy(std::vector<int32_t> prompt, int32_t max_tokens) {
    JobRequest r;
    r.prompt = std::move(prompt);
    r.sampling.temperature = 0.0f;
    r.max_tokens = max_tokens;
    return r;
}

}  // namespace

TEST_CASE("reply: a tool call split at every byte arrives whole, and no markup reaches content") {
    const std::string text = "Let me check." + kCall;
    for (size_t k = 1; k < text.size(); ++k) {
        const Reply r = parse({text.substr(0, k), text.substr(k)}, false, Finish::stop);
        INFO("split at byte " << k);
        REQUIRE(r.content == "Let me check.");
        REQUIRE(r.calls.size() == 1);
        REQUIRE(r.calls[0].name == "get_weather");
        REQUIRE(r.calls[0].arguments == "{\"city\": \"Paris\", \"days\": 3}");
    }
    std::vector<std::string> bytes;
    for (char c : "hmm</think>" + text) bytes.emplace_back(1, c);
    const Reply r = parse(bytes, true, Finish::stop);
    CHECK(r.reasoning == "hmm");
    CHECK(r.content == "Let me check.");
    CHECK(r.calls.size() == 1);
}

TEST_CASE("reply: a call is announced as it is written, each parameter's fragment once it completes") {
    const std::string head = "ok" + kCall.substr(0, kCall.find("<｜DSML｜parameter name=\"days\""));
    ReplyParser p(false, {"get_weather"}, "call_");
    std::vector<ReplyEvent> events;
    p.push(head, events);
    REQUIRE(events.size() == 3);  // content, begin, the arguments up to the first parameter
    CHECK(events[1].kind == ReplyEvent::Kind::call_begin);
    CHECK(events[1].call.name == "get_weather");
    CHECK(events[2].text == "{\"city\": \"Paris\"");
    events.clear();
    p.push(kCall.substr(kCall.find("<｜DSML｜parameter name=\"days\"")), events);
    p.finish(Finish::stop, events);
    REQUIRE(events.size() == 2);
    CHECK(events[0].text == ", \"days\": 3}");
    CHECK(events[1].kind == ReplyEvent::Kind::tool_call);
}

TEST_CASE("reply: a completion cut inside markup drops it; no call with invented arguments") {
    const std::string text = "Let me check." + kCall;
    for (size_t k = 13; k < text.size(); ++k) {
        const Reply r = parse({text.substr(0, k)}, false, Finish::length);
        INFO("cut at byte " << k);
        REQUIRE(!has_markup(r.content));
        REQUIRE(r.content == "Let me check.");
        // The invoke is complete only once its closing tag arrived.
        if (r.calls.size() == 1) REQUIRE(r.calls[0].arguments == "{\"city\": \"Paris\", \"days\": 3}");
        REQUIRE(r.calls.size() <= 1);
    }
}

TEST_CASE("reply: a tool that was not offered stays text; malformed markup ends the reply quietly") {
    const Reply unknown = parse({"ok" + kCall}, false, Finish::stop, {"search"});
    CHECK(unknown.calls.empty());
    CHECK(unknown.content == "okget_weather({\"city\": \"Paris\", \"days\": 3})");  // text, without the markup
    const Reply none = parse({"ok" + kCall}, false, Finish::stop, {});
    CHECK(none.calls.empty());

    // Two calls in one block: both reported, or only the first when parallel calls are off.
    const std::string invoke = kCall.substr(kCall.find("<｜DSML｜invoke"), kCall.find("</｜DSML｜tool_calls>") - kCall.find("<｜DSML｜invoke"));
    const std::string two = kCall.substr(0, kCall.find("<｜DSML｜invoke")) + invoke + invoke + "</｜DSML｜tool_calls>";
    CHECK(parse({two}, false, Finish::stop).calls.size() == 2);
    ReplyParser single(false, {"get_weather"}, "call_", 1);
    std::vector<ReplyEvent> got;
    single.push(two, got);
    single.finish(Finish::stop, got);
    size_t complete = 0;
    for (const ReplyEvent &e : got) complete += e.kind == ReplyEvent::Kind::tool_call;
    CHECK(complete == 1);

    ReplyParser p(false, {"get_weather"}, "call_");
    std::vector<ReplyEvent> events;
    p.push("fine\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke nam=\"x\">\n</｜DSML｜invoke>\n", events);
    p.finish(Finish::stop, events);
    CHECK(p.malformed());
    std::string content;
    for (const ReplyEvent &e : events) {
        CHECK(e.kind == ReplyEvent::Kind::content);
        content += e.text;
    }
    CHECK(content == "fine");

    // A marker split across pieces outside the tool-call opening never reaches content, nor an invalid value.
    for (const std::vector<std::string> &pieces :
         {std::vector<std::string>{"ok <｜DS", "ML｜invoke name=\"x\">"}, std::vector<std::string>{"ok \n<｜", "DSML｜x"}}) {
        ReplyParser q(false, {"get_weather"}, "call_");
        std::vector<ReplyEvent> ev;
        for (const std::string &piece : pieces) q.push(piece, ev);
        q.finish(Finish::stop, ev);
        std::string text;
        for (const ReplyEvent &e : ev) text += e.text;
        CHECK(!has_markup(text));
        CHECK(q.malformed());
    }
    std::string bad = kCall;
    bad.replace(bad.find(">3<"), 3, ">abc<");  // string="false" with no JSON value
    ReplyParser q(false, {"get_weather"}, "call_");
    std::vector<ReplyEvent> ev;
    q.push(bad.substr(0, bad.find("abc")), ev);
    q.push(bad.substr(bad.find("abc")), ev);
    q.finish(Finish::stop, ev);
    for (const ReplyEvent &e : ev) CHECK(e.kind != ReplyEvent::Kind::tool_call);
    CHECK(q.malformed());
    CHECK(q.dangling());  // announced (its first parameter streamed), never completed
}

TEST_CASE("turn memory: a tool-calling turn sent back without its reasoning gets it back") {
    TurnMemory memory;
    memory.remember({{"call_1", "get_weather", "{\"city\": \"Paris\"}"}}, "I should look it up.");
    for (const json &reasoning : {json(), json("")}) {
        json messages = json::array({{{"role", "user"}, {"content", "weather?"}},
                                     {{"role", "assistant"}, {"content", ""},
                                      {"tool_calls", json::array({{{"id", "call_1"}, {"type", "function"},
                                                                   {"function", {{"name", "get_weather"}, {"arguments", "{\"city\":\"Paris\"}"}}}}})}}});
        if (!reasoning.is_null()) messages[1]["reasoning_content"] = reasoning;
        memory.restore(messages);
        CHECK(messages[1]["reasoning_content"] == "I should look it up.");
        CHECK(messages[1]["tool_calls"][0]["function"]["arguments"] == "{\"city\": \"Paris\"}");  // the model's own text
    }
    json other = json::array({{{"role", "assistant"}, {"content", ""}, {"reasoning_content", "mine"},
                               {"tool_calls", json::array({{{"id", "call_1"}, {"function", {{"name", "get_weather"}, {"arguments", "{\"city\": \"Rome\"}"}}}}})}}});
    memory.restore(other);
    CHECK(other[0]["reasoning_content"] == "mine");                                     // given reasoning is kept
    CHECK(other[0]["tool_calls"][0]["function"]["arguments"] == "{\"city\": \"Rome\"}");  // changed arguments too
}

TEST_CASE("engine: requests decoded together give what each gives alone; prefix reuse; cancel; admission") {
    Loaded m;
    const std::vector<std::string> prompts = {"Mr. Speaker, Members of the Congress: Tonight",
                                              "The state of our Union is", "We the people"};
    std::vector<Result> alone;
    {
        EngineOptions o;
        o.slots = 1;
        Engine engine(m.model, m.tok(), o);
        for (const std::string &p : prompts) alone.push_back(collect(*engine.submit(greedy(m.tokenize(p), 12))));
    }
    EngineOptions o;
    o.slots = 3;
    o.queue = 1;
    o.n_batch = 7;  // prompts arrive in chunks beside other requests' decode tokens
    Engine engine(m.model, m.tok(), o);
    std::vector<std::shared_ptr<Job>> jobs;
    for (const std::string &p : prompts) jobs.push_back(engine.submit(greedy(m.tokenize(p), 12)));
    for (size_t i = 0; i < jobs.size(); ++i) {
        const Result r = collect(*jobs[i]);
        INFO(prompts[i]);
        CHECK(r.tokens == alone[i].tokens);
        CHECK(r.text == alone[i].text);
        CHECK(!r.text.empty());
        CHECK(r.finish == alone[i].finish);
    }

    // A scripted job finishing its prompt in the same batch as a real one takes no output from it. A long scripted
    // prompt ahead of them takes the token budget until both short prompts fit in one batch together.
    {
        const std::vector<int32_t> real_prompt = m.tokenize(std::string("x ") + prompts[1]);
        const Result real_alone = [&] {
            Engine single(m.model, m.tok(), EngineOptions{});
            return collect(*single.submit(greedy(real_prompt, 12)));
        }();
        EngineOptions ob;
        ob.slots = 3;
        Engine shared(m.model, m.tok(), ob);
        std::string long_text;
        for (int i = 0; i < 40; ++i) long_text += prompts[0] + " ";
        JobRequest first = greedy(m.tokenize(long_text), 2);
        first.script = std::vector<std::string>{"c", "d"};
        JobRequest scripted = greedy(m.tokenize(prompts[2]), 4);
        scripted.script = std::vector<std::string>{"a", "b"};
        const auto fj = shared.submit(first);
        const auto sj = shared.submit(scripted);
        const auto rj = shared.submit(greedy(real_prompt, 12));
        CHECK(collect(*fj).text == "cd");
        CHECK(collect(*sj).text == "ab");
        CHECK(collect(*rj).tokens == real_alone.tokens);
    }

    // The same prompt again reuses all of it but the last token, and continues the same way.
    const Result again = collect(*engine.submit(greedy(m.tokenize(prompts[0]), 12)));
    CHECK(again.cached == int32_t(m.tokenize(prompts[0]).size()) - 1);
    CHECK(again.tokens == alone[0].tokens);

    // Cancel: the job ends, its slot frees; a full engine refuses.
    JobRequest slow = greedy(m.tokenize(prompts[1]), 1000);
    slow.script = std::vector<std::string>(1000, "x");
    slow.script_delay_ms = 50;
    std::vector<std::shared_ptr<Job>> held;
    for (int i = 0; i < 4; ++i) held.push_back(engine.submit(slow));  // 3 slots + 1 queued
    for (const auto &j : held) REQUIRE(j);
    CHECK(engine.submit(slow) == nullptr);
    for (const auto &j : held) j->cancel();
    for (const auto &j : held) CHECK(collect(*j).finish == Finish::cancelled);
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (engine.stats().active + engine.stats().waiting > 0 && std::chrono::steady_clock::now() < until)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    CHECK(engine.stats().active == 0);
    CHECK(engine.stats().waiting == 0);
    CHECK(engine.submit(greedy(m.tokenize(prompts[2]), 2)) != nullptr);
}

TEST_CASE("engine: a prompt stays reusable after its sequence has generated past the rewind limit") {
    Loaded m;
    EngineOptions o;
    o.slots = 1;
    o.n_rewind = 4;
    Engine engine(m.model, m.tok(), o);
    const std::vector<int32_t> first = m.tokenize("Mr. Speaker, Members of the Congress: Tonight");
    const Result reply = collect(*engine.submit(greedy(first, 16)));
    REQUIRE(reply.tokens.size() > size_t(o.n_rewind) + 1);  // the sequence holds more than n_rewind tokens past the prompt
    // The next turn shares the prompt but its last token (a thinking-mode chat drops the reasoning written
    // after it): the snapshot taken when the prompt was evaluated serves it.
    std::vector<int32_t> next(first.begin(), first.end() - 1);
    const std::vector<int32_t> more = m.tokenize(" we gather");
    next.insert(next.end(), more.begin(), more.end());
    const Result r = collect(*engine.submit(greedy(next, 8)));
    CHECK(r.cached == int32_t(first.size()) - 1);
    EngineOptions fresh;
    Engine other(m.model, m.tok(), fresh);
    CHECK(collect(*other.submit(greedy(next, 8))).tokens == r.tokens);  // and continues as an uncached prompt
}

TEST_CASE("engine: stop strings end generation before them; scripted text is split into whole characters") {
    Loaded m;
    Engine engine(m.model, m.tok(), EngineOptions{});
    JobRequest r = greedy(m.tokenize("We the people"), 50);
    r.script = std::vector<std::string>{"ab", "c\xE2\x82", "\xAC STOP", "never"};
    r.stop = {" STOP"};
    const auto job = engine.submit(r);
    std::vector<Delta> deltas;
    while (!job->wait(deltas, std::chrono::milliseconds(100))) {
    }
    std::string text;
    for (const Delta &d : deltas) {
        const bool whole = d.text.find('\xE2') == std::string::npos || d.text.find("\xE2\x82\xAC") != std::string::npos;
        CHECK(whole);
        text += d.text;
    }
    CHECK(text == "abc\xE2\x82\xAC");
    CHECK(job->finish() == Finish::stop_string);
    CHECK(job->stop_string() == " STOP");

    JobRequest e = greedy(m.tokenize("We the people"), 50);
    e.script = std::vector<std::string>{"done<｜end▁of", "▁sentence｜>ignored"};
    const Result done = collect(*engine.submit(e));
    CHECK(done.text == "done");
    CHECK(done.finish == Finish::stop);
}
