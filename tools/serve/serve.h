// `dsv4 serve`: OpenAI- and Anthropic-compatible HTTP server on the library's C API.
#pragma once
#include <string>

#include "engine.h"
#include "http.h"

namespace dsv4::serve {

struct ServeOptions {
    std::string model_dir;      // checkpoint directory (the CLI puts the embedded model's here when none is named)
    std::string alias;          // model id in the APIs; default: the checkpoint directory's name
    HttpOptions http;
    EngineOptions engine;
    bool test_hooks = false;    // honour "dsv4_test" in request bodies (scripted completions, for tests)
    bool think = false;         // thinking mode unless a request says otherwise
    dsv4_progress_callback progress = nullptr;  // model load progress
    std::string device = "cpu";  // dsv4_model_params::device
};

// Runs until SIGTERM / SIGINT; returns the process exit code.
int serve(const ServeOptions &options);

}  // namespace dsv4::serve
