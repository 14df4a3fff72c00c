// The checkpoint forger: writes safetensors files and checkpoint directories, intact or broken on purpose.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace dsv4::test {

struct ForgedTensor {
    std::string name, dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> data;
};

// Serialises tensors (offsets assigned in order) into a safetensors image.
std::vector<uint8_t> safetensors_image(const std::vector<ForgedTensor> &tensors);
// An image with a caller-supplied header (for broken headers); data is appended as is.
std::vector<uint8_t> raw_image(const std::string &header_json, const std::vector<uint8_t> &data, uint64_t header_len_override = 0);
void write_file(const std::string &path, const std::vector<uint8_t> &bytes);
void write_text(const std::string &path, const std::string &text);

// The tiny-flash checkpoint's tensors, for edits.
std::vector<ForgedTensor> tiny_flash_tensors();
std::string tiny_flash_config();
// Writes a checkpoint directory from tensors and a config text (single model.safetensors); returns its path.
std::string forge_checkpoint(const std::string &tag, const std::vector<ForgedTensor> &tensors, const std::string &config);
// Same, split into n shards with model.safetensors.index.json.
std::string forge_sharded_checkpoint(const std::string &tag, const std::vector<ForgedTensor> &tensors,
                                     const std::string &config, int n_shards);

}  // namespace dsv4::test
