// The C API (c_api.h): handles around the C++ API, every entry point guarded so that no
// C++ exception crosses into C.
#include "loraquant/c_api.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "loraquant/adapter_file.h"
#include "loraquant/compress.h"
#include "loraquant/format.h"
#include "loraquant/module.h"

namespace lq = loraquant;

struct lq_module {
  std::shared_ptr<lq::AdapterModule> m;  // shared with the adapter it came from, if any
};

struct lq_adapter {
  std::vector<std::shared_ptr<lq::AdapterModule>> modules;
  std::string peft_config;
};

namespace {

thread_local std::string t_error;
thread_local bool t_error_lost = false;  // the message could not be stored (no memory)

void set_error(const char* fn, const char* what) noexcept {
  try {
    t_error.assign(fn);
    t_error += ": ";
    t_error += what;
    t_error_lost = false;
  } catch (...) {  // assigning a string may throw bad_alloc; nothing may leave here
    t_error_lost = true;
  }
}

// Runs `body`, turning every exception into a status code and a message. The final
// catch-all is deliberate: a C caller cannot receive a C++ exception of any type, and
// the status code tells it that something failed.
template <class F>
int guarded(const char* fn, F&& body) noexcept {
  try {
    body();
    t_error.clear();
    t_error_lost = false;
    return LQ_OK;
  } catch (const lq::FormatError& e) {
    set_error(fn, e.what());
    return LQ_E_FORMAT;
  } catch (const lq::IoError& e) {
    set_error(fn, e.what());
    return LQ_E_IO;
  } catch (const std::invalid_argument& e) {
    set_error(fn, e.what());
    return LQ_E_INVALID_ARGUMENT;
  } catch (const std::bad_alloc&) {
    set_error(fn, "out of memory");
    return LQ_E_NO_MEMORY;
  } catch (const std::exception& e) {
    set_error(fn, e.what());
    return LQ_E_INTERNAL;
  } catch (...) {
    set_error(fn, "unknown exception");
    return LQ_E_INTERNAL;
  }
}

template <class T>
T& need(T* p, const char* what) {
  if (!p) throw std::invalid_argument(std::string(what) + " is NULL");
  return *p;
}

void need_data(const void* p, const char* what) {
  if (!p) throw std::invalid_argument(std::string(what) + " is NULL");
}

const lq::AdapterModule& module_of(const lq_module* h) {
  const lq_module& m = need(h, "module");
  if (!m.m) throw std::invalid_argument("module handle is empty");
  return *m.m;
}

lq_module* new_handle(std::shared_ptr<lq::AdapterModule> m) {
  return new lq_module{std::move(m)};
}

// Dimensions of a pair, checked before anything is read or allocated for it.
void check_pair_dims(uint32_t m, uint32_t n, uint32_t r) {
  if (m == 0 || n == 0 || m > LQ_MAX_DIM || n > LQ_MAX_DIM)
    throw std::invalid_argument("shape (m, n) = (" + std::to_string(m) + ", " + std::to_string(n) +
                                ") out of range 1.." + std::to_string(LQ_MAX_DIM));
  if (r == 0 || r > LQ_MAX_RANK)
    throw std::invalid_argument("rank r = " + std::to_string(r) + " out of range 1.." +
                                std::to_string(LQ_MAX_RANK));
}

std::vector<double> widen(const void* p, size_t count, int dtype) {
  std::vector<double> out(count);
  if (dtype == LQ_FLOAT32) {
    const float* f = static_cast<const float*>(p);
    for (size_t k = 0; k < count; ++k) out[k] = f[k];
  } else {
    std::memcpy(out.data(), p, count * sizeof(double));
  }
  return out;
}

lq::CompressOptions core_options(const lq_options* o) {
  lq::CompressOptions c;
  if (!o) return c;
  c.bits = o->bits;
  c.rho = o->rho;
  c.high_bits = o->high_bits;
  c.group_size = o->group_size;
  c.range_search = o->range_search != 0;
  c.refit_rounds = o->refit_rounds;
  return c;
}

}  // namespace

