// Sparsifiner's inference path on the CPU (visionzoo/ops/sparse_attention.py):
//
// * predicted_top_keys: the mask predictor's key selection. Per row, the coef_topk largest coefficients (ties: lower
//   index), the approximate scores Â = Σ c_t · basis[t] summed in that order (a multiply then an add, rounded like
//   the reference's ATen ops, no fused multiply-add; made for 16 rows at a time, key chunk by key chunk), then the
//   K largest scores, ties by lower key index.
// * kept_key_attention: per row, attention over the K keys it names (dense rows: every key), written straight into
//   a (B, Nq, H, Ev) buffer so that the heads' merge after it is a view.
//
// Built just in time by visionzoo/ops/_cpp.py with -march=native; the AVX-512 paths are taken for float32 where the
// compiler targets them, plain loops everywhere else.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

// ---------------------------------------------------------------------------------------------------------------
// Exact selection of the K largest scores of one row.

template <typename scalar_t>
using key_t = std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>;

// Unsigned keys ordered like the floats (-0 and +0 alike, NaN above +inf as topk ranks it).
template <typename scalar_t>
inline key_t<scalar_t> order_key(scalar_t value) {
  using K = key_t<scalar_t>;
  value = value + scalar_t(0);
  K bits;
  std::memcpy(&bits, &value, sizeof(bits));
  constexpr K sign = K(1) << (sizeof(K) * 8 - 1);
  return (bits & sign) ? ~bits : (bits | sign);
}

template <typename scalar_t>
inline scalar_t key_value(key_t<scalar_t> key) {
  using K = key_t<scalar_t>;
  constexpr K sign = K(1) << (sizeof(K) * 8 - 1);
  const K bits = (key & sign) ? (key ^ sign) : ~key;
  scalar_t value;
  std::memcpy(&value, &bits, sizeof(bits));
  return value;
}

// The keys at or above each of three pivots, in one sweep.
template <typename K>
inline void count_at_least_3(const K* keys, int64_t n, const K* pivots, int64_t* counts) {
#ifdef __AVX512F__
  if constexpr (sizeof(K) == 4) {
    const __m512i p0 = _mm512_set1_epi32(static_cast<int>(pivots[0]));
    const __m512i p1 = _mm512_set1_epi32(static_cast<int>(pivots[1]));
    const __m512i p2 = _mm512_set1_epi32(static_cast<int>(pivots[2]));
    const __m512i one = _mm512_set1_epi32(1);
    __m512i c0 = _mm512_setzero_si512(), c1 = _mm512_setzero_si512(), c2 = _mm512_setzero_si512();
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 valid = n - j >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - j)) - 1u);
      const __m512i x = _mm512_maskz_loadu_epi32(valid, keys + j);
      c0 = _mm512_mask_add_epi32(c0, _mm512_mask_cmpge_epu32_mask(valid, x, p0), c0, one);
      c1 = _mm512_mask_add_epi32(c1, _mm512_mask_cmpge_epu32_mask(valid, x, p1), c1, one);
      c2 = _mm512_mask_add_epi32(c2, _mm512_mask_cmpge_epu32_mask(valid, x, p2), c2, one);
    }
    counts[0] = _mm512_reduce_add_epi32(c0);
    counts[1] = _mm512_reduce_add_epi32(c1);
    counts[2] = _mm512_reduce_add_epi32(c2);
    return;
  }
#endif
  counts[0] = counts[1] = counts[2] = 0;
  for (int64_t j = 0; j < n; ++j) {
    counts[0] += keys[j] >= pivots[0];
    counts[1] += keys[j] >= pivots[1];
    counts[2] += keys[j] >= pivots[2];
  }
}

// Moves the keys inside [low, high] to the front of out (which may be keys itself); returns how many.
template <typename K>
inline int64_t compact_inside(const K* keys, int64_t n, K low, K high, K* out) {
  int64_t found = 0;
#ifdef __AVX512F__
  if constexpr (sizeof(K) == 4) {
    const __m512i lo = _mm512_set1_epi32(static_cast<int>(low)), hi = _mm512_set1_epi32(static_cast<int>(high));
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 valid = n - j >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - j)) - 1u);
      const __m512i x = _mm512_maskz_loadu_epi32(valid, keys + j);
      const __mmask16 inside = _mm512_mask_cmple_epu32_mask(_mm512_mask_cmpge_epu32_mask(valid, x, lo), x, hi);
      // Writes 16 lanes at found <= j: only keys already read are overwritten.
      _mm512_storeu_si512(out + found, _mm512_maskz_compress_epi32(inside, x));
      found += __builtin_popcount(inside);
    }
    return found;
  }
#endif
  for (int64_t j = 0; j < n; ++j) {
    const K key = keys[j];
    out[found] = key;
    found += (key >= low) & (key <= high);
  }
  return found;
}

