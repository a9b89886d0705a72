// The private JSON reader/writer: strict grammar, UTF-8, depth bound, exact numbers.
#include <cstring>
#include <string>

#include "harness.h"
#include "json.h"
#include "loraquant/module.h"

namespace lq = loraquant;
namespace json = loraquant::json;

LQ_TEST(json_parses_and_dumps) {
  const json::Value v = json::parse(
      " {\"a\": [1, -2.5e3, true, false, null], \"s\": \"q\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\","
      " \"o\": {}, \"e\": []}  ");
  CHECK_EQ(v.kind, json::Value::Object);
  CHECK_EQ(v.members.size(), (size_t)4);
  const json::Value* a = v.find("a");
  CHECK(a && a->kind == json::Value::Array && a->items.size() == 5);
  CHECK_EQ(a->items[1].text, std::string("-2.5e3"));
  CHECK(a->items[2].kind == json::Value::Bool && a->items[2].boolean);
  CHECK_EQ(a->items[4].kind, json::Value::Null);
  CHECK_EQ(v.find("s")->text, std::string("q\"\\/\b\f\n\r\t\xc3\xa9\xf0\x9f\x98\x80"));
  CHECK(v.find("missing") == nullptr);
  // dump, parse again: the same tree.
  const std::string text = json::dump(v);
  CHECK_EQ(json::dump(json::parse(text)), text);
  CHECK_EQ(json::dump(json::Value::string(std::string("\x01\"", 2))), std::string("\"\\u0001\\\"\""));
}

LQ_TEST(json_rejects_malformed_text) {
  const char* bad[] = {"",        "{",          "{\"a\":1,}",  "[1,]",      "[1 2]",       "01",
                       "1.",      ".5",         "-",           "+1",        "NaN",         "Infinity",
                       "\"abc",   "\"\\x\"",    "\"\\ud800\"", "\"\\udc00\"", "\"\\u12\"",   "tru",
                       "{1:2}",   "[1] x",      "\"a\nb\"",    "{\"a\" 1}", "nul"};
  for (const char* text : bad) CHECK_THROWS(json::parse(text), lq::FormatError, "JSON: ");
  CHECK_THROWS(json::parse("{\"k\": 1, \"k\": 2}"), lq::FormatError, "duplicate key \"k\"");
  CHECK_THROWS(json::parse(std::string("\"\xc3\x28\"")), lq::FormatError, "invalid UTF-8");
  CHECK_THROWS(json::parse(std::string("\"\xed\xa0\x80\"")), lq::FormatError, "invalid UTF-8");  // surrogate
  CHECK_THROWS(json::parse(std::string("\"\xc0\xaf\"")), lq::FormatError, "invalid UTF-8");      // overlong
  CHECK_THROWS(json::parse(std::string("[1]\0", 4)), lq::FormatError, "after the JSON value");
  CHECK_THROWS(json::parse("[1, 2"), lq::FormatError, "at byte 5");
}

LQ_TEST(json_depth_is_bounded) {
  const std::string ok = std::string(json::kMaxDepth, '[') + std::string(json::kMaxDepth, ']');
  CHECK_EQ(json::parse(ok).kind, json::Value::Array);
  const std::string deep = std::string(json::kMaxDepth + 1, '[') + std::string(json::kMaxDepth + 1, ']');
  CHECK_THROWS(json::parse(deep), lq::FormatError, "nesting deeper");
  // Far deeper than any stack would survive recursing into: refused at the bound.
  const std::string hostile(1 << 20, '[');
  CHECK_THROWS(json::parse(hostile), lq::FormatError, "nesting deeper");
  std::string objects;
  for (int k = 0; k < 100000; ++k) objects += "{\"a\":";
  CHECK_THROWS(json::parse(objects), lq::FormatError, "nesting deeper");
}

LQ_TEST(json_numbers_are_exact) {
  CHECK_EQ(json::as_uint(json::parse("18446744073709551615"), UINT64_MAX, "x"), UINT64_MAX);
  CHECK_THROWS(json::as_uint(json::parse("18446744073709551616"), UINT64_MAX, "x"), lq::FormatError, "out of range");
  CHECK_THROWS(json::as_uint(json::parse("129"), 128, "g"), lq::FormatError, "g = 129 is out of range 0..128");
  CHECK_THROWS(json::as_uint(json::parse("-1"), 10, "x"), lq::FormatError, "negative");
  CHECK_THROWS(json::as_uint(json::parse("1.0"), 10, "x"), lq::FormatError, "integer");
  CHECK_THROWS(json::as_uint(json::parse("1e3"), 10000, "x"), lq::FormatError, "integer");
  CHECK_THROWS(json::as_uint(json::parse("\"1\""), 10, "x"), lq::FormatError, "integer");
  CHECK_THROWS(json::as_double(json::parse("1e400"), "s"), lq::FormatError, "finite");
  CHECK_EQ(json::as_double(json::parse("-0.25"), "s"), -0.25);
  CHECK_EQ(json::Value::number(2.0).text, std::string("2.0"));
  CHECK_EQ(json::Value::number(0.5).text, std::string("0.5"));
  CHECK_THROWS(json::Value::number(NAN), std::invalid_argument, "non-finite");
  // Shortest text that reads back to the same double, for doubles of every exponent.
  lqtest::Rng rng(99);
  bool exact = true;
  for (int k = 0; k < 20000; ++k) {
    uint64_t bits = rng.next();
    double d;
    std::memcpy(&d, &bits, 8);
    if (!std::isfinite(d)) continue;
    exact = exact && json::as_double(json::parse(json::dump(json::Value::number(d))), "d") == d;
  }
  CHECK(exact);
}

LQ_TEST(json_utf8_validation) {
  CHECK(json::valid_utf8("plain"));
  CHECK(json::valid_utf8("caf\xc3\xa9 \xf0\x9f\x98\x80"));
  CHECK(!json::valid_utf8("\xff"));
  CHECK(!json::valid_utf8("\xe2\x82"));          // truncated sequence
  CHECK(!json::valid_utf8("\xf4\x90\x80\x80"));  // above U+10FFFF
}
