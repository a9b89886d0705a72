// The C API: the same results as the C++ API, and every misuse answered with a status
// code and a message, never a crash or an exception.
#include <cmath>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "fixtures.h"
#include "harness.h"
#include "loraquant/adapter_file.h"
#include "loraquant/c_api.h"
#include "loraquant/compress.h"

namespace lq = loraquant;

namespace {

// Status `code` and a last error containing `needle`.
#define CHECK_FAILS(call, code, needle)                                                        \
  do {                                                                                         \
    const int lq_rc = (call);                                                                  \
    const std::string lq_msg = lq_last_error();                                                \
    lqtest::record(lq_rc == (code) && lq_msg.find(needle) != std::string::npos, #call, __FILE__, \
                   __LINE__, "status " + std::to_string(lq_rc) + ", message: " + lq_msg);      \
  } while (0)

#define CHECK_OK(call)                                                                                 \
  do {                                                                                                 \
    const int lq_rc = (call);                                                                          \
    lqtest::record(lq_rc == LQ_OK, #call, __FILE__, __LINE__, "status " + std::to_string(lq_rc) + ": " + \
                                                                  lq_last_error());                    \
  } while (0)

struct ModuleHandle {
  lq_module* h = nullptr;
  ~ModuleHandle() { lq_module_free(h); }
};

const lqtest::Pair& pair() {
  static const lqtest::Pair p = lqtest::random_pair(12, 10, 4, 7000);
  return p;
}

lq_module* compress_c(const char* name, bool as_float32) {
  const lqtest::Pair& p = pair();
  std::vector<float> A(p.A.begin(), p.A.end()), B(p.B.begin(), p.B.end());
  lq_options o;
  lq_options_init(&o);
  o.group_size = 4;
  o.bits = 6.0;  // enough for a module this small to keep some components
  lq_module* out = nullptr;
  const int rc = as_float32 ? lq_compress(name, LQ_FLOAT32, A.data(), B.data(), p.m, p.n, p.r, 0.5, &o, &out)
                            : lq_compress(name, LQ_FLOAT64, p.A.data(), p.B.data(), p.m, p.n, p.r, 0.5, &o, &out);
  CHECK_EQ(rc, LQ_OK);
  return out;
}

std::vector<uint8_t> blob_of(const lq_module* m) {
  size_t size = 0;
  CHECK_OK(lq_module_to_bytes(m, nullptr, 0, &size));
  std::vector<uint8_t> b(size);
  CHECK_OK(lq_module_to_bytes(m, b.data(), b.size(), &size));
  return b;
}

}  // namespace