// The rank-th largest (1-based) of n keys, n small.
template <typename K>
K rank_among_few(K* keys, int64_t n, int64_t rank) {
#ifdef __AVX512F__
  if constexpr (sizeof(K) == 4) {
    if (n <= 16) {
      // Lane i counts the keys above key i and those at or above it, comparing the keys with their 15 rotations;
      // the answer is a key with fewer than rank above it and at least rank at or above it.
      const __mmask16 live = static_cast<__mmask16>((1u << n) - 1u);
      const __m512i pool = _mm512_maskz_loadu_epi32(live, keys);
      const __m512i one = _mm512_set1_epi32(1), count = _mm512_set1_epi32(static_cast<int>(n));
      const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
      __m512i above = _mm512_setzero_si512(), at_or_above = one;
      for (int r = 1; r < 16; ++r) {
        const __m512i rotation = _mm512_and_si512(_mm512_add_epi32(lanes, _mm512_set1_epi32(r)), _mm512_set1_epi32(15));
        const __m512i other = _mm512_permutexvar_epi32(rotation, pool);
        const __mmask16 other_live = _mm512_cmplt_epu32_mask(rotation, count);
        above = _mm512_mask_add_epi32(above, _mm512_mask_cmpgt_epu32_mask(other_live, other, pool), above, one);
        at_or_above =
            _mm512_mask_add_epi32(at_or_above, _mm512_mask_cmpge_epu32_mask(other_live, other, pool), at_or_above, one);
      }
      const __m512i wanted = _mm512_set1_epi32(static_cast<int>(rank));
      const __mmask16 hit =
          _mm512_mask_cmplt_epi32_mask(live, above, wanted) & _mm512_cmpge_epi32_mask(at_or_above, wanted);
      return keys[__builtin_ctz(hit)];
    }
  }
#endif
  std::nth_element(keys, keys + (rank - 1), keys + n, std::greater<K>());
  return keys[rank - 1];
}

// What a selection knows of the K-th largest key: it lies in [low, high]; at_least_low keys are >= low (at least
// kept of them) and above_high keys are > high (fewer than kept).
template <typename K>
struct Bracket {
  K low, high;
  int64_t at_least_low, above_high;
};

// Narrows the bracket with the counts of keys at or above three ascending pivots (counts over all n keys): the
// highest pivot with at least kept keys at or above it is a lower bound, the next one up an upper bound.
template <typename K>
inline void narrow(Bracket<K>& bracket, const K* pivots, const int64_t* counts, int64_t kept) {
  int i = 2;
  while (i >= 0 && counts[i] < kept) --i;
  if (i >= 0 && pivots[i] > bracket.low) {
    bracket.low = pivots[i];
    bracket.at_least_low = counts[i];
  }
  if (i < 2 && pivots[i + 1] > bracket.low && pivots[i + 1] - 1 < bracket.high) {
    bracket.high = pivots[i + 1] - 1;
    bracket.above_high = counts[i + 1];
  }
}

// Three ascending pivots around a guess of the K-th largest key: the guess and 2% of its value either side.
template <typename scalar_t, typename K = key_t<scalar_t>>
inline void pivots_around(K guess, K* pivots) {
  const double value = key_value<scalar_t>(guess);
  pivots[0] = order_key(static_cast<scalar_t>(value * 0.98));
  pivots[1] = guess;
  pivots[2] = order_key(static_cast<scalar_t>(value * 1.02));
  std::sort(pivots, pivots + 3);
}

