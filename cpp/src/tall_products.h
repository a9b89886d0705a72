// Internal: X^T Y and X^T X of column-major Eigen matrices through the tall-matrix
// kernels (tall_kernels.h), for the SVD and the exact error.
#ifndef LORAQUANT_TALL_PRODUCTS_H
#define LORAQUANT_TALL_PRODUCTS_H

#include <Eigen/Dense>

#include "tall_kernels.h"

namespace loraquant {

template <class X_t, class Y_t>
Eigen::MatrixXd cross(const X_t& X, const Y_t& Y) {
  static_assert(!X_t::IsRowMajor && !Y_t::IsRowMajor, "column-major operands only");
  Eigen::MatrixXd C(X.cols(), Y.cols());
  active_tall_kernels().tn(X.data(), (size_t)X.outerStride(), Y.data(), (size_t)Y.outerStride(),
                           (size_t)X.rows(), (size_t)X.cols(), (size_t)Y.cols(), C.data(), false);
  return C;
}

template <class X_t>
Eigen::MatrixXd gram(const X_t& X) {
  static_assert(!X_t::IsRowMajor, "column-major operands only");
  Eigen::MatrixXd C(X.cols(), X.cols());
  active_tall_kernels().tn(X.data(), (size_t)X.outerStride(), X.data(), (size_t)X.outerStride(),
                           (size_t)X.rows(), (size_t)X.cols(), (size_t)X.cols(), C.data(), true);
  return C;
}

}  // namespace loraquant

#endif
