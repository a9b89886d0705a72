/* IEEE binary16 conversion, portable and bit-exact on host and device.
 * Stored scales are fp16; these two functions are their only encoder and decoder. */
#ifndef LORAQUANT_HALF_H
#define LORAQUANT_HALF_H

#include <stdint.h>
#include <string.h>

#include "format.h"

#ifdef __cplusplus
extern "C" {
#endif

LQ_HD uint32_t lq_f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

LQ_HD float lq_bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* float -> half, round to nearest even; overflow gives +-inf, NaN stays NaN. */
LQ_HD uint16_t lq_float_to_half(float f) {
  uint32_t x = lq_f32_bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t exp = (x >> 23) & 0xffu;
  uint32_t man = x & 0x7fffffu;
  if (exp == 0xffu) return (uint16_t)(sign | 0x7c00u | (man ? 0x200u : 0u));
  int32_t e = (int32_t)exp - 127 + 15;
  if (e >= 31) return (uint16_t)(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return (uint16_t)sign; /* underflows to zero */
    man |= 0x800000u;                   /* subnormal half */
    uint32_t shift = (uint32_t)(14 - e);
    uint32_t h = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) h++;
    return (uint16_t)(sign | h);
  }
  uint32_t h = ((uint32_t)e << 10) | (man >> 13);
  uint32_t rem = man & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; /* may carry into inf */
  return (uint16_t)(sign | h);
}

/* half -> float, exact. */
LQ_HD float lq_half_to_float(uint16_t h) {
  uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
  uint32_t exp = ((uint32_t)h >> 10) & 0x1fu;
  uint32_t man = (uint32_t)h & 0x3ffu;
  if (exp == 0) {
    /* zero or subnormal: man * 2^-24 */
    float v = (float)man * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  if (exp == 31) return lq_bits_f32(sign | 0x7f800000u | (man << 13));
  return lq_bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

#ifdef __cplusplus
}
#endif

#endif /* LORAQUANT_HALF_H */
