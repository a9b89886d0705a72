// Candidate encodings of every component and the greedy width allocation.
#include "candidates.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "loraquant/quantize.h"

namespace loraquant {

Candidates::Candidates(Factors f, uint32_t group, bool range_search)
    : f_(std::move(f)), group_(group), search_(range_search) {
  bf_.assign(f_.b.begin(), f_.b.end());
  af_.assign(f_.a.begin(), f_.a.end());
  double mx = 0;
  for (float v : bf_) mx = std::max(mx, (double)std::fabs(v));
  for (float v : af_) mx = std::max(mx, (double)std::fabs(v));
  unit_ = choose_unit(mx);
  cache_.resize((size_t)f_.r * (LQ_MAX_WIDTH + 1));
}

void Candidates::encode(uint32_t i, uint32_t w, const float* b, const float* a, Enc& e) {
  const uint32_t m = f_.m, n = f_.n;
  e.bblk.assign(lq_vector_bytes(m, w, group_), 0);
  e.ablk.assign(lq_vector_bytes(n, w, group_), 0);
  e.bdeq.assign(m, 0.0f);
  e.adeq.assign(n, 0.0f);
  if (w > 0) {
    encode_vector(b, m, w, group_, unit_, search_, e.bblk.data(), e.bdeq.data());
    encode_vector(a, n, w, group_, unit_, search_, e.ablk.data(), e.adeq.data());
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

Candidates::Enc& Candidates::enc(uint32_t i, uint32_t w) {
  Enc& e = cache_[(size_t)i * (LQ_MAX_WIDTH + 1) + w];
  if (!e.done)
    encode(i, w, bf_.data() + (size_t)i * f_.m, af_.data() + (size_t)i * f_.n, e);
  return e;
}

double Candidates::err(uint32_t i, uint32_t w) { return enc(i, w).err; }

void Candidates::precompute(uint32_t max_w) {
  const long total = (long)f_.r * (long)max_w;
#pragma omp parallel for schedule(dynamic)
  for (long t = 0; t < total; ++t) enc((uint32_t)(t / max_w), (uint32_t)(t % max_w) + 1);
}

void Candidates::set_encoding(uint32_t i, uint32_t w, const float* b, const float* a) {
  encode(i, w, b, a, cache_[(size_t)i * (LQ_MAX_WIDTH + 1) + w]);
}

std::vector<uint8_t> Candidates::payload(const std::vector<uint8_t>& widths) {
  const uint64_t prefix = lq_prefix_bytes(f_.r);
  std::vector<uint8_t> out(prefix, 0);
  std::memcpy(out.data(), widths.data(), f_.r);
  std::memcpy(out.data() + prefix - 4, &unit_, 4);
  for (uint32_t i = 0; i < f_.r; ++i) {
    if (widths[i] == 0) continue;
    const Enc& e = enc(i, widths[i]);
    out.insert(out.end(), e.bblk.begin(), e.bblk.end());
    out.insert(out.end(), e.ablk.begin(), e.ablk.end());
  }
  return out;
}

void Candidates::decoded(const std::vector<uint8_t>& widths, std::vector<float>& b_hat,
                         std::vector<float>& a_hat) {
  b_hat.assign((size_t)f_.r * f_.m, 0.0f);
  a_hat.assign((size_t)f_.r * f_.n, 0.0f);
  for (uint32_t i = 0; i < f_.r; ++i) {
    if (widths[i] == 0) continue;
    const Enc& e = enc(i, widths[i]);
    std::copy(e.bdeq.begin(), e.bdeq.end(), b_hat.begin() + (size_t)i * f_.m);
    std::copy(e.adeq.begin(), e.adeq.end(), a_hat.begin() + (size_t)i * f_.n);
  }
}

std::vector<std::vector<uint8_t>> allocate_greedy(std::vector<Candidates*>& pairs,
                                                  int64_t budget) {
  std::vector<std::vector<uint8_t>> widths(pairs.size());
  for (size_t p = 0; p < pairs.size(); ++p) widths[p].assign(pairs[p]->r(), 0);
  // Moves from width w: small jumps only, so that the sign step (which costs a whole
  // bit and a scale) can be taken together with the next one when that pays more.
  auto targets = [](uint32_t w, uint32_t* t) {
    uint32_t k = 0;
    uint32_t hi = w == 0 ? 3 : (w == 1 ? 3 : w + 1);
    for (uint32_t v = w + 1; v <= std::min<uint32_t>(hi, LQ_MAX_WIDTH); ++v) t[k++] = v;
    return k;
  };
  while (true) {
    double best = 0;
    size_t bp = 0;
    uint32_t bi = 0, bw = 0;
    int64_t bcost = 0;
    for (size_t p = 0; p < pairs.size(); ++p) {
      Candidates& c = *pairs[p];
      for (uint32_t i = 0; i < c.r(); ++i) {
        if (c.factors().sigma[i] <= 0) continue;
        const uint32_t w = widths[p][i];
        uint32_t t[3];
        const uint32_t nt = targets(w, t);
        const double e0 = c.err(i, w);
        for (uint32_t k = 0; k < nt; ++k) {
          const int64_t dc = (int64_t)c.cost(t[k]) - (int64_t)c.cost(w);
          if (dc <= 0 || dc > budget) continue;
          const double gain = (e0 - c.err(i, t[k])) / (double)dc;
          if (gain > best) {
            best = gain;
            bp = p;
            bi = i;
            bw = t[k];
            bcost = dc;
          }
        }
      }
    }
    if (best <= 0) break;
    widths[bp][bi] = (uint8_t)bw;
    budget -= bcost;
  }
  return widths;
}

}  // namespace loraquant
