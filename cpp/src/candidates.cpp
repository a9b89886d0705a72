// Candidate encodings of every component, the exact error, and the least-squares re-fit.
#include "candidates.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstring>

#include "loraquant/quantize.h"

namespace loraquant {

namespace {
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
  // Headroom of 4x for the re-fit, which may grow entries a little.
  unit_ = choose_unit(4.0 * mx);
  const uint32_t wb = whole_shift(f_.m, group), wa = whole_shift(f_.n, group);
  const uint32_t opt[kGroupOptions] = {0, 2, LQ_MAX_SHIFT};
  for (uint32_t k = 0; k < kGroupOptions; ++k) {
    bshift_[k] = std::min(opt[k], wb);
    ashift_[k] = std::min(opt[k], wa);
  }
  cache_.resize((size_t)f_.r * (LQ_MAX_WIDTH + 1) * kGroupOptions);
}

bool Candidates::option_distinct(uint32_t k) const {
  return k == 0 || bshift_[k] != bshift_[k - 1] || ashift_[k] != ashift_[k - 1];
}

uint64_t Candidates::cost(Config c) const {
  return lq_vector_bytes(f_.m, c.w, lq_group(group_, bshift_[c.k])) +
         lq_vector_bytes(f_.n, c.w, lq_group(group_, ashift_[c.k]));
}

void Candidates::encode(uint32_t i, Config c, const float* b, const float* a, Enc& e) {
  const uint32_t m = f_.m, n = f_.n;
  const uint64_t gb = lq_group(group_, bshift_[c.k]), ga = lq_group(group_, ashift_[c.k]);
  e.bblk.assign(lq_vector_bytes(m, c.w, gb), 0);
  e.ablk.assign(lq_vector_bytes(n, c.w, ga), 0);
  e.bdeq.assign(m, 0.0f);
  e.adeq.assign(n, 0.0f);
  if (c.w > 0) {
    encode_vector(b, m, c.w, gb, unit_, search_, e.bblk.data(), e.bdeq.data());
    encode_vector(a, n, c.w, ga, unit_, search_, e.ablk.data(), e.adeq.data());
  }
  // |b a^T - bh ah^T|^2 = |b|^2 |a|^2 - 2 (b.bh)(a.ah) + |bh|^2 |ah|^2, exact factors.
  const double* bx = f_.b.data() + (size_t)i * m;
  const double* ax = f_.a.data() + (size_t)i * n;
  double bb = 0, bq = 0, qq = 0, aa = 0, aq = 0, pp = 0;
  for (uint32_t j = 0; j < m; ++j) {
    bb += bx[j] * bx[j];
    bq += bx[j] * e.bdeq[j];
    qq += (double)e.bdeq[j] * e.bdeq[j];
  }
  for (uint32_t j = 0; j < n; ++j) {
    aa += ax[j] * ax[j];
    aq += ax[j] * e.adeq[j];
    pp += (double)e.adeq[j] * e.adeq[j];
  }
  e.err = std::max(0.0, bb * aa - 2.0 * bq * aq + qq * pp);
  e.done = true;
}

Candidates::Enc& Candidates::enc(uint32_t i, Config c) {
  Enc& e = cache_[((size_t)i * (LQ_MAX_WIDTH + 1) + c.w) * kGroupOptions + c.k];
  if (!e.done) encode(i, c, bf_.data() + (size_t)i * f_.m, af_.data() + (size_t)i * f_.n, e);
  return e;
}

double Candidates::err(uint32_t i, Config c) { return enc(i, c).err; }

void Candidates::precompute(uint32_t max_w, bool all_groups) {
  std::vector<Config> todo;
  for (uint32_t w = 1; w <= max_w; ++w)
    for (uint32_t k = 0; k < (all_groups ? kGroupOptions : 1); ++k)
      if (option_distinct(k)) todo.push_back({w, k});
  // Serial on purpose: callers parallelise across pairs, where the work is coarse.
  const long per = (long)todo.size(), total = (long)f_.r * per;
  for (long t = 0; t < total; ++t)
    if (f_.sigma[t / per] > 0) enc((uint32_t)(t / per), todo[t % per]);
}

void Candidates::select(const std::vector<Config>& cfg) {
  cfg_ = cfg;
  chosen_.assign(f_.r, Enc());
  for (uint32_t i = 0; i < f_.r; ++i)
    if (cfg[i].w > 0) chosen_[i] = enc(i, cfg[i]);
}

std::vector<uint8_t> Candidates::payload() const {
  const uint32_t r = f_.r;
  const uint64_t prefix = lq_prefix_bytes(r);
  std::vector<uint8_t> out(prefix, 0);
  for (uint32_t i = 0; i < r; ++i) {
    out[i] = (uint8_t)cfg_[i].w;
    out[r + i] = cfg_[i].w ? (uint8_t)bshift_[cfg_[i].k] : 0;
    out[2 * r + i] = cfg_[i].w ? (uint8_t)ashift_[cfg_[i].k] : 0;
  }
  std::memcpy(out.data() + prefix - 4, &unit_, 4);
  for (uint32_t i = 0; i < r; ++i) {
    if (cfg_[i].w == 0) continue;
    out.insert(out.end(), chosen_[i].bblk.begin(), chosen_[i].bblk.end());
    out.insert(out.end(), chosen_[i].ablk.begin(), chosen_[i].ablk.end());
  }
  return out;
}

void Candidates::decoded(std::vector<float>& b_hat, std::vector<float>& a_hat) const {
  b_hat.assign((size_t)f_.r * f_.m, 0.0f);
  a_hat.assign((size_t)f_.r * f_.n, 0.0f);
  for (uint32_t i = 0; i < f_.r; ++i) {
    if (cfg_[i].w == 0) continue;
    std::copy(chosen_[i].bdeq.begin(), chosen_[i].bdeq.end(), b_hat.begin() + (size_t)i * f_.m);
    std::copy(chosen_[i].adeq.begin(), chosen_[i].adeq.end(), a_hat.begin() + (size_t)i * f_.n);
  }
}

double relative_error(const Factors& f, const std::vector<float>& bh, const std::vector<float>& ah) {
  using M = Eigen::MatrixXd;
  Eigen::Map<const M> B(f.b.data(), f.m, f.r), A(f.a.data(), f.n, f.r);
  M Bh = Eigen::Map<const Eigen::MatrixXf>(bh.data(), f.m, f.r).cast<double>();
  M Ah = Eigen::Map<const Eigen::MatrixXf>(ah.data(), f.n, f.r).cast<double>();
  double xx = 0;
  for (double s : f.sigma) xx += s * s;
  double xy = ((B.transpose() * Bh).cwiseProduct(A.transpose() * Ah)).sum();
  double yy = ((Bh.transpose() * Bh).cwiseProduct(Ah.transpose() * Ah)).sum();
  double d = std::max(0.0, xx - 2 * xy + yy);
  if (xx <= 0) return d > 0 ? INFINITY : 0.0;
  return std::sqrt(d / xx);
}

uint32_t Candidates::refit(uint32_t rounds) {
  using M = Eigen::MatrixXd;
  std::vector<uint32_t> act;
  for (uint32_t i = 0; i < f_.r; ++i)
    if (cfg_[i].w > 0) act.push_back(i);
  if (act.empty() || rounds == 0) return 0;
  const Eigen::Index na = (Eigen::Index)act.size(), m = f_.m, n = f_.n, r = f_.r;
  Eigen::Map<const M> B(f_.b.data(), m, r), A(f_.a.data(), n, r);  // X = B A^T
  const double limit = 0.25 * 16384.0 * unit_;  // keep re-fit values well inside fp16 range
  std::vector<float> bh, ah, col(std::max(m, n));
  decoded(bh, ah);
  double best = relative_error(f_, bh, ah);
  uint32_t kept = 0;
  // Least squares for the other factor: X = P Q^T with Q fixed -> P = X Q (Q^T Q)^-1.
  auto solve = [&](const M& Xq, const M& Q) -> M {
    M G = Q.transpose() * Q;
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
      const uint32_t shift = is_a ? ashift_[cfg_[i].k] : bshift_[cfg_[i].k];
      for (Eigen::Index j = 0; j < len; ++j) col[j] = (float)P(j, t);
      Enc& e = chosen_[i];
      encode_vector(col.data(), len, cfg_[i].w, lq_group(group_, shift), unit_, search_,
                    is_a ? e.ablk.data() : e.bblk.data(), is_a ? e.adeq.data() : e.bdeq.data());
    }
    return true;
  };
  for (uint32_t round = 0; round < rounds; ++round) {
    std::vector<Enc> saved(chosen_);
    bool ok = requantize(solve(A * (B.transpose() * gather(bh, m)), gather(bh, m)), true);
    if (ok) {
      std::vector<float> tb, ta;
      decoded(tb, ta);
      ok = requantize(solve(B * (A.transpose() * gather(ta, n)), gather(ta, n)), false);
    }
    std::vector<float> nb, nq;
    if (ok) decoded(nb, nq);
    const double now = ok ? relative_error(f_, nb, nq) : INFINITY;
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
