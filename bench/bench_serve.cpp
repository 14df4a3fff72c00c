// The server's own cost: N concurrent streamed completions through `dsv4 serve` against the same work through
// the C API (dsv4_generate_batch on one context), as time to first token and aggregate tokens/s.
//   bench_serve DSV4_BINARY [MODEL_DIR] [STREAMS=1,2,4,8] [N_GEN=64] [THREADS=0]
// THREADS: compute threads of both sides (0 = all cores).
// Each round uses prompts of its own (no prefix reuse between rounds or streams); greedy, so both sides generate
// the same tokens and stop at the same end-of-sentence tokens.
#include <dsv4/dsv4.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fmt/format.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <nlohmann/json.hpp>
#include <spawn.h>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

extern char **environ;

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

const char *kBase = "Mr. Speaker, Members of the Congress, my fellow Americans: Tonight";

std::string prompt_of(int round, int i) { return fmt::format("{}-{}. {}", round, i, kBase); }

struct Round {
    double seconds = 0, ttft_mean = 0;
    int64_t tokens = 0;
};

// One round on a context that already ran a round of the same size (its scratch is warm), sequences cleared.
Round c_api_round(dsv4_model *model, dsv4_context *ctx, int n, int n_gen, int round) {
    const dsv4_tokenizer *tok = dsv4_model_tokenizer(model);
    for (int i = 0; i < n; ++i) (void)dsv4_seq_truncate(ctx, i, 0);
    std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(n));
    std::vector<dsv4_sampler *> samplers(static_cast<size_t>(n));
    std::vector<dsv4_generate_stats> stats(static_cast<size_t>(n));
    std::vector<dsv4_generate_request> reqs(static_cast<size_t>(n));
    dsv4_generate_params gp = dsv4_generate_default_params();
    gp.max_tokens = n_gen;
    dsv4_sampler_params sp = dsv4_sampler_default_params();
    sp.temperature = 0;
    for (int i = 0; i < n; ++i) {
        const std::string text = prompt_of(round, i);
        prompts[size_t(i)].resize(4096);
        size_t len = 0;
        (void)dsv4_tokenize(tok, text.data(), text.size(), prompts[size_t(i)].data(), 4096, &len);
        prompts[size_t(i)].resize(len);
        if (dsv4_sampler_create(&sp, &samplers[size_t(i)]) != DSV4_OK) throw std::runtime_error(dsv4_last_error_message());
        stats[size_t(i)].struct_size = sizeof(dsv4_generate_stats);
        reqs[size_t(i)] = {sizeof(dsv4_generate_request), i, prompts[size_t(i)].data(), int32_t(len), samplers[size_t(i)], &gp,
                           nullptr, nullptr, &stats[size_t(i)]};
    }
    const auto t0 = Clock::now();
    if (dsv4_generate_batch(ctx, tok, reqs.data(), n) != DSV4_OK) throw std::runtime_error(dsv4_last_error_message());
    Round r;
    r.seconds = seconds_since(t0);
    for (auto &s : stats) {
        r.tokens += s.n_generated;
        r.ttft_mean += s.time_to_first_token_seconds / n;
    }
    for (auto *s : samplers) dsv4_sampler_free(s);
    return r;
}

Round server_round(int port, int n, int n_gen, int round) {
    std::vector<double> ttft(static_cast<size_t>(n));
    std::vector<int64_t> tokens(static_cast<size_t>(n));
    std::vector<std::thread> threads;
    const auto t0 = Clock::now();
    for (int i = 0; i < n; ++i)
        threads.emplace_back([&, i] {
            httplib::Client cli("127.0.0.1", port);
            cli.set_read_timeout(600, 0);
            cli.set_tcp_nodelay(true);
            const nlohmann::json body = {{"prompt", prompt_of(round, i)}, {"max_tokens", n_gen}, {"temperature", 0},
                                         {"stream", true}, {"stream_options", {{"include_usage", true}}}};
            httplib::Request req;
            req.method = "POST";
            req.path = "/v1/completions";
            req.body = body.dump();
            req.set_header("Content-Type", "application/json");
            std::string buffer;
            bool first = true;
            req.content_receiver = [&](const char *data, size_t len, uint64_t, uint64_t) {
                buffer.append(data, len);
                for (size_t at; (at = buffer.find("\n\n")) != std::string::npos; buffer.erase(0, at + 2)) {
                    const std::string event = buffer.substr(0, at);
                    if (event.rfind("data: {", 0) != 0) continue;
                    const auto j = nlohmann::json::parse(event.substr(6));
                    if (first && !j["choices"].empty() && !j["choices"][0]["text"].get<std::string>().empty()) {
                        ttft[size_t(i)] = seconds_since(t0);
                        first = false;
                    }
                    if (j.contains("usage") && j["usage"].is_object()) tokens[size_t(i)] = j["usage"]["completion_tokens"];
                }
                return true;
            };
            httplib::Response res;
            httplib::Error err;
            if (!cli.send(req, res, err) || res.status != 200) std::fprintf(stderr, "request %d failed\n", i);
        });
    for (auto &t : threads) t.join();
    Round r;
    r.seconds = seconds_since(t0);
    for (int i = 0; i < n; ++i) {
        r.tokens += tokens[size_t(i)];
        r.ttft_mean += ttft[size_t(i)] / n;
    }
    return r;
}

int active_sequences(int port) {
    httplib::Client cli("127.0.0.1", port);
    auto res = cli.Get("/metrics");
    if (!res) return -1;
    const size_t at = res->body.find("\ndsv4_active_sequences ");
    return at == std::string::npos ? -1 : std::atoi(res->body.c_str() + at + 23);
}

