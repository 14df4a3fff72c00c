// libFuzzer target: any byte string given to the safetensors validator either parses into views that lie
// inside the buffer or throws dsv4::Error; never a crash, a hang or an out-of-bounds read.
#include <cstdint>
#include <cstdlib>

#include "core/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    std::vector<dsv4::io::TensorView> views;
    try {
        dsv4::io::SafetensorsFile::validate_buffer(data, size, "fuzz.safetensors", &views);
    } catch (const dsv4::Error &) {
        return 0;
    }
    for (const auto &v : views) {
        if (v.data < data || v.data + v.nbytes > data + size) std::abort();
        volatile uint8_t sink = 0;
        for (uint64_t i = 0; i < v.nbytes; ++i) sink = uint8_t(sink ^ v.data[i]);  // touch every byte: ASan checks bounds
        (void)sink;
    }
    return 0;
}
