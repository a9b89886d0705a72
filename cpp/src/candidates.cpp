// Candidate encodings of every component, the exact error, and the least-squares re-fit.
#include "candidates.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "tall_products.h"
#include "loraquant/quantize.h"

namespace loraquant {

namespace {
constexpr double kMaxFactor = 1267650600228229401496703205376.0;  // 2^100
// L^T X for the calibrated metric L (n x n, lower triangular) of f.
template <class X_t>
typename X_t::PlainObject lt_times(const Factors& f, const X_t& X) {
  Eigen::Map<const Eigen::MatrixXd> L(f.metric.data(), f.n, f.n);
  return L.transpose().triangularView<Eigen::Upper>() * X;
}
// Smallest shift s with group << s >= len: one group for the whole vector.
uint32_t whole_shift(uint32_t len, uint32_t group) {
  uint32_t s = 0;
  while (lq_group(group, s) < len && s < LQ_MAX_SHIFT) ++s;
  return s;
}
}  // namespace

Candidates::Candidates(Factors f, uint32_t group, bool range_search)
    : f_(std::move(f)), group_(group), search_(range_search) {
  bf_.assign(f_.b.begin(), f_.b.end());
  af_.assign(f_.a.begin(), f_.a.end());
  double mx = 0;
  for (float v : bf_) mx = std::max(mx, (double)std::fabs(v));
  for (float v : af_) mx = std::max(mx, (double)std::fabs(v));
  // Factors are stored as float32 values in fp16 units of a power of two <= 2^127; far
  // below that bound every scale, decoded value and re-fit stays finite.
  if (!(mx <= kMaxFactor)) {
    char msg[160];
    std::snprintf(msg, sizeof msg, "scaling * B @ A is too large to store: its factors "
                  "reach %.3g, more than 2^100 = %.3g", mx, kMaxFactor);
    throw std::invalid_argument(msg);
  }
  // Headroom of 4x for the re-fit, which may grow entries a little.
  unit_ = choose_unit(4.0 * mx);
  const uint32_t wb = whole_shift(f_.m, group), wa = whole_shift(f_.n, group);
  const uint32_t opt[kGroupOptions] = {0, 2, LQ_MAX_SHIFT};
  for (uint32_t k = 0; k < kGroupOptions; ++k) {
    bshift_[k] = std::min(opt[k], wb);
    ashift_[k] = std::min(opt[k], wa);
  }
  cache_.resize((size_t)f_.r * 2 * LQ_MAX_WIDTH * kGroupOptions);
  if (f_.weighted()) {
    aw_.assign((size_t)f_.r * f_.n, 0.0);
    for (uint32_t i = 0; i < f_.r; ++i) whiten(f_.a.data() + (size_t)i * f_.n, aw_.data() + (size_t)i * f_.n);
  }
  norm2_.assign((size_t)2 * f_.r, 0.0);
  const std::vector<double>& a_metric = f_.weighted() ? aw_ : f_.a;
  using Vec = Eigen::Map<const Eigen::VectorXd>;
  for (uint32_t i = 0; i < f_.r; ++i) {
    norm2_[2 * i] = Vec(f_.b.data() + (size_t)i * f_.m, f_.m).squaredNorm();
    norm2_[2 * i + 1] = Vec(a_metric.data() + (size_t)i * f_.n, f_.n).squaredNorm();
  }
}

void Candidates::whiten(const double* x, double* out) const {
  Eigen::Map<Eigen::VectorXd>(out, f_.n) = lt_times(f_, Eigen::Map<const Eigen::VectorXd>(x, f_.n));
}

bool Candidates::option_distinct(uint32_t k) const {
  return k == 0 || bshift_[k] != bshift_[k - 1] || ashift_[k] != ashift_[k - 1];
}

uint64_t Candidates::cost(Config c) const {
  return lq_vector_bytes(f_.m, c.wb, group_of(0, c.k)) + lq_vector_bytes(f_.n, c.wa, group_of(1, c.k));
}

Candidates::Side& Candidates::side(uint32_t i, uint32_t s, uint32_t w, uint32_t k) {
  Side& e = cache_[slot(i, s, w, k)];
  if (e.done) return e;
  const uint32_t L = len(s);
  const uint64_t g = group_of(s, k);
  const float* x = (s ? af_.data() : bf_.data()) + (size_t)i * L;
  const double* xe = (s ? f_.a.data() : f_.b.data()) + (size_t)i * L;
  e.scales.resize(lq_scale_bytes(L, w, g) / 2);
  choose_scales(x, L, w, g, unit_, search_, e.scales.data());
  if (s == 1 && f_.weighted()) {  // in the output metric: L^T a . L^T a_hat
    std::vector<uint8_t> blk(lq_vector_bytes(L, w, g));
    std::vector<float> deq(L);
    write_block(x, L, w, g, unit_, e.scales.data(), blk.data(), deq.data());
    std::vector<double> d(deq.begin(), deq.end()), wd(L);
    whiten(d.data(), wd.data());
    const double* xw = aw_.data() + (size_t)i * L;
    double dot = 0, nrm = 0;
    for (uint32_t j = 0; j < L; ++j) {
      dot += xw[j] * wd[j];
      nrm += wd[j] * wd[j];
    }
    e.dot = dot;
    e.norm2 = nrm;
  } else {
    decoded_dot(x, xe, L, w, g, unit_, e.scales.data(), &e.dot, &e.norm2);
  }
  e.done = true;
  return e;
}

double Candidates::err(uint32_t i, Config c) {
  // |b a^T - bh ah^T|^2 = |b|^2 |a|^2 - 2 (b.bh)(a.ah) + |bh|^2 |ah|^2, with
  // |b|^2 = |a|^2 = sigma_i (the split SVD factors).
  const double s2 = f_.sigma[i] * f_.sigma[i];
  if (!c.kept()) return s2;
  const Side& b = side(i, 0, c.wb, c.k);
  const Side& a = side(i, 1, c.wa, c.k);
  return std::max(0.0, s2 - 2.0 * b.dot * a.dot + b.norm2 * a.norm2);
}

double Candidates::err_floor(uint32_t i, Config c) const {
  const double s2 = f_.sigma[i] * f_.sigma[i];
  if (!c.kept()) return s2;
  // err() is s2 - 2 Db Da + Nb Na (D = x . x_hat, N = |x_hat|^2 of each side). With one
  // side's (D, N) known, Cauchy-Schwarz on the other (D'^2 <= |x'|^2 N') leaves at
  // least s2 - D^2 |x'|^2 / N: the best the other side could do.
  double floor = 0;
  for (uint32_t s = 0; s < 2; ++s) {
    const Side& e = cache_[slot(i, s, s ? c.wa : c.wb, c.k)];
    if (e.done && e.norm2 > 0)
      floor = std::max(floor, s2 - e.dot * e.dot * norm2_[2 * i + (1 - s)] / e.norm2);
  }
  // Room for the rounding of err(), which sums the terms another way.
  return std::max(0.0, floor - 1e-9 * s2);
}

void Candidates::select(const std::vector<Config>& cfg) {
  cfg_ = cfg;
  chosen_.assign(f_.r, Chosen());
  for (uint32_t i = 0; i < f_.r; ++i) {
    if (!cfg[i].kept()) continue;
    Chosen& c = chosen_[i];
    for (uint32_t s = 0; s < 2; ++s) {
      const uint32_t w = s ? cfg[i].wa : cfg[i].wb, L = len(s);
      const uint64_t g = group_of(s, cfg[i].k);
      std::vector<uint8_t>& blk = s ? c.ablk : c.bblk;
      std::vector<float>& deq = s ? c.adeq : c.bdeq;
      blk.assign(lq_vector_bytes(L, w, g), 0);
      deq.assign(L, 0.0f);
      write_block((s ? af_.data() : bf_.data()) + (size_t)i * L, L, w, g, unit_,
                  side(i, s, w, cfg[i].k).scales.data(), blk.data(), deq.data());
    }
  }
}

std::vector<uint8_t> Candidates::payload() const {
  const uint32_t r = f_.r;
  const uint64_t prefix = lq_prefix_bytes(r);
  std::vector<uint8_t> out(prefix, 0);
  for (uint32_t i = 0; i < r; ++i) {
    if (!cfg_[i].kept()) continue;
    out[i] = (uint8_t)cfg_[i].wb;
    out[r + i] = (uint8_t)cfg_[i].wa;
    out[2 * r + i] = (uint8_t)bshift_[cfg_[i].k];
    out[3 * r + i] = (uint8_t)ashift_[cfg_[i].k];
  }
  std::memcpy(out.data() + prefix - 4, &unit_, 4);
  for (uint32_t i = 0; i < r; ++i) {
    if (!cfg_[i].kept()) continue;
    out.insert(out.end(), chosen_[i].bblk.begin(), chosen_[i].bblk.end());
    out.insert(out.end(), chosen_[i].ablk.begin(), chosen_[i].ablk.end());
  }
  return out;
}

void Candidates::decoded(std::vector<float>& b_hat, std::vector<float>& a_hat) const {
  b_hat.assign((size_t)f_.r * f_.m, 0.0f);
  a_hat.assign((size_t)f_.r * f_.n, 0.0f);
  for (uint32_t i = 0; i < f_.r; ++i) {
    if (!cfg_[i].kept()) continue;
    std::copy(chosen_[i].bdeq.begin(), chosen_[i].bdeq.end(), b_hat.begin() + (size_t)i * f_.m);
    std::copy(chosen_[i].adeq.begin(), chosen_[i].adeq.end(), a_hat.begin() + (size_t)i * f_.n);
  }
}

double relative_error(const Factors& f, const std::vector<float>& bh, const std::vector<float>& ah,
                      bool output) {
  using M = Eigen::MatrixXd;
  Eigen::Map<const M> B(f.b.data(), f.m, f.r), A0(f.a.data(), f.n, f.r);
  M Bh = Eigen::Map<const Eigen::MatrixXf>(bh.data(), f.m, f.r).cast<double>();
  M Ah = Eigen::Map<const Eigen::MatrixXf>(ah.data(), f.n, f.r).cast<double>();
  double xx = 0;
  const bool through_l = f.weighted() && output;  // everything through L: A -> L^T A
  M Aw;
  if (through_l) {
    Aw = lt_times(f, A0);
    Ah = lt_times(f, Ah);
  }
  const Eigen::Ref<const M> A = through_l ? Eigen::Ref<const M>(Aw) : Eigen::Ref<const M>(A0);
  if (f.weighted() && !output)  // calibrated factors are not orthogonal in the input basis
    xx = (gram(B).cwiseProduct(gram(A))).sum();
  else
    for (double s : f.sigma) xx += s * s;
  double xy = (cross(B, Bh).cwiseProduct(cross(A, Ah))).sum();
  double yy = (gram(Bh).cwiseProduct(gram(Ah))).sum();
  double d = std::max(0.0, xx - 2 * xy + yy);
  if (xx <= 0) return d > 0 ? INFINITY : 0.0;
  return std::sqrt(d / xx);
}

uint32_t Candidates::refit(uint32_t rounds) {
  using M = Eigen::MatrixXd;
  std::vector<uint32_t> act;
  for (uint32_t i = 0; i < f_.r; ++i)
    if (cfg_[i].kept()) act.push_back(i);
  if (act.empty() || rounds == 0) return 0;
  const Eigen::Index na = (Eigen::Index)act.size(), m = f_.m, n = f_.n, r = f_.r;
  Eigen::Map<const M> B(f_.b.data(), m, r), A(f_.a.data(), n, r);  // X = B A^T
  const double limit = 0.25 * 16384.0 * unit_;  // keep re-fit values well inside fp16 range
  std::vector<float> bh, ah, col(std::max(m, n));
  decoded(bh, ah);
  const bool out = f_.weighted();  // calibrated: least squares in the output metric
  double best = relative_error(f_, bh, ah, out);
  uint32_t kept = 0;
  // H Q with H = L L^T (calibrated), else Q.
  auto hmul = [&](const M& Q) -> M {
    if (!out) return Q;
    Eigen::Map<const M> L(f_.metric.data(), n, n);
    return L.triangularView<Eigen::Lower>() * lt_times(f_, Q);
  };
  // Least squares for the other factor: X = P Q^T with Q fixed -> P = X HQ (Q^T HQ)^-1,
  // HQ = Q for A given B_hat (the metric acts on the input side only).
  auto solve = [&](const M& Xq, const M& Q, const M& HQ) -> M {
    M G = Q.transpose() * HQ;
    G.diagonal().array() += 1e-12 * std::max(1e-300, G.diagonal().maxCoeff());
    return Xq * G.ldlt().solve(M::Identity(na, na));
  };
  auto gather = [&](const std::vector<float>& v, Eigen::Index len) {
    M Q(len, na);
    for (Eigen::Index t = 0; t < na; ++t)
      Q.col(t) = Eigen::Map<const Eigen::VectorXf>(v.data() + (size_t)act[t] * len, len).cast<double>();
    return Q;
  };
  // Re-quantize column t of P as the a (or b) vector of component act[t].
  auto requantize = [&](const M& P, bool is_a) {
    if (!P.allFinite() || P.cwiseAbs().maxCoeff() >= limit) return false;
    const Eigen::Index len = is_a ? n : m;
    for (Eigen::Index t = 0; t < na; ++t) {
      const uint32_t i = act[t];
      for (Eigen::Index j = 0; j < len; ++j) col[j] = (float)P(j, t);
      Chosen& e = chosen_[i];
      encode_vector(col.data(), len, is_a ? cfg_[i].wa : cfg_[i].wb, group_of(is_a, cfg_[i].k),
                    unit_, search_, is_a ? e.ablk.data() : e.bblk.data(),
                    is_a ? e.adeq.data() : e.bdeq.data());
    }
    return true;
  };
  for (uint32_t round = 0; round < rounds; ++round) {
    std::vector<Chosen> saved(chosen_);
    const M Qb = gather(bh, m);
    bool ok = requantize(solve(A * (B.transpose() * Qb), Qb, Qb), true);
    if (ok) {
      std::vector<float> tb, ta;
      decoded(tb, ta);
      const M Qa = gather(ta, n), HQa = hmul(Qa);
      ok = requantize(solve(B * (A.transpose() * HQa), Qa, HQa), false);
    }
    std::vector<float> nb, nq;
    if (ok) decoded(nb, nq);
    const double now = ok ? relative_error(f_, nb, nq, out) : INFINITY;
    if (!(now < best)) {
      chosen_.swap(saved);
      break;
    }
    best = now;
    bh.swap(nb);
    ah.swap(nq);
    ++kept;
  }
  return kept;
}

}  // namespace loraquant