LQ_TEST(c_api_matches_the_cpp_api) {
  ModuleHandle h64{compress_c("q_proj", false)}, h32{compress_c("k_proj", true)};
  lq::CompressOptions o;
  o.group_size = 4;
  o.bits = 6.0;
  const lq::Compressed c = lq::compress(pair().input(0.5), o);
  CHECK(blob_of(h64.h) == c.module.to_bytes());  // float64 input: the very same module

  uint32_t m = 0, n = 0, r = 0, g = 0;
  CHECK_OK(lq_module_shape(h32.h, &m, &n));
  CHECK_OK(lq_module_rank(h32.h, &r));
  CHECK_OK(lq_module_group_size(h32.h, &g));
  CHECK(m == 12 && n == 10 && r == 4 && g == 4);
  std::vector<uint8_t> bw(r), aw(r);
  CHECK_OK(lq_module_widths(h64.h, bw.data(), aw.data(), r));
  bool same_widths = true;
  for (uint32_t i = 0; i < r; ++i) same_widths = same_widths && bw[i] == c.module.b_width(i) && aw[i] == c.module.a_width(i);
  CHECK(same_widths);
  CHECK(bw[0] > 0 && aw[0] > 0);
  double bits = 0, scaling = 0, norm = 0;
  size_t nbytes = 0, count = 0;
  CHECK_OK(lq_module_avg_bits(h64.h, &bits));
  CHECK_OK(lq_module_nbytes(h64.h, &nbytes));
  CHECK_OK(lq_module_scaling(h64.h, &scaling));
  CHECK_OK(lq_module_probe_norm(h64.h, &norm));
  CHECK(bits == c.module.avg_bits() && nbytes == c.module.nbytes() && scaling == 0.5);
  CHECK_EQ(norm, c.module.probe_norm());
  std::vector<float> sigma(r);
  CHECK_OK(lq_module_sigma(h64.h, sigma.data(), sigma.size(), &count));
  CHECK(count == r && sigma[0] == (float)c.sigma[0]);
  const char* name = nullptr;
  CHECK_OK(lq_module_name(h32.h, &name));
  CHECK_EQ(std::string(name), std::string("k_proj"));

  std::vector<float> x(3 * n), y(3 * m), want(3 * m);
  for (size_t k = 0; k < x.size(); ++k) x[k] = std::sin((float)k);
  CHECK_OK(lq_module_apply(h64.h, x.data(), 3, n, y.data(), m));
  c.module.apply(x.data(), 3, want.data());
  CHECK(y == want);
  std::vector<float> A(r * n), B(m * r), A2(r * n), B2(m * r);
  CHECK_OK(lq_module_dequantize(h64.h, A.data(), A.size(), B.data(), B.size()));
  c.module.dequantize(A2.data(), B2.data());
  CHECK(A == A2 && B == B2);
}

LQ_TEST(c_api_bytes_and_files) {
  ModuleHandle a{compress_c("layers.0.q_proj", false)}, b{compress_c("layers.0.v_proj", true)};
  const std::vector<uint8_t> blob = blob_of(a.h);
  ModuleHandle back;
  CHECK_OK(lq_module_from_bytes("copy", blob.data(), blob.size(), &back.h));
  CHECK(blob_of(back.h) == blob);
  double scaling = 0;
  size_t count = 99;
  CHECK_OK(lq_module_scaling(back.h, &scaling));
  CHECK_OK(lq_module_sigma(back.h, nullptr, 0, &count));
  CHECK(std::isnan(scaling) && count == 0);  // a blob carries neither

  const std::string path = lqtest::temp_dir() + "/c_api.lqa";
  const lq_module* mods[] = {a.h, b.h};
  CHECK_OK(lq_write_adapter_file(path.c_str(), mods, 2, "{\"r\": 4}"));
  lq_adapter* ad = nullptr;
  CHECK_OK(lq_adapter_open(path.c_str(), &ad));
  size_t n = 0;
  CHECK_OK(lq_adapter_module_count(ad, &n));
  CHECK_EQ(n, (size_t)2);
  const char* cfg = nullptr;
  CHECK_OK(lq_adapter_peft_config(ad, &cfg));
  CHECK_EQ(std::string(cfg), std::string("{\"r\": 4}"));
  ModuleHandle second, found;
  CHECK_OK(lq_adapter_module(ad, 1, &second.h));
  CHECK_OK(lq_adapter_find_module(ad, "layers.0.q_proj", &found.h));
  lq_adapter_free(ad);  // the module handles outlive the adapter
  const char* name = nullptr;
  CHECK_OK(lq_module_name(second.h, &name));
  CHECK_EQ(std::string(name), std::string("layers.0.v_proj"));
  CHECK(blob_of(found.h) == blob);
  CHECK(lq::read_adapter_file(path).modules[0].module.to_bytes() == blob);

  // A module from bytes must be given its origin before it can go into a file.
  const lq_module* one[] = {back.h};
  CHECK_FAILS(lq_write_adapter_file(path.c_str(), one, 1, nullptr), LQ_E_INVALID_ARGUMENT, "lq_module_set_origin");
  std::vector<float> sigma(4, 1.0f);
  CHECK_FAILS(lq_module_set_origin(back.h, 0.5, sigma.data(), 3), LQ_E_INVALID_ARGUMENT, "sigma_count 3 != rank 4");
  CHECK_OK(lq_module_set_origin(back.h, 0.5, sigma.data(), 4));
  CHECK_OK(lq_write_adapter_file(path.c_str(), one, 1, nullptr));
  CHECK_EQ(lq::read_adapter_file(path).modules[0].name, std::string("copy"));

  const std::vector<uint8_t> file = lq::serialize_adapter(lq::read_adapter_file(path));
  CHECK_OK(lq_adapter_from_memory(file.data(), file.size(), &ad));
  lq_adapter_free(ad);
}

