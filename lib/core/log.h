// Library logging: one process-wide sink (dsv4_log_set) and level.
#pragma once
#include <dsv4/dsv4.h>
#include <fmt/format.h>

namespace dsv4::core {

void log_message(dsv4_log_level level, const std::string &message);
bool log_enabled(dsv4_log_level level);
void set_log_callback(dsv4_log_callback callback, void *user_data);
void set_log_level(dsv4_log_level level);

template <typename... Args>
void log(dsv4_log_level level, fmt::format_string<Args...> format, Args &&...args) {
    if (log_enabled(level)) log_message(level, fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace dsv4::core
