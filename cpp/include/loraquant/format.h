/* loraquant packed formats: the one definition of every stored layout.
 *
 * Included by the C++ core, the CUDA kernels and the C API, so a layout is never
 * retyped. Plain C99/C++ with no dependencies. Everything is little-endian.
 *
 * A compressed LoRA module approximates  dW = s * B @ A  (B: m x r, A: r x n) by
 *
 *     dW_hat = sum_i  b_i a_i^T        i = 0 .. r-1,
 *
 * where b_i (length m) and a_i (length n) are the i-th SVD component with the
 * singular value and the scaling s folded in (b_i = u_i sqrt(s sigma_i),
 * a_i = v_i sqrt(s sigma_i)). Each vector is stored at its own width w bits per
 * entry (b_i and a_i may differ; both are 0 or neither is):
 *
 *   w = 0    the component is dropped; nothing is stored for it.
 *   w = 1    x = code ? +alpha : -alpha              (alpha per group)
 *   w = 2..8 x = zmin + code * delta, code in [0, 2^w - 1]   (delta, zmin per group)
 *
 * Groups are consecutive entries of one vector (down a column of B', along a row of
 * A'), so a group never mixes components. Each vector has its own group length:
 * group_size << shift, with one shift per vector stored in the payload. The last
 * group of a vector may be shorter; a group length >= the vector length means one
 * group for the whole vector (one scale per vector).
 *
 * ---- the blob: one module, as QuantizedLoRA.to_bytes() writes it ----------------
 *
 *   lq_blob_header      48 bytes, below (not counted in avg_bits: fixed size)
 *   payload             payload_bytes bytes, all counted in avg_bits:
 *
 *     uint8  b_width[r]             width of b_i, 0..8
 *     uint8  a_width[r]             width of a_i, 0..8 (0 exactly when b_width[i] is)
 *     uint8  b_shift[r]             group length of b_i is group_size << b_shift[i]
 *     uint8  a_shift[r]             group length of a_i is group_size << a_shift[i]
 *     uint8  pad[]                  zeros up to a multiple of 4 bytes (shifts <= 24,
 *                                   and 0 for dropped components)
 *     float  unit                   power of two; every fp16 scale is in units of it
 *     for i in 0..r-1 with b_width[i] > 0:
 *        vector block of b_i (length m)
 *        vector block of a_i (length n)
 *
 *   vector block (length L, width w, group length g, G = ceil(L / g) groups):
 *     scales    w == 1: G x fp16 alpha;  w >= 2: G x { fp16 delta, fp16 zmin }
 *               each value is half_to_float(h) * unit
 *     pad       zeros up to a multiple of 4 bytes
 *     codes     ceil(L * w / 32) uint32 words. Entry j occupies bits j*w .. j*w+w-1
 *               of the little-endian bit stream formed by the words (bit k of the
 *               stream is bit k%32 of word k/32). An entry may straddle two words
 *               (w = 3, 5, 6, 7). Unused high bits of the last word are zero.
 *
 * Bits per weight of a component at width w with group length g, per vector entry:
 *   w + 16/g (w == 1) or w + 32/g (w >= 2), plus padding to 4 bytes per vector.
 *   At g = 128: 1.125, 2.25, 3.25, 4.25 ... bits.
 */
#ifndef LORAQUANT_FORMAT_H
#define LORAQUANT_FORMAT_H

#include <stdint.h>
#include <stddef.h>

#if defined(__CUDACC__)
#define LQ_HD __host__ __device__ __forceinline__
#else
#define LQ_HD static inline
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define LQ_BLOB_MAGIC "LQM1"     /* first 4 bytes of a blob */
#define LQ_BLOB_VERSION 1
#define LQ_MAX_WIDTH 8           /* widest code, bits */
#define LQ_MAX_RANK 4096         /* largest rank a blob may declare */
#define LQ_MAX_DIM (1u << 24)    /* largest m or n a blob may declare */
#define LQ_MAX_GROUP (1u << 20)  /* largest group size a blob may declare */
#define LQ_MAX_SHIFT 24          /* largest per-vector group shift */
#define LQ_SCALE_FORMAT_FP16 0   /* per-group fp16 scales in units of `unit` */

