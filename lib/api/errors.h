// The one exception-to-status boundary of the C API (ONNX Runtime's API_IMPL_BEGIN/END idea).
#pragma once
#include <dsv4/dsv4.h>

#include <string>

namespace dsv4::api {

void set_last_error(dsv4_status status, const std::string &message);
void clear_last_error();
// Maps the in-flight exception to a status and records its message.
dsv4_status handle_exception() noexcept;

}  // namespace dsv4::api

#define DSV4_API_BEGIN \
    try {              \
        ::dsv4::api::clear_last_error();
#define DSV4_API_END                                   \
    return DSV4_OK;                                    \
    }                                                  \
    catch (...) {                                      \
        return ::dsv4::api::handle_exception();        \
    }
