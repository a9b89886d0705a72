/* loraquant device registry: many packed modules in one GPU buffer.
 *
 * A device format, never a file format: the host builds it (loraquant::cuda::Registry,
 * cuda.h) from Module objects each time adapters are loaded, and the CUDA kernels read
 * it. The payloads inside it are format.h's, copied verbatim; this header only says
 * where they lie. Its helpers are LQ_HD, so the host emulation (registry.cpp) decodes
 * through exactly the indices the kernels use.
 *
 * Buffer (one allocation, every offset in bytes from its start, little-endian):
 *
 *   lq_cuda_module  modules[count]       at 0
 *   lq_cuda_comp    comps[total live]    at comps_offset (a multiple of 16)
 *   payloads                             each module's payload (format.h), at a
 *                                        multiple of 16
 *
 * Only live components (widths > 0) get a lq_cuda_comp; a module's live components are
 * comps[comp_begin .. comp_begin + live - 1], in payload order. The kernels number a
 * module's intermediate values t_c = a_c . x by c, the live index.
 */
#ifndef LORAQUANT_CUDA_DESC_H
#define LORAQUANT_CUDA_DESC_H

#include <stdint.h>

#include "format.h"
#include "half.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LQ_CUDA_B 0                /* index of b_i (length m) in lq_cuda_comp's pairs */
#define LQ_CUDA_A 1                /* index of a_i (length n) */
#define LQ_CUDA_NOT_POW2 0xffu     /* log2_group of a group length that is no power of 2 */
#define LQ_CUDA_RUN 32u            /* entries a warp decodes per step: one per lane */
#define LQ_CUDA_SPLIT_UNIT 512u    /* shrink: entries of a_i one warp covers per pass */
#define LQ_CUDA_MAX_SPLITS 16u     /* shrink: most slices of n, each a partial sum */
#define LQ_CUDA_MAX_LIVE 1024u     /* most live components of one module the kernels take */

/* One module. 32 bytes. */
typedef struct lq_cuda_module {
  uint32_t m;           /* out features: length of every b_i */
  uint32_t n;           /* in features: length of every a_i */
  uint32_t r;           /* rank slots of the payload, width-0 ones included */
  uint32_t live;        /* components with width > 0 */
  uint32_t comp_begin;  /* index in comps[] of its first live component */
  float unit;           /* power of two; every fp16 scale is in units of it */
  uint64_t payload;     /* offset of its payload (format.h) */
} lq_cuda_module;

/* One live component i of a module: where b_i and a_i lie. Pairs are indexed by
 * LQ_CUDA_B and LQ_CUDA_A. 32 bytes. */
typedef struct lq_cuda_comp {
  uint64_t block[2];      /* offsets of the vector blocks of b_i and a_i (scales first) */
  uint32_t group[2];      /* their group lengths, clamped to the vector length (same groups) */
  uint8_t width[2];       /* their bits per entry, 1..8 each */
  uint8_t log2_group[2];  /* log2 of group[k], or LQ_CUDA_NOT_POW2 */
  uint32_t slot;          /* i: its row of A_hat and column of B_hat */
} lq_cuda_comp;

#ifdef __cplusplus
static_assert(sizeof(lq_cuda_module) == 32, "lq_cuda_module must be 32 bytes");
static_assert(sizeof(lq_cuda_comp) == 32, "lq_cuda_comp must be 32 bytes");
#endif

/* One vector block resolved to pointers: what decoding an entry needs. */
typedef struct lq_cuda_vec {
  const uint16_t* scales;  /* fp16 alpha (w == 1) or {delta, zmin} pairs (w >= 2) */
  const uint32_t* words;   /* the code stream */
  uint32_t group;          /* group length */
  uint32_t width;          /* bits per entry */
  uint32_t log2_group;     /* log2(group) or LQ_CUDA_NOT_POW2 */
  float unit;
} lq_cuda_vec;

/* The scales of the group last decoded: a lane keeps them, since neighbouring entries
 * share a group and converting fp16 in software costs more than the entry itself. */
