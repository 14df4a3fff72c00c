#include "backend/cpu/isa.h"

#include <cpuid.h>
#include <cstdint>
#include <cstdlib>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/error.h"

namespace dsv4::backend::cpu {
namespace {

uint64_t xgetbv0() {
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return (uint64_t(edx) << 32) | eax;
}

// Linux gives a process AMX tile data only after it asks (arch_prctl ARCH_REQ_XCOMP_PERM, since 5.16).
bool os_allows_amx() {
    constexpr int kArchReqXcompPerm = 0x1023;
    constexpr int kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

Isa detect_uncached() {
    uint32_t a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return Isa::generic;
    const bool osxsave = c & (1u << 27);
    if (!osxsave) return Isa::generic;
    const uint64_t xcr0 = xgetbv0();
    // SSE, AVX and the three AVX-512 state components must be enabled by the OS.
    if ((xcr0 & 0xe6) != 0xe6) return Isa::generic;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return Isa::generic;
    const bool f = b & (1u << 16), bw = b & (1u << 30), vl = b & (1u << 31);
    if (!(f && bw && vl)) return Isa::generic;
    const bool amx_bf16 = d & (1u << 22), amx_tile = d & (1u << 24), amx_int8 = d & (1u << 25);
    const bool vbmi = c & (1u << 1), vnni = c & (1u << 11), dq = b & (1u << 17);
    uint32_t a1 = 0, b1, c1, d1;
    __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1);
    const bool bf16 = a1 & (1u << 5);
    if (!(bf16 && vbmi && vnni && dq)) return Isa::avx512;  // BF16 without VBMI: Cooper Lake only
    const bool tile_state = (xcr0 & (3u << 17)) == (3u << 17);  // XTILECFG + XTILEDATA
    if (amx_bf16 && amx_tile && amx_int8 && tile_state && os_allows_amx()) return Isa::amx;
    return Isa::avx512_bf16;
}

}  // namespace

const char *isa_name(Isa isa) {
    switch (isa) {
    case Isa::generic: return "generic";
    case Isa::avx512: return "avx512";
    case Isa::avx512_bf16: return "avx512_bf16";
    case Isa::amx: return "amx";
    }
    return "unknown";
}

Isa detect_isa() {
    static const Isa isa = detect_uncached();
    return isa;
}

Isa capped_isa(const std::string &cap) {
    for (Isa isa : {Isa::generic, Isa::avx512, Isa::avx512_bf16, Isa::amx})
        if (cap == isa_name(isa)) return isa < detect_isa() ? isa : detect_isa();
    fail(DSV4_ERR_INVALID_ARGUMENT, "DSV4_MAX_CPU_ISA = '{}': expected generic, avx512, avx512_bf16 or amx", cap);
}

Isa selected_isa() {
    const char *cap = std::getenv("DSV4_MAX_CPU_ISA");
    return cap && *cap ? capped_isa(cap) : detect_isa();
}

}  // namespace dsv4::backend::cpu
