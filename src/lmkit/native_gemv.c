/* Matrix-vector products for batch-1 decoding on the CPU: y = x @ W^T (+ bias) (+ residual).
 *
 * W is nn.Linear's [N, K] row-major weight, used in place (no reordered copy). Each output is one
 * dot product over a contiguous weight row, and each thread takes a contiguous block of rows, so
 * every thread streams one sequential run of memory: the access pattern of a plain sum, which is
 * what decoding is bound by. A few activation rows (M small) reuse each weight row from L1.
 * Built on the user's machine by native_gemv.py (cc -O3 -march=native -fopenmp); OpenMP resolves to
 * the libgomp torch has already loaded, so it shares torch's threads. */
#include <stdint.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

/* below this many weights per call the threads cost more than they save */
#define PARALLEL_MIN 32768

/* Non-temporal prefetch of the weight bytes PREFETCH_AHEAD ahead of the loop, one per 64-byte line of the
 * `bytes` the loop step reads (the weights are read once per token). The 246M bench model's 65 products
 * per token, 2 threads, medians of 15 interleaved rounds, two processes each: bf16 8.9 / 11.5 ms against
 * 9.6 / 12.2 without, int8 4.5 / 4.0 against 5.3 / 4.7; fp32 gained nothing (18.3 / 14.8 against
 * 18.4 / 14.1: the hardware prefetcher keeps up with a loop that does less per byte), so it has none. */
#define PREFETCH_AHEAD 8192
#ifdef __AVX512F__
#define PREFETCH_ROW(p, bytes)                                                          \
  do {                                                                                  \
    for (int pf_ = 0; pf_ < (bytes); pf_ += 64)                                         \
      _mm_prefetch((const char*)(p) + PREFETCH_AHEAD + pf_, _MM_HINT_NTA);              \
  } while (0)
#else
#define PREFETCH_ROW(p, bytes) do { } while (0)
#endif

static inline float dot_f32(const float* x, const float* w, int64_t K) {
  int64_t k = 0;
  float s = 0.f;
#ifdef __AVX512F__
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  for (; k + 64 <= K; k += 64) {
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), _mm512_loadu_ps(w + k), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 16), _mm512_loadu_ps(w + k + 16), a1);
    a2 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 32), _mm512_loadu_ps(w + k + 32), a2);
    a3 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 48), _mm512_loadu_ps(w + k + 48), a3);
  }
  for (; k + 16 <= K; k += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), _mm512_loadu_ps(w + k), a0);
  s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#endif
  for (; k < K; ++k) s += x[k] * w[k];
  return s;
}

static inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

/* round to nearest even, as torch's float -> bfloat16 cast (NaN stays NaN) */
static inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return (uint16_t)(bits >> 16);
}

static inline float dot_bf16(const uint16_t* x, const uint16_t* w, int64_t K) {
  int64_t k = 0;
  float s = 0.f;
#if defined(__AVX512BF16__)
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  for (; k + 64 <= K; k += 64) {
    PREFETCH_ROW(w + k, 128);
    a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(x + k), (__m512bh)_mm512_loadu_si512(w + k));
    a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512(x + k + 32), (__m512bh)_mm512_loadu_si512(w + k + 32));
  }
  for (; k + 32 <= K; k += 32)
    a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(x + k), (__m512bh)_mm512_loadu_si512(w + k));
  s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
#elif defined(__AVX512F__)
  __m512 a0 = _mm512_setzero_ps();
  for (; k + 16 <= K; k += 16) {
    __m512 xv = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(x + k))), 16));
    __m512 wv = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(w + k))), 16));
    a0 = _mm512_fmadd_ps(xv, wv, a0);
  }
  s = _mm512_reduce_add_ps(a0);
#endif
  for (; k < K; ++k) s += bf16_to_f32(x[k]) * bf16_to_f32(w[k]);
  return s;
}

/* int8 codes widened to fp32 in registers (exact) against fp32 activations: the weight-only int8 product
 * reads one byte per weight and rounds nothing but the fp32 sums */
static inline float dot_q8(const float* x, const int8_t* q, int64_t K) {
  int64_t k = 0;
  float s = 0.f;
#ifdef __AVX512F__
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  for (; k + 64 <= K; k += 64) {
    PREFETCH_ROW(q + k, 64);
    __m512i b = _mm512_loadu_si512((const void*)(q + k));
    __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_castsi512_si128(b)));
    __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(b, 1)));
    __m512 w2 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(b, 2)));
    __m512 w3 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(b, 3)));
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), w0, a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 16), w1, a1);
    a2 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 32), w2, a2);
    a3 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 48), w3, a3);
  }
  for (; k + 16 <= K; k += 16)
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k),
                         _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(q + k)))), a0);
  s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#endif
  for (; k < K; ++k) s += x[k] * (float)q[k];
  return s;
}

/* x [M, K], w [N, K], bias [N] or NULL, residual [M, N] or NULL, y [M, N]; all contiguous fp32 */
void lmkit_gemv_f32(const float* x, const float* w, const float* bias, const float* residual, float* y,
                    int64_t M, int64_t N, int64_t K, int threads) {
  #pragma omp parallel for num_threads(threads) schedule(static) if (N * K >= PARALLEL_MIN && threads > 1)
  for (int64_t n = 0; n < N; ++n) {
    const float* wn = w + n * K;
    for (int64_t m = 0; m < M; ++m) {
      float s = dot_f32(x + m * K, wn, K);
      if (bias) s += bias[n];
      if (residual) s += residual[m * N + n];
      y[m * N + n] = s;
    }
  }
}

/* y = (x @ q^T) * scale (+ bias): x [M, K] fp32, q [N, K] int8, scale [N] fp32, bias [N] fp32 or NULL */
void lmkit_gemv_int8(const float* x, const int8_t* q, const float* scale, const float* bias, float* y,
                     int64_t M, int64_t N, int64_t K, int threads) {
  #pragma omp parallel for num_threads(threads) schedule(static) if (N * K >= 4 * PARALLEL_MIN && threads > 1)
  for (int64_t n = 0; n < N; ++n) {
    const int8_t* qn = q + n * K;
    for (int64_t m = 0; m < M; ++m) {
      float s = dot_q8(x + m * K, qn, K) * scale[n];
      y[m * N + n] = bias ? s + bias[n] : s;
    }
  }
}

/* the same in bfloat16 (uint16 bit patterns): fp32 sums, rounded once to bf16 like torch's bf16 linear;
 * a residual is added to that rounded product and rounded again, as `residual + linear(x)` is in torch */
void lmkit_gemv_bf16(const uint16_t* x, const uint16_t* w, const uint16_t* bias, const uint16_t* residual,
                     uint16_t* y, int64_t M, int64_t N, int64_t K, int threads) {
  #pragma omp parallel for num_threads(threads) schedule(static) if (N * K >= PARALLEL_MIN && threads > 1)
  for (int64_t n = 0; n < N; ++n) {
    const uint16_t* wn = w + n * K;
    for (int64_t m = 0; m < M; ++m) {
      float s = dot_bf16(x + m * K, wn, K);
      if (bias) s += bf16_to_f32(bias[n]);
      uint16_t out = f32_to_bf16(s);
      if (residual) out = f32_to_bf16(bf16_to_f32(residual[m * N + n]) + bf16_to_f32(out));
      y[m * N + n] = out;
    }
  }
}
