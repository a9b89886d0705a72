// compress / compress_many: validate, factor, choose widths, pack.
#include "loraquant/compress.h"

#include <cmath>
#include <memory>
#include <stdexcept>
#include <string>

#include "candidates.h"
#include "loraquant/format.h"
#include "loraquant/svd.h"

namespace loraquant {

namespace {

// How far above the budget prepare() encodes a pair's candidates (see there).
constexpr double kWarmMarginBits = 0.25;

void check_options(const CompressOptions& o) {
  if (!(o.bits > 0 && o.bits <= 16))
    throw std::invalid_argument("bits must be in (0, 16], got " + std::to_string(o.bits));
  if (o.rho != 0 && !(o.rho > 0 && o.rho <= 1))
    throw std::invalid_argument("rho must be in (0, 1], got " + std::to_string(o.rho));
  if (o.high_bits < 2 || o.high_bits > LQ_MAX_WIDTH)
    throw std::invalid_argument("high_bits must be in 2..8, got " + std::to_string(o.high_bits));
  if (o.group_size == 0 || o.group_size > LQ_MAX_GROUP)
    throw std::invalid_argument("group_size must be in 1.." + std::to_string(LQ_MAX_GROUP) +
                                ", got " + std::to_string(o.group_size));
}

void check_pair(const PairInput& p) {
  if (!p.A || !p.B) throw std::invalid_argument("A and B must not be null");
  if (p.r == 0) throw std::invalid_argument("rank r must be at least 1");
  if (p.r > LQ_MAX_RANK)
    throw std::invalid_argument("rank " + std::to_string(p.r) + " exceeds the maximum " +
                                std::to_string(LQ_MAX_RANK));
  if (p.m == 0 || p.n == 0 || p.m > LQ_MAX_DIM || p.n > LQ_MAX_DIM)
    throw std::invalid_argument("shape (" + std::to_string(p.m) + ", " + std::to_string(p.n) +
                                ") out of range 1.." + std::to_string(LQ_MAX_DIM));
}

std::vector<Config> paper_config(const std::vector<double>& sigma, const CompressOptions& o) {
  const uint32_t h = paper_split(sigma, o.rho);
  std::vector<Config> c(sigma.size());
  for (size_t i = 0; i < sigma.size(); ++i)
    if (sigma[i] > 0) c[i].wb = c[i].wa = i < h ? o.high_bits : 1;
  return c;
}

// Bytes of vector blocks that `bits` per weight of these pairs leave after the
// prefixes (widths, shifts, unit), every stored byte counted.
int64_t block_budget(const std::vector<Candidates*>& cands, double bits) {
  double weights = 0, fixed = 0;
  for (const Candidates* c : cands) {
    const Factors& f = c->factors();
    weights += (double)f.r * ((double)f.m + (double)f.n);
    fixed += (double)lq_prefix_bytes(f.r);
  }
  return (int64_t)std::floor(bits * weights / 8.0 - fixed);
}

// fn(k) for every pair k on OpenMP threads (exceptions cannot leave a parallel
// region): after all ran, the first failure by index is thrown as invalid_argument,
// its message prefixed with "pair k: " when `name` and there is more than one pair.
template <class Fn>
void for_each_pair(size_t np, bool name, Fn fn) {
  std::vector<std::string> errors(np);
#pragma omp parallel for schedule(dynamic) if (np > 1)
  for (long k = 0; k < (long)np; ++k) {
    try {
      fn((size_t)k);
    } catch (const std::exception& e) {
      errors[k] = e.what();
    }
  }
  for (size_t k = 0; k < np; ++k)
    if (!errors[k].empty())
      throw std::invalid_argument(name && np > 1 ? "pair " + std::to_string(k) + ": " + errors[k]
                                                 : errors[k]);
}

Compressed finish_one(Candidates& c, const std::vector<Config>& cfg, const CompressOptions& o) {
  c.select(cfg);
  c.refit(o.refit_rounds);
  Compressed out;
  const Factors& f = c.factors();
  out.module = Module(f.m, f.n, f.r, o.group_size, c.payload());
  out.sigma = f.sigma;
  std::vector<float> bh, ah;
  c.decoded(bh, ah);
  out.rel_error = relative_error(f, bh, ah);
  return out;
}

}  // namespace

uint32_t paper_split(const std::vector<double>& sigma, double rho) {
  double total = 0;
  for (double s : sigma) total += s * s;
  if (!(total > 0)) return 0;
  double acc = 0;
  for (size_t i = 0; i < sigma.size(); ++i) {
    acc += sigma[i] * sigma[i];
    if (acc >= rho * total * (1 - 1e-12)) return (uint32_t)(i + 1);
  }
  return (uint32_t)sigma.size();
}

std::shared_ptr<Candidates> prepare(const PairInput& p, const CompressOptions& o, bool shared) {
  check_options(o);
  check_pair(p);
  Factors f = p.H ? thin_svd_weighted(p.A, p.B, p.H, p.m, p.n, p.r, p.scaling, p.damping)
                  : thin_svd(p.A, p.B, p.m, p.n, p.r, p.scaling);
  auto c = std::make_shared<Candidates>(std::move(f), o.group_size, o.range_search);
  if (o.rho > 0 || !shared) return c;
  // Warm the cache with the candidates that finish() will most likely ask for: those
  // this pair's own allocation visits, a little above the budget. finish() shares
  // one budget over all pairs and runs serially, pairs run here in parallel. This
  // changes no result, only where the encoding work is done (the allocator encodes
  // a vector only when a move needs its exact error, see allocate.cpp).
  std::vector<Candidates*> one{c.get()};
  allocate_greedy(one, block_budget(one, o.bits + kWarmMarginBits), o.relative_balance);
  return c;
}

std::vector<Compressed> finish(const std::vector<Candidates*>& cands, const CompressOptions& o) {
  check_options(o);
  const size_t np = cands.size();
  for (const Candidates* c : cands) {
    if (!c) throw std::invalid_argument("finish: a prepared pair is null");
    if (c->group() != o.group_size || c->range_search() != o.range_search)
      throw std::invalid_argument("finish: pairs were prepared with other options (group_size " +
                                  std::to_string(c->group()) + ")");
  }
  std::vector<std::vector<Config>> cfg(np);
  if (o.rho > 0) {
    for (size_t k = 0; k < np; ++k) cfg[k] = paper_config(cands[k]->factors().sigma, o);
  } else {
    std::vector<Candidates*> ptrs(cands);
    cfg = allocate_greedy(ptrs, block_budget(ptrs, o.bits), o.relative_balance);
  }
  std::vector<Compressed> out(np);
  for_each_pair(np, false, [&](size_t k) { out[k] = finish_one(*cands[k], cfg[k], o); });
  return out;
}

std::vector<Compressed> compress_many(const std::vector<PairInput>& in, const CompressOptions& o) {
  check_options(o);
  for (const PairInput& p : in) check_pair(p);
  const size_t np = in.size();
  std::vector<std::shared_ptr<Candidates>> cands(np);
  for_each_pair(np, true, [&](size_t k) { cands[k] = prepare(in[k], o, np > 1); });
  std::vector<Candidates*> ptrs;
  for (auto& c : cands) ptrs.push_back(c.get());
  return finish(ptrs, o);
}

Compressed compress(const PairInput& in, const CompressOptions& opt) {
  return std::move(compress_many({in}, opt)[0]);
}

}  // namespace loraquant