// A client that goes away mid-generation: milliseconds from its close until the server has freed the sequence.
double disconnect_ms(int port, bool stream) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(uint16_t(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) != 0) throw std::runtime_error("connect");
    const std::string body = nlohmann::json({{"prompt", kBase}, {"max_tokens", 100000}, {"temperature", 1.0}, {"seed", 1},
                                             {"stream", stream}}).dump();
    const std::string request = fmt::format("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                            "Content-Length: {}\r\n\r\n{}", body.size(), body);
    if (write(fd, request.data(), request.size()) != ssize_t(request.size())) throw std::runtime_error("write");
    while (active_sequences(port) < 1) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // generating
    close(fd);
    const auto t0 = Clock::now();
    while (active_sequences(port) != 0) {
        if (seconds_since(t0) > 30) return -1;
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return seconds_since(t0) * 1e3;
}

// Starts `dsv4 serve --port 0` and returns its port once /health says ready.
int start_server(const std::string &binary, const std::string &model, int slots, int threads, pid_t &pid) {
    int out[2];
    if (pipe(out) != 0) throw std::runtime_error("pipe");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 2);
    const std::string slots_s = std::to_string(slots);
    std::vector<std::string> args = {binary, "serve", "--port", "0", "-q", "--slots", slots_s, "--queue", slots_s,
                                     "--threads", std::to_string(threads)};
    if (!model.empty()) args.insert(args.end(), {"-m", model});
    std::vector<char *> argv;
    for (auto &a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid, binary.c_str(), &fa, nullptr, argv.data(), environ) != 0) throw std::runtime_error("spawn " + binary);
    close(out[1]);
    std::string log;
    char c;
    int port = 0;
    while (read(out[0], &c, 1) == 1) {
        log += c;
        if (c != '\n') continue;
        const size_t at = log.find("listening on http://127.0.0.1:");
        if (!port && at != std::string::npos) port = std::stoi(log.substr(at + 30));
        if (log.find("ready:") != std::string::npos) break;
    }
    std::thread([fd = out[0]] {  // keep draining the server's stderr
        char buf[256];
        while (read(fd, buf, sizeof buf) > 0) {
        }
    }).detach();
    if (!port) throw std::runtime_error("server did not start: " + log);
    return port;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: bench_serve DSV4_BINARY [MODEL_DIR] [STREAMS=1,2,4,8] [N_GEN=64]\n");
        return 2;
    }
    const std::string binary = argv[1];
    std::string model_dir = argc > 2 ? argv[2] : "";
    std::vector<int> streams;
    std::stringstream ss(argc > 3 ? argv[3] : "1,2,4,8");
    for (std::string item; std::getline(ss, item, ',');) streams.push_back(std::stoi(item));
    const int n_gen = argc > 4 ? std::atoi(argv[4]) : 64;
    const int threads = argc > 5 ? std::atoi(argv[5]) : 0;
    if (model_dir.empty()) model_dir = DSV4_SOURCE_MODELS_DIR "/sotu-v4-tiny";

    dsv4_model *model = nullptr;
    if (dsv4_model_load(model_dir.c_str(), nullptr, &model) != DSV4_OK) {
        std::fprintf(stderr, "bench_serve: %s\n", dsv4_last_error_message());
        return 1;
    }
    pid_t pid = 0;
    const int max_streams = *std::max_element(streams.begin(), streams.end());
    const int port = start_server(binary, model_dir, max_streams, threads, pid);
    dsv4_context_params cp = dsv4_context_default_params();
    cp.n_seq_max = max_streams;
    cp.n_threads = threads;
    dsv4_context *ctx = nullptr;
    if (dsv4_context_create(model, &cp, &ctx) != DSV4_OK) throw std::runtime_error(dsv4_last_error_message());
    fmt::print("{:>7} | {:>12} {:>10} | {:>12} {:>10} | {:>9} {:>9}\n", "streams", "C API tok/s", "TTFT ms", "server tok/s",
               "TTFT ms", "tok/s x", "TTFT +ms");
    int round = 0;
    for (int n : streams) {
        (void)server_round(port, n, n_gen, ++round);  // warm both sides at this size
        (void)c_api_round(model, ctx, n, n_gen, ++round);
        const Round api = c_api_round(model, ctx, n, n_gen, ++round);
        const Round srv = server_round(port, n, n_gen, ++round);
        fmt::print("{:>7} | {:>12.1f} {:>10.1f} | {:>12.1f} {:>10.1f} | {:>9.3f} {:>9.1f}\n", n, api.tokens / api.seconds,
                   api.ttft_mean * 1e3, srv.tokens / srv.seconds, srv.ttft_mean * 1e3,
                   (srv.tokens / srv.seconds) / (api.tokens / api.seconds), (srv.ttft_mean - api.ttft_mean) * 1e3);
    }
    for (bool stream : {true, false}) {
        std::vector<double> ms;
        for (int i = 0; i < 3; ++i) ms.push_back(disconnect_ms(port, stream));
        fmt::print("disconnect ({}): sequence freed {:.0f} / {:.0f} / {:.0f} ms after the client closed\n",
                   stream ? "streaming" : "not streaming", ms[0], ms[1], ms[2]);
    }
    kill(pid, SIGTERM);
    waitpid(pid, nullptr, 0);
    dsv4_context_free(ctx);
    dsv4_model_free(model);
    return 0;
}
