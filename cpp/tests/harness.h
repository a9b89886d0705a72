// A small test harness: LQ_TEST registers a case, CHECK* record results, main() runs
// the cases whose names start with argv[1]. A case that checks nothing fails.
#ifndef LORAQUANT_TEST_HARNESS_H
#define LORAQUANT_TEST_HARNESS_H

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>

namespace lqtest {

using Fn = void (*)();
struct Register {
  Register(const char* name, Fn fn);
};

// Records one check; prints the first failures of a case with file, line and detail.
void record(bool ok, const char* expr, const char* file, int line, const std::string& detail);

template <class T>
std::string show(const T& v) {
  std::ostringstream s;
  s.precision(17);
  if constexpr (sizeof(T) == 1 && std::is_integral_v<T>) s << (int)v;
  else s << v;
  return s.str();
}

// A scratch directory for this process, removed when the tests end.
std::string temp_dir();

// Deterministic on every platform (std distributions are not): xorshift64*.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s_ ^= s_ >> 12;
    s_ ^= s_ << 25;
    s_ ^= s_ >> 27;
    return s_ * 0x2545F4914F6CDD1Dull;
  }
  double uniform() { return (double)(next() >> 11) * 0x1p-53; }  // [0, 1)
  double symmetric() { return 2.0 * uniform() - 1.0; }           // [-1, 1)
  uint32_t below(uint32_t k) { return (uint32_t)(next() % k); }

 private:
  uint64_t s_;
};

}  // namespace lqtest

#define LQ_TEST(name)                                          \
  static void name();                                          \
  static const lqtest::Register lq_register_##name(#name, name); \
  static void name()

#define CHECK(cond) lqtest::record((cond), #cond, __FILE__, __LINE__, "")

#define CHECK_EQ(a, b)                                                                     \
  do {                                                                                     \
    const auto lq_a = (a); /* copies: a reference could dangle into a temporary */         \
    const auto lq_b = (b);                                                                 \
    lqtest::record(lq_a == lq_b, #a " == " #b, __FILE__, __LINE__,                         \
                   lqtest::show(lq_a) + " vs " + lqtest::show(lq_b));                      \
  } while (0)

// |a - b| <= tol
#define CHECK_NEAR(a, b, tol)                                                              \
  do {                                                                                     \
    const double lq_a = (a), lq_b = (b), lq_t = (tol);                                     \
    lqtest::record(std::fabs(lq_a - lq_b) <= lq_t, #a " ~ " #b, __FILE__, __LINE__,        \
                   lqtest::show(lq_a) + " vs " + lqtest::show(lq_b) + ", tolerance " +     \
                       lqtest::show(lq_t));                                                \
  } while (0)

// `expr` throws Type with a message containing `needle`.
#define CHECK_THROWS(expr, Type, needle)                                                   \
  do {                                                                                     \
    std::string lq_got = "nothing thrown";                                                 \
    bool lq_ok = false;                                                                    \
    try {                                                                                  \
      (void)(expr);                                                                        \
    } catch (const Type& lq_e) {                                                           \
      lq_got = lq_e.what();                                                                \
      lq_ok = lq_got.find(needle) != std::string::npos;                                    \
    } catch (const std::exception& lq_e) {                                                 \
      lq_got = std::string("another exception: ") + lq_e.what();                           \
    }                                                                                      \
    lqtest::record(lq_ok, #expr " throws " #Type, __FILE__, __LINE__,                      \
                   "expected a message containing \"" + std::string(needle) + "\", got: " + \
                       lq_got);                                                            \
  } while (0)

#endif
