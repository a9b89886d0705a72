// Internal: X^T X of a tall matrix through Eigen's symmetric rank update (half the
// multiplications of a general product), returned whole.
#ifndef LORAQUANT_GRAM_H
#define LORAQUANT_GRAM_H

#include <Eigen/Dense>

namespace loraquant {

template <class X_t>
Eigen::MatrixXd gram(const X_t& X) {
  Eigen::MatrixXd G = Eigen::MatrixXd::Zero(X.cols(), X.cols());
  G.selfadjointView<Eigen::Lower>().rankUpdate(X.transpose());
  return G.selfadjointView<Eigen::Lower>();
}

}  // namespace loraquant

#endif
