#include "serve.h"

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <fmt/format.h>
#include <thread>
#include <unistd.h>

#include "service.h"

namespace dsv4::serve {
namespace {

int g_signal_pipe[2] = {-1, -1};

void on_signal(int) {
    const char c = 1;
    [[maybe_unused]] ssize_t n = write(g_signal_pipe[1], &c, 1);
}

Api api_of(const std::string &path) { return path.rfind("/v1/messages", 0) == 0 ? Api::anthropic : Api::openai; }

std::string metrics_text(const Service &s) {
    const EngineStats st = s.engine ? s.engine->stats() : EngineStats{};
    std::string out;
    auto metric = [&](const char *name, const char *type, const char *help, double value) {
        out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, help, name, type, name, value);
    };
    metric("dsv4_requests_total", "counter", "generation requests accepted", double(st.requests));
    metric("dsv4_requests_refused_total", "counter", "generation requests refused at capacity (429/529)", double(st.refused));
    metric("dsv4_queue_depth", "gauge", "requests waiting for a slot", st.waiting);
    metric("dsv4_active_sequences", "gauge", "requests being evaluated", st.active);
    metric("dsv4_prompt_tokens_total", "counter", "prompt tokens of admitted requests", double(st.prompt_tokens));
    metric("dsv4_cache_hits_total", "counter", "requests that reused a cached prefix", double(st.cache_hits));
    metric("dsv4_cached_tokens_total", "counter", "prompt tokens reused from the prefix cache", double(st.cached_tokens));
    metric("dsv4_generated_tokens_total", "counter", "tokens generated", double(st.generated_tokens));
    metric("dsv4_decode_steps_total", "counter", "batches evaluated", double(st.steps));
    metric("dsv4_busy_seconds_total", "counter", "seconds spent evaluating batches", st.busy_seconds);
    metric("dsv4_tokens_per_second", "gauge", "tokens evaluated per busy second so far",
           st.busy_seconds > 0 ? double(st.prompt_tokens - st.cached_tokens + st.generated_tokens) / st.busy_seconds : 0.0);
    return out;
}

void register_common(HttpServer &http, Service &s) {
    http.route("GET", "/health", [&s](const HttpRequest &, HttpResponse &res) {
        res.status = s.ready ? 200 : 503;
        res.body = s.ready ? R"({"status":"ok"})" : R"({"status":"loading"})";
    });
    http.route("GET", "/metrics", [&s](const HttpRequest &, HttpResponse &res) {
        res.content_type = "text/plain; version=0.0.4";
        res.body = metrics_text(s);
    });
    http.route("POST", "/tokenize", [&s](const HttpRequest &req, HttpResponse &res) {
        guarded(Api::openai, res, [&] {
            s.ready_engine();
            const json body = parse_body(req.body);
            const auto text = string_field(body, "content");
            if (!text) throw ApiError(400, "'content' (a string) is required", "content");
            res.body = dump({{"tokens", s.tokenize(*text)}});
        });
    });
    http.route("POST", "/detokenize", [&s](const HttpRequest &req, HttpResponse &res) {
        guarded(Api::openai, res, [&] {
            s.ready_engine();
            const json body = parse_body(req.body);
            std::vector<int32_t> tokens;
            if (!body.contains("tokens") || !body["tokens"].is_array()) throw ApiError(400, "'tokens' (an array) is required", "tokens");
            for (const json &t : body["tokens"]) {
                if (!t.is_number_integer()) throw ApiError(400, "'tokens' holds integers", "tokens");
                tokens.push_back(t.get<int32_t>());
            }
            res.body = dump({{"content", s.detokenize(tokens)}});
        });
    });
}

}  // namespace

