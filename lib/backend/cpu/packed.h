// The CPU kernels' packed weight layout: an optional load-time copy of a quantised matrix (dsv4_model_params::
// repack_weights) in which every 64-byte unit holds 16 rows × a few elements, decoded into vectors of 16 rows ×
// 2 elements (bf16 pairs). One broadcast pair of activations then feeds 16 rows per vdpbf16ps, with no horizontal
// sums, so extra activation columns (batched decode, prefill) cost one instruction per 32 weights each, and every
// output sums in one order whatever the number of columns. The copy has the checkpoint tensor's size; the
// checkpoint's own bytes stay mapped (zero-copy) and serve every path that does not read the copy.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/matrix.h"

namespace dsv4::backend::cpu {

// FP4 (rows a multiple of 16, cols of 32): [rows/16][cols/8] units of 64 bytes, then the scales [rows/16][cols/32]
// [16] (the 16 rows' codes of each group side by side), then one byte per block: 1 where the kernels take it (see
// packed_fp4_block_takes; checking the block's scales at every call read them twice, the first time cold). In a unit, little-endian word j (bytes 2j, 2j+1) belongs to
// row 16·block + j/2, and its nibble q (bits 4q..4q+3) holds the code of element 8·unit + 2q + (j & 1): shifting the
// unit by 4q and one vpermw give the bf16 pairs (2q, 2q+1) of the 16 rows.
// FP8 (rows a multiple of 16, cols of 128): [rows/16][cols/4] units of 64 bytes; the 128x128 block scales stay in
// the checkpoint's tensor. Byte 16L + 8v + t (lane L, half v, t < 8) of a unit holds the code of row
// 16·block + 4L + t/2, element 4·unit + 2v + (t & 1): the FP8 decode's byte interleaves then give the bf16
// pairs (2v, 2v+1) of the 16 rows.
// Rows per packed block: the layout's unit (one vector of 16 fp32 sums).
constexpr int64_t kPackedBlockRows = 16;
// Whether the packed kernels take block b: its scale codes keep every decoded (or scaled) value a normal float.
// Other blocks go to the exact generic loops, whatever the kernel and the number of columns.
bool packed_fp4_block_takes(const core::Fp4Matrix &w, int64_t b);
bool packed_fp8_block_takes(const core::Fp8Matrix &w, int64_t b);

// packed_*_bytes: the copy's size, 0 where the layout does not apply (the matrix keeps the checkpoint's layout).
size_t packed_fp4_bytes(const core::Fp4Matrix &w);
size_t packed_fp8_bytes(const core::Fp8Matrix &w);
// Writes the copy of rows [r0, r1) (multiples of 16) into dst (packed_*_bytes of it), so that callers can split
// the work over threads.
void pack_fp4_rows(const core::Fp4Matrix &w, int64_t r0, int64_t r1, uint8_t *dst);
void pack_fp8_rows(const core::Fp8Matrix &w, int64_t r0, int64_t r1, uint8_t *dst);

// y[i, r] = bf16(Σ_c act[i, c] · w[r, c]) for rows [r0, r1) (multiples of 16) and every i < n from w.packed; act in
// the natural layout (quantised as the reference does). FP4 sums each group's 32 products in pair order from zero,
// then adds the partial times the group's scale (an FMA); FP8 folds the block scale into the decoded weights and
// adds every pair in turn to one sum. Rows whose scales the kernels cannot take go to fp*_rows_generic (natural
// layout), for every n alike.
void fp4_packed_rows(const core::Fp4Matrix &w, const uint16_t *act, int64_t n, int64_t r0, int64_t r1, float *y);
void fp8_packed_rows(const core::Fp8Matrix &w, const uint16_t *act, int64_t n, int64_t r0, int64_t r1, float *y);
// The same contracts on AMX tiles (amx.cpp), only where the CPU and OS allow AMX (Isa::amx), with `panel` a
// thread's kAmxPanelElements of scratch: a block's weights decoded into B tiles with their scales folded in, then
// every token passes over them. Every number of columns sums in the tiles' order, which differs from the AVX-512
// kernels' (the two never mix).
constexpr int64_t kAmxPanelElements = int64_t(16) * 8192;  // bf16: 16 rows x up to 8,192 elements (256 KiB)
void fp4_packed_rows_amx(const core::Fp4Matrix &w, const uint16_t *act, int64_t n, int64_t r0, int64_t r1, float *y,
                         uint16_t *panel);
void fp8_packed_rows_amx(const core::Fp8Matrix &w, const uint16_t *act, int64_t n, int64_t r0, int64_t r1, float *y,
                         uint16_t *panel);

}  // namespace dsv4::backend::cpu