// The K-th largest key of n, from a bracket that holds it, narrowed by sweeps that count the keys at or above three
// pivots: around the rank interpolated between the bracket's scores or, after a sweep that did not cut the bracket
// to a quarter, at its quarters in key space (so there are at most half the key's bits of sweeps). Once the
// bracket holds under half of the keys swept, those are moved into scratch (n + 16 entries) and the later sweeps
// cover them only; the few left at the end are ranked directly.
template <typename scalar_t, typename K = key_t<scalar_t>>
K kth_largest(const K* keys, int64_t n, int64_t kept, Bracket<K> bracket, K* scratch) {
  constexpr int64_t few = 16;
  const K* swept = keys;
  int64_t size = n;
  int64_t outside = 0;  // keys above the swept ones (all above high)
  bool interpolate = true;
  while (bracket.low < bracket.high && bracket.at_least_low - bracket.above_high > few) {
    const K low = bracket.low, high = bracket.high;
    if (2 * (bracket.at_least_low - bracket.above_high) < size) {
      size = compact_inside(swept, size, low, high, scratch);
      swept = scratch;
      outside = bracket.above_high;
    }
    const K span = high - low;
    K pivots[3] = {static_cast<K>(low + span / 4 + 1), static_cast<K>(low + span / 2 + 1),
                   static_cast<K>(high - span / 4)};
    if (interpolate) {
      const double inside = static_cast<double>(bracket.at_least_low - bracket.above_high);
      const double rank = static_cast<double>(kept - bracket.above_high);  // from the top of the bracket
      const double margin = std::max(1.0, inside / 8.0);
      const double top = key_value<scalar_t>(high), bottom = key_value<scalar_t>(low);
      const double step = (top - bottom) / inside;
      const double guesses[3] = {top - step * (rank + margin - 0.5), top - step * (rank - 0.5),
                                 top - step * (rank - margin - 0.5)};
      if (std::isfinite(step)) {
        for (int i = 0; i < 3; ++i) pivots[i] = order_key(static_cast<scalar_t>(guesses[i]));
      }
    }
    for (int i = 0; i < 3; ++i) pivots[i] = std::min(std::max(pivots[i], static_cast<K>(low + 1)), high);
    pivots[1] = std::max(pivots[1], pivots[0]);
    pivots[2] = std::max(pivots[2], pivots[1]);
    int64_t counts[3];
    count_at_least_3(swept, size, pivots, counts);
    for (int64_t& count : counts) count += outside;
    narrow(bracket, pivots, counts, kept);
    interpolate = (bracket.high - bracket.low) <= span / 4;
  }
  if (bracket.low == bracket.high) return bracket.low;
  size = compact_inside(swept, size, bracket.low, bracket.high, scratch);
  return rank_among_few(scratch, size, kept - bracket.above_high);
}

#ifdef __AVX512F__
// The indices of the keys at or above (or with include_equal false, above) the threshold and, unless null, of those
// equal to it, ascending, into the buffers (n + 16 entries each); returns how many of each.
inline std::pair<int64_t, int64_t> split_at(const uint32_t* keys, int64_t n, uint32_t threshold, bool include_equal,
                                            int32_t* above_buffer, int32_t* tie_buffer) {
  const __m512i t = _mm512_set1_epi32(static_cast<int>(threshold));
  __m512i index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  int64_t above = 0, ties = 0;
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 valid = n - j >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - j)) - 1u);
    const __m512i x = _mm512_maskz_loadu_epi32(valid, keys + j);
    const __mmask16 kept = include_equal ? _mm512_mask_cmpge_epu32_mask(valid, x, t)
                                         : _mm512_mask_cmpgt_epu32_mask(valid, x, t);
    _mm512_storeu_si512(above_buffer + above, _mm512_maskz_compress_epi32(kept, index));
    above += __builtin_popcount(kept);
    if (tie_buffer) {
      const __mmask16 equal = _mm512_mask_cmpeq_epu32_mask(valid, x, t);
      _mm512_storeu_si512(tie_buffer + ties, _mm512_maskz_compress_epi32(equal, index));
      ties += __builtin_popcount(equal);
    }
    index = _mm512_add_epi32(index, step);
  }
  return {above, ties};
}
#endif

// Writes the K kept key indices in ascending order: every key above the threshold and the first ones equal to it.
template <typename K>
void write_kept(const K* keys, int64_t n, int64_t kept, K threshold, int32_t* above_buffer, int32_t* tie_buffer,
                int64_t* out) {
  int64_t above = 0, ties = 0;
#ifdef __AVX512F__
  if constexpr (sizeof(K) == 4) {
    // Mostly one key holds the threshold score: the keys at or above it are then exactly the kept ones.
    if (split_at(keys, n, threshold, true, above_buffer, nullptr).first == kept) {
      for (int64_t i = 0; i < kept; i += 8) {
        const __mmask8 valid = kept - i >= 8 ? __mmask8(0xFF) : static_cast<__mmask8>((1u << (kept - i)) - 1u);
        const __m256i indices = _mm256_maskz_loadu_epi32(valid, above_buffer + i);
        _mm512_mask_storeu_epi64(out + i, valid, _mm512_cvtepi32_epi64(indices));
      }
      return;
    }
    std::tie(above, ties) = split_at(keys, n, threshold, false, above_buffer, tie_buffer);
  } else
#endif
  {
    for (int64_t j = 0; j < n; ++j) {
      above_buffer[above] = tie_buffer[ties] = static_cast<int32_t>(j);
      above += keys[j] > threshold;
      ties += keys[j] == threshold;
    }
  }
  // Both lists ascend: merged, the kept keys come out in ascending order (the reference's, and the attention's
  // lookups then move forward through memory). The ties taken are few unless many scores are equal.
  int64_t taken = 0, written = 0;
  for (int64_t t = 0; t < kept - above; ++t) {
    const int32_t tie = tie_buffer[t];
    while (taken < above && above_buffer[taken] < tie) out[written++] = above_buffer[taken++];
    out[written++] = tie;
  }
  for (; taken < above; ++taken) out[written++] = above_buffer[taken];
}