int serve(const ServeOptions &o) {
    std::signal(SIGPIPE, SIG_IGN);
    if (pipe(g_signal_pipe) != 0) return std::perror("dsv4 serve: pipe"), 1;
    std::signal(SIGTERM, on_signal);
    std::signal(SIGINT, on_signal);

    Service s;
    s.test_hooks = o.test_hooks;
    s.default_thinking = o.think;
    HttpOptions ho = o.http;
    // A connection holds a thread while it streams or idles in keep-alive. Four per slot and queued request, at
    // least 64: requests beyond capacity still get a thread for their prompt 429 while clients keep idle
    // connections open, and /health and /metrics stay answered under full load.
    ho.threads = std::max(64, 4 * (o.engine.slots + o.engine.queue));
    HttpServer http(ho);
    http.set_error_body([](const HttpRequest &req, int status, const std::string &message, HttpResponse &res) {
        error_response(api_of(req.path), status, message, res);
    });
    register_common(http, s);
    register_openai(http, s);
    register_anthropic(http, s);
    int port = 0;
    try {
        port = http.bind();
    } catch (const std::exception &e) {
        std::fprintf(stderr, "dsv4 serve: %s\n", e.what());
        return 1;
    }
    std::fprintf(stderr, "dsv4 serve: listening on http://%s:%d\n", ho.host.c_str(), port);
    std::thread server([&] { http.serve(); });
    // SIGTERM / SIGINT: while loading there is nothing to finish, so the process ends at once; once ready, in-flight
    // streams end with an error event and get a second to write it (joining the connection threads would wait for
    // idle keep-alive clients to time out).
    std::thread([&] {
        char c = 0;
        while (read(g_signal_pipe[0], &c, 1) < 0 && errno == EINTR) {
        }
        std::fprintf(stderr, "dsv4 serve: shutting down\n");
        if (s.ready.exchange(false)) {
            s.engine->shutdown();
            const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
            while (http.in_flight() > 0 && std::chrono::steady_clock::now() < deadline)
                std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        std::fflush(stderr);
        std::_Exit(0);
    }).detach();

    // Loads while /health answers 503; a failed load ends the server.
    const std::string &dir = o.model_dir;
    dsv4_model *model = nullptr;
    dsv4_model_params mp = dsv4_model_default_params();
    mp.progress_callback = o.progress;
    mp.device = o.device.c_str();
    int rc = 0;
    if (dir.empty()) {
        std::fprintf(stderr, "dsv4 serve: no --model given and the embedded model is not installed\n");
        rc = 1;
    } else if (dsv4_status st = dsv4_model_load(dir.c_str(), &mp, &model)) {
        std::fprintf(stderr, "dsv4 serve: %s: %s\n", dsv4_status_name(st), dsv4_last_error_message());
        rc = 1;
    } else {
        s.tok = dsv4_model_tokenizer(model);
        dsv4_model_info info{};
        info.struct_size = sizeof info;
        (void)dsv4_model_get_info(model, &info);
        s.model_name = !o.alias.empty() ? o.alias : info.name;
        if (!s.tok) {
            std::fprintf(stderr, "dsv4 serve: %s has no tokenizer.json\n", dir.c_str());
            rc = 1;
        } else {
            EngineOptions eo = o.engine;
            // One core stays with the connections: compute threads spinning on every core starve the threads that
            // write the streams (on 2 cores, 0.4x the C API's tokens/s with both cores computing, 0.9x with one).
            if (eo.n_threads == 0 && !std::getenv("OMP_NUM_THREADS"))
                eo.n_threads = int32_t(std::max(2u, std::thread::hardware_concurrency()) - 1);
            try {
                s.engine = std::make_unique<Engine>(model, s.tok, eo);
                s.ready = true;
                std::fprintf(stderr, "dsv4 serve: ready: %s, %d slots, %d queued, context %d\n", s.model_name.c_str(),
                             o.engine.slots, o.engine.queue, s.engine->n_ctx());
            } catch (const std::exception &e) {
                std::fprintf(stderr, "dsv4 serve: %s\n", e.what());
                rc = 1;
            }
        }
    }
    if (rc == 0) server.join();  // serves until the signal thread ends the process
    std::fflush(stderr);
    std::_Exit(rc);
}

}  // namespace dsv4::serve
