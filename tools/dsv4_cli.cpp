// The dsv4 command-line tool: checkpoint summary, greedy generation from token ids, golden checks.
#include <dsv4/dsv4.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <vector>

#include "core/error.h"
#include "eval_chat.h"
#include "eval_tokenizer.h"
#include "generate_cli.h"
#include "golden.h"
#include "serve/serve.h"
#include "io/config.h"
#include "io/mapped_file.h"
#include "kvcache/cache.h"

namespace {

int report(dsv4_status st) {
    std::fprintf(stderr, "dsv4: %s: %s\n", dsv4_status_name(st), dsv4_last_error_message());
    return 1;
}

int cmd_devices() {
    for (int32_t i = 0; i < dsv4_device_count(); ++i) {
        dsv4_device_info d{};
        d.struct_size = sizeof d;
        if (dsv4_status st = dsv4_device_get_info(i, &d)) return report(st);
        fmt::print("{:8} {}\n", d.spec, d.description);
    }
    fmt::print("{}\n", dsv4_build_info());
    return 0;
}

int cmd_info(const std::string &dir, const std::string &device) {
    dsv4_model_params mp = dsv4_model_default_params();
    mp.progress_callback = dsv4::tools::show_load_progress;
    mp.device = device.c_str();
    dsv4_model *model = nullptr;
    if (dsv4_status st = dsv4_model_load(dir.c_str(), &mp, &model)) return report(st);
    dsv4_model_info info{};
    info.struct_size = sizeof info;
    (void)dsv4_model_get_info(model, &info);
    fmt::print("model            {}\n", info.name);
    fmt::print("device           {}\n", info.device);
    fmt::print("dim              {}  (heads {} x {}, rope {}, q_lora {}, o_groups {} x {})\n", info.dim, info.n_heads,
               info.head_dim, info.rope_head_dim, info.q_lora_rank, info.o_groups, info.o_lora_rank);
    fmt::print("layers           {} + {} MTP  (window {}, CSA {}, HCA {}; hash-routed {})\n", info.n_layers,
               info.n_mtp_layers, info.n_window_layers, info.n_csa_layers, info.n_hca_layers, info.n_hash_layers);
    fmt::print("experts          {} routed ({} active, inter {}, {}), {} shared\n", info.n_routed_experts,
               info.n_activated_experts, info.moe_inter_dim, dsv4_dtype_name(info.expert_dtype), info.n_shared_experts);
    fmt::print("attention        window {}, indexer {} heads x {}, top-k {}, hc streams {}\n", info.window_size,
               info.index_n_heads, info.index_head_dim, info.index_topk, info.hc_mult);
    fmt::print("vocab            {}, max context {}\n", info.vocab_size, info.max_position_embeddings);
    std::string schedule;
    for (int il = 0; il < info.n_layers + info.n_mtp_layers; ++il) {
        dsv4_layer_info li{};
        li.struct_size = sizeof li;
        (void)dsv4_model_get_layer_info(model, il, &li);
        schedule += fmt::format("{}{}{}", il ? " " : "", li.is_mtp ? "mtp:" : "", li.compress_ratio);
    }
    fmt::print("compress ratios  [{}]\n", schedule);
    fmt::print("parameters       {} ({:.2f} MiB of tensor data)\n", info.n_params, double(info.n_bytes) / 1048576.0);
    for (dsv4_dtype t : {DSV4_DTYPE_F32, DSV4_DTYPE_BF16, DSV4_DTYPE_F8_E4M3, DSV4_DTYPE_F8_E8M0, DSV4_DTYPE_FP4_E2M1,
                         DSV4_DTYPE_I8, DSV4_DTYPE_I64}) {
        uint64_t bytes = 0;
        (void)dsv4_model_param_bytes(model, t, &bytes);
        if (bytes) fmt::print("  {:10} {:>14} bytes\n", dsv4_dtype_name(t), bytes);
    }
    dsv4_model_free(model);
    return 0;
}

// Cache memory of one sequence for a config.json alone (no weights needed).
int cmd_memory(const std::string &config_path, int64_t tokens, int rewind) {
    const dsv4::io::ModelConfig c = dsv4::io::parse_config(dsv4::io::read_text_file(config_path), config_path);
    auto geo = dsv4::kvcache::cache_geometry(c, rewind);
    geo.resize(size_t(c.n_layers));
    const dsv4::kvcache::MemoryPlan p = dsv4::kvcache::plan_memory(geo);
    const double gib = 1024.0 * 1024.0 * 1024.0;
    fmt::print("{}: {} CSA + {} HCA layers (of {})\n", config_path, p.n_csa, p.n_hca, c.n_layers);
    fmt::print("per CSA layer    {} B per 4 tokens ({:.2f} B/token: FP8 entry + FP4 indexer key)\n",
               p.bytes_per_4_tokens_csa, p.bytes_per_4_tokens_csa / 4.0);
    fmt::print("per HCA layer    {} B per 128 tokens ({:.3f} B/token)\n", p.bytes_per_128_tokens_hca,
               p.bytes_per_128_tokens_hca / 128.0);
    fmt::print("all layers       {:.2f} B/token\n", p.bytes_per_1024_tokens / 1024.0);
    fmt::print("constant         {:.2f} MiB per sequence (window rings + compressor rows, rewind {})\n",
               p.constant_bytes / 1048576.0, rewind);
    fmt::print("{} tokens  {:.3f} GiB per sequence ({:.3f} GiB growing part)\n", tokens, p.sequence_bytes(tokens) / gib,
               (p.sequence_bytes(tokens) - p.constant_bytes) / gib);
    return 0;
}

}  // namespace

