// Rate-distortion allocation: the configuration (width, group option) of every
// component of every pair, by greedy marginal error reduction per stored byte.
#include <algorithm>
#include <cstdint>
#include <queue>
#include <vector>

#include "candidates.h"

namespace loraquant {

namespace {

struct Move {
  double ratio = 0;  // error reduction per byte
  Config to;
  int64_t bytes = 0;
};

// Moves from the current configuration: a dropped component may jump to any widths
// up to 3 (so that the sign step, which costs a whole bit and a scale, can be taken
// together with the next one); a kept one may add one or two bits to either factor
// or both (factor widths at most 2 apart). Any group option, as long as it costs more.
// A move whose gain cannot beat the best so far even at err_floor() is skipped without
// encoding its vectors (the result is the same: only a strictly larger ratio wins).
Move best_move(Candidates& c, uint32_t i, Config cur, int64_t budget, double weight) {
  Move best;
  const double e0 = c.err(i, cur);
  const uint64_t c0 = c.cost(cur);
  auto consider = [&](uint32_t wb, uint32_t wa) {
    if (wb > LQ_MAX_WIDTH || wa > LQ_MAX_WIDTH || wb + 2 < wa || wa + 2 < wb) return;
    for (uint32_t k = 0; k < kGroupOptions; ++k) {
      if (!c.option_distinct(k)) continue;
      const Config to{wb, wa, k};
      const int64_t bytes = (int64_t)c.cost(to) - (int64_t)c0;
      if (bytes <= 0 || bytes > budget) continue;
      if (weight * (e0 - c.err_floor(i, to)) / (double)bytes <= best.ratio) continue;
      const double ratio = weight * (e0 - c.err(i, to)) / (double)bytes;
      if (ratio > best.ratio) best = Move{ratio, to, bytes};
    }
  };
  if (!cur.kept()) {
    for (uint32_t wb = 1; wb <= 3; ++wb)
      for (uint32_t wa = 1; wa <= 3; ++wa) consider(wb, wa);
  } else {
    for (uint32_t db = 0; db <= 2; ++db)
      for (uint32_t da = 0; da <= 2; ++da) consider(cur.wb + db, cur.wa + da);
  }
  return best;
}

struct Entry {
  double ratio;
  size_t item;
  uint32_t version;
  bool operator<(const Entry& o) const { return ratio < o.ratio; }
};

}  // namespace

std::vector<std::vector<Config>> allocate_greedy(std::vector<Candidates*>& pairs, int64_t budget,
                                                 bool relative) {
  struct Item {
    size_t pair;
    uint32_t comp;
    uint32_t version = 0;
    Move move;
  };
  std::vector<std::vector<Config>> cfg(pairs.size());
  std::vector<double> weight(pairs.size(), 1.0);
  for (size_t p = 0; p < pairs.size() && relative; ++p) {
    double total = 0;
    for (double s : pairs[p]->factors().sigma) total += s * s;
    weight[p] = total > 0 ? 1.0 / total : 1.0;
  }
  std::vector<Item> items;
  for (size_t p = 0; p < pairs.size(); ++p) {
    cfg[p].assign(pairs[p]->r(), Config{});
    for (uint32_t i = 0; i < pairs[p]->r(); ++i)
      if (pairs[p]->factors().sigma[i] > 0) items.push_back({p, i, 0, Move{}});
  }
  std::priority_queue<Entry> heap;
  auto refresh = [&](size_t k) {
    Item& it = items[k];
    it.move = best_move(*pairs[it.pair], it.comp, cfg[it.pair][it.comp], budget, weight[it.pair]);
    if (it.move.ratio > 0) heap.push({it.move.ratio, k, it.version});
  };
  for (size_t k = 0; k < items.size(); ++k) refresh(k);
  while (!heap.empty()) {
    Entry top = heap.top();
    heap.pop();
    Item& it = items[top.item];
    if (top.version != it.version) continue;
    if (it.move.bytes > budget) {  // the budget shrank since: look again within it
      ++it.version;
      refresh(top.item);
      continue;
    }
    cfg[it.pair][it.comp] = it.move.to;
    budget -= it.move.bytes;
    ++it.version;
    refresh(top.item);
  }
  return cfg;
}

}  // namespace loraquant
