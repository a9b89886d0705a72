// Code packing: the word-at-a-time path equals the bit-at-a-time reference byte for
// byte, writes no word past its end, and unpacks back; a golden word pins the layout.
#include <cstring>
#include <vector>

#include "harness.h"
#include "loraquant/format.h"
#include "loraquant/quantize.h"

namespace lq = loraquant;

namespace {
constexpr size_t kLengths[] = {1, 2, 3, 5, 7, 31, 33, 127, 129, 1000, 1023};
constexpr uint32_t kSentinel = 0xA5A5A5A5u;  // fills the word after the last one
}  // namespace

LQ_TEST(pack_matches_reference) {
  lqtest::Rng rng(7);
  for (uint32_t w = 1; w <= LQ_MAX_WIDTH; ++w) {
    for (size_t len : kLengths) {
      std::vector<uint8_t> codes(len);
      for (auto& c : codes) c = (uint8_t)rng.below(1u << w);
      codes[0] = (uint8_t)((1u << w) - 1);  // the all-ones code at least once
      const size_t words = lq_code_words(len, w);
      std::vector<uint32_t> ref(words), fast(words + 1, kSentinel);
      lq::pack_codes_ref(codes.data(), len, w, ref.data());
      lq::pack_codes(codes.data(), len, w, fast.data());
      CHECK(std::memcmp(ref.data(), fast.data(), words * 4) == 0);
      CHECK_EQ(fast[words], kSentinel);
      const uint64_t used = (uint64_t)len * w % 32;  // unused high bits of the last word are zero
      if (used) CHECK_EQ(fast[words - 1] >> used, 0u);

      std::vector<uint8_t> back(len, 0xff);
      lq::unpack_codes(fast.data(), len, w, back.data());
      CHECK(back == codes);
      bool each = true;
      for (size_t j = 0; j < len; ++j) each = each && lq_get_code(fast.data(), j, w) == codes[j];
      CHECK(each);
    }
  }
}

LQ_TEST(pack_golden_words) {
  // Width 3: entry j at bits 3j..3j+2 of word 0.
  const uint8_t c3[] = {1, 2, 3};
  uint32_t w3[1];
  lq::pack_codes(c3, 3, 3, w3);
  CHECK_EQ(w3[0], 1u | (2u << 3) | (3u << 6));
  CHECK_EQ(w3[0], 0xD1u);
  // Width 5, seven entries: entry 6 straddles bits 30..34, its low two bits close
  // word 0 and its high three bits open word 1.
  const uint8_t c5[] = {31, 0, 17, 5, 9, 30, 21};
  uint32_t w5[2];
  lq::pack_codes(c5, 7, 5, w5);
  CHECK_EQ(w5[0], 0x7C92C41Fu);
  CHECK_EQ(w5[1], 0x5u);
}