// Â's rows for a group of queries, from their chosen coefficients, as order keys: for row g,
// Σ_t weights[g][t] · basis[rows[g][t]], t in the given order, into keys + g · key_stride. Key chunk by key chunk,
// every row of the group: the chunk's basis columns stay in the L1 cache for the group instead of each row streaming
// its count basis rows from the L2. brackets[g]: the bracket of row g's K-th largest key that its smallest and
// largest keys give, narrowed by the counts at the pivots when there are any (counted as the keys are made, which
// saves a sweep).
template <typename scalar_t, typename K = key_t<scalar_t>>
void approximate_rows_keys(const scalar_t* basis, int64_t num_keys, int64_t group, const int64_t* rows,
                           const scalar_t* weights, int64_t count, int64_t kept, const K* pivots, scalar_t* scores,
                           K* keys, int64_t key_stride, Bracket<K>* brackets) {
  constexpr int max_group = 16;
  TORCH_INTERNAL_ASSERT(group <= max_group);
  int64_t counts[max_group][3] = {};
  for (int64_t g = 0; g < group; ++g) brackets[g] = {std::numeric_limits<K>::max(), 0, num_keys, 0};
#ifdef __AVX512F__
  if constexpr (std::is_same_v<scalar_t, float>) {
    const __m512 zero = _mm512_setzero_ps();
    const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));
    __m512i smallest[max_group], largest[max_group], pivot[3];
    for (int64_t g = 0; g < group; ++g) {
      smallest[g] = _mm512_set1_epi32(-1);
      largest[g] = _mm512_setzero_si512();
    }
    for (int i = 0; i < 3; ++i) pivot[i] = _mm512_set1_epi32(pivots ? static_cast<int>(pivots[i]) : 0);
    // VECTORS vectors of 16 keys at a time: each is a chain of dependent adds over the terms, and VECTORS chains
    // side by side keep the adder busy.
    auto chunk = [&](auto vectors_constant, int64_t j) {
      constexpr int VECTORS = decltype(vectors_constant)::value;
      __mmask16 valid[VECTORS];
      for (int v = 0; v < VECTORS; ++v) {
        const int64_t left = num_keys - j - 16 * v;
        valid[v] = left >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
      }
      for (int64_t g = 0; g < group; ++g) {
        const int64_t* row_of = rows + g * count;
        const float* weight_of = weights + g * count;
        __m512 sum[VECTORS];
        for (int v = 0; v < VECTORS; ++v) {
          sum[v] = _mm512_mul_ps(_mm512_set1_ps(weight_of[0]),
                                 _mm512_maskz_loadu_ps(valid[v], basis + row_of[0] * num_keys + j + 16 * v));
        }
        for (int64_t t = 1; t < count; ++t) {
          const __m512 weight = _mm512_set1_ps(weight_of[t]);
          const float* row = basis + row_of[t] * num_keys + j;
          for (int v = 0; v < VECTORS; ++v) {
            sum[v] = _mm512_add_ps(sum[v], _mm512_mul_ps(weight, _mm512_maskz_loadu_ps(valid[v], row + 16 * v)));
          }
        }
        for (int v = 0; v < VECTORS; ++v) {
          const __m512i bits = _mm512_castps_si512(_mm512_add_ps(sum[v], zero));
          const __m512i key = _mm512_xor_si512(bits, _mm512_or_si512(_mm512_srai_epi32(bits, 31), sign));
          _mm512_mask_storeu_epi32(keys + g * key_stride + j + 16 * v, valid[v], key);
          smallest[g] = _mm512_mask_min_epu32(smallest[g], valid[v], smallest[g], key);
          largest[g] = _mm512_mask_max_epu32(largest[g], valid[v], largest[g], key);
          if (pivots) {
            for (int i = 0; i < 3; ++i) {
              counts[g][i] += __builtin_popcount(_mm512_mask_cmpge_epu32_mask(valid[v], key, pivot[i]));
            }
          }
        }
      }
    };
    int64_t j = 0;
    for (; j + 64 <= num_keys; j += 64) chunk(std::integral_constant<int, 4>{}, j);
    for (; j < num_keys; j += 16) chunk(std::integral_constant<int, 1>{}, j);
    for (int64_t g = 0; g < group; ++g) {
      brackets[g].low = _mm512_reduce_min_epu32(smallest[g]);
      brackets[g].high = _mm512_reduce_max_epu32(largest[g]);
    }
  } else
