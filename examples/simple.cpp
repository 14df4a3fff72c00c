// simple.cpp: the same as simple.c through the header-only C++ layer (dsv4.hpp).
// Usage: dsv4_simple_cpp MODEL_DIR [N_PREDICT]
#include <dsv4/dsv4.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

int main(int argc, char **argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL_DIR [N_PREDICT]\n", argv[0]);
        return 2;
    }
    try {
        dsv4::Model model(argv[1]);
        dsv4::Context ctx(model);
        const int n_predict = argc > 2 ? std::atoi(argv[2]) : 8;
        std::vector<int32_t> tokens = {0};
        for (int i = 0; i < n_predict; ++i) {
            ctx.decode(std::span<const int32_t>(&tokens.back(), 1));
            auto logits = ctx.logits();
            tokens.push_back(int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin()));
            std::printf("%d ", tokens.back());
        }
        std::printf("\n%s: %d positions cached, %llu cache bytes\n", model.info().name, ctx.seq_length(),
                    static_cast<unsigned long long>(ctx.memory_stats().cache_bytes));
        ctx.seq_truncate(0, 99);  // past the end: throws
    } catch (const dsv4::Error &e) {
        std::printf("caught %s\n", e.what());
        return e.status() == DSV4_ERR_INVALID_ARGUMENT_POSITION ? 0 : 1;
    }
    return 1;
}
