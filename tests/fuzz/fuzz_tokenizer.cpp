// libFuzzer target: encoding any byte string either yields ids that decode back to the input (the DeepSeek-V4
// tokenizer is lossless on valid UTF-8) or fails with dsv4::Error for invalid UTF-8.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const std::unique_ptr<dsv4::tokenizer::Tokenizer> tok =
        dsv4::tokenizer::Tokenizer::load(DSV4_TEST_DATA_DIR "/tokenizer/tokenizer.json");
    const std::string text(reinterpret_cast<const char *>(data), size);
    std::vector<int32_t> ids;
    try {
        ids = tok->encode(text);
    } catch (const dsv4::Error &) {
        return 0;
    }
    if (tok->decode(ids.data(), ids.size(), false) != text) std::abort();
    return 0;
}
