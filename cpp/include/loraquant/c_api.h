/* loraquant C API: compressed LoRA adapters for C, Rust, Go, ctypes ... (libloraquant_c).
 *
 * Conventions
 *   - Every function that can fail returns an int status: LQ_OK (0) or an LQ_E_* code.
 *     lq_last_error() then gives a message naming the problem. No C++ exception ever
 *     crosses this boundary.
 *   - Results come back through out-parameters, written only on success.
 *   - Handles are opaque. Every handle a function gives you is yours: free it with the
 *     matching lq_*_free (NULL is accepted). A module taken from an adapter stays valid
 *     after the adapter is freed.
 *   - Handles are immutable except through lq_module_set_origin; concurrent calls on
 *     the same handle are safe as long as none of them is lq_module_set_origin.
 *   - Matrices are row-major and contiguous. A LoRA pair is A (r x n) and B (m x r), as
 *     PEFT stores lora_A.weight and lora_B.weight; the update is scaling * B @ A.
 *   - The file and blob layouts are defined in loraquant/format.h.
 */
#ifndef LORAQUANT_C_API_H
#define LORAQUANT_C_API_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#if defined(LQ_BUILDING_C_API)
#define LQ_API __declspec(dllexport)
#else
#define LQ_API __declspec(dllimport)
#endif
#else
#define LQ_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes. */
#define LQ_OK 0
#define LQ_E_INVALID_ARGUMENT 1 /* a null pointer, a bad shape, size or option, NaN input */
#define LQ_E_FORMAT 2           /* malformed file or blob: truncated, corrupted, wrong version */
#define LQ_E_IO 3               /* a file could not be opened, read, written or renamed */
#define LQ_E_NO_MEMORY 4        /* an allocation failed */
#define LQ_E_INTERNAL 5         /* anything else: a bug, please report it with the message */

/* Element type of the input matrices of lq_compress. */
#define LQ_FLOAT32 0
#define LQ_FLOAT64 1

typedef struct lq_adapter lq_adapter; /* a compressed-adapter file, read */
typedef struct lq_module lq_module;   /* one compressed module and its name */

/* Compression options; lq_options_init fills the defaults. */
typedef struct lq_options {
  double bits;           /* budget mode: average bits per weight, every stored byte counted (2.0) */
  double rho;            /* > 0 selects paper mode: energy share of the high part (0) */
  uint32_t high_bits;    /* paper mode: width of the high part, 2..8 (2) */
  uint32_t group_size;   /* entries per quantization group (128) */
  int32_t range_search;  /* nonzero: each group keeps the least-error shrunken range (1) */
  uint32_t refit_rounds; /* least-squares re-fits of one factor against the other (0) */
} lq_options;

/* The message of the last failed call on this thread ("" after a successful call).
 * Valid until the next lq_* call on this thread. Never NULL. */
LQ_API const char* lq_last_error(void);
/* Library version, e.g. "0.1.0". */
LQ_API const char* lq_version(void);

LQ_API int lq_options_init(lq_options* options);

/* ---- adapter files ---------------------------------------------------------------- */
LQ_API int lq_adapter_open(const char* path, lq_adapter** out);
LQ_API int lq_adapter_from_memory(const uint8_t* data, size_t size, lq_adapter** out);
LQ_API void lq_adapter_free(lq_adapter* adapter);
LQ_API int lq_adapter_module_count(const lq_adapter* adapter, size_t* count);
/* Module `index` in file order (a new handle: free it with lq_module_free). */
LQ_API int lq_adapter_module(const lq_adapter* adapter, size_t index, lq_module** out);
/* Module by name; LQ_E_INVALID_ARGUMENT if there is none. */
LQ_API int lq_adapter_find_module(const lq_adapter* adapter, const char* name, lq_module** out);
/* The source adapter_config.json (a JSON object); valid while the adapter lives. */
LQ_API int lq_adapter_peft_config(const lq_adapter* adapter, const char** json);

/* Write `count` modules, in that order, to one file, atomically (temporary file, then
 * rename). Each module must carry its singular values (lq_compress and files give them;
 * see lq_module_set_origin). peft_config_json: a JSON object, or NULL for "{}". */
