#include "io/checkpoint.h"

#include <algorithm>
#include <map>
#include <set>
#include <sys/stat.h>

#include "core/error.h"
#include "io/json.h"

namespace dsv4::io {
namespace {
bool exists(const std::string &path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
}
}  // namespace

Checkpoint::Checkpoint(const std::string &dir, bool use_mmap, Progress progress, void *progress_user) : dir_(dir) {
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0) fail(DSV4_ERR_IO_NOT_FOUND, "{}: no such directory", dir);
    if (!S_ISDIR(st.st_mode)) fail(DSV4_ERR_IO_READ, "{}: not a directory", dir);

    const std::string index_path = dir + "/model.safetensors.index.json";
    // shard file name -> tensors the index assigns to it (empty for a single-file checkpoint)
    std::map<std::string, std::set<std::string>> expected;
    if (exists(index_path)) {
        nlohmann::json index = parse_json(read_text_file(index_path), "model.safetensors.index.json");
        auto map = index.find("weight_map");
        if (!index.is_object() || map == index.end() || !map->is_object())
            fail(DSV4_ERR_FORMAT_INDEX, "model.safetensors.index.json: missing object 'weight_map'");
        for (auto it = map->begin(); it != map->end(); ++it) {
            if (!it->is_string())
                fail(DSV4_ERR_FORMAT_INDEX, "model.safetensors.index.json: weight_map.{}: not a file name", it.key());
            std::string shard = it->get<std::string>();
            if (shard.empty() || shard.find('/') != std::string::npos || shard[0] == '.')
                fail(DSV4_ERR_FORMAT_INDEX, "model.safetensors.index.json: weight_map.{}: bad file name '{}'",
                     it.key(), shard);
            expected[shard].insert(it.key());
        }
        if (expected.empty()) fail(DSV4_ERR_FORMAT_INDEX, "model.safetensors.index.json: weight_map is empty");
    } else if (exists(dir + "/model.safetensors")) {
        expected["model.safetensors"];
    } else {
        fail(DSV4_ERR_IO_NOT_FOUND, "{}: neither model.safetensors nor model.safetensors.index.json found", dir);
    }

    // Progress is reported in bytes of shard files opened and validated.
    uint64_t total = 0, done = 0;
    for (const auto &entry : expected) {
        struct stat shard_stat {};
        if (::stat((dir + "/" + entry.first).c_str(), &shard_stat) == 0) total += uint64_t(shard_stat.st_size);
    }
    for (const auto &[shard, names] : expected) {
        auto file = std::make_unique<SafetensorsFile>(dir + "/" + shard, use_mmap);
        for (const TensorView &t : file->tensors()) {
            if (!by_name_.emplace(t.name, &t).second)
                fail(DSV4_ERR_FORMAT_DUPLICATE, "{}: {}: tensor also present in {}", shard, t.name,
                     *by_name_[t.name]->file);
            if (!names.empty() && !names.count(t.name))
                fail(DSV4_ERR_FORMAT_INDEX, "{}: {}: tensor not listed for this shard in model.safetensors.index.json",
                     shard, t.name);
        }
        for (const std::string &name : names)
            if (!by_name_.count(name))
                fail(DSV4_ERR_FORMAT_INDEX, "{}: {}: listed in model.safetensors.index.json but not in the shard",
                     shard, name);
        done += file->file_size();
        shards_.push_back(std::move(file));
        if (progress && !progress(std::min(done, total), total, progress_user))
            fail(DSV4_ERR_CANCELLED, "{}: loading cancelled by the progress callback", dir);
    }
}

const TensorView *Checkpoint::find(const std::string &name) const {
    auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : it->second;
}

uint64_t Checkpoint::data_bytes() const {
    uint64_t n = 0;
    for (const auto &s : shards_) n += s->data_bytes();
    return n;
}

}  // namespace dsv4::io
