// The harness's runner: `loraquant_tests [PREFIX]` runs every case whose name starts
// with PREFIX; exit status 0 only if at least one case ran and all of them passed.
#include "harness.h"

#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <utility>
#include <vector>

namespace lqtest {

namespace {

struct Case {
  const char* name;
  Fn fn;
};

std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}

constexpr int kMaxReportedFailures = 10;  // per case: a failing loop should not flood the log
int g_checks = 0, g_failures = 0;
std::string g_temp;

}  // namespace

Register::Register(const char* name, Fn fn) { registry().push_back({name, fn}); }

void record(bool ok, const char* expr, const char* file, int line, const std::string& detail) {
  ++g_checks;
  if (ok) return;
  if (++g_failures <= kMaxReportedFailures)
    std::printf("  FAILED %s:%d: %s%s%s\n", file, line, expr, detail.empty() ? "" : "\n         ",
                detail.c_str());
}

std::string temp_dir() {
  if (g_temp.empty()) {
    namespace fs = std::filesystem;
    const auto t = std::chrono::steady_clock::now().time_since_epoch().count();
    fs::path p = fs::temp_directory_path() / ("loraquant-tests-" + std::to_string(t));
    fs::create_directories(p);
    g_temp = p.string();
  }
  return g_temp;
}

}  // namespace lqtest

int main(int argc, char** argv) {
  using namespace lqtest;
  const std::string prefix = argc > 1 ? argv[1] : "";
  int ran = 0, failed = 0;
  for (const Case& c : registry()) {
    if (std::string(c.name).rfind(prefix, 0) != 0) continue;
    ++ran;
    g_checks = g_failures = 0;
    const auto t0 = std::chrono::steady_clock::now();
    std::string error;
    try {
      c.fn();
    } catch (const std::exception& e) {
      error = std::string("uncaught exception: ") + e.what();
    }
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (error.empty() && g_checks == 0) error = "the case checked nothing";
    const bool ok = error.empty() && g_failures == 0;
    failed += !ok;
    std::printf("[%s] %s: %d checks, %d failed (%.0f ms)%s%s\n", ok ? " ok " : "FAIL", c.name, g_checks,
                g_failures, ms, error.empty() ? "" : " -- ", error.c_str());
    std::fflush(stdout);
  }
  if (!g_temp.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(g_temp, ec);
  }
  if (ran == 0) {
    std::printf("no test case starts with '%s'\n", prefix.c_str());
    return 2;
  }
  std::printf("%d of %d cases passed\n", ran - failed, ran);
  return failed ? 1 : 0;
}
