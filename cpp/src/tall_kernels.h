// Internal: products of tall, thin matrices (m x r, m large, r a LoRA rank) for the SVD
// and the exact error: a scalar reference and SIMD twins with the same bits.
//
// Matrices are column-major doubles with a leading dimension (column stride). Every
// entry fixes its own arithmetic, so that blocking and SIMD change no bit:
//   dot(x, y) over m rows: rows t < m - m % 4 go to lane t % 4, each lane a chain of
//     fused multiply-adds in row order from 0; then (l0 + l1) + (l2 + l3); then the
//     remaining rows, fused in order.
//   (X T)[t, j]: s = 0, then s = fma(X[t, i], T[i, j], s) for i = 0 .. p-1.
//   X R^-1 (R upper triangular, in place): for j = 0 .. p-1, s = X[t, j], then
//     s = fma(-X[t, i], R[i, j], s) for i = 0 .. j-1 (X[t, i] already solved), and
//     X[t, j] = s / R[j, j].
// The reference uses std::fma, so it gives the bits of the fused SIMD code anywhere.
#ifndef LORAQUANT_TALL_KERNELS_H
#define LORAQUANT_TALL_KERNELS_H

#include <cstddef>

namespace loraquant {

struct TallKernels {
  // C (p x q, leading dimension p) = X^T Y, X: m x p, Y: m x q. With `sym` (X == Y,
  // p == q) only j >= i is computed and mirrored.
  void (*tn)(const double* X, size_t ldx, const double* Y, size_t ldy, size_t m, size_t p,
             size_t q, double* C, bool sym);
  // Out (m x q) = X (m x p) T (p x q).
  void (*nn)(const double* X, size_t ldx, size_t m, size_t p, const double* T, size_t ldt,
             size_t q, double* Out, size_t ldo);
  // X (m x p) <- X R^-1, R (p x p) upper triangular with a non-zero diagonal.
  void (*trsm_upper)(double* X, size_t ldx, size_t m, size_t p, const double* R, size_t ldr);
};

const TallKernels& reference_tall_kernels();
// AVX2 + FMA where the CPU has both, else the reference; the reference whenever
// use_reference_kernels(true) is in force (quantize.h).
const TallKernels& active_tall_kernels();

}  // namespace loraquant

#endif
