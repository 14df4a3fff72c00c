// libFuzzer target: config.json parsing either yields a validated config or throws dsv4::Error.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "io/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    try {
        dsv4::io::ModelConfig c = dsv4::io::parse_config(std::string(reinterpret_cast<const char *>(data), size));
        if (c.layers.size() != size_t(c.n_layers + c.n_mtp_layers)) std::abort();
    } catch (const dsv4::Error &) {
    }
    return 0;
}
