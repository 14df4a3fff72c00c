#include "core/log.h"

#include <atomic>
#include <cstdio>

namespace dsv4::core {
namespace {
dsv4_log_callback g_callback = nullptr;
void *g_user_data = nullptr;
std::atomic<int> g_level{DSV4_LOG_LEVEL_WARN};
const char *level_name(dsv4_log_level level) {
    switch (level) {
        case DSV4_LOG_LEVEL_ERROR: return "error";
        case DSV4_LOG_LEVEL_WARN: return "warn";
        case DSV4_LOG_LEVEL_INFO: return "info";
        default: return "debug";
    }
}
}  // namespace

bool log_enabled(dsv4_log_level level) { return level <= g_level.load(std::memory_order_relaxed); }

void log_message(dsv4_log_level level, const std::string &message) {
    if (!log_enabled(level)) return;
    if (g_callback) {
        g_callback(level, message.c_str(), g_user_data);
    } else {
        std::fprintf(stderr, "dsv4 %s: %s\n", level_name(level), message.c_str());
    }
}

void set_log_callback(dsv4_log_callback callback, void *user_data) {
    g_callback = callback;
    g_user_data = user_data;
}
void set_log_level(dsv4_log_level level) { g_level.store(level, std::memory_order_relaxed); }

}  // namespace dsv4::core