LQ_TEST(c_api_errors_are_codes) {
  ModuleHandle h{compress_c("m", false)};
  lq_module* out = nullptr;
  lq_adapter* ad = nullptr;
  const lqtest::Pair& p = pair();
  float buf[256] = {0};
  uint32_t u = 0;
  size_t sz = 0;
  double d = 0;
  const char* s = nullptr;

  // NULL everywhere.
  CHECK_FAILS(lq_options_init(nullptr), LQ_E_INVALID_ARGUMENT, "options is NULL");
  CHECK_FAILS(lq_adapter_open(nullptr, &ad), LQ_E_INVALID_ARGUMENT, "path is NULL");
  CHECK_FAILS(lq_adapter_open("x", nullptr), LQ_E_INVALID_ARGUMENT, "out is NULL");
  CHECK_FAILS(lq_adapter_module_count(nullptr, &sz), LQ_E_INVALID_ARGUMENT, "adapter is NULL");
  CHECK_FAILS(lq_adapter_module(nullptr, 0, &out), LQ_E_INVALID_ARGUMENT, "adapter is NULL");
  CHECK_FAILS(lq_adapter_find_module(nullptr, "m", &out), LQ_E_INVALID_ARGUMENT, "adapter is NULL");
  CHECK_FAILS(lq_adapter_peft_config(nullptr, &s), LQ_E_INVALID_ARGUMENT, "adapter is NULL");
  CHECK_FAILS(lq_adapter_from_memory(nullptr, 10, &ad), LQ_E_INVALID_ARGUMENT, "data is NULL");
  CHECK_FAILS(lq_module_shape(nullptr, &u, &u), LQ_E_INVALID_ARGUMENT, "module is NULL");
  CHECK_FAILS(lq_module_shape(h.h, nullptr, &u), LQ_E_INVALID_ARGUMENT, "m is NULL");
  CHECK_FAILS(lq_module_rank(nullptr, &u), LQ_E_INVALID_ARGUMENT, "module is NULL");
  CHECK_FAILS(lq_module_group_size(h.h, nullptr), LQ_E_INVALID_ARGUMENT, "group_size is NULL");
  CHECK_FAILS(lq_module_name(nullptr, &s), LQ_E_INVALID_ARGUMENT, "module is NULL");
  CHECK_FAILS(lq_module_avg_bits(nullptr, &d), LQ_E_INVALID_ARGUMENT, "module is NULL");
  CHECK_FAILS(lq_module_nbytes(h.h, nullptr), LQ_E_INVALID_ARGUMENT, "nbytes is NULL");
  CHECK_FAILS(lq_module_probe_norm(nullptr, &d), LQ_E_INVALID_ARGUMENT, "module is NULL");
  CHECK_FAILS(lq_module_probe_norm(h.h, nullptr), LQ_E_INVALID_ARGUMENT, "norm is NULL");
  CHECK_FAILS(lq_module_apply(nullptr, buf, 1, 10, buf, 12), LQ_E_INVALID_ARGUMENT, "module is NULL");
  CHECK_FAILS(lq_module_apply(h.h, nullptr, 1, 10, buf, 12), LQ_E_INVALID_ARGUMENT, "x is NULL");
  CHECK_FAILS(lq_module_apply(h.h, buf, 1, 10, nullptr, 12), LQ_E_INVALID_ARGUMENT, "y is NULL");
  CHECK_FAILS(lq_module_to_bytes(h.h, nullptr, 0, nullptr), LQ_E_INVALID_ARGUMENT, "size is NULL");
  CHECK_FAILS(lq_module_from_bytes("x", nullptr, 5, &out), LQ_E_INVALID_ARGUMENT, "data is NULL");
  CHECK_FAILS(lq_module_from_bytes(nullptr, (const uint8_t*)buf, 5, &out), LQ_E_INVALID_ARGUMENT, "name is NULL");
  CHECK_FAILS(lq_compress("x", LQ_FLOAT64, nullptr, p.B.data(), p.m, p.n, p.r, 1, nullptr, &out),
              LQ_E_INVALID_ARGUMENT, "A is NULL");
  CHECK_FAILS(lq_write_adapter_file(nullptr, nullptr, 0, nullptr), LQ_E_INVALID_ARGUMENT, "path is NULL");
  CHECK_FAILS(lq_write_adapter_file("x", nullptr, 1, nullptr), LQ_E_INVALID_ARGUMENT, "modules is NULL");
  const lq_module* holes[] = {h.h, nullptr};
  CHECK_FAILS(lq_write_adapter_file("x", holes, 2, nullptr), LQ_E_INVALID_ARGUMENT, "modules[1] is NULL");
  lq_module_free(nullptr);
  lq_adapter_free(nullptr);

  // Bad shapes, sizes and options.
  CHECK_FAILS(lq_module_apply(h.h, buf, 1, 9, buf, 12), LQ_E_INVALID_ARGUMENT, "x has 9 features, the module expects n = 10");
  CHECK_FAILS(lq_module_apply(h.h, buf, 1, 10, buf, 11), LQ_E_INVALID_ARGUMENT, "module gives m = 12");
  CHECK_FAILS(lq_module_apply(h.h, buf, SIZE_MAX, 10, buf, 12), LQ_E_INVALID_ARGUMENT, "overflows");
  CHECK_FAILS(lq_module_dequantize(h.h, buf, 39, buf, 48), LQ_E_INVALID_ARGUMENT, "r * n = 40");
  CHECK_FAILS(lq_module_widths(h.h, (uint8_t*)buf, (uint8_t*)buf + 8, 3), LQ_E_INVALID_ARGUMENT, "capacity 3 < rank 4");
  CHECK_FAILS(lq_module_widths(h.h, (uint8_t*)buf, nullptr, 4), LQ_E_INVALID_ARGUMENT, "a_widths is NULL");
  uint8_t small[8];
  CHECK_FAILS(lq_module_to_bytes(h.h, small, sizeof small, &sz), LQ_E_INVALID_ARGUMENT, "the blob needs");
  CHECK(sz > sizeof small);  // the size needed comes back even so
  CHECK_FAILS(lq_compress("x", 7, p.A.data(), p.B.data(), p.m, p.n, p.r, 1, nullptr, &out), LQ_E_INVALID_ARGUMENT,
              "dtype 7");
  CHECK_FAILS(lq_compress("x", LQ_FLOAT64, p.A.data(), p.B.data(), 0, p.n, p.r, 1, nullptr, &out),
              LQ_E_INVALID_ARGUMENT, "out of range");
  CHECK_FAILS(lq_compress("x", LQ_FLOAT64, p.A.data(), p.B.data(), p.m, p.n, 5000, 1, nullptr, &out),
              LQ_E_INVALID_ARGUMENT, "rank r = 5000");
  lq_options o;
  lq_options_init(&o);
  o.bits = 0;
  CHECK_FAILS(lq_compress("x", LQ_FLOAT64, p.A.data(), p.B.data(), p.m, p.n, p.r, 1, &o, &out),
              LQ_E_INVALID_ARGUMENT, "bits must be in (0, 16]");
  std::vector<double> nan_a(p.A);
  nan_a[5] = NAN;
  CHECK_FAILS(lq_compress("x", LQ_FLOAT64, nan_a.data(), p.B.data(), p.m, p.n, p.r, 1, nullptr, &out),
              LQ_E_INVALID_ARGUMENT, "NaN");
  std::vector<float> inf_b(p.B.begin(), p.B.end()), a32(p.A.begin(), p.A.end());
  inf_b[0] = INFINITY;
  CHECK_FAILS(lq_compress("x", LQ_FLOAT32, a32.data(), inf_b.data(), p.m, p.n, p.r, 1, nullptr, &out),
              LQ_E_INVALID_ARGUMENT, "B contains NaN or Inf");
  CHECK_FAILS(lq_compress("x", LQ_FLOAT64, p.A.data(), p.B.data(), p.m, p.n, p.r, NAN, nullptr, &out),
              LQ_E_INVALID_ARGUMENT, "scaling must be finite");
  CHECK(out == nullptr);  // no failed call wrote its out-parameter

  // Files and bytes.
  const std::string dir = lqtest::temp_dir();
  CHECK_FAILS(lq_adapter_open((dir + "/nope.lqa").c_str(), &ad), LQ_E_IO, "nope.lqa");
  CHECK_FAILS(lq_module_from_bytes("x", (const uint8_t*)"garbage garbage garbage garbage garbage garbage garbage", 55, &out),
              LQ_E_FORMAT, "bad magic");
  const std::vector<uint8_t> f = lq::serialize_adapter(lqtest::sample_adapter());
  CHECK_FAILS(lq_adapter_from_memory(f.data(), f.size() - 1, &ad), LQ_E_FORMAT, "adapter file:");
  const lq_module* one[] = {h.h};
  CHECK_FAILS(lq_write_adapter_file((dir + "/no/dir/x.lqa").c_str(), one, 1, nullptr), LQ_E_IO, "cannot write");
  CHECK_FAILS(lq_write_adapter_file((dir + "/x.lqa").c_str(), one, 1, "[1]"), LQ_E_INVALID_ARGUMENT, "JSON object");
  CHECK_OK(lq_adapter_open(std::string(dir + "/c_api.lqa").c_str(), &ad));
  CHECK_FAILS(lq_adapter_module(ad, 9, &out), LQ_E_INVALID_ARGUMENT, "index 9 out of range");
  CHECK_FAILS(lq_adapter_find_module(ad, "absent", &out), LQ_E_INVALID_ARGUMENT, "no module named 'absent'");
  lq_adapter_free(ad);
  CHECK(out == nullptr && ad != nullptr);

  // NaN activations are not an error: they flow through, as in a matrix product.
  std::vector<float> x(10, NAN), y(12, 0.0f);
  CHECK_OK(lq_module_apply(h.h, x.data(), 1, 10, y.data(), 12));
  CHECK(std::isnan(y[0]));
}

LQ_TEST(c_api_last_error_is_per_thread) {
  lq_adapter* ad = nullptr;
  CHECK_EQ(lq_adapter_open("/nonexistent/main.lqa", &ad), LQ_E_IO);
  std::string in_thread_before, in_thread_after;
  std::thread t([&] {
    in_thread_before = lq_last_error();
    lq_adapter_open("/nonexistent/thread.lqa", &ad);
    in_thread_after = lq_last_error();
  });
  t.join();
  CHECK_EQ(in_thread_before, std::string(""));
  CHECK(in_thread_after.find("thread.lqa") != std::string::npos);
  CHECK(std::string(lq_last_error()).find("main.lqa") != std::string::npos);
  lq_options o;
  CHECK_OK(lq_options_init(&o));
  CHECK_EQ(std::string(lq_last_error()), std::string(""));  // a success clears it
  CHECK(o.bits == 2.0 && o.rho == 0.0 && o.high_bits == 2 && o.group_size == 128 && o.range_search == 1);
  CHECK_EQ(std::string(lq_version()), std::string("0.1.0"));
}
