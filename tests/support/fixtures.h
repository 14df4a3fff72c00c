// Paths of the test data copied into the project (tests/data, from shared/fixtures) and a shared model.
#pragma once
#include <string>

#include "model/model.h"

namespace dsv4::test {

inline std::string data_dir() { return DSV4_TEST_DATA_DIR; }
inline std::string tiny_flash_dir() { return data_dir() + "/tiny-flash/model"; }
// The tiny-flash model, loaded once per test process.
const model::Model &tiny_flash();

// A fresh temporary directory, removed at process exit.
std::string temp_dir(const std::string &tag);

}  // namespace dsv4::test