#endif
  {
    for (int64_t g = 0; g < group; ++g) {
      const int64_t* row_of = rows + g * count;
      const scalar_t* weight_of = weights + g * count;
      K* row_keys = keys + g * key_stride;
      for (int64_t j = 0; j < num_keys; ++j) scores[j] = weight_of[0] * basis[row_of[0] * num_keys + j];
      for (int64_t t = 1; t < count; ++t) {
        const scalar_t weight = weight_of[t];
        const scalar_t* row = basis + row_of[t] * num_keys;
        for (int64_t j = 0; j < num_keys; ++j) {
          const scalar_t term = weight * row[j];
          scores[j] = scores[j] + term;
        }
      }
      for (int64_t j = 0; j < num_keys; ++j) {
        row_keys[j] = order_key(scores[j]);
        brackets[g].low = std::min(brackets[g].low, row_keys[j]);
        brackets[g].high = std::max(brackets[g].high, row_keys[j]);
        if (pivots) {
          for (int i = 0; i < 3; ++i) counts[g][i] += row_keys[j] >= pivots[i];
        }
      }
    }
  }
  if (pivots) {
    for (int64_t g = 0; g < group; ++g) narrow(brackets[g], pivots, counts[g], kept);
  }
}

// The count largest of n coefficients, largest first, ties by lower index: the selection below picks them, then
// each pick's rank orders them (no mispredicted insertions). keys, the buffers and scratch hold n + 16 entries.
template <typename scalar_t>
void top_coefficients_by_rank(const scalar_t* row, int64_t n, int64_t count, int64_t* rows, scalar_t* weights,
                              key_t<scalar_t>* keys, int32_t* above_buffer, int32_t* tie_buffer, int64_t* picked,
                              key_t<scalar_t>* scratch, key_t<scalar_t>& hint) {
  using K = key_t<scalar_t>;
  Bracket<K> bracket{std::numeric_limits<K>::max(), 0, n, 0};
  for (int64_t i = 0; i < n; ++i) {
    keys[i] = order_key(row[i]);
    bracket.low = std::min(bracket.low, keys[i]);
    bracket.high = std::max(bracket.high, keys[i]);
  }
  if (hint != 0) {
    K pivots[3];
    int64_t counts[3];
    pivots_around<scalar_t>(hint, pivots);
    count_at_least_3(keys, n, pivots, counts);
    narrow(bracket, pivots, counts, count);
  }
  const K threshold = kth_largest<scalar_t>(keys, n, count, bracket, scratch);
  hint = threshold;
  write_kept(keys, n, count, threshold, above_buffer, tie_buffer, picked);
  // Picks come in ascending index within equal keys, so a pick's rank is the picks with a larger key plus the
  // earlier picks with the same key.
  K* picked_keys = scratch;  // the selection is done with it
  for (int64_t i = 0; i < count; ++i) picked_keys[i] = keys[picked[i]];
  for (int64_t i = 0; i < count; ++i) {
    const K key = picked_keys[i];
    int64_t rank = 0;
    for (int64_t j = 0; j < i; ++j) rank += picked_keys[j] >= key;
    for (int64_t j = i + 1; j < count; ++j) rank += picked_keys[j] > key;
    rows[rank] = picked[i];
    weights[rank] = row[picked[i]];
  }
}

