#include "api/errors.h"

#include <new>

#include "core/error.h"

namespace dsv4::api {
namespace {
thread_local dsv4_status t_status = DSV4_OK;
thread_local std::string t_message;
}  // namespace

void set_last_error(dsv4_status status, const std::string &message) {
    t_status = status;
    t_message = message;
}

void clear_last_error() {
    t_status = DSV4_OK;
    t_message.clear();
}

dsv4_status handle_exception() noexcept {
    try {
        throw;
    } catch (const dsv4::Error &e) {
        set_last_error(e.status(), e.what());
    } catch (const std::bad_alloc &) {
        set_last_error(DSV4_ERR_OUT_OF_MEMORY, "out of memory");
    } catch (const std::exception &e) {
        set_last_error(DSV4_ERR_INTERNAL, std::string("internal error: ") + e.what());
    } catch (...) {
        set_last_error(DSV4_ERR_INTERNAL, "internal error: unknown exception");
    }
    return t_status;
}

}  // namespace dsv4::api

extern "C" {
DSV4_API dsv4_status dsv4_last_error_status(void) { return dsv4::api::t_status; }
DSV4_API const char *dsv4_last_error_message(void) { return dsv4::api::t_message.c_str(); }
DSV4_API void dsv4_clear_last_error(void) { dsv4::api::clear_last_error(); }
}
