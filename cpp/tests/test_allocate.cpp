// The allocator's pruning: err_floor() is a lower bound of err() whatever is encoded
// already, and the allocation does not depend on what the cache held beforehand.
#include <vector>

#include "candidates.h"
#include "fixtures.h"
#include "harness.h"
#include "loraquant/svd.h"

namespace lq = loraquant;

namespace {

lq::Candidates candidates(const lqtest::Pair& p, uint32_t group) {
  return lq::Candidates(lq::thin_svd(p.A.data(), p.B.data(), p.m, p.n, p.r, 0.5), group, true);
}

// Every configuration of widths 1..4 and group options of component i.
std::vector<lq::Config> configs(const lq::Candidates& c) {
  std::vector<lq::Config> out;
  for (uint32_t wb = 1; wb <= 4; ++wb)
    for (uint32_t wa = 1; wa <= 4; ++wa)
      for (uint32_t k = 0; k < lq::kGroupOptions; ++k)
        if (c.option_distinct(k)) out.push_back({wb, wa, k});
  return out;
}

}  // namespace

LQ_TEST(allocate_err_floor_is_a_lower_bound) {
  lqtest::Rng rng(7);
  bool ok = true;
  int checked = 0;
  for (uint64_t seed = 0; seed < 4; ++seed) {
    lqtest::Pair p = lqtest::random_pair(300 + 37 * (uint32_t)seed, 200 + 91 * (uint32_t)seed, 6, seed);
    lq::Candidates c = candidates(p, 32);
    const std::vector<lq::Config> all = configs(c);
    // Encode configurations in a random order; before each, every configuration's
    // floor must stay at or below its exact error.
    for (int step = 0; step < 40; ++step) {
      const uint32_t i = rng.below(c.r());
      const lq::Config pick = all[rng.below((uint32_t)all.size())];
      for (const lq::Config& t : all) {
        const double floor = c.err_floor(i, t);
        if (floor > 0) ++checked;
        ok = ok && floor >= 0 && floor <= c.err(i, t) * (1 + 1e-12) + 1e-300;
      }
      c.err(i, pick);
    }
    ok = ok && c.err_floor(0, lq::Config{}) == c.err(0, lq::Config{});  // dropped: exact
  }
  CHECK(ok);
  CHECK(checked > 1000);  // the bound is not vacuous
}

LQ_TEST(allocate_result_does_not_depend_on_the_cache) {
  for (uint64_t seed = 10; seed < 13; ++seed) {
    std::vector<lqtest::Pair> pairs = {lqtest::random_pair(256, 130, 8, seed),
                                       lqtest::random_pair(77, 513, 5, seed + 100)};
    for (int64_t budget : {200, 900, 4000}) {
      std::vector<lq::Candidates> cold, warm;
      for (const auto& p : pairs) {
        cold.push_back(candidates(p, 64));
        warm.push_back(candidates(p, 64));
      }
      for (lq::Candidates& c : warm)  // everything encoded: nothing left to prune
        for (uint32_t i = 0; i < c.r(); ++i)
          for (const lq::Config& t : configs(c)) c.err(i, t);
      std::vector<lq::Candidates*> pc{&cold[0], &cold[1]}, pw{&warm[0], &warm[1]};
      const auto a = lq::allocate_greedy(pc, budget, true);
      const auto b = lq::allocate_greedy(pw, budget, true);
      bool same = a.size() == b.size();
      for (size_t k = 0; same && k < a.size(); ++k)
        for (size_t i = 0; same && i < a[k].size(); ++i)
          same = a[k][i].wb == b[k][i].wb && a[k][i].wa == b[k][i].wa && a[k][i].k == b[k][i].k;
      CHECK(same);
    }
  }
}