template <typename scalar_t>
void predicted_top_keys_kernel(const at::Tensor& coefficients, const at::Tensor& basis, int64_t coef_topk,
                               int64_t kept, at::Tensor& out) {
  using K = key_t<scalar_t>;
  const int64_t heads = coefficients.size(1), queries = coefficients.size(2), reduced = coefficients.size(3);
  const int64_t num_keys = basis.size(1);
  const int64_t stride_b = coefficients.stride(0), stride_h = coefficients.stride(1);
  const int64_t stride_q = coefficients.stride(2);
  const scalar_t* coefficient_data = coefficients.data_ptr<scalar_t>();
  const scalar_t* basis_data = basis.data_ptr<scalar_t>();
  int64_t* out_data = out.data_ptr<int64_t>();
  const int64_t rows = coefficients.size(0) * heads * queries;
  constexpr int64_t group_size = 16;
  at::parallel_for(0, rows, group_size, [&](int64_t begin, int64_t end) {
    const int64_t key_stride = num_keys + 16;
    std::vector<scalar_t> scores(num_keys), weights(group_size * coef_topk);
    std::vector<K> keys(group_size * key_stride), scratch(std::max(num_keys, reduced) + 16);  // both selections use it
    std::vector<int32_t> above_buffer(num_keys + 16), tie_buffer(num_keys + 16);
    std::vector<int64_t> chosen(group_size * coef_topk), picked(coef_topk);
    std::vector<K> coefficient_keys(reduced + 16);
    std::vector<int32_t> coefficient_above(reduced + 16), coefficient_ties(reduced + 16);
    Bracket<K> brackets[group_size];
    K hint = 0, coefficient_hint = 0;
    for (int64_t first = begin; first < end; first += group_size) {
      const int64_t group = std::min(group_size, end - first);
      for (int64_t g = 0; g < group; ++g) {
        const int64_t r = first + g;
        const int64_t b = r / (heads * queries), h = (r / queries) % heads, q = r % queries;
        const scalar_t* row = coefficient_data + b * stride_b + h * stride_h + q * stride_q;
        if (q + 1 < queries) {  // the next row, early: a slice of the softmax, it streams from beyond the L2 cache
          for (int64_t i = 0; i < reduced; i += 64 / sizeof(scalar_t)) __builtin_prefetch(row + stride_q + i);
        }
        top_coefficients_by_rank(row, reduced, coef_topk, chosen.data() + g * coef_topk,
                                 weights.data() + g * coef_topk, coefficient_keys.data(), coefficient_above.data(),
                                 coefficient_ties.data(), picked.data(), scratch.data(), coefficient_hint);
      }
      // The previous group's last answer guesses this group's (rows of one head share the basis, so their scores'
      // quantiles lie close); it is counted as the scores are made, which saves a sweep.
      K pivots[3];
      if (hint != 0) pivots_around<scalar_t>(hint, pivots);
      approximate_rows_keys(basis_data, num_keys, group, chosen.data(), weights.data(), coef_topk, kept,
                            hint != 0 ? pivots : nullptr, scores.data(), keys.data(), key_stride, brackets);
      for (int64_t g = 0; g < group; ++g) {
        const K* row_keys = keys.data() + g * key_stride;
        hint = kth_largest<scalar_t>(row_keys, num_keys, kept, brackets[g], scratch.data());
        write_kept(row_keys, num_keys, kept, hint, above_buffer.data(), tie_buffer.data(),
                   out_data + (first + g) * kept);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Attention over each query's kept keys.

struct Strides {
  int64_t b, h, n;
};

inline Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

#ifdef __AVX512F__
// exp(x) for x <= 0 (softmax logits minus their maximum): 2^n · p(r), r = x - n·ln2, degree-6 polynomial.
inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// Lane i of the result: the sum of the 16 lanes of v[i].
inline __m512 sum_lanes_16(__m512* v) {
  __m512 x[8], y[4], w[2];
  for (int i = 0; i < 8; ++i) {
    x[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  }
  for (int i = 0; i < 4; ++i) {
    y[i] = _mm512_add_ps(_mm512_shuffle_ps(x[2 * i], x[2 * i + 1], 0x44), _mm512_shuffle_ps(x[2 * i], x[2 * i + 1], 0xEE));
  }
  for (int i = 0; i < 2; ++i) {
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(y[2 * i], y[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(y[2 * i], y[2 * i + 1], 0xDD));
  }
  return _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x88), _mm512_shuffle_f32x4(w[0], w[1], 0xDD));
}

// Rows are looked up in the order of the query's key index, which no hardware prefetcher predicts. Only the row's
// first cache line: the adjacent-line prefetcher brings the next, and a prefetch per line (four for a 64-wide head)
// took load slots from the product itself (7.5 against 8.4 ms for Sparsifiner-S's keys at 384, batch 4).
inline void prefetch_row(const float* row) { _mm_prefetch(reinterpret_cast<const char*>(row), _MM_HINT_T0); }

// One query row, head width 16·VEC: logits against the kept keys (index null: the first kept keys), softmax,
// weighted sum of their value rows.
template <int VEC, bool INDEXED>
void attend_row_avx512(const float* query, const float* keys, const float* values, int64_t key_stride,
                       int64_t value_stride, const int64_t* index, int64_t kept, float scale, float* logits,
                       float* out) {
  auto key_at = [&](int64_t t) { return keys + (INDEXED ? index[t] : t) * key_stride; };
  auto value_at = [&](int64_t t) { return values + (INDEXED ? index[t] : t) * value_stride; };
  __m512 q[VEC];
  for (int v = 0; v < VEC; ++v) q[v] = _mm512_mul_ps(_mm512_loadu_ps(query + 16 * v), _mm512_set1_ps(scale));
  auto logit = [&](int64_t t) {
    const float* key = key_at(t);
    __m512 sum = _mm512_mul_ps(q[0], _mm512_loadu_ps(key));
    for (int v = 1; v < VEC; ++v) sum = _mm512_fmadd_ps(q[v], _mm512_loadu_ps(key + 16 * v), sum);
    return sum;
  };
  __m512 running_max = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 partial[16];
  int64_t t0 = 0;
  // Whole blocks of 16 keys: a fixed trip count, unrolled, with the rows 16 keys ahead prefetched.
  for (; t0 + 16 <= kept; t0 += 16) {
    for (int t = 0; t < 16; ++t) {
      if (INDEXED && t0 + t + 16 < kept) prefetch_row(key_at(t0 + t + 16));
      partial[t] = logit(t0 + t);
    }
    const __m512 sums = sum_lanes_16(partial);
    _mm512_storeu_ps(logits + t0, sums);
    running_max = _mm512_max_ps(running_max, sums);
  }
  if (t0 < kept) {
    const int64_t block = kept - t0;
    for (int t = 0; t < 16; ++t) partial[t] = t < block ? logit(t0 + t) : _mm512_setzero_ps();
    const __mmask16 valid = static_cast<__mmask16>((1u << block) - 1u);
    const __m512 sums = sum_lanes_16(partial);
    _mm512_mask_storeu_ps(logits + t0, valid, sums);
    running_max = _mm512_mask_max_ps(running_max, valid, running_max, sums);
  }
  const __m512 maximum = _mm512_set1_ps(_mm512_reduce_max_ps(running_max));
  __m512 total = _mm512_setzero_ps();
  for (int64_t t = 0; t < kept; t += 16) {
    const int64_t block = std::min<int64_t>(16, kept - t);
    const __mmask16 valid = block == 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << block) - 1u);
    const __m512 weight = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(valid, logits + t), maximum));
    _mm512_mask_storeu_ps(logits + t, valid, weight);
    total = _mm512_mask_add_ps(total, valid, total, weight);
  }
  // Two sets of accumulators, even and odd keys: one set's chain of dependent adds would set the pace.
  __m512 acc[VEC], odd[VEC];
  for (int v = 0; v < VEC; ++v) acc[v] = odd[v] = _mm512_setzero_ps();
  if (INDEXED) {
    for (int64_t t = 0; t < std::min<int64_t>(8, kept); ++t) prefetch_row(value_at(t));
  }
  int64_t t = 0;
  for (; t + 2 <= kept; t += 2) {
    if (INDEXED && t + 9 < kept) {
      prefetch_row(value_at(t + 8));
      prefetch_row(value_at(t + 9));
    }
    const float* value = value_at(t);
    const float* next = value_at(t + 1);
    const __m512 weight = _mm512_set1_ps(logits[t]), next_weight = _mm512_set1_ps(logits[t + 1]);
    for (int v = 0; v < VEC; ++v) {
      acc[v] = _mm512_fmadd_ps(weight, _mm512_loadu_ps(value + 16 * v), acc[v]);
      odd[v] = _mm512_fmadd_ps(next_weight, _mm512_loadu_ps(next + 16 * v), odd[v]);
    }
  }
  if (t < kept) {
    const float* value = value_at(t);
    const __m512 weight = _mm512_set1_ps(logits[t]);
    for (int v = 0; v < VEC; ++v) acc[v] = _mm512_fmadd_ps(weight, _mm512_loadu_ps(value + 16 * v), acc[v]);
  }
  const __m512 inverse = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(total));
  for (int v = 0; v < VEC; ++v) _mm512_storeu_ps(out + 16 * v, _mm512_mul_ps(_mm512_add_ps(acc[v], odd[v]), inverse));
}