/* Fixed header in front of a module's payload. 48 bytes, little-endian. */
typedef struct lq_blob_header {
  char magic[4];           /* "LQM1" */
  uint16_t version;        /* LQ_BLOB_VERSION */
  uint16_t header_bytes;   /* sizeof(lq_blob_header) = 48 */
  uint32_t m;              /* out features (rows of B) */
  uint32_t n;              /* in features (columns of A) */
  uint32_t r;              /* rank: number of stored component slots */
  uint32_t group_size;     /* base group length; a vector's is group_size << shift */
  uint32_t scale_format;   /* LQ_SCALE_FORMAT_FP16 */
  uint32_t reserved0;      /* zero */
  uint64_t payload_bytes;  /* bytes that follow the header */
  uint32_t crc32;          /* CRC-32 (IEEE, as zlib) of header bytes 0..39, then payload */
  uint32_t reserved1;      /* zero */
} lq_blob_header;

#ifdef __cplusplus
static_assert(sizeof(lq_blob_header) == 48, "lq_blob_header must be 48 bytes");
#endif

/* Bytes of the per-group scales of one vector block, before padding. */
LQ_HD uint64_t lq_scale_bytes(uint64_t len, uint32_t width, uint64_t group) {
  uint64_t groups = (len + group - 1) / group;
  return width == 0 ? 0 : groups * (width == 1 ? 2u : 4u);
}

/* Round up to a multiple of 4 bytes. */
LQ_HD uint64_t lq_pad4(uint64_t bytes) { return (bytes + 3u) & ~(uint64_t)3u; }

/* Number of uint32 code words of one vector block. */
LQ_HD uint64_t lq_code_words(uint64_t len, uint32_t width) {
  return (len * width + 31u) / 32u;
}

/* Total bytes of one vector block (scales, pad, codes). */
LQ_HD uint64_t lq_vector_bytes(uint64_t len, uint32_t width, uint64_t group) {
  if (width == 0) return 0;
  return lq_pad4(lq_scale_bytes(len, width, group)) + 4u * lq_code_words(len, width);
}

/* Group length of a vector: group_size << shift (shift <= LQ_MAX_SHIFT). */
LQ_HD uint64_t lq_group(uint32_t group_size, uint32_t shift) {
  return (uint64_t)group_size << shift;
}

/* Bytes before the first vector block: b_width, a_width, b_shift, a_shift, pad, unit. */
LQ_HD uint64_t lq_prefix_bytes(uint32_t r) { return lq_pad4(4u * (uint64_t)r) + 4u; }

/* Code of entry j of a code stream of the given width. */
LQ_HD uint32_t lq_get_code(const uint32_t* words, uint64_t j, uint32_t width) {
  uint64_t bit = j * width;
  uint64_t k = bit >> 5;
  uint32_t shift = (uint32_t)(bit & 31u);
  uint32_t mask = (1u << width) - 1u;
  uint32_t v = words[k] >> shift;
  if (shift + width > 32u) v |= words[k + 1] << (32u - shift);
  return v & mask;
}

#ifdef __cplusplus
}
#endif