extern "C" {

const char* lq_last_error(void) {
  return t_error_lost ? "lq: out of memory while recording the error" : t_error.c_str();
}

const char* lq_version(void) { return LQ_VERSION; }

int lq_options_init(lq_options* options) {
  return guarded("lq_options_init", [&] {
    lq_options& o = need(options, "options");
    const lq::CompressOptions d;
    o.bits = d.bits;
    o.rho = d.rho;
    o.high_bits = d.high_bits;
    o.group_size = d.group_size;
    o.range_search = d.range_search ? 1 : 0;
    o.refit_rounds = d.refit_rounds;
  });
}

// ---- adapter files ----------------------------------------------------------------

static lq_adapter* adapter_handle(lq::Adapter&& a) {
  auto h = std::make_unique<lq_adapter>();
  for (lq::AdapterModule& m : a.modules) h->modules.push_back(std::make_shared<lq::AdapterModule>(std::move(m)));
  h->peft_config = std::move(a.peft_config_json);
  return h.release();
}

int lq_adapter_open(const char* path, lq_adapter** out) {
  return guarded("lq_adapter_open", [&] {
    const char* p = &need(path, "path");
    lq_adapter*& o = need(out, "out");
    o = adapter_handle(lq::read_adapter_file(p));
  });
}

int lq_adapter_from_memory(const uint8_t* data, size_t size, lq_adapter** out) {
  return guarded("lq_adapter_from_memory", [&] {
    if (!data && size) throw std::invalid_argument("data is NULL");
    lq_adapter*& o = need(out, "out");
    o = adapter_handle(lq::parse_adapter(data, size));
  });
}

void lq_adapter_free(lq_adapter* adapter) { delete adapter; }

int lq_adapter_module_count(const lq_adapter* adapter, size_t* count) {
  return guarded("lq_adapter_module_count", [&] {
    const lq_adapter& a = need(adapter, "adapter");
    need(count, "count") = a.modules.size();
  });
}

int lq_adapter_module(const lq_adapter* adapter, size_t index, lq_module** out) {
  return guarded("lq_adapter_module", [&] {
    const lq_adapter& a = need(adapter, "adapter");
    lq_module*& o = need(out, "out");
    if (index >= a.modules.size())
      throw std::invalid_argument("index " + std::to_string(index) + " out of range: the adapter has " +
                                  std::to_string(a.modules.size()) + " modules");
    o = new_handle(a.modules[index]);
  });
}

int lq_adapter_find_module(const lq_adapter* adapter, const char* name, lq_module** out) {
  return guarded("lq_adapter_find_module", [&] {
    const lq_adapter& a = need(adapter, "adapter");
    const std::string key = &need(name, "name");
    lq_module*& o = need(out, "out");
    for (const auto& m : a.modules)
      if (m->name == key) {
        o = new_handle(m);
        return;
      }
    throw std::invalid_argument("no module named '" + key + "'");
  });
}

int lq_adapter_peft_config(const lq_adapter* adapter, const char** json) {
  return guarded("lq_adapter_peft_config", [&] {
    const lq_adapter& a = need(adapter, "adapter");
    need(json, "json") = a.peft_config.c_str();
  });
}

int lq_write_adapter_file(const char* path, const lq_module* const* modules, size_t count,
                          const char* peft_config_json) {
  return guarded("lq_write_adapter_file", [&] {
    const char* p = &need(path, "path");
    if (count && !modules) throw std::invalid_argument("modules is NULL");
    lq::Adapter a;
    if (peft_config_json) a.peft_config_json = peft_config_json;
    for (size_t k = 0; k < count; ++k) {
      if (!modules[k]) throw std::invalid_argument("modules[" + std::to_string(k) + "] is NULL");
      const lq::AdapterModule& m = module_of(modules[k]);
      if (m.sigma.empty())
        throw std::invalid_argument("module '" + m.name + "' has no singular values (made from "
                                    "bytes?): attach them with lq_module_set_origin");
      a.modules.push_back(m);
    }
    lq::write_adapter_file(p, a);
  });
}

// ---- compressing ------------------------------------------------------------------

int lq_compress(const char* name, int dtype, const void* A, const void* B, uint32_t m, uint32_t n,
                uint32_t r, double scaling, const lq_options* options, lq_module** out) {
  return guarded("lq_compress", [&] {
    const std::string nm = &need(name, "name");
    need_data(A, "A");
    need_data(B, "B");
    lq_module*& o = need(out, "out");
    if (dtype != LQ_FLOAT32 && dtype != LQ_FLOAT64)
      throw std::invalid_argument("dtype " + std::to_string(dtype) +
                                  " is neither LQ_FLOAT32 (0) nor LQ_FLOAT64 (1)");
    check_pair_dims(m, n, r);
    const std::vector<double> a = widen(A, (size_t)r * n, dtype), b = widen(B, (size_t)m * r, dtype);
    const lq::PairInput p{a.data(), b.data(), m, n, r, scaling};
    lq::Compressed c = lq::compress(p, core_options(options));
    auto am = std::make_shared<lq::AdapterModule>();
    am->name = nm;
    am->scaling = scaling;
    am->module = std::move(c.module);
    am->sigma.assign(c.sigma.begin(), c.sigma.end());
    o = new_handle(std::move(am));
  });
}

// ---- modules ----------------------------------------------------------------------

void lq_module_free(lq_module* module) { delete module; }

int lq_module_name(const lq_module* module, const char** name) {
  return guarded("lq_module_name", [&] {
    const lq::AdapterModule& m = module_of(module);
    need(name, "name") = m.name.c_str();
  });
}

int lq_module_shape(const lq_module* module, uint32_t* m, uint32_t* n) {
  return guarded("lq_module_shape", [&] {
    const lq::Module& mod = module_of(module).module;
    uint32_t& mo = need(m, "m");
    uint32_t& no = need(n, "n");
    mo = mod.m();
    no = mod.n();
  });
}

int lq_module_rank(const lq_module* module, uint32_t* r) {
  return guarded("lq_module_rank", [&] { need(r, "r") = module_of(module).module.r(); });
}

int lq_module_group_size(const lq_module* module, uint32_t* group_size) {
  return guarded("lq_module_group_size",
                 [&] { need(group_size, "group_size") = module_of(module).module.group_size(); });
}

int lq_module_widths(const lq_module* module, uint8_t* b_widths, uint8_t* a_widths, size_t capacity) {
  return guarded("lq_module_widths", [&] {
    const lq::Module& mod = module_of(module).module;
    uint8_t* b = &need(b_widths, "b_widths");
    uint8_t* a = &need(a_widths, "a_widths");
    if (capacity < mod.r())
      throw std::invalid_argument("capacity " + std::to_string(capacity) + " < rank " +
                                  std::to_string(mod.r()));
    for (uint32_t i = 0; i < mod.r(); ++i) {
      b[i] = (uint8_t)mod.b_width(i);
      a[i] = (uint8_t)mod.a_width(i);
    }
  });
}

int lq_module_avg_bits(const lq_module* module, double* avg_bits) {
  return guarded("lq_module_avg_bits",
                 [&] { need(avg_bits, "avg_bits") = module_of(module).module.avg_bits(); });
}

int lq_module_nbytes(const lq_module* module, size_t* nbytes) {
  return guarded("lq_module_nbytes", [&] { need(nbytes, "nbytes") = module_of(module).module.nbytes(); });
}

int lq_module_scaling(const lq_module* module, double* scaling) {
  return guarded("lq_module_scaling", [&] { need(scaling, "scaling") = module_of(module).scaling; });
}

int lq_module_sigma(const lq_module* module, float* sigma, size_t capacity, size_t* count) {
  return guarded("lq_module_sigma", [&] {
    const lq::AdapterModule& m = module_of(module);
    size_t& c = need(count, "count");
    if (sigma) std::memcpy(sigma, m.sigma.data(), std::min(capacity, m.sigma.size()) * sizeof(float));
    c = m.sigma.size();
  });
}

int lq_module_set_origin(lq_module* module, double scaling, const float* sigma, size_t sigma_count) {
  return guarded("lq_module_set_origin", [&] {
    const lq::AdapterModule& cur = module_of(module);
    const float* s = &need(sigma, "sigma");
    if (sigma_count != cur.module.r())
      throw std::invalid_argument("sigma_count " + std::to_string(sigma_count) + " != rank " +
                                  std::to_string(cur.module.r()));
    if (!std::isfinite(scaling)) throw std::invalid_argument("scaling must be finite");
    // Copy on write: other handles to the same module keep what they saw.
    auto next = std::make_shared<lq::AdapterModule>(cur);
    next->scaling = scaling;
    next->sigma.assign(s, s + sigma_count);
    module->m = std::move(next);
  });
}

int lq_module_apply(const lq_module* module, const float* x, size_t batch, size_t in_features,
                    float* y, size_t out_features) {
  return guarded("lq_module_apply", [&] {
    const lq::Module& mod = module_of(module).module;
    if (in_features != mod.n())
      throw std::invalid_argument("x has " + std::to_string(in_features) +
                                  " features, the module expects n = " + std::to_string(mod.n()));
    if (out_features != mod.m())
      throw std::invalid_argument("y has " + std::to_string(out_features) +
                                  " features, the module gives m = " + std::to_string(mod.m()));
    if (batch == 0) return;
    need_data(x, "x");
    need_data(y, "y");
    if (batch > std::numeric_limits<size_t>::max() / std::max(in_features, out_features))
      throw std::invalid_argument("batch " + std::to_string(batch) + " overflows the buffer size");
    mod.apply(x, batch, y);
  });
}

int lq_module_dequantize(const lq_module* module, float* A_hat, size_t a_len, float* B_hat,
                         size_t b_len) {
  return guarded("lq_module_dequantize", [&] {
    const lq::Module& mod = module_of(module).module;
    need_data(A_hat, "A_hat");
    need_data(B_hat, "B_hat");
    const size_t an = (size_t)mod.r() * mod.n(), bn = (size_t)mod.m() * mod.r();
    if (a_len < an || b_len < bn)
      throw std::invalid_argument("buffers of " + std::to_string(a_len) + " and " + std::to_string(b_len) +
                                  " floats; A_hat needs r * n = " + std::to_string(an) +
                                  " and B_hat m * r = " + std::to_string(bn));
    mod.dequantize(A_hat, B_hat);
  });
}

int lq_module_probe_norm(const lq_module* module, double* norm) {
  return guarded("lq_module_probe_norm", [&] {
    const lq::Module& mod = module_of(module).module;
    need(norm, "norm") = mod.probe_norm();
  });
}

int lq_module_to_bytes(const lq_module* module, uint8_t* buffer, size_t capacity, size_t* size) {
  return guarded("lq_module_to_bytes", [&] {
    const lq::Module& mod = module_of(module).module;
    size_t& s = need(size, "size");
    s = sizeof(lq_blob_header) + mod.nbytes();
    if (!buffer) return;
    if (capacity < s)
      throw std::invalid_argument("buffer of " + std::to_string(capacity) + " bytes; the blob needs " +
                                  std::to_string(s));
    const std::vector<uint8_t> bytes = mod.to_bytes();
    std::memcpy(buffer, bytes.data(), bytes.size());
  });
}

int lq_module_from_bytes(const char* name, const uint8_t* data, size_t size, lq_module** out) {
  return guarded("lq_module_from_bytes", [&] {
    const std::string nm = &need(name, "name");
    if (!data && size) throw std::invalid_argument("data is NULL");
    lq_module*& o = need(out, "out");
    auto am = std::make_shared<lq::AdapterModule>();
    am->name = nm;
    am->scaling = std::numeric_limits<double>::quiet_NaN();
    am->module = lq::Module::from_bytes(data, size);
    o = new_handle(std::move(am));
  });
}

}  // extern "C"