template <int VEC>
void attend_row_avx512(const float* query, const float* keys, const float* values, int64_t key_stride,
                       int64_t value_stride, const int64_t* index, int64_t kept, float scale, float* logits,
                       float* out) {
  if (index) {
    attend_row_avx512<VEC, true>(query, keys, values, key_stride, value_stride, index, kept, scale, logits, out);
  } else {
    attend_row_avx512<VEC, false>(query, keys, values, key_stride, value_stride, index, kept, scale, logits, out);
  }
}
#endif

template <typename scalar_t>
void attend_row(const scalar_t* query, const scalar_t* keys, const scalar_t* values, int64_t key_stride,
                int64_t value_stride, const int64_t* index, int64_t kept, int64_t width, int64_t value_width,
                scalar_t scale, scalar_t* logits, scalar_t* out) {
#ifdef __AVX512F__
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (width == value_width) {
      switch (width) {
        case 16: return attend_row_avx512<1>(query, keys, values, key_stride, value_stride, index, kept, scale, logits, out);
        case 32: return attend_row_avx512<2>(query, keys, values, key_stride, value_stride, index, kept, scale, logits, out);
        case 48: return attend_row_avx512<3>(query, keys, values, key_stride, value_stride, index, kept, scale, logits, out);
        case 64: return attend_row_avx512<4>(query, keys, values, key_stride, value_stride, index, kept, scale, logits, out);
        case 96: return attend_row_avx512<6>(query, keys, values, key_stride, value_stride, index, kept, scale, logits, out);
        case 128: return attend_row_avx512<8>(query, keys, values, key_stride, value_stride, index, kept, scale, logits, out);
        default: break;
      }
    }
  }