/* ---- the compressed-adapter file: what loraquant.save writes ----------------------
 *
 * One adapter (many modules) in one safetensors container, so that common tools can
 * list it. Layout, as safetensors defines it:
 *
 *   uint64  N                  little-endian: bytes of the JSON header
 *   char    json[N]            UTF-8 JSON object, may end in spaces
 *   uint8   data[]             the data section; tensor offsets are relative to it
 *
 * The JSON object maps each tensor name to {"dtype", "shape", "data_offsets":
 * [begin, end]} and has one "__metadata__" object of string values.
 *
 * Version 2 (what the writers write): two tensors hold every module, so that a module
 * costs the header a few dozen bytes (its name, blob length and scaling) instead of
 * two tensor entries and a JSON object (about 420 bytes each for PEFT names).
 * Metadata:
 *
 *   "format"          "loraquant-adapter"
 *   "format_version"  "2"
 *   "module_prefix"   a string P, prepended to every name in "modules" (the writers
 *                     take the longest common prefix of the names that ends in '.',
 *                     e.g. "base_model.model.model.layers."; "" if none)
 *   "modules"         a JSON array, in file order, of [name, blob_bytes, scaling]:
 *                     P + name is the PEFT module path (state-dict key without
 *                     ".lora_A.weight"), non-empty, unique and free of NUL (the C
 *                     API hands names out NUL-terminated); blob_bytes an integer
 *                     >= 0; scaling the finite number folded into the codes
 *   "modules_crc32"   CRC-32 of the UTF-8 text of "module_prefix" followed by that of
 *                     "modules", 8 lowercase hex digits: each name is stored once (no
 *                     tensor name repeats it), so this catches a corrupted name or
 *                     scaling
 *   "extras"          a JSON array of the names of extra tensors kept unchanged
 *                     (modules_to_save weights, LoRA biases)
 *   "peft_config"     the source adapter_config.json as a JSON object ("{}" if none)
 *   "data_crc32"      CRC-32 of the whole data section, 8 lowercase hex digits
 *   "compress_options" optional, informational: a JSON object of the options the
 *                     adapter was compressed with, e.g. {"bits": 2.0, "group_size":
 *                     128, "mode": "budget"}. Readers neither require nor check it
 *                     (the Python reader takes anything but a JSON object as
 *                     unknown); `loraquant batch` compares it to decide whether an
 *                     existing output is up to date. Other metadata keys are ignored.
 *
 * Tensors (all offsets inside the data section):
 *   "lq.blobs"         U8  [sum of blob_bytes]  the module blobs (lq_blob_header +
 *                                               payload) back to back, in "modules"
 *                                               order: module k's blob starts at the sum
 *                                               of the blob_bytes before it
 *   "lq.sigma"         F32 [sum of r]           each module's r singular values of
 *                                               s B A (r from its blob header), back to
 *                                               back in "modules" order; finite and >= 0
 *                                               (for inspect, not served)
 *   "<extra name>"     any dtype                an extra tensor, unchanged (never
 *                                               starts "lq."; both versions)
 * Every tensor of the file is one of these, and the blobs and singular values fill
 * their tensors exactly (nothing left over). A module's entry needs no m, n, r, group
 * size or widths: its blob header and payload hold them.
 *
 * Version 1 (read, no longer written): the same container and metadata, except
 *   "format_version"  "1"; no "module_prefix" or "modules_crc32"
 *   "modules"         a JSON array of {"name": str, "m": int, "n": int, "r": int,
 *                     "group_size": int, "scaling": float, "widths": [[b_width,
 *                     a_width], ...]}, each agreeing with its blob; names as in
 *                     version 2, whole (no prefix)
 *   tensors           "lq.<name>.blob" U8 [bytes] and "lq.<name>.sigma" F32 [r] per
 *                     module, instead of "lq.blobs" and "lq.sigma"
 *
 * Both versions: as safetensors requires, the tensors tile the data section: sorted by
 * offset, each begins where the one before ends, the first at 0, the last at the end
 * of the file (no gap, no overlap). Tensor names are unique (the JSON repeats no key).
 *
 * The writers pad the JSON with spaces so that the data section starts at a multiple
 * of 8 bytes and write tensors by falling alignment (8-byte dtypes, then the blobs and
 * other 4-byte ones, then 2, then 1), so every blob starts at a multiple of 4 (its
 * code words are uint32; blobs are whole words long) and every tensor at a multiple
 * of its item size. Readers must check alignment, not assume it.
 *
 * A reader checks: N fits the file, the JSON parses, every tensor's offsets lie in
 * the data section, match dtype x shape and tile it, data_crc32 matches,
 * format_version is "1" or "2", modules_crc32 matches (version 2), every tensor is the
 * modules' or a listed extra, each blob parses (its own size and CRC-32 included), the
 * blobs and singular values fill their tensors (version 2) or each module's entry
 * agrees with its blob and its sigma has r entries (version 1). Anything else is a
 * format error.
 */
#define LQ_ADAPTER_FORMAT "loraquant-adapter"
#define LQ_ADAPTER_FORMAT_VERSION "2"    /* what the writers write */
#define LQ_ADAPTER_FORMAT_VERSION_1 "1"  /* still read */

/* ---- the calibration file (.lqc): what loraquant.Calibration.save writes ----------
 *
 * Statistics of one base model, for output-aware compression of any adapter of it
 * (python/loraquant/calibration.py writes and reads it; the C++ side takes H as an
 * array, PairInput::H). The same safetensors container as above. Metadata:
 *
 *   "format"          "loraquant-calibration"
 *   "format_version"  "1"
 *   "modules"         a JSON array of {"name": str, "n": int > 0, "tokens": int > 0}:
 *                     name the PEFT module path of a linear layer ("base_model.model."
 *                     + its path in the base model), n its input features, tokens the
 *                     number of input rows averaged
 *   "base"            the base model's name or path (informational)
 *   "data_crc32"      CRC-32 of the whole data section, 8 lowercase hex digits
 *
 * Tensors: one per module, "H.<name>" F32 [n, n], row-major: H = sum(x x^T) / tokens
 * over the calibration inputs x of that layer (accumulated in float64), symmetric
 * positive semi-definite. Every tensor is a listed module's; each listed module has its
 * tensor. 4 n^2 bytes per module (64 MiB for n = 4096). Anything else, a CRC
 * mismatch, or a NaN / Inf in H is a format error.
 */
#define LQ_CALIBRATION_FORMAT "loraquant-calibration"
#define LQ_CALIBRATION_FORMAT_VERSION "1"

#endif /* LORAQUANT_FORMAT_H */
