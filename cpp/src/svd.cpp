// Thin SVD of s * B @ A through two QR factorisations and an r x r SVD (Eigen).
#include "loraquant/svd.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "tall_products.h"

namespace loraquant {

namespace {
using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Mat = Eigen::MatrixXd;

// A thin QR of X (rows x cols), kept as X = Q1 C^-1 R: Q1 C^-1 (rows x k) has
// orthonormal columns, C (k x k) is upper triangular, R is k x cols, k = min(rows, cols).
// Householder gives Q1 orthonormal and C = I; Cholesky QR2 leaves the last triangular
// solve to C, so that it is folded into an r x r product (see thin_svd).
struct ThinQR {
  Mat Q1, C, R;
};

void householder_qr(const Mat& X, ThinQR& f) {
  const Eigen::Index k = std::min(X.rows(), X.cols());
  Eigen::HouseholderQR<Mat> qr(X);
  f.Q1 = qr.householderQ() * Mat::Identity(X.rows(), k);
  f.C = Mat::Identity(k, k);
  f.R = qr.matrixQR().topRows(k).triangularView<Eigen::Upper>();
}

// How far the Gram matrix of the first Cholesky pass may be from the identity, entry by
// entry over the column count: then |Q1^T Q1 - I|_2 <= 0.01, Q1 is well conditioned and
// the second pass leaves Q orthonormal to rounding, as Householder does (Yamamoto et
// al., "Roundoff error analysis of the CholeskyQR2 algorithm", 2015).
constexpr double kGramSlack = 0.01;

// Thin QR of a tall matrix by Cholesky QR twice (CholeskyQR2): X = Q1 R1 from the
// Cholesky factor of X^T X, then Q1 = Q R2 the same way. Matrix products only, several
// times faster than Householder here. False (use Householder) when X is short, when a
// Cholesky factorisation breaks down (X rank deficient or nearly, or overflow), or when
// Q1 is too far from orthonormal for the second pass to repair.
template <class X_t>
bool cholesky_qr2(const X_t& X, ThinQR& f) {
  const Eigen::Index k = X.cols(), m = X.rows();
  if (m < k) return false;
  const TallKernels& K = active_tall_kernels();
  f.Q1 = X;  // column-major from here on
  Mat G = gram(f.Q1);
  Eigen::LLT<Mat> c1(G);
  if (c1.info() != Eigen::Success) return false;
  const Mat R1 = c1.matrixU();
  K.trsm_upper(f.Q1.data(), (size_t)m, (size_t)m, (size_t)k, R1.data(), (size_t)k);
  G = gram(f.Q1);
  if (!G.allFinite() || (G - Mat::Identity(k, k)).cwiseAbs().maxCoeff() > kGramSlack / (double)k)
    return false;
  Eigen::LLT<Mat> c2(G);
  if (c2.info() != Eigen::Success) return false;
  f.C = c2.matrixU();
  f.R.noalias() = f.C.triangularView<Eigen::Upper>() * R1;
  return true;
}

template <class X_t>
void thin_qr(const X_t& X, ThinQR& f) {
  if (!cholesky_qr2(X, f)) householder_qr(Mat(X), f);
}

// Component i of out (rows x k, column-major: out.col(i) is the vector of component
// i) = Q1 C^-1 W, W = the k x k singular vectors of the core times diag(scale).
void left_factors(const ThinQR& f, const Mat& W, const Eigen::VectorXd& scale,
                  Eigen::Map<Mat> out) {
  Mat T = W * scale.asDiagonal();
  f.C.triangularView<Eigen::Upper>().solveInPlace(T);
  active_tall_kernels().nn(f.Q1.data(), (size_t)f.Q1.rows(), (size_t)f.Q1.rows(), (size_t)f.Q1.cols(),
                           T.data(), (size_t)T.rows(), (size_t)T.cols(), out.data(),
                           (size_t)out.rows());
}
}  // namespace

Factors thin_svd(const double* A, const double* B, uint32_t m, uint32_t n, uint32_t r,
                 double scaling) {
  if (!std::isfinite(scaling)) throw std::invalid_argument("scaling must be finite");
  Eigen::Map<const RowMat> Am(A, r, n), Bm(B, m, r);
  if (!Am.allFinite()) throw std::invalid_argument("A contains NaN or Inf");
  if (!Bm.allFinite()) throw std::invalid_argument("B contains NaN or Inf");

  ThinQR qb, qa;
  thin_qr(Bm, qb);                                   // B   = Q_B R_B,  R_B: kb x r
  thin_qr(Eigen::Map<const Mat>(A, n, r), qa);       // A^T = Q_A R_A,  R_A: ka x r
  const Mat core = qb.R * qa.R.transpose();          // B A = Q_B core Q_A^T
  Eigen::JacobiSVD<Mat> svd(core, Eigen::ComputeThinU | Eigen::ComputeThinV);
  const Eigen::VectorXd& S = svd.singularValues();
  const Eigen::Index k = std::min<Eigen::Index>(S.size(), r);
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
  // b_i = u_i sqrt(s sigma_i), a_i = v_i sqrt(s sigma_i); numerically zero components
  // (past the rank) stay empty.
  const double s_abs = std::fabs(scaling);
  Eigen::VectorXd root = Eigen::VectorXd::Zero(S.size());
  for (Eigen::Index i = 0; i < k; ++i) {
    f.sigma[i] = S(i) * s_abs;
    if (f.sigma[i] > 0) root(i) = std::sqrt(f.sigma[i]);
  }
  Eigen::Map<Mat> Bf(f.b.data(), m, r), Af(f.a.data(), n, r);
  left_factors(qb, svd.matrixU(), root, Bf);
  left_factors(qa, svd.matrixV(), root, Af);
  Bf.rightCols(r - k).setZero();
  Af.rightCols(r - k).setZero();
  // Signs: the entry of largest magnitude of u_i positive; a negative scaling goes to b_i.
  const double s_sign = scaling < 0 ? -1.0 : 1.0;
  for (Eigen::Index i = 0; i < k; ++i) {
    Eigen::Index arg = 0;
    Bf.col(i).cwiseAbs().maxCoeff(&arg);
    const double flip = Bf(arg, i) < 0 ? -1.0 : 1.0;
    if (flip * s_sign < 0) Bf.col(i) = -Bf.col(i);
    if (flip < 0) Af.col(i) = -Af.col(i);
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
