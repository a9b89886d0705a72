// Thin SVD of a LoRA product without forming it.
#ifndef LORAQUANT_SVD_H
#define LORAQUANT_SVD_H

#include <cstdint>
#include <vector>

namespace loraquant {

// The SVD components of s * B @ A with the singular values split evenly:
// b_i = u_i sqrt(s sigma_i), a_i = v_i sqrt(s sigma_i).
struct Factors {
  uint32_t m = 0, n = 0, r = 0;
  std::vector<double> sigma;  // r values, s * singular value, descending; 0 past the rank
  std::vector<double> b;      // r vectors of length m, component-major: b[i*m + j]
  std::vector<double> a;      // r vectors of length n, component-major: a[i*n + j]
  // Output metric (calibrated factors only, else empty): L, n x n lower triangular,
  // column-major, with L L^T = H + ridge I. The error that reaches the layer's output
  // is |(X - Y) L|_F; b_i and L^T a_i are then orthogonal, |b_i|^2 = |L^T a_i|^2 = sigma_i.
  std::vector<double> metric;
  bool weighted() const { return !metric.empty(); }
};

// A is r x n and B is m x r, both row-major (as numpy/torch store them). The product
// is never formed: QR of B and of A^T, then an SVD of the small core R_B R_A^T, all
// in double precision, O((m + n) r^2). Signs are fixed so that the entry of largest
// magnitude of each u_i is positive (first such entry on ties). A negative scaling is
// folded into b_i. Throws std::invalid_argument on non-finite input.
Factors thin_svd(const double* A, const double* B, uint32_t m, uint32_t n, uint32_t r,
                 double scaling);

// The same split in the output metric of a calibrated input second moment H (n x n,
// row-major, symmetric positive semi-definite): the SVD of s * B @ A @ L with
// L L^T = H + ridge * I, ridge = damping * trace(H) / n, mapped back to the input
// basis (a_i = L^-T v_i sqrt(sigma_i)), so that sum_i b_i a_i^T is still s * B @ A and
// sigma_i are the singular values of the output-weighted update. Damping (> 0) keeps
// the factorisation well posed when H is rank deficient; a large damping tends to
// thin_svd. Throws std::invalid_argument on a non-finite or zero H.
Factors thin_svd_weighted(const double* A, const double* B, const double* H, uint32_t m,
                          uint32_t n, uint32_t r, double scaling, double damping);

}  // namespace loraquant

#endif
