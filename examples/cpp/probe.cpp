// loraquant_probe FILE: load a compressed-adapter file and print, for each module in
// file order, "NAME NORM" with NORM = |dW_hat x|_2 for x_j = sin(j + 1), the same lines
// as `loraquant inspect FILE --probe`.
#include <cstdio>
#include <exception>

#include "loraquant/adapter_file.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s ADAPTER_FILE\n", argv[0]);
    return 2;
  }
  try {
    const loraquant::Adapter adapter = loraquant::read_adapter_file(argv[1]);
    for (const loraquant::AdapterModule& m : adapter.modules)
      std::printf("%s %.8g\n", m.name.c_str(), m.module.probe_norm());
  } catch (const std::exception& e) {  // FormatError, IoError: one line, no crash
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
