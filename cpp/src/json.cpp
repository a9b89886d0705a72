// The JSON reader and writer of json.h: a recursive-descent parser with a depth bound.
#include "json.h"

#include <charconv>
#include <cmath>
#include <system_error>
#include <unordered_set>

#include "loraquant/module.h"

namespace loraquant {
namespace json {

namespace {

// Length of the UTF-8 sequence starting at s[i] if it is well formed, else 0.
size_t utf8_sequence(const unsigned char* s, size_t n, size_t i) {
  const unsigned c = s[i];
  if (c < 0x80) return 1;
  size_t len;
  unsigned cp, min;
  if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; min = 0x80; }
  else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; min = 0x800; }
  else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; min = 0x10000; }
  else return 0;
  if (n - i < len) return 0;
  for (size_t k = 1; k < len; ++k) {
    if ((s[i + k] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (s[i + k] & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += (char)cp;
  } else if (cp < 0x800) {
    out += (char)(0xC0 | (cp >> 6));
    out += (char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += (char)(0xE0 | (cp >> 12));
    out += (char)(0x80 | ((cp >> 6) & 0x3F));
    out += (char)(0x80 | (cp & 0x3F));
  } else {
    out += (char)(0xF0 | (cp >> 18));
    out += (char)(0x80 | ((cp >> 12) & 0x3F));
    out += (char)(0x80 | ((cp >> 6) & 0x3F));
    out += (char)(0x80 | (cp & 0x3F));
  }
}

// JSON's two-character escapes: the letter after the backslash, the character it means.
constexpr std::pair<char, char> kEscapes[] = {{'"', '"'},  {'\\', '\\'}, {'/', '/'},  {'b', '\b'},
                                              {'f', '\f'}, {'n', '\n'},   {'r', '\r'}, {'t', '\t'}};

char unescape(char letter) {
  for (const auto& e : kEscapes)
    if (e.first == letter) return e.second;
  return 0;
}

char escape_letter(char c) {
  for (const auto& e : kEscapes)
    if (e.second == c) return e.first;
  return 0;
}

class Parser {
 public:
  Parser(const char* data, size_t size)
      : s_(reinterpret_cast<const unsigned char*>(data)), n_(size) {}

  Value document() {
    skip_ws();
    Value v = value(0);
    skip_ws();
    if (i_ != n_) fail("unexpected text after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw FormatError("JSON: " + what + " at byte " + std::to_string(i_));
  }

  void skip_ws() {
    while (i_ < n_ && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }

  void expect(char c) {
    if (i_ >= n_ || s_[i_] != (unsigned char)c) fail(std::string("expected '") + c + "'");
    ++i_;
  }

  void literal(const char* word) {
    for (const char* p = word; *p; ++p, ++i_)
      if (i_ >= n_ || s_[i_] != (unsigned char)*p) fail(std::string("invalid literal, expected ") + word);
  }

  Value value(int depth) {
    if (i_ >= n_) fail("unexpected end of text");
    Value v;
    switch (s_[i_]) {
      case '{': v = object(depth + 1); break;
      case '[': v = array(depth + 1); break;
      case '"': v.kind = Value::String; v.text = string(); break;
      case 't': literal("true"); v.kind = Value::Bool; v.boolean = true; break;
      case 'f': literal("false"); v.kind = Value::Bool; break;
      case 'n': literal("null"); break;
      default: v.kind = Value::Number; v.text = number(); break;
    }
    return v;
  }

  Value object(int depth) {
    if (depth > kMaxDepth) fail("nesting deeper than " + std::to_string(kMaxDepth));
    Value v = Value::object();
    std::unordered_set<std::string> keys;  // a linear scan would be quadratic on hostile input
    expect('{');
    skip_ws();
    if (i_ < n_ && s_[i_] == '}') { ++i_; return v; }
    for (;;) {
      skip_ws();
      if (i_ >= n_ || s_[i_] != '"') fail("expected a string key");
      const size_t key_at = i_;
      std::string key = string();
      if (!keys.insert(key).second) {
        i_ = key_at;
        fail("duplicate key \"" + key + "\"");
      }
      skip_ws();
      expect(':');
      skip_ws();
      v.members.emplace_back(std::move(key), value(depth));
      skip_ws();
      if (i_ < n_ && s_[i_] == ',') { ++i_; continue; }
      expect('}');
      return v;
    }
  }

  Value array(int depth) {
    if (depth > kMaxDepth) fail("nesting deeper than " + std::to_string(kMaxDepth));
    Value v = Value::array();
    expect('[');
    skip_ws();
    if (i_ < n_ && s_[i_] == ']') { ++i_; return v; }
    for (;;) {
      skip_ws();
      v.items.push_back(value(depth));
      skip_ws();
      if (i_ < n_ && s_[i_] == ',') { ++i_; continue; }
      expect(']');
      return v;
    }
  }

  uint32_t hex4() {
    if (n_ - i_ < 4) fail("truncated \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k, ++i_) {
      const unsigned c = s_[i_];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else fail("bad hex digit in \\u escape");
    }
    return v;
  }

  uint32_t escaped_code_point() {
    uint32_t cp = hex4();
    if (cp >= 0xDC00 && cp <= 0xDFFF) fail("lone low surrogate in \\u escape");
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      if (n_ - i_ < 2 || s_[i_] != '\\' || s_[i_ + 1] != 'u') fail("lone high surrogate in \\u escape");
      i_ += 2;
      const uint32_t lo = hex4();
      if (lo < 0xDC00 || lo > 0xDFFF) fail("high surrogate not followed by a low one");
      cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    }
    return cp;
  }

  std::string string() {
    expect('"');
    std::string out;
    for (;;) {
      if (i_ >= n_) fail("unterminated string");
      const unsigned c = s_[i_];
      if (c == '"') { ++i_; return out; }
      if (c < 0x20) fail("control character in string");
      if (c == '\\') {
        if (++i_ >= n_) fail("unterminated escape");
        const char e = (char)s_[i_++];
        if (e == 'u') {
          append_utf8(out, escaped_code_point());
        } else if (const char c = unescape(e)) {
          out += c;
        } else {
          --i_;
          fail("invalid escape");
        }
        continue;
      }
      const size_t len = utf8_sequence(s_, n_, i_);
      if (len == 0) fail("invalid UTF-8 in string");
      out.append(reinterpret_cast<const char*>(s_ + i_), len);
      i_ += len;
    }
  }

  bool digit() const { return i_ < n_ && s_[i_] >= '0' && s_[i_] <= '9'; }

  std::string number() {
    const size_t beg = i_;
    if (i_ < n_ && s_[i_] == '-') ++i_;
    if (!digit()) fail("invalid value");
    if (s_[i_] == '0') ++i_;
    else while (digit()) ++i_;
    if (i_ < n_ && s_[i_] == '.') {
      ++i_;
      if (!digit()) fail("expected a digit after '.'");
      while (digit()) ++i_;
    }
    if (i_ < n_ && (s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_;
      if (i_ < n_ && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      if (!digit()) fail("expected a digit in the exponent");
      while (digit()) ++i_;
    }
    return std::string(reinterpret_cast<const char*>(s_ + beg), i_ - beg);
  }

  const unsigned char* s_;
  size_t n_;
  size_t i_ = 0;
};

void dump_string(const std::string& s, std::string& out) {
  static const char* hex = "0123456789abcdef";
  out += '"';
  for (unsigned char c : s) {
    if (const char letter = c == '/' ? 0 : escape_letter((char)c)) {
      out += '\\';
      out += letter;
    } else if (c < 0x20) {
      out += "\\u00";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += (char)c;
    }
  }
  out += '"';
}

void dump_to(const Value& v, std::string& out) {
  switch (v.kind) {
    case Value::Null: out += "null"; break;
    case Value::Bool: out += v.boolean ? "true" : "false"; break;
    case Value::Number: out += v.text; break;
    case Value::String: dump_string(v.text, out); break;
    case Value::Array:
      out += '[';
      for (size_t k = 0; k < v.items.size(); ++k) {
        if (k) out += ',';
        dump_to(v.items[k], out);
      }
      out += ']';
      break;
    case Value::Object:
      out += '{';
      for (size_t k = 0; k < v.members.size(); ++k) {
        if (k) out += ',';
        dump_string(v.members[k].first, out);
        out += ':';
        dump_to(v.members[k].second, out);
      }
      out += '}';
      break;
  }
}

bool integer_token(const std::string& t) {
  for (char c : t)
    if (c == '.' || c == 'e' || c == 'E') return false;
  return true;
}

}  // namespace

Value Value::string(std::string s) {
  Value v;
  v.kind = String;
  v.text = std::move(s);
  return v;
}

Value Value::number(uint64_t x) {
  Value v;
  v.kind = Number;
  v.text = std::to_string(x);
  return v;
}

Value Value::number(double x) {
  if (!std::isfinite(x)) throw std::invalid_argument("JSON cannot hold a non-finite number");
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, x);  // shortest text that reads back exactly
  Value v;
  v.kind = Number;
  v.text.assign(buf, res.ptr);
  if (integer_token(v.text)) v.text += ".0";  // stays a float for readers that care
  return v;
}

Value Value::array() {
  Value v;
  v.kind = Array;
  return v;
}

Value Value::object() {
  Value v;
  v.kind = Object;
  return v;
}

Value& Value::add(std::string key, Value v) {
  members.emplace_back(std::move(key), std::move(v));
  return *this;
}

Value& Value::push(Value v) {
  items.push_back(std::move(v));
  return *this;
}

const Value* Value::find(const std::string& key) const {
  for (const auto& m : members)
    if (m.first == key) return &m.second;
  return nullptr;
}

Value parse(const char* data, size_t size) { return Parser(data, size).document(); }

std::string dump(const Value& v) {
  std::string out;
  dump_to(v, out);
  return out;
}

const std::string& as_string(const Value& v, const std::string& what) {
  if (v.kind != Value::String) throw FormatError(what + " must be a string");
  return v.text;
}

uint64_t as_uint(const Value& v, uint64_t max, const std::string& what) {
  if (v.kind != Value::Number || !integer_token(v.text))
    throw FormatError(what + " must be an integer");
  if (v.text == "-0") return 0;  // zero, as Python's json reads it
  if (!v.text.empty() && v.text[0] == '-') throw FormatError(what + " must not be negative, got " + v.text);
  uint64_t x = 0;
  auto res = std::from_chars(v.text.data(), v.text.data() + v.text.size(), x);
  if (res.ec != std::errc() || x > max)
    throw FormatError(what + " = " + v.text + " is out of range 0.." + std::to_string(max));
  return x;
}

double as_double(const Value& v, const std::string& what) {
  if (v.kind != Value::Number) throw FormatError(what + " must be a number");
  double x = 0;
  auto res = std::from_chars(v.text.data(), v.text.data() + v.text.size(), x);
  if (res.ec != std::errc() || !std::isfinite(x))
    throw FormatError(what + " = " + v.text + " is not a finite double");
  return x;
}

void check_finite_numbers(const Value& v, const std::string& what) {
  if (v.kind == Value::Number) as_double(v, what + " number");
  for (const Value& item : v.items) check_finite_numbers(item, what);
  for (const auto& member : v.members) check_finite_numbers(member.second, what);
}

bool valid_utf8(const std::string& s) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t i = 0; i < s.size();) {
    const size_t len = utf8_sequence(p, s.size(), i);
    if (len == 0) return false;
    i += len;
  }
  return true;
}

}  // namespace json
}  // namespace loraquant
