// Thin SVD of s * B @ A through two QR factorisations and an r x r SVD (Eigen).
#include "loraquant/svd.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace loraquant {

namespace {
using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Mat = Eigen::MatrixXd;

// Thin QR: X (rows x cols) = Q R with Q rows x k orthonormal, k = min(rows, cols).
void thin_qr(const Mat& X, Mat& Q, Mat& R) {
  const Eigen::Index k = std::min(X.rows(), X.cols());
  Eigen::HouseholderQR<Mat> qr(X);
  Q = qr.householderQ() * Mat::Identity(X.rows(), k);
  R = qr.matrixQR().topRows(k).triangularView<Eigen::Upper>();
}
}  // namespace

Factors thin_svd(const double* A, const double* B, uint32_t m, uint32_t n, uint32_t r,
                 double scaling) {
  if (!std::isfinite(scaling)) throw std::invalid_argument("scaling must be finite");
  Eigen::Map<const RowMat> Am(A, r, n), Bm(B, m, r);
  if (!Am.allFinite()) throw std::invalid_argument("A contains NaN or Inf");
  if (!Bm.allFinite()) throw std::invalid_argument("B contains NaN or Inf");

  Mat Qb, Rb, Qa, Ra;
  thin_qr(Bm, Qb, Rb);               // B   = Qb Rb,  Rb: kb x r
  thin_qr(Am.transpose(), Qa, Ra);   // A^T = Qa Ra,  Ra: ka x r
  Mat core = Rb * Ra.transpose();    // B A = Qb core Qa^T
  Eigen::JacobiSVD<Mat> svd(core, Eigen::ComputeThinU | Eigen::ComputeThinV);
  Mat U = Qb * svd.matrixU();        // m x k
  Mat V = Qa * svd.matrixV();        // n x k
  const Eigen::VectorXd& S = svd.singularValues();
  const Eigen::Index k = S.size();
  // Entries near 1e154 overflow the squares inside the factorisations (NaN, garbage).
  if (!core.allFinite() || !(S * std::fabs(scaling)).allFinite())
    throw std::invalid_argument("scaling * B @ A is too large: its factorisation overflows "
                                "double precision");

  Factors f;
  f.m = m;
  f.n = n;
  f.r = r;
  f.sigma.assign(r, 0.0);
  f.b.assign((size_t)r * m, 0.0);
  f.a.assign((size_t)r * n, 0.0);
  const double s_abs = std::fabs(scaling), s_sign = scaling < 0 ? -1.0 : 1.0;
  for (Eigen::Index i = 0; i < k && i < (Eigen::Index)r; ++i) {
    double sig = S(i) * s_abs;
    f.sigma[i] = sig;
    if (!(sig > 0)) continue;  // numerically zero: leave the slot empty
    Eigen::Index arg = 0;
    U.col(i).cwiseAbs().maxCoeff(&arg);
    double flip = U(arg, i) < 0 ? -1.0 : 1.0;
    double root = std::sqrt(sig);
    for (uint32_t j = 0; j < m; ++j) f.b[(size_t)i * m + j] = s_sign * flip * root * U(j, i);
    for (uint32_t j = 0; j < n; ++j) f.a[(size_t)i * n + j] = flip * root * V(j, i);
  }
  return f;
}

Factors thin_svd_weighted(const double* A, const double* B, const double* H, uint32_t m,
                          uint32_t n, uint32_t r, double scaling, double damping) {
  if (!(damping > 0 && std::isfinite(damping)))
    throw std::invalid_argument("damping must be positive and finite");
  Eigen::Map<const RowMat> Hm(H, n, n), Am(A, r, n);
  if (!Hm.allFinite()) throw std::invalid_argument("the second moment H contains NaN or Inf");
  if (!Am.allFinite()) throw std::invalid_argument("A contains NaN or Inf");
  Mat S = 0.5 * (Hm + Hm.transpose());
  const double tr = S.trace();
  if (!(tr > 0)) throw std::invalid_argument("the second moment H is zero (no calibration tokens?)");
  S.diagonal().array() += damping * tr / n;
  Eigen::LLT<Mat> llt(S);
  if (llt.info() != Eigen::Success)
    throw std::invalid_argument("the second moment H is not positive semi-definite");
  Mat L = llt.matrixL();
  RowMat Aw = Am * L;  // s B A L: the update seen through the calibrated inputs
  Factors f = thin_svd(Aw.data(), B, m, n, r, scaling);
  // a_i = L^-T (L^T a_i): back to the input basis, where the packed codes live.
  Eigen::Map<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic>> Fa(f.a.data(), n, r);
  L.transpose().triangularView<Eigen::Upper>().solveInPlace(Fa);
  if (!Fa.allFinite())
    throw std::invalid_argument("the calibrated factors overflow: H is too ill-conditioned");
  f.metric.assign(L.data(), L.data() + (size_t)n * n);
  return f;
}

}  // namespace loraquant
