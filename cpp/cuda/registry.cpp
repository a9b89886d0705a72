// Host side of the device registry (cuda_desc.h): building the buffer from modules, and
// decoding through the descriptors so that CI, which has no GPU, tests them.
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "loraquant/cuda.h"
#include "loraquant/module.h"

namespace loraquant {
namespace cuda {

namespace {

uint64_t align16(uint64_t x) { return (x + 15u) & ~(uint64_t)15u; }

std::string shape(const Module& mod) {
  return "m=" + std::to_string(mod.m()) + ", n=" + std::to_string(mod.n()) +
         ", r=" + std::to_string(mod.r());
}

// Group length clamped to the vector (one group either way), and a shift that finds
// an entry's group: log2 of a power-of-two length, or one that maps every entry to 0.
void set_group(uint64_t group, uint32_t len, uint32_t* out, uint8_t* log2) {
  const uint64_t g = std::min<uint64_t>(group, len);
  *out = (uint32_t)g;
  *log2 = LQ_CUDA_NOT_POW2;
  if (group >= len) {
    uint8_t k = 0;
    while ((1ull << k) < len) ++k;
    *log2 = k;
  } else if ((g & (g - 1)) == 0) {
    uint8_t k = 0;
    while ((1ull << k) < g) ++k;
    *log2 = k;
  }
}

template <typename T>
const T* table(const RegistryRef& reg, uint64_t offset) {
  return reinterpret_cast<const T*>(reg.data + offset);
}

}  // namespace

Registry::Registry(const std::vector<const Module*>& modules) {
  if (modules.empty()) throw std::invalid_argument("a registry needs at least one module");
  const Module& first = *modules[0];
  uint64_t live_total = 0;
  for (size_t k = 0; k < modules.size(); ++k) {
    const Module& mod = *modules[k];
    if (mod.m() != first.m() || mod.n() != first.n())
      throw std::invalid_argument("module " + std::to_string(k) + " (" + shape(mod) +
                                  ") does not match module 0 (" + shape(first) +
                                  "): a registry holds one layer's modules");
    uint32_t live = 0;
    for (uint32_t i = 0; i < mod.r(); ++i) live += mod.b_width(i) > 0;
    if (live > LQ_CUDA_MAX_LIVE)
      throw std::invalid_argument("module " + std::to_string(k) + " (" + shape(mod) + ") has " +
                                  std::to_string(live) + " live components; the kernels take " +
                                  std::to_string(LQ_CUDA_MAX_LIVE) + " at most");
    live_total += live;
    info_.max_live = std::max(info_.max_live, live);
  }
  info_.count = (uint32_t)modules.size();
  info_.m = first.m();
  info_.n = first.n();
  info_.comps_offset = align16(sizeof(lq_cuda_module) * modules.size());
  uint64_t at = align16(info_.comps_offset + sizeof(lq_cuda_comp) * live_total);

  std::vector<lq_cuda_module> mods(modules.size());
  std::vector<lq_cuda_comp> comps;
  for (size_t k = 0; k < modules.size(); ++k) {
    const Module& mod = *modules[k];
    lq_cuda_module& d = mods[k];
    d.m = mod.m();
    d.n = mod.n();
    d.r = mod.r();
    d.unit = mod.unit();
    d.payload = at;
    d.comp_begin = (uint32_t)comps.size();
    for (uint32_t i = 0; i < mod.r(); ++i) {
      if (mod.b_width(i) == 0) continue;  // a_width is 0 exactly then too
      lq_cuda_comp c{};
      c.block[LQ_CUDA_B] = at + (uint64_t)(mod.b_block(i) - mod.payload().data());
      c.block[LQ_CUDA_A] = at + (uint64_t)(mod.a_block(i) - mod.payload().data());
      set_group(mod.b_group(i), mod.m(), &c.group[LQ_CUDA_B], &c.log2_group[LQ_CUDA_B]);
      set_group(mod.a_group(i), mod.n(), &c.group[LQ_CUDA_A], &c.log2_group[LQ_CUDA_A]);
      c.width[LQ_CUDA_B] = (uint8_t)mod.b_width(i);
      c.width[LQ_CUDA_A] = (uint8_t)mod.a_width(i);
      c.slot = i;
      comps.push_back(c);
    }
    d.live = (uint32_t)comps.size() - d.comp_begin;
    at = align16(at + mod.nbytes());
  }

  bytes_.assign(at, 0);
  std::memcpy(bytes_.data(), mods.data(), sizeof(lq_cuda_module) * mods.size());
  if (!comps.empty())
    std::memcpy(bytes_.data() + info_.comps_offset, comps.data(),
                sizeof(lq_cuda_comp) * comps.size());
  for (size_t k = 0; k < modules.size(); ++k)
    std::memcpy(bytes_.data() + mods[k].payload, modules[k]->payload().data(),
                modules[k]->nbytes());
}

RegistryRef Registry::ref(const uint8_t* data) const {
  RegistryRef r = info_;
  r.data = data;
  return r;
}

size_t workspace_bytes(const RegistryRef& reg, uint32_t tokens) {
  return sizeof(float) * lq_cuda_splits(reg.n) * (size_t)tokens * reg.max_live;
}

void decode_host(const RegistryRef& host, uint32_t index, float* A_hat, float* B_hat) {
  if (index >= host.count)
    throw std::invalid_argument("module " + std::to_string(index) + " is not in a registry of " +
                                std::to_string(host.count));
  const lq_cuda_module* mod = table<lq_cuda_module>(host, 0) + index;
  const lq_cuda_comp* comps = table<lq_cuda_comp>(host, host.comps_offset) + mod->comp_begin;
  std::memset(A_hat, 0, sizeof(float) * (size_t)mod->r * mod->n);
  std::memset(B_hat, 0, sizeof(float) * (size_t)mod->m * mod->r);
  for (uint32_t c = 0; c < mod->live; ++c) {
    const uint32_t i = comps[c].slot;
    for (int which : {LQ_CUDA_B, LQ_CUDA_A}) {
      const lq_cuda_vec v = lq_cuda_vector(host.data, mod, &comps[c], which);
      lq_cuda_scale s{UINT32_MAX, 0.0f, 0.0f};
      const uint32_t len = which == LQ_CUDA_B ? mod->m : mod->n;
      for (uint32_t j = 0; j < len; ++j) {
        const float e = lq_cuda_entry(&v, j / LQ_CUDA_RUN, j % LQ_CUDA_RUN, &s);
        if (which == LQ_CUDA_B)
          B_hat[(size_t)j * mod->r + i] = e;
        else
          A_hat[(size_t)i * mod->n + j] = e;
      }
    }
  }
}

}  // namespace cuda
}  // namespace loraquant
