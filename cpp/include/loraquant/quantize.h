// Per-group quantizers and bit-packing for one vector block (layout: format.h).
#ifndef LORAQUANT_QUANTIZE_H
#define LORAQUANT_QUANTIZE_H

#include <cstddef>
#include <cstdint>

namespace loraquant {

// Pack `len` codes of `width` bits (each < 2^width) into lq_code_words(len, width)
// words, as format.h specifies. Fast path: word at a time.
void pack_codes(const uint8_t* codes, size_t len, uint32_t width, uint32_t* words);
// Reference: one bit at a time. pack_codes must produce the same words.
void pack_codes_ref(const uint8_t* codes, size_t len, uint32_t width, uint32_t* words);
// Inverse of pack_codes.
void unpack_codes(const uint32_t* words, size_t len, uint32_t width, uint8_t* codes);

// Encode one vector at `width` (1..8) into a vector block at `dst`
// (lq_vector_bytes(len, width, group) bytes). Scales are stored as fp16 in units of
// `unit`. With `range_search`, each RTN group tries a few shrunken ranges and keeps
// the one of least squared error; otherwise it uses min/max. If `deq` is not null it
// receives the decoded values, exactly as decode_vector would produce them.
void encode_vector(const float* x, size_t len, uint32_t width, uint64_t group,
                   float unit, bool range_search, uint8_t* dst, float* deq);

// The two halves of encode_vector. choose_scales writes the stored fp16 scales of
// every group (lq_scale_bytes(len, width, group) / 2 values: mean |x| of a sign group,
// delta and zmin of an RTN group); write_block writes the vector block (and, if `deq`
// is not null, the decoded values) from those scales.
void choose_scales(const float* x, size_t len, uint32_t width, uint64_t group, float unit,
                   bool range_search, uint16_t* scales);
void write_block(const float* x, size_t len, uint32_t width, uint64_t group, float unit,
                 const uint16_t* scales, uint8_t* dst, float* deq);
// x_hat . xe and |x_hat|^2 in double, x_hat the values write_block would decode from
// (x, scales), without writing them; xe is the exact vector x was rounded from.
void decoded_dot(const float* x, const double* xe, size_t len, uint32_t width, uint64_t group,
                 float unit, const uint16_t* scales, double* dot, double* norm2);

// The quantizer's inner loops and the tall-matrix products of the SVD and the exact
// error run as SIMD kernels where the CPU has them (AVX2 with FMA), else as the scalar
// reference; both give the same bits (the reference fuses with std::fma where the SIMD
// code does). use_reference_kernels(true) forces the reference (tests compare the
// two); kernels_name() says which set runs now: "avx2" or "reference".
void use_reference_kernels(bool on);
const char* kernels_name();

// Reference decoder of a vector block: writes len floats.
void decode_vector(const uint8_t* block, size_t len, uint32_t width, uint64_t group,
                   float unit, float* out);

// Power-of-two unit such that every scale of vectors bounded by max_abs fits fp16.
float choose_unit(double max_abs);

}  // namespace loraquant

#endif
