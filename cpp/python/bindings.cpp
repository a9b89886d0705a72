// loraquant._core: the one pybind11 file. It converts numpy arrays to raw pointers and
// releases the GIL around every call into the core; all checks of user input that
// need Python types live in python/loraquant/_validate.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "loraquant/build_info.h"
#include "loraquant/compress.h"
#include "loraquant/format.h"
#include "loraquant/half.h"
#include "loraquant/module.h"
#include "loraquant/quantize.h"
#include "loraquant/svd.h"
#include "../src/candidates.h"

namespace py = pybind11;
namespace lq = loraquant;

namespace {

using F64 = py::array_t<double, py::array::c_style | py::array::forcecast>;
using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using U8 = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

void need_2d(const py::array& a, const char* name) {
  if (a.ndim() != 2)
    throw std::invalid_argument(std::string(name) + " must be 2-D, got " +
                                std::to_string(a.ndim()) + "-D");
}

lq::PairInput pair_input(const F64& A, const F64& B, double scaling) {
  need_2d(A, "A");
  need_2d(B, "B");
  if (B.shape(1) != A.shape(0))
    throw std::invalid_argument("shapes do not chain: B is (" + std::to_string(B.shape(0)) + ", " +
                                std::to_string(B.shape(1)) + ") and A is (" +
                                std::to_string(A.shape(0)) + ", " + std::to_string(A.shape(1)) +
                                "); B's columns must equal A's rows");
  lq::PairInput p;
  p.A = A.data();
  p.B = B.data();
  p.r = (uint32_t)A.shape(0);
  p.n = (uint32_t)A.shape(1);
  p.m = (uint32_t)B.shape(0);
  p.scaling = scaling;
  return p;
}

lq::CompressOptions options(double bits, double rho, uint32_t high_bits, uint32_t group_size,
                            bool range_search, uint32_t refit_rounds,
                            const std::string& balance = "relative") {
  if (balance != "relative" && balance != "absolute")
    throw std::invalid_argument("balance must be 'relative' or 'absolute', got '" + balance + "'");
  lq::CompressOptions o;
  o.bits = bits;
  o.rho = rho;
  o.high_bits = high_bits;
  o.group_size = group_size;
  o.range_search = range_search;
  o.refit_rounds = refit_rounds;
  o.relative_balance = balance == "relative";
  return o;
}

py::tuple result_tuple(lq::Compressed&& c) {
  py::array_t<double> sigma(c.sigma.size());
  std::memcpy(sigma.mutable_data(), c.sigma.data(), c.sigma.size() * sizeof(double));
  return py::make_tuple(std::move(c.module), sigma, c.rel_error);
}

py::bytes as_bytes(const std::vector<uint8_t>& v) {
  return py::bytes(reinterpret_cast<const char*>(v.data()), v.size());
}

std::vector<uint8_t> from_buffer(const py::buffer& b) {
  py::buffer_info info = b.request();
  const uint8_t* p = static_cast<const uint8_t*>(info.ptr);
  return std::vector<uint8_t>(p, p + (size_t)info.size * (size_t)info.itemsize);
}

}  // namespace

#ifdef LORAQUANT_CUDA_BINDINGS
void bind_cuda(py::module_& m);  // bindings_cuda.cpp
#endif

