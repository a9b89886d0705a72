// Deterministic test data (fixtures.h).
#include "fixtures.h"

#include <cmath>
#include <cstring>

#include "harness.h"

namespace lq = loraquant;

namespace lqtest {

lq::PairInput Pair::input(double scaling) const {
  return {A.data(), B.data(), m, n, r, scaling};
}

Pair random_pair(uint32_t m, uint32_t n, uint32_t r, uint64_t seed) {
  Rng rng(seed);
  Pair p;
  p.m = m;
  p.n = n;
  p.r = r;
  p.A.resize((size_t)r * n);
  p.B.resize((size_t)m * r);
  for (double& v : p.A) v = rng.symmetric();
  for (double& v : p.B) v = rng.symmetric();
  return p;
}

lq::Compressed compress_pair(const Pair& p, double scaling, double bits, uint32_t group) {
  lq::CompressOptions o;
  o.bits = bits;
  o.group_size = group;
  return lq::compress(p.input(scaling), o);
}

static lq::AdapterModule adapter_module(const char* name, const Pair& p, double scaling,
                                        const lq::CompressOptions& o) {
  lq::Compressed c = lq::compress(p.input(scaling), o);
  lq::AdapterModule am;
  am.name = name;
  am.scaling = scaling;
  am.module = std::move(c.module);
  am.sigma.assign(c.sigma.begin(), c.sigma.end());
  return am;
}

static lq::AdapterExtra extra(const char* name, const char* dtype, std::vector<uint64_t> shape,
                              size_t bytes, uint8_t seed) {
  lq::AdapterExtra x;
  x.name = name;
  x.dtype = dtype;
  x.shape = std::move(shape);
  for (size_t k = 0; k < bytes; ++k) x.data.push_back((uint8_t)(seed + 37 * k));
  return x;
}

static lq::Adapter build_sample_adapter() {
  lq::Adapter a;
  lq::CompressOptions budget;
  budget.group_size = 8;
  budget.bits = 8.0;  // modules this small need a large budget to keep any component
  lq::CompressOptions paper;
  paper.rho = 0.8;
  paper.high_bits = 3;
  a.modules.push_back(adapter_module("base_model.model.layers.0.self_attn.q_proj",
                                     random_pair(5, 7, 3, 1), 2.0, budget));
  a.modules.push_back(adapter_module("base_model.model.layers.0.mlp.down_proj",
                                     random_pair(33, 17, 4, 2), -0.25, budget));
  a.modules.push_back(adapter_module("base_model.model.lm_head", random_pair(1, 129, 2, 3),
                                     1.0 / 3.0, paper));
  a.extras.push_back(extra("base_model.model.score.weight", "F32", {2, 3}, 24, 1));
  a.extras.push_back(extra("base_model.model.layers.0.mlp.down_proj.lora_B.bias", "BF16", {4}, 8, 2));
  a.extras.push_back(extra("base_model.model.step", "I64", {}, 8, 3));
  a.extras.push_back(extra("base_model.model.empty", "U8", {0}, 0, 4));
  a.peft_config_json =
      "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"note\": \"caf\xc3\xa9 \\\"q\\\"\\n\","
      " \"target_modules\": [\"q_proj\", \"down_proj\"]}";
  return a;
}

lq::Adapter sample_adapter() {
  static const lq::Adapter a = build_sample_adapter();  // compressing it once is enough
  return a;
}

std::vector<double> probe_vector(uint32_t n) {
  std::vector<double> x(n);
  for (uint32_t j = 0; j < n; ++j) x[j] = std::sin((double)j + 1.0);
  return x;
}

}  // namespace lqtest