typedef struct lq_cuda_scale {
  uint32_t group;  /* group index these values belong to; UINT32_MAX: none yet */
  float lo;        /* w == 1: alpha; w >= 2: zmin */
  float step;      /* w >= 2: delta */
} lq_cuda_scale;

/* Resolve vector `which` (LQ_CUDA_B or LQ_CUDA_A) of a component, via format.h's sizes:
 * once per component and warp, so that decoding an entry touches no descriptor. */
LQ_HD lq_cuda_vec lq_cuda_vector(const uint8_t* buf, const lq_cuda_module* mod,
                                 const lq_cuda_comp* c, int which) {
  lq_cuda_vec v;
  const uint64_t len = which == LQ_CUDA_B ? mod->m : mod->n;
  const uint8_t* blk = buf + c->block[which];
  v.scales = (const uint16_t*)blk;
  v.words = (const uint32_t*)(blk + lq_pad4(lq_scale_bytes(len, c->width[which], c->group[which])));
  v.group = c->group[which];
  v.width = c->width[which];
  v.log2_group = c->log2_group[which];
  v.unit = mod->unit;
  return v;
}

/* Entry 32 * run + lane of a vector, exactly as decode_vector (quantize.cpp) computes it:
 * same code (lq_get_code on the run's first word), same scales, no fused multiply-add. */
LQ_HD float lq_cuda_entry(const lq_cuda_vec* v, uint32_t run, uint32_t lane, lq_cuda_scale* s) {
  const uint32_t j = run * LQ_CUDA_RUN + lane;
  const uint32_t g = v->log2_group != LQ_CUDA_NOT_POW2 ? j >> v->log2_group : j / v->group;
  if (g != s->group) {
    s->group = g;
    if (v->width == 1) {
      s->lo = lq_half_to_float(v->scales[g]) * v->unit;
    } else {
      s->step = lq_half_to_float(v->scales[2 * (uint64_t)g]) * v->unit;
      s->lo = lq_half_to_float(v->scales[2 * (uint64_t)g + 1]) * v->unit;
    }
  }
  /* A run of 32 entries starts on word run * width, so `lane` indexes inside it. */
  const uint32_t c = lq_get_code(v->words + (uint64_t)run * v->width, lane, v->width);
  if (v->width == 1) return c ? s->lo : -s->lo;
#if defined(__CUDA_ARCH__)
  return __fadd_rn(s->lo, __fmul_rn((float)c, s->step));
#else
  return s->lo + (float)c * s->step;
#endif
}

/* Entries of a_i per slice of n: a multiple of LQ_CUDA_SPLIT_UNIT, chosen so that n
 * needs at most LQ_CUDA_MAX_SPLITS slices (short slices spread a decode over many SMs). */
LQ_HD uint32_t lq_cuda_split_len(uint32_t n) {
  const uint32_t units = (n + LQ_CUDA_SPLIT_UNIT - 1) / LQ_CUDA_SPLIT_UNIT;
  const uint32_t per = (units + LQ_CUDA_MAX_SPLITS - 1) / LQ_CUDA_MAX_SPLITS;
  return (per ? per : 1u) * LQ_CUDA_SPLIT_UNIT;
}

/* Number of slices of n. */
LQ_HD uint32_t lq_cuda_splits(uint32_t n) {
  const uint32_t len = lq_cuda_split_len(n);
  return (n + len - 1) / len;
}

/* Where partial sum (slice s, token t, live component c) lies in the fp32 workspace
 * part[splits][tokens][max_live]: written once by a shrink kernel, read by an expand. */
LQ_HD uint64_t lq_cuda_partial(uint32_t s, uint32_t tokens, uint32_t t, uint32_t max_live,
                               uint32_t c) {
  return ((uint64_t)s * tokens + t) * max_live + c;
}

#ifdef __cplusplus
}
#endif

#endif /* LORAQUANT_CUDA_DESC_H */
