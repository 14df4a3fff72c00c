// Internal error type: code throws dsv4::Error; lib/api maps it to a status at the C boundary.
#pragma once
#include <dsv4/dsv4.h>
#include <fmt/format.h>
#include <stdexcept>
#include <string>

namespace dsv4 {

class Error : public std::runtime_error {
public:
    Error(dsv4_status status, std::string message) : std::runtime_error(std::move(message)), status_(status) {}
    dsv4_status status() const noexcept { return status_; }

private:
    dsv4_status status_;
};

template <typename... Args>
[[noreturn]] void fail(dsv4_status status, fmt::format_string<Args...> format, Args &&...args) {
    throw Error(status, fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace dsv4
