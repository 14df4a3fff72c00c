// A Hugging Face checkpoint directory: config.json plus one model.safetensors or the shards listed by
// model.safetensors.index.json, joined into one tensor namespace.
#pragma once
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "io/safetensors.h"

namespace dsv4::io {

class Checkpoint {
public:
    using Progress = bool (*)(uint64_t done, uint64_t total, void *user);
    // Throws dsv4::Error naming the directory, shard or tensor at fault.
    Checkpoint(const std::string &dir, bool use_mmap, Progress progress = nullptr, void *progress_user = nullptr);

    const std::string &dir() const { return dir_; }
    const TensorView *find(const std::string &name) const;
    const std::vector<std::unique_ptr<SafetensorsFile>> &shards() const { return shards_; }
    uint64_t data_bytes() const;

private:
    std::string dir_;
    std::vector<std::unique_ptr<SafetensorsFile>> shards_;
    std::unordered_map<std::string, const TensorView *> by_name_;
};

}  // namespace dsv4::io