LQ_API int lq_write_adapter_file(const char* path, const lq_module* const* modules, size_t count,
                                 const char* peft_config_json);

/* ---- compressing ------------------------------------------------------------------ */
/* Compress one pair: A is r x n, B is m x r, of element type `dtype` (LQ_FLOAT32 or
 * LQ_FLOAT64); options NULL means the defaults. `name` (may be "") names the module in
 * a file. NaN or Inf in A or B is LQ_E_INVALID_ARGUMENT. */
LQ_API int lq_compress(const char* name, int dtype, const void* A, const void* B, uint32_t m,
                       uint32_t n, uint32_t r, double scaling, const lq_options* options,
                       lq_module** out);

/* ---- modules ---------------------------------------------------------------------- */
LQ_API void lq_module_free(lq_module* module);
/* Valid while the handle lives. */
LQ_API int lq_module_name(const lq_module* module, const char** name);
/* m: out features (rows of B), n: in features (columns of A). */
LQ_API int lq_module_shape(const lq_module* module, uint32_t* m, uint32_t* n);
LQ_API int lq_module_rank(const lq_module* module, uint32_t* r);
LQ_API int lq_module_group_size(const lq_module* module, uint32_t* group_size);
/* Width in bits (0..8) of b_i and of a_i for each of the r components; both are 0 when
 * the component is dropped. Each buffer holds `capacity` entries, at least r. */
LQ_API int lq_module_widths(const lq_module* module, uint8_t* b_widths, uint8_t* a_widths,
                            size_t capacity);
/* Bits per weight of the input pair, every stored byte counted, and those bytes. */
LQ_API int lq_module_avg_bits(const lq_module* module, double* avg_bits);
LQ_API int lq_module_nbytes(const lq_module* module, size_t* nbytes);
/* The scaling folded into the codes; NaN when unknown (a module from bytes). */
LQ_API int lq_module_scaling(const lq_module* module, double* scaling);
/* Singular values of scaling * B @ A: *count = r, or 0 when unknown (a module from
 * bytes). Writes min(capacity, *count) values; sigma may be NULL to ask for the count. */
LQ_API int lq_module_sigma(const lq_module* module, float* sigma, size_t capacity, size_t* count);
/* Attach what a blob does not carry but a file stores beside it: the scaling and the r
 * singular values (sigma_count must equal r). */
LQ_API int lq_module_set_origin(lq_module* module, double scaling, const float* sigma,
                                size_t sigma_count);

/* y (batch x out_features) = x (batch x in_features) @ dW_hat^T on the CPU, decoding the
 * packed codes on the fly. in_features must equal n and out_features m; they are
 * passed so that a wrong buffer shape is reported instead of read past. Non-finite x
 * gives non-finite rows of y, as a matrix product would. */
LQ_API int lq_module_apply(const lq_module* module, const float* x, size_t batch,
                           size_t in_features, float* y, size_t out_features);
/* A_hat (r x n) and B_hat (m x r), row-major, so that B_hat @ A_hat = dW_hat. The
 * lengths are the buffers' element counts: at least r * n and m * r. */
LQ_API int lq_module_dequantize(const lq_module* module, float* A_hat, size_t a_len,
                                float* B_hat, size_t b_len);
/* |dW_hat x|_2 for x_j = sin(j + 1): the fingerprint `loraquant inspect --probe` prints. */
LQ_API int lq_module_probe_norm(const lq_module* module, double* norm);

/* The blob (format.h: 48-byte header + payload). *size is always set to the blob's
 * size; with buffer NULL nothing else happens, else capacity must be at least *size. */
LQ_API int lq_module_to_bytes(const lq_module* module, uint8_t* buffer, size_t capacity,
                              size_t* size);
/* Exact inverse of lq_module_to_bytes; checks sizes, version and checksum. */
LQ_API int lq_module_from_bytes(const char* name, const uint8_t* data, size_t size,
                                lq_module** out);

#ifdef __cplusplus
}
#endif

#endif /* LORAQUANT_C_API_H */