PYBIND11_MODULE(_core, m) {
  m.doc() = "loraquant core: thin SVD, per-component mixed precision, packed LoRA modules";
  py::register_exception<lq::FormatError>(m, "FormatError", PyExc_ValueError);

  py::class_<lq::Module>(m, "Module")
      .def_property_readonly("m", &lq::Module::m)
      .def_property_readonly("n", &lq::Module::n)
      .def_property_readonly("r", &lq::Module::r)
      .def_property_readonly("group_size", &lq::Module::group_size)
      .def_property_readonly("nbytes", &lq::Module::nbytes)
      .def_property_readonly("avg_bits", &lq::Module::avg_bits)
      .def_property_readonly("unit", &lq::Module::unit)
      .def_property_readonly("widths", [](const lq::Module& s) {
        std::vector<std::pair<int, int>> w;
        for (uint32_t i = 0; i < s.r(); ++i) w.emplace_back(s.b_width(i), s.a_width(i));
        return w;
      }, "(width of b_i, width of a_i) per component")
      .def("probe_norm", [](const lq::Module& s) {
        py::gil_scoped_release nogil;
        return s.probe_norm();
      })
      .def("payload", [](const lq::Module& s) { return as_bytes(s.payload()); })
      .def("to_bytes", [](const lq::Module& s) { return as_bytes(s.to_bytes()); })
      .def_static("from_bytes", [](const py::buffer& b) {
        std::vector<uint8_t> v = from_buffer(b);
        py::gil_scoped_release nogil;
        return lq::Module::from_bytes(v.data(), v.size());
      })
      .def("dequantize", [](const lq::Module& s) {
        py::array_t<float> A({(py::ssize_t)s.r(), (py::ssize_t)s.n()});
        py::array_t<float> B({(py::ssize_t)s.m(), (py::ssize_t)s.r()});
        float *pa = A.mutable_data(), *pb = B.mutable_data();
        {
          py::gil_scoped_release nogil;
          s.dequantize(pa, pb);
        }
        return py::make_tuple(A, B);
      })
      .def("apply", [](const lq::Module& s, const F32& x, bool reference) {
        need_2d(x, "x");
        if ((uint64_t)x.shape(1) != s.n())
          throw std::invalid_argument("x has " + std::to_string(x.shape(1)) +
                                      " features, the module expects n = " + std::to_string(s.n()));
        const size_t batch = (size_t)x.shape(0);
        py::array_t<float> y({(py::ssize_t)batch, (py::ssize_t)s.m()});
        const float* px = x.data();
        float* py_ = y.mutable_data();
        {
          py::gil_scoped_release nogil;
          if (reference)
            s.apply_ref(px, batch, py_);
          else
            s.apply(px, batch, py_);
        }
        return y;
      }, py::arg("x"), py::arg("reference") = false);

  m.def("compress", [](const F64& A, const F64& B, double scaling, double bits, double rho,
                       uint32_t high_bits, uint32_t group_size, bool range_search,
                       uint32_t refit_rounds) {
        lq::PairInput p = pair_input(A, B, scaling);
        lq::CompressOptions o = options(bits, rho, high_bits, group_size, range_search, refit_rounds);
        lq::Compressed c;
        {
          py::gil_scoped_release nogil;
          c = lq::compress(p, o);
        }
        return result_tuple(std::move(c));
      }, py::arg("A"), py::arg("B"), py::arg("scaling") = 1.0, py::arg("bits") = 2.0,
      py::arg("rho") = 0.0, py::arg("high_bits") = 2, py::arg("group_size") = 128,
      py::arg("range_search") = true, py::arg("refit_rounds") = 0);

  m.def("compress_many", [](const std::vector<py::tuple>& pairs, double bits, double rho,
                            uint32_t high_bits, uint32_t group_size, bool range_search,
                            uint32_t refit_rounds) {
        std::vector<F64> keep;  // keeps converted arrays alive while the GIL is released
        keep.reserve(2 * pairs.size());
        std::vector<lq::PairInput> in;
        for (const py::tuple& t : pairs) {
          if (t.size() != 3) throw std::invalid_argument("each pair must be (A, B, scaling)");
          keep.push_back(F64::ensure(t[0]));
          keep.push_back(F64::ensure(t[1]));
          if (!keep[keep.size() - 2] || !keep.back())
            throw std::invalid_argument("A and B must be convertible to float64 arrays");
          in.push_back(pair_input(keep[keep.size() - 2], keep.back(), t[2].cast<double>()));
        }
        lq::CompressOptions o = options(bits, rho, high_bits, group_size, range_search, refit_rounds);
        std::vector<lq::Compressed> res;
        {
          py::gil_scoped_release nogil;
          res = lq::compress_many(in, o);
        }
        py::list out;
        for (auto& c : res) out.append(result_tuple(std::move(c)));
        return out;
      }, py::arg("pairs"), py::arg("bits") = 2.0, py::arg("rho") = 0.0, py::arg("high_bits") = 2,
      py::arg("group_size") = 128, py::arg("range_search") = true, py::arg("refit_rounds") = 0);

  py::class_<lq::Candidates, std::shared_ptr<lq::Candidates>>(m, "Prepared")
      .def_property_readonly("m", [](const lq::Candidates& c) { return c.factors().m; })
      .def_property_readonly("n", [](const lq::Candidates& c) { return c.factors().n; })
      .def_property_readonly("r", [](const lq::Candidates& c) { return c.factors().r; });

  m.def("prepare", [](const F64& A, const F64& B, double scaling, double bits, double rho,
                      uint32_t high_bits, uint32_t group_size, bool range_search,
                      uint32_t refit_rounds, std::optional<F64> H, double damping) {
        lq::PairInput p = pair_input(A, B, scaling);
        if (H) {
          need_2d(*H, "H");
          if ((uint64_t)H->shape(0) != p.n || (uint64_t)H->shape(1) != p.n)
            throw std::invalid_argument("H is (" + std::to_string(H->shape(0)) + ", " +
                                        std::to_string(H->shape(1)) + "); the pair has n = " +
                                        std::to_string(p.n) + " input features");
          p.H = H->data();
          p.damping = damping;
        }
        lq::CompressOptions o = options(bits, rho, high_bits, group_size, range_search, refit_rounds);
        py::gil_scoped_release nogil;
        return lq::prepare(p, o);
      }, py::arg("A"), py::arg("B"), py::arg("scaling") = 1.0, py::arg("bits") = 2.0,
      py::arg("rho") = 0.0, py::arg("high_bits") = 2, py::arg("group_size") = 128,
      py::arg("range_search") = true, py::arg("refit_rounds") = 0,
      py::arg("H") = py::none(), py::arg("damping") = 0.01,
      "Stage 1 of compress_many: factor one pair and encode its candidates (GIL released); "
      "with H (n x n input second moment), in the output metric");

  m.def("finish", [](const std::vector<std::shared_ptr<lq::Candidates>>& prepared, double bits,
                     double rho, uint32_t high_bits, uint32_t group_size, bool range_search,
                     uint32_t refit_rounds, const std::string& balance) {
        std::vector<lq::Candidates*> ptrs;
        for (auto& p : prepared) ptrs.push_back(p.get());
        lq::CompressOptions o =
            options(bits, rho, high_bits, group_size, range_search, refit_rounds, balance);
        std::vector<lq::Compressed> res;
        {
          py::gil_scoped_release nogil;
          res = lq::finish(ptrs, o);
        }
        py::list out;
        for (auto& c : res) out.append(result_tuple(std::move(c)));
        return out;
      }, py::arg("prepared"), py::arg("bits") = 2.0, py::arg("rho") = 0.0, py::arg("high_bits") = 2,
      py::arg("group_size") = 128, py::arg("range_search") = true, py::arg("refit_rounds") = 0,
      py::arg("balance") = "relative",
      "Stage 2: choose widths for all prepared pairs under one budget, and pack them");

  m.def("thin_svd", [](const F64& A, const F64& B, double scaling) {
    lq::PairInput p = pair_input(A, B, scaling);
    lq::Factors f;
    {
      py::gil_scoped_release nogil;
      f = lq::thin_svd(p.A, p.B, p.m, p.n, p.r, scaling);
    }
    py::array_t<double> sigma(f.r), b({(py::ssize_t)f.r, (py::ssize_t)f.m}),
        a({(py::ssize_t)f.r, (py::ssize_t)f.n});
    std::memcpy(sigma.mutable_data(), f.sigma.data(), f.sigma.size() * 8);
    std::memcpy(b.mutable_data(), f.b.data(), f.b.size() * 8);
    std::memcpy(a.mutable_data(), f.a.data(), f.a.size() * 8);
    return py::make_tuple(sigma, b, a);
  }, "sigma (r,), b (r, m), a (r, n): the split SVD factors of scaling * B @ A");

  m.def("paper_split", &lq::paper_split, py::arg("sigma"), py::arg("rho"));

  // Low-level hooks, for tests against the references.
  m.def("pack_codes", [](const U8& codes, uint32_t width, bool reference) {
    if (width < 1 || width > LQ_MAX_WIDTH) throw std::invalid_argument("width must be in 1..8");
    const size_t len = (size_t)codes.size();
    for (size_t j = 0; j < len; ++j)
      if (codes.data()[j] >> width) throw std::invalid_argument("a code does not fit the width");
    std::vector<uint32_t> words(lq_code_words(len, width));
    (reference ? lq::pack_codes_ref : lq::pack_codes)(codes.data(), len, width, words.data());
    return py::bytes(reinterpret_cast<const char*>(words.data()), words.size() * 4);
  }, py::arg("codes"), py::arg("width"), py::arg("reference") = false);
  m.def("unpack_codes", [](const py::bytes& words, size_t len, uint32_t width) {
    std::string s = words;
    if (width < 1 || width > LQ_MAX_WIDTH) throw std::invalid_argument("width must be in 1..8");
    if (s.size() != 4 * lq_code_words(len, width)) throw std::invalid_argument("wrong word count");
    std::vector<uint32_t> w(s.size() / 4);
    std::memcpy(w.data(), s.data(), s.size());
    py::array_t<uint8_t> out(len);
    lq::unpack_codes(w.data(), len, width, out.mutable_data());
    return out;
  });
  m.def("encode_vector", [](const F32& x, uint32_t width, uint32_t group, float unit,
                            bool range_search) {
    if (width < 1 || width > LQ_MAX_WIDTH) throw std::invalid_argument("width must be in 1..8");
    if (group == 0) throw std::invalid_argument("group must be >= 1");
    const size_t len = (size_t)x.size();
    std::vector<uint8_t> blk(lq_vector_bytes(len, width, group));
    py::array_t<float> deq(len);
    lq::encode_vector(x.data(), len, width, group, unit, range_search, blk.data(), deq.mutable_data());
    return py::make_tuple(as_bytes(blk), deq);
  }, py::arg("x"), py::arg("width"), py::arg("group"), py::arg("unit"),
     py::arg("range_search") = true);
  m.def("decode_vector", [](const py::bytes& blk, size_t len, uint32_t width, uint32_t group,
                            float unit) {
    std::string s = blk;
    if (width < 1 || width > LQ_MAX_WIDTH || group == 0 ||
        s.size() != lq_vector_bytes(len, width, group))
      throw std::invalid_argument("block size does not match len, width and group");
    std::vector<uint32_t> aligned((s.size() + 3) / 4);
    std::memcpy(aligned.data(), s.data(), s.size());
    py::array_t<float> out(len);
    lq::decode_vector(reinterpret_cast<const uint8_t*>(aligned.data()), len, width, group, unit,
                      out.mutable_data());
    return out;
  });
  m.def("use_reference_kernels", &lq::use_reference_kernels, py::arg("on"),
        "Run the scalar reference kernels (True) or the fastest the CPU has (False)");
  m.def("vector_bytes", [](uint64_t len, uint32_t width, uint32_t group) {
    return lq_vector_bytes(len, width, group);
  });
  m.def("prefix_bytes", [](uint32_t r) { return lq_prefix_bytes(r); });
  m.def("choose_unit", &lq::choose_unit);
  m.def("float_to_half", [](float f) { return lq_float_to_half(f); });
  m.def("half_to_float", [](uint16_t h) { return lq_half_to_float(h); });
  m.def("crc32", [](const py::bytes& b) {
    std::string s = b;
    return lq::crc32(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  });

  m.def("build_info", [] {
    lq::BuildInfo b = lq::build_info();
    py::dict d;
    d["version"] = b.version;
    d["compiler"] = b.compiler;
    d["eigen"] = b.eigen;
    d["openmp"] = b.openmp;
    d["cuda"] = b.cuda;
    d["kernels"] = std::string(lq::kernels_name());
    d["blob_version"] = LQ_BLOB_VERSION;
    return d;
  });
  m.attr("BLOB_HEADER_BYTES") = sizeof(lq_blob_header);
  m.attr("MAX_RANK") = LQ_MAX_RANK;
  m.attr("MAX_DIM") = LQ_MAX_DIM;
#ifdef LORAQUANT_CUDA_BINDINGS
  bind_cuda(m);
#endif
}
