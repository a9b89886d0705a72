// Private: the small JSON reader and writer behind the compressed-adapter file's header.
//
// Enough JSON (RFC 8259) for a safetensors header and a PEFT config: strict grammar,
// UTF-8 checked, nesting depth bounded (no stack exhaustion on hostile input),
// duplicate object keys rejected, numbers kept as their text so that 64-bit integers
// survive exactly. Every error is a FormatError naming the byte offset.
#ifndef LORAQUANT_JSON_H
#define LORAQUANT_JSON_H

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace loraquant {
namespace json {

constexpr int kMaxDepth = 64;  // deeper nesting is rejected: no adapter header needs more

struct Value {
  enum Kind { Null, Bool, Number, String, Array, Object };
  Kind kind = Null;
  bool boolean = false;
  std::string text;  // String: the decoded UTF-8 value; Number: the token as written
  std::vector<Value> items;                            // Array
  std::vector<std::pair<std::string, Value>> members;  // Object, in document order

  // Builders for the writer.
  static Value string(std::string s);
  static Value number(uint64_t v);
  static Value number(double v);  // finite only; always written with '.' or an exponent
  static Value array();
  static Value object();
  Value& add(std::string key, Value v);  // Object: append a member, returns *this
  Value& push(Value v);                  // Array: append an item, returns *this

  // Object member by key, or nullptr.
  const Value* find(const std::string& key) const;
};

// Parse one JSON value filling data[0, size), surrounding whitespace allowed.
Value parse(const char* data, size_t size);
inline Value parse(const std::string& s) { return parse(s.data(), s.size()); }

// Compact text of a value (no spaces), strings escaped as JSON requires.
std::string dump(const Value& v);

// Typed access with errors that name `what`. Each throws FormatError on a mismatch.
const std::string& as_string(const Value& v, const std::string& what);
uint64_t as_uint(const Value& v, uint64_t max, const std::string& what);  // integer token only
double as_double(const Value& v, const std::string& what);               // any finite number

// Throws FormatError unless every number inside v is a finite double (1e999 or a
// 400-digit integer is not); loraquant.load reads metadata JSON the same way.
void check_finite_numbers(const Value& v, const std::string& what);

// True if s is well-formed UTF-8 (no overlong forms, surrogates or code points > U+10FFFF).
bool valid_utf8(const std::string& s);

}  // namespace json
}  // namespace loraquant

#endif
