// core::ScratchScope: large temporaries freed inside a scope are handed out again, nothing is kept outside one.
#include <catch2/catch.hpp>

#include "core/scratch.h"

using dsv4::core::FloatBuffer;
using dsv4::core::ScratchScope;

namespace {
constexpr size_t kLarge = size_t(1) << 19;  // floats: 2 MiB, above the size the pool keeps
}

TEST_CASE("inside a scratch scope a freed large block serves the next request that fits", "[scratch]") {
    const ScratchScope scope;
    const float *first;
    {
        FloatBuffer a(kLarge, 1.0f);
        first = a.data();
    }
    FloatBuffer b(kLarge - 100);  // fits, wastes less than half
    REQUIRE(b.data() == first);
    REQUIRE(b[0] == 0.0f);  // value-initialised as any vector
    FloatBuffer c(kLarge);      // the block is taken: a new one
    REQUIRE(c.data() != first);
}

TEST_CASE("a kept block is not handed to a request less than half its size, nor kept outside a scope", "[scratch]") {
    {
        const ScratchScope scope;
        const float *first;
        {
            FloatBuffer a(kLarge * 4);
            first = a.data();
        }
        FloatBuffer small(kLarge);
        REQUIRE(small.data() != first);
        {
            const ScratchScope nested;  // nested scopes share the pool; only the outermost releases it
        }
        FloatBuffer again(kLarge * 4);
        REQUIRE(again.data() == first);
    }
    // no scope: plain allocation, so a vector's memory works as usual
    FloatBuffer plain(kLarge, 2.0f);
    plain.resize(kLarge * 2, 3.0f);
    REQUIRE(plain[0] == 2.0f);
    REQUIRE(plain[kLarge * 2 - 1] == 3.0f);
}

TEST_CASE("a pool given to the scope keeps its blocks from one scope to the next until it is released", "[scratch]") {
    dsv4::core::ScratchPool pool;
    const float *first;
    {
        const ScratchScope scope(&pool);
        FloatBuffer a(kLarge);
        first = a.data();
    }
    REQUIRE(pool.bytes() == kLarge * sizeof(float));
    {
        const ScratchScope scope(&pool);
        FloatBuffer b(kLarge);
        REQUIRE(b.data() == first);  // no fresh pages: the block of the previous pass
    }
    pool.release();
    REQUIRE(pool.bytes() == 0);
}