int main(int argc, char **argv) {
    CLI::App app{"dsv4: DeepSeek-V4 inference"};
    app.require_subcommand(1);
    app.set_version_flag("--version", dsv4_version_string());

    std::string dir;
    auto *info = app.add_subcommand("info", "load a checkpoint directory and print its summary");
    info->add_option("model", dir, "checkpoint directory (config.json + safetensors)")->required();
    std::string info_device = "cpu";
    info->add_option("--device", info_device, "cpu (default), cuda or cuda:N");
    auto *devices = app.add_subcommand("devices", "list the devices a model can be loaded on, and the build's backends");

    dsv4::tools::RunOptions ro;
    auto add_generation = [&](CLI::App *cmd) {
        cmd->add_option("-m,--model", ro.model_dir, "checkpoint directory (default: the embedded model, models/README.md)");
        cmd->add_option("--tokenizer", ro.tokenizer_path, "tokenizer.json (default: MODEL/tokenizer.json if present)");
        cmd->add_option("-n,--n-predict", ro.n_predict, "tokens to generate at most")->check(CLI::Range(1, 1 << 20));
        cmd->add_option("--temp", ro.temperature, "temperature (0 = greedy, the default)")->check(CLI::Range(0.0f, 100.0f));
        cmd->add_option("--top-p", ro.top_p, "nucleus mass")->check(CLI::Range(1e-6f, 1.0f));
        cmd->add_option("--top-k", ro.top_k, "top-k (0 = off)")->check(CLI::Range(0, 1 << 30));
        cmd->add_option("--seed", ro.seed, "sampling seed");
        cmd->add_option("-t,--threads", ro.threads, "compute threads (0 = OMP_NUM_THREADS, else all cores)");
        cmd->add_flag("-q,--quiet", ro.quiet, "no load progress on stderr");
        cmd->add_option("--device", ro.device, "cpu (default), cuda or cuda:N (dsv4 devices lists them)");
        cmd->add_flag("--no-repack", ro.no_repack, "compute from the checkpoint's bytes in place (no packed copy of the weights)");
        cmd->add_option("-c,--ctx-size", ro.n_ctx, "context length in tokens")->check(CLI::Range(1, 1 << 30));
        cmd->add_flag("--think", ro.think, "thinking mode of the chat format (chat: /think and /nothink switch)");
    };
    auto *run = app.add_subcommand("run", "generate from a text prompt (or token ids), streamed");
    add_generation(run);
    auto *prompt_text = run->add_option("-p,--prompt", ro.prompt, "prompt text");
    auto *prompt_ids = run->add_option("--prompt-ids", ro.prompt_ids, "prompt token ids, comma-separated")->delimiter(',');
    run->add_flag("--chat", ro.chat, "wrap the prompt as a user turn of the chat format");
    run->add_option("--messages", ro.messages_path, "JSON file: an array of chat messages (tools, tool results) to reply to")
        ->check(CLI::ExistingFile)
        ->excludes(prompt_text, prompt_ids);
    run->add_flag("--json", ro.json, "after the reply, print it parsed as an assistant message (one JSON line)");
    run->add_flag("--print-ids", ro.print_ids, "print the prompt and generated token ids to stderr");
    auto *chat = app.add_subcommand("chat", "interactive chat on stdin (one user turn per line; /clear, /exit)");
    add_generation(chat);

    dsv4::tools::BenchOptions bo;
    dsv4::serve::ServeOptions so;
    auto *serve = app.add_subcommand("serve", "OpenAI- and Anthropic-compatible HTTP server (README: Serving)");
    serve->add_option("-m,--model", so.model_dir, "checkpoint directory (default: the embedded model)");
    serve->add_option("--alias", so.alias, "model id the APIs report (default: the checkpoint's name)");
    serve->add_option("--host", so.http.host, "address to listen on")->capture_default_str();
    serve->add_option("--port", so.http.port, "port (0 = any free port, printed)")->check(CLI::Range(0, 65535))->capture_default_str();
    serve->add_option("--api-key", so.http.api_key, "require this key (Authorization: Bearer or x-api-key); /health stays public");
    serve->add_option("--slots", so.engine.slots, "requests decoded together")->check(CLI::Range(1, 256))->capture_default_str();
    serve->add_option("--queue", so.engine.queue, "requests waiting for a slot before 429 / 529")->check(CLI::Range(0, 4096))->capture_default_str();
    serve->add_option("--cache-seqs", so.engine.cache_sequences, "sequences kept for prefix reuse (0 = 2 x slots)")->check(CLI::Range(0, 4096));
    serve->add_option("-c,--ctx-size", so.engine.n_ctx, "context length per sequence in tokens")->check(CLI::Range(16, 1 << 30))->capture_default_str();
    serve->add_option("--batch", so.engine.n_batch, "tokens per evaluation step")->check(CLI::Range(1, 1 << 16))->capture_default_str();
    serve->add_option("--rewind", so.engine.n_rewind, "positions a cached sequence may be cut back to reuse its prefix")->check(CLI::Range(0, 4096))->capture_default_str();
    serve->add_option("-t,--threads", so.engine.n_threads, "compute threads (0 = OMP_NUM_THREADS, else all cores but one)");
    serve->add_option("--max-body", so.http.max_body, "largest request body in bytes (413 beyond)")->capture_default_str();
    serve->add_option("--timeout", so.http.timeout_seconds, "read and write timeout in seconds (idle keep-alive: 5 s, or this if shorter)")->check(CLI::Range(1, 3600))->capture_default_str();
    serve->add_option("--device", so.device, "cpu (default), cuda or cuda:N");
    serve->add_flag("--think", so.think, "thinking mode unless a request chooses");
    serve->add_flag("--test-hooks", so.test_hooks, "accept scripted completions (\"dsv4_test\" in a body): for tests only");
    bool serve_quiet = false;
    serve->add_flag("-q,--quiet", serve_quiet, "no load progress on stderr");

    auto *bench = app.add_subcommand("bench", "prefill and decode tokens/s on random token ids");
    bench->add_option("-m,--model", bo.model_dir, "checkpoint directory")->required();
    bench->add_option("-p,--n-prompt", bo.n_prompt, "prompt tokens")->check(CLI::Range(1, 1 << 20));
    bench->add_option("-n,--n-gen", bo.n_gen, "decode steps")->check(CLI::Range(1, 1 << 20));
    bench->add_option("-r,--repetitions", bo.repetitions, "runs; the median is reported")->check(CLI::Range(1, 1000));
    bench->add_option("-t,--threads", bo.threads, "compute threads (0 = OMP_NUM_THREADS, else all cores)");
    bench->add_option("--device", bo.device, "cpu (default), cuda or cuda:N");

    dsv4::tools::GoldenOptions gopt;
    auto *golden = app.add_subcommand("eval-golden", "check logits and layer replay against a golden fixture folder");
    golden->add_option("dir", dir, "fixture folder with golden.json")->required();
    golden->add_flag("-v,--verbose", gopt.verbose, "print every row and quantity");
    golden->add_flag("--logits-only", gopt.logits_only, "skip the layer replay");
    golden->add_flag("--layers-only", gopt.layers_only, "skip the logits");
    golden->add_option("-t,--threads", gopt.n_threads, "compute threads (0 = OMP_NUM_THREADS, else all cores)");
    golden->add_option("--device", gopt.device, "cpu (default), cuda or cuda:N");

    int64_t tokens = 1 << 20;
    int rewind = 32;
    auto *memory = app.add_subcommand("memory", "KV-cache memory of one sequence, from a config.json alone");
    memory->add_option("config", dir, "config.json")->required();
    memory->add_option("--tokens", tokens, "sequence length")->check(CLI::Range(int64_t(1), int64_t(1) << 31));
    memory->add_option("--rewind", rewind, "n_rewind of the context")->check(CLI::Range(0, 65536));

    std::string vectors;
    bool tok_verbose = false;
    auto *evtok = app.add_subcommand("eval-tokenizer", "check tokenizer vectors (ids, tokens, decodes) of a JSONL file");
    evtok->add_option("tokenizer", dir, "tokenizer.json")->required();
    evtok->add_option("vectors", vectors, "vectors .jsonl")->required();
    evtok->add_flag("-v,--verbose", tok_verbose, "print every mismatch");

    bool chat_verbose = false;
    auto *evchat = app.add_subcommand("eval-chat", "check chat encoding/parsing cases of a JSONL file");
    evchat->add_option("cases", dir, "cases .jsonl")->required();
    evchat->add_flag("-v,--verbose", chat_verbose, "print every mismatch");

    CLI11_PARSE(app, argc, argv);
    try {
        if (*info) return cmd_info(dir, info_device);
        if (*devices) return cmd_devices();
        if (*run) return dsv4::tools::run(ro);
        if (*chat) return dsv4::tools::chat(ro);
        if (*bench) return dsv4::tools::bench(bo);
        if (*serve) {
            if (so.model_dir.empty()) so.model_dir = dsv4::tools::embedded_model_dir();
            if (!serve_quiet) so.progress = dsv4::tools::show_load_progress;
            return dsv4::serve::serve(so);
        }
        if (*golden) return dsv4::tools::eval_golden(dir, gopt) ? 0 : 1;
        if (*memory) return cmd_memory(dir, tokens, rewind);
        if (*evchat) return dsv4::tools::eval_chat(dir, chat_verbose) ? 0 : 1;
        if (*evtok) return dsv4::tools::eval_tokenizer(dir, vectors, tok_verbose) ? 0 : 1;
    } catch (const dsv4::Error &e) {
        std::fprintf(stderr, "dsv4: %s: %s\n", dsv4_status_name(e.status()), e.what());
        return 2;
    }
    return 1;
}
