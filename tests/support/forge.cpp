#include "support/forge.h"

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/mapped_file.h"
#include "io/safetensors.h"
#include "support/fixtures.h"

namespace dsv4::test {

std::vector<uint8_t> raw_image(const std::string &header, const std::vector<uint8_t> &data, uint64_t len_override) {
    std::vector<uint8_t> out(8 + header.size() + data.size());
    const uint64_t len = len_override ? len_override : header.size();
    for (int i = 0; i < 8; ++i) out[size_t(i)] = uint8_t(len >> (8 * i));
    std::memcpy(out.data() + 8, header.data(), header.size());
    if (!data.empty()) std::memcpy(out.data() + 8 + header.size(), data.data(), data.size());
    return out;
}

std::vector<uint8_t> safetensors_image(const std::vector<ForgedTensor> &tensors) {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    header["__metadata__"] = {{"format", "pt"}};
    std::vector<uint8_t> data;
    for (const ForgedTensor &t : tensors) {
        header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {data.size(), data.size() + t.data.size()}}};
        data.insert(data.end(), t.data.begin(), t.data.end());
    }
    std::string text = header.dump();
    while ((text.size() + 8) % 8) text += ' ';
    return raw_image(text, data);
}

void write_file(const std::string &path, const std::vector<uint8_t> &bytes) {
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char *>(bytes.data()), std::streamsize(bytes.size()));
}

void write_text(const std::string &path, const std::string &text) {
    std::ofstream f(path, std::ios::binary);
    f << text;
}

std::vector<ForgedTensor> tiny_flash_tensors() {
    io::SafetensorsFile file(tiny_flash_dir() + "/model.safetensors", false);
    std::vector<ForgedTensor> out;
    for (const io::TensorView &t : file.tensors())
        out.push_back({t.name, std::string(core::dtype_name(t.dtype)), t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes)});
    return out;
}

std::string tiny_flash_config() { return io::read_text_file(tiny_flash_dir() + "/config.json"); }

std::string forge_checkpoint(const std::string &tag, const std::vector<ForgedTensor> &tensors, const std::string &config) {
    const std::string dir = temp_dir(tag);
    write_text(dir + "/config.json", config);
    write_file(dir + "/model.safetensors", safetensors_image(tensors));
    return dir;
}

std::string forge_sharded_checkpoint(const std::string &tag, const std::vector<ForgedTensor> &tensors,
                                     const std::string &config, int n_shards) {
    const std::string dir = temp_dir(tag);
    write_text(dir + "/config.json", config);
    nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
    std::vector<std::vector<ForgedTensor>> shards(static_cast<size_t>(n_shards));
    for (size_t i = 0; i < tensors.size(); ++i) shards[i % size_t(n_shards)].push_back(tensors[i]);
    for (int s = 0; s < n_shards; ++s) {
        char name[64];
        std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
        write_file(dir + "/" + name, safetensors_image(shards[size_t(s)]));
        for (const ForgedTensor &t : shards[size_t(s)]) index["weight_map"][t.name] = name;
    }
    write_text(dir + "/model.safetensors.index.json", index.dump(1));
    return dir;
}

}  // namespace dsv4::test
