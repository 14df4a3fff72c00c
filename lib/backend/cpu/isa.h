// Instruction sets of the CPU backend's kernels, detected at run time (CPUID + the OS's saved-state support),
// capped by DSV4_MAX_CPU_ISA so tests can force a lower path.
#pragma once
#include <string>

namespace dsv4::backend::cpu {

// Ordered: each level implies the ones before it.
enum class Isa {
    generic = 0,     // portable C++ (the reference kernels)
    avx512 = 1,      // AVX-512 F + BW + VL
    avx512_bf16 = 2, // + AVX512_BF16 (vdpbf16ps), AVX512_VBMI (byte permutes), AVX512_VNNI, AVX512DQ
    amx = 3,         // + AMX-TILE / AMX-BF16 / AMX-INT8, with the OS's permission for tile data
};

const char *isa_name(Isa isa);
// What this CPU and OS support, without any cap.
Isa detect_isa();
// detect_isa() capped by the environment variable DSV4_MAX_CPU_ISA ("generic", "avx512", "avx512_bf16",
// "amx"); an unknown value is an error naming it (DSV4_ERR_INVALID_ARGUMENT).
Isa selected_isa();
// The lower of the detected ISA and the named cap (same names as DSV4_MAX_CPU_ISA).
Isa capped_isa(const std::string &cap);

}  // namespace dsv4::backend::cpu