#endif
  scalar_t maximum = -std::numeric_limits<scalar_t>::infinity();
  for (int64_t t = 0; t < kept; ++t) {
    const scalar_t* key = keys + (index ? index[t] : t) * key_stride;
    scalar_t dot = 0;
    for (int64_t e = 0; e < width; ++e) dot += query[e] * key[e];
    logits[t] = dot * scale;
    maximum = std::max(maximum, logits[t]);
  }
  scalar_t total = 0;
  for (int64_t t = 0; t < kept; ++t) {
    logits[t] = std::exp(logits[t] - maximum);
    total += logits[t];
  }
  for (int64_t e = 0; e < value_width; ++e) out[e] = 0;
  for (int64_t t = 0; t < kept; ++t) {
    const scalar_t* value = values + (index ? index[t] : t) * value_stride;
    const scalar_t weight = logits[t] / total;
    for (int64_t e = 0; e < value_width; ++e) out[e] += weight * value[e];
  }
}

template <typename scalar_t>
void kept_key_attention_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& key_index, double scale, int64_t dense_queries, at::Tensor& out) {
  const int64_t heads = q.size(1), queries = q.size(2), width = q.size(3);
  const int64_t num_keys = k.size(2), value_width = v.size(3), kept = key_index.size(3);
  const Strides qs = strides_of(q), ks = strides_of(k), vs = strides_of(v), os = strides_of(out);
  const scalar_t* q_data = q.data_ptr<scalar_t>();
  const scalar_t* k_data = k.data_ptr<scalar_t>();
  const scalar_t* v_data = v.data_ptr<scalar_t>();
  const int64_t* index_data = key_index.data_ptr<int64_t>();
  scalar_t* out_data = out.data_ptr<scalar_t>();
  const int64_t rows = q.size(0) * heads * queries;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> logits(num_keys + 16);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (heads * queries), h = (r / queries) % heads, n = r % queries;
      const bool dense = n < dense_queries;
      const int64_t* index = dense ? nullptr : index_data + ((b * heads + h) * (queries - dense_queries) + n - dense_queries) * kept;
      if (n + 1 < queries) {  // the next query row, early: the model's rows lie kilobytes apart, past the prefetchers
        const scalar_t* next = q_data + b * qs.b + h * qs.h + (n + 1) * qs.n;
        for (int64_t e = 0; e < width; e += 64 / sizeof(scalar_t)) __builtin_prefetch(next + e);
      }
      attend_row<scalar_t>(q_data + b * qs.b + h * qs.h + n * qs.n, k_data + b * ks.b + h * ks.h,
                           v_data + b * vs.b + h * vs.h, ks.n, vs.n, index, dense ? num_keys : kept, width,
                           value_width, static_cast<scalar_t>(scale), logits.data(),
                           out_data + b * os.b + h * os.h + n * os.n);
    }
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Entry points (the Python wrappers check shapes; these check what the kernels rely on).

at::Tensor predicted_top_keys(const at::Tensor& coefficients, const at::Tensor& basis, int64_t coef_topk,
                              int64_t kept) {
  TORCH_CHECK(coefficients.dim() == 4 && basis.dim() == 2 && coefficients.size(3) == basis.size(0),
              "predicted_top_keys takes coefficients (B, H, Nq, n) and a basis (n, Nk)");
  TORCH_CHECK(coefficients.scalar_type() == basis.scalar_type(), "coefficients and basis differ in dtype");
  TORCH_CHECK(1 <= coef_topk && coef_topk <= basis.size(0) && 1 <= kept && kept <= basis.size(1),
              "predicted_top_keys needs 1 <= coef_topk <= n and 1 <= kept <= Nk");
  const at::Tensor rows = coefficients.stride(3) == 1 ? coefficients : coefficients.contiguous();
  const at::Tensor table = basis.contiguous();
  at::Tensor out = at::empty({coefficients.size(0), coefficients.size(1), coefficients.size(2), kept},
                             coefficients.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(coefficients.scalar_type(), "predicted_top_keys", [&] {
    predicted_top_keys_kernel<scalar_t>(rows, table, coef_topk, kept, out);
  });
  return out;
}

at::Tensor kept_key_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& key_index, double scale, int64_t dense_queries) {
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(), "q, k, v differ in dtype");
  TORCH_CHECK(key_index.scalar_type() == at::kLong, "key_index must be int64");
  auto last_contiguous = [](const at::Tensor& t) { return t.stride(3) == 1 ? t : t.contiguous(); };
  const at::Tensor qc = last_contiguous(q), kc = last_contiguous(k), vc = last_contiguous(v);
  const at::Tensor index = key_index.contiguous();
  // (B, Nq, H, Ev) storage seen as (B, H, Nq, Ev): merging the heads afterwards is free.
  at::Tensor out = at::empty({q.size(0), q.size(2), q.size(1), v.size(3)}, q.options()).permute({0, 2, 1, 3});
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "kept_key_attention", [&] {
    kept_key_attention_kernel<scalar_t>(qc, kc, vc, index, scale, dense_queries, out);
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("predicted_top_keys", &predicted_top_keys, "Sparsifiner's kept keys per query from its mask predictor");
  m.def("kept_key_attention", &kept_key_attention, "Attention over each query's kept keys");
}
