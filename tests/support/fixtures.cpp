#include "support/fixtures.h"

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <unistd.h>

namespace dsv4::test {

const model::Model &tiny_flash() {
    static std::unique_ptr<model::Model> m = model::Model::load(tiny_flash_dir(), model::LoadOptions{});
    return *m;
}

namespace {
struct TempRoot {
    std::filesystem::path root;
    TempRoot() {
        root = std::filesystem::temp_directory_path() / ("dsv4-test-" + std::to_string(::getpid()));
        std::filesystem::create_directories(root);
    }
    ~TempRoot() {
        std::error_code ec;
        std::filesystem::remove_all(root, ec);
    }
};
}  // namespace

std::string temp_dir(const std::string &tag) {
    static TempRoot root;
    static int counter = 0;
    auto p = root.root / (tag + "-" + std::to_string(counter++));
    std::filesystem::create_directories(p);
    return p.string();
}

}  // namespace dsv4::test
