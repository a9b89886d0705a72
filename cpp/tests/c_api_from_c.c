/* The C API used from C99: c_api.h compiles as C, and a compress / apply / bytes /
 * error round runs. Exit status 0 on success. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "loraquant/c_api.h"

static int failures = 0;

static void expect(int ok, const char* what) {
  if (!ok) {
    printf("FAILED: %s (last error: %s)\n", what, lq_last_error());
    ++failures;
  }
}

int main(void) {
  enum { M = 6, N = 5, R = 2 };
  float A[R * N], B[M * R], x[N], y[M], y2[M];
  unsigned char blob[4096];
  size_t size = 0;
  uint32_t m = 0, n = 0;
  lq_module *mod = NULL, *back = NULL;
  lq_options opt;
  int k;
  for (k = 0; k < R * N; ++k) A[k] = (float)sin(0.7 * k + 0.1);
  for (k = 0; k < M * R; ++k) B[k] = (float)cos(1.3 * k);
  for (k = 0; k < N; ++k) x[k] = (float)k - 2.0f;

  expect(lq_options_init(&opt) == LQ_OK, "lq_options_init");
  opt.bits = 4.0;
  expect(lq_compress("demo", LQ_FLOAT32, A, B, M, N, R, 1.0, &opt, &mod) == LQ_OK, "lq_compress");
  expect(lq_module_shape(mod, &m, &n) == LQ_OK && m == M && n == N, "lq_module_shape");
  expect(lq_module_apply(mod, x, 1, N, y, M) == LQ_OK, "lq_module_apply");
  expect(lq_module_to_bytes(mod, blob, sizeof blob, &size) == LQ_OK, "lq_module_to_bytes");
  expect(lq_module_from_bytes("demo", blob, size, &back) == LQ_OK, "lq_module_from_bytes");
  expect(lq_module_apply(back, x, 1, N, y2, M) == LQ_OK && memcmp(y, y2, sizeof y) == 0,
         "apply after a bytes round trip");
  expect(lq_module_apply(NULL, x, 1, N, y, M) == LQ_E_INVALID_ARGUMENT &&
             strstr(lq_last_error(), "module is NULL") != NULL,
         "a NULL module is an error code");
  expect(lq_module_from_bytes("demo", blob, size - 1, &back) == LQ_E_FORMAT, "a truncated blob");
  lq_module_free(back);
  lq_module_free(mod);
  printf("%s\n", failures ? "c_api_from_c: FAILED" : "c_api_from_c: ok");
  return failures ? 1 : 0;
}
