/* Matrix-vector products for batch-1 decoding on the CPU: y = x @ W^T (+ bias) (+ residual), and at the end
 * of the file the whole fp32 decode step of one sequence built on them (infer/native_step.py).
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

#ifdef __AVX512F__
/* 16 bfloat16 values widened to fp32 (exact: a bf16 is the top half of an fp32) */
static inline __m512 bf16x16(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
#endif

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
    a0 = _mm512_fmadd_ps(bf16x16(x + k), bf16x16(w + k), a0);
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

/* ---- the whole decode step of one sequence in one parallel region ---------------------------------------
 * A decode step is ~65 products with norms, rotary and attention between them. Called one by one (ctypes or
 * an inductor graph), every product is a parallel region of its own and the small operations between run on
 * one thread while the other waits. Here the threads stay in one region for the whole token and meet at a
 * barrier only where the next phase needs every thread's output (5 per layer). Each thread normalises the
 * residual stream for itself (a 1024-wide norm costs less than a barrier), takes a contiguous block of rows of
 * every matrix (gate and up blocks with the same rows, so it applies the activation to its own block), and a
 * slice of the heads for rotary, the cache write and attention. The layout and arithmetic are FusedDecoder's
 * (infer/fused_step.py), whose norm gains are already folded into the q/k/v and gate/up matrices: fp32
 * throughout, or bf16 rounded where the fused step's bf16 tensors round (after every product, norm, rotary
 * product and sum, activation and residual add) with attention in fp32 over the bf16 cache. */
#include <math.h>
#include <omp.h>

typedef struct {
  const void *qkv_w, *qkv_b, *o_w, *o_b, *ff_w, *ff_b, *dn_w, *dn_b; /* [out, in]; biases NULL or [out] */
} lmkit_layer;

typedef struct {
  int64_t n_layers, dim, n_heads, n_kv_heads, head_dim, d_ff, vocab;
  float eps, scale;
  int rms;   /* 1 RMSNorm, 0 LayerNorm (gain/bias folded into the next matrix) */
  int gated; /* act(gate) * up, else act(up) */
  int act;   /* 0 silu, 1 relu, 2 gelu_tanh, 3 quick_gelu */
  int bf16;  /* weights, activations, cache and logits in bfloat16 (else fp32) */
  const lmkit_layer* layers;
  const void *embed, *pos_embed; /* pos_embed NULL: rotary */
  const void *norm_w, *norm_b, *lm_w, *lm_b;
} lmkit_model;

#ifdef __AVX512F__
/* e^x to ~1 ulp: x = n ln2 + r, |r| <= ln2/2, a degree-6 polynomial in r, scaled by 2^n */
static inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.7f)), _mm512_set1_ps(-103.9f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504089f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}
#endif

/* element i of an fp32 or bf16 array as fp32, and a store rounded to the array's type */
static inline float ld(const void* a, int64_t i, int bf) {
  return bf ? bf16_to_f32(((const uint16_t*)a)[i]) : ((const float*)a)[i];
}
static inline void st(void* a, int64_t i, float v, int bf) {
  if (bf) ((uint16_t*)a)[i] = f32_to_bf16(v);
  else ((float*)a)[i] = v;
}
#ifdef __AVX512F__
/* elements [i, i + 16) of an fp32 or bf16 array as fp32 */
static inline __m512 ld16(const void* a, int64_t i, int bf) {
  return bf ? bf16x16((const uint16_t*)a + i) : _mm512_loadu_ps((const float*)a + i);
}
#endif
/* v as stored in the array's type (bf16: rounded) */
static inline float rnd(float v, int bf) { return bf ? bf16_to_f32(f32_to_bf16(v)) : v; }

/* y[n] = x . w[n] (+ b[n]) for rows [n0, n1), or y[n] += that (accumulate: the residual stream). bf16: the
 * product rounded once, then the sum with the residual rounded again, as lmkit_gemv_bf16 does */
static inline void rows(const void* x, const void* w, const void* b, void* y, int64_t n0, int64_t n1, int64_t K,
                        int accumulate, int bf) {
  for (int64_t n = n0; n < n1; ++n) {
    float s = bf ? dot_bf16((const uint16_t*)x, (const uint16_t*)w + n * K, K)
                 : dot_f32((const float*)x, (const float*)w + n * K, K);
    if (b) s += ld(b, n, bf);
    if (accumulate) s = ld(y, n, bf) + rnd(s, bf);
    st(y, n, s, bf);
  }
}

/* the norm without gain, computed in fp32: RMSNorm x / sqrt(mean(x^2) + eps), LayerNorm (x - mean) /
 * sqrt(var + eps) */
static void norm_rows(const void* x, void* out, int64_t D, float eps, int rms, int bf) {
  float fs = 0.f, fq = 0.f;
  int64_t k = 0;
#ifdef __AVX512F__
  __m512 sv = _mm512_setzero_ps(), qv = _mm512_setzero_ps();
  for (; k + 16 <= D; k += 16) {
    __m512 v = ld16(x, k, bf);
    sv = _mm512_add_ps(sv, v);
    qv = _mm512_fmadd_ps(v, v, qv);
  }
  fs = _mm512_reduce_add_ps(sv);
  fq = _mm512_reduce_add_ps(qv);
#endif
  for (; k < D; ++k) {
    float v = ld(x, k, bf);
    fs += v;
    fq += v * v;
  }
  float shift = 0.f, inv;
  if (rms) {
    inv = 1.f / sqrtf(fq / (float)D + eps);
  } else {
    double mean = (double)fs / D, sq = 0.0;
    for (k = 0; k < D; ++k) {
      double c = ld(x, k, bf) - mean;
      sq += c * c;
    }
    shift = (float)mean;
    inv = 1.f / sqrtf((float)(sq / D) + eps);
  }
  for (k = 0; k < D; ++k) st(out, k, (ld(x, k, bf) - shift) * inv, bf);
}

static inline float act_f32(float g, int act) {
  switch (act) {
    case 1: return g > 0.f ? g : 0.f;
    case 2: return 0.5f * g * (1.f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g)));
    case 3: return g / (1.f + expf(-1.702f * g));
    default: return g / (1.f + expf(-g));
  }
}

/* h[i] = act(g[i]) * u[i] (u NULL: act(g[i])) for i in [i0, i1); bf16 rounds the activation, then the product */
static void act_rows(const void* g, const void* u, void* h, int64_t i0, int64_t i1, int act, int bf) {
  int64_t i = i0;
#ifdef __AVX512F__
  if (act == 0 && !bf) {  /* silu, vectorised: the one every current family uses */
    const float *gf = (const float*)g, *uf = (const float*)u;
    float* hf = (float*)h;
    for (; i + 16 <= i1; i += 16) {
      __m512 gv = _mm512_loadu_ps(gf + i);
      __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), gv));
      __m512 r = _mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.f), e));
      if (uf) r = _mm512_mul_ps(r, _mm512_loadu_ps(uf + i));
      _mm512_storeu_ps(hf + i, r);
    }
  }
#endif
  for (; i < i1; ++i) {
    float gi = ld(g, i, bf), a;
    if (act == 3 && bf) {  /* x * sigmoid(1.702 x) as three bf16 operations, each rounded */
      float z = rnd(1.702f * gi, bf);
      a = rnd(gi * rnd(1.f / (1.f + expf(-z)), bf), bf);
    } else {
      a = rnd(act_f32(gi, act), bf);
    }
    st(h, i, u ? a * ld(u, i, bf) : a, bf);
  }
}

/* rotate one head in place: v * cos + roll(v, d/2) * sin (sin's first half negated, as FusedDecoder's table);
 * bf16 rounds each product and the sum */
static inline void rope_head(void* v, const void* cos, const void* sin, int64_t d, int bf) {
  int64_t half = d / 2;
  for (int64_t j = 0; j < half; ++j) {
    float a = ld(v, j, bf), b = ld(v, j + half, bf);
    st(v, j, rnd(a * ld(cos, j, bf), bf) + rnd(b * ld(sin, j, bf), bf), bf);
    st(v, j + half, rnd(b * ld(cos, j + half, bf), bf) + rnd(a * ld(sin, j + half, bf), bf), bf);
  }
}

/* q . k over d, fp32 q against an fp32 or bf16 cached key */
static inline float dot_key(const float* q, const void* k, int64_t d, int bf) {
  if (!bf) return dot_f32(q, (const float*)k, d);
  const uint16_t* kb = (const uint16_t*)k;
  int64_t j = 0;
  float s = 0.f;
#ifdef __AVX512F__
  __m512 acc = _mm512_setzero_ps();
  for (; j + 16 <= d; j += 16) {
    acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + j), bf16x16(kb + j), acc);
  }
  s = _mm512_reduce_add_ps(acc);
#endif
  for (; j < d; ++j) s += q[j] * bf16_to_f32(kb[j]);
  return s;
}

/* one query head (fp32) over keys/values [0, n) of its cache head: out = softmax(q k^T * scale) v, in fp32 */
static void attend_head(const float* q, const void* kc, const void* vc, float* out, float* p, int64_t n, int64_t d,
                        float scale, int bf) {
  const int64_t es = bf ? 2 : 4;
  float mx = -INFINITY;
  for (int64_t i = 0; i < n; ++i) {
    p[i] = dot_key(q, (const char*)kc + i * d * es, d, bf) * scale;
    if (p[i] > mx) mx = p[i];
  }
  float total = 0.f;
  int64_t i = 0;
#ifdef __AVX512F__
  __m512 m = _mm512_set1_ps(mx), t = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(p + i), m));
    _mm512_storeu_ps(p + i, e);
    t = _mm512_add_ps(t, e);
  }
  total = _mm512_reduce_add_ps(t);
#endif
  for (; i < n; ++i) { p[i] = expf(p[i] - mx); total += p[i]; }
  float inv = 1.f / total;
  for (int64_t j = 0; j < d; ++j) out[j] = 0.f;
  for (i = 0; i < n; ++i) {
    const void* v = (const char*)vc + i * d * es;
    float w = p[i] * inv;
    int64_t j = 0;
#ifdef __AVX512F__
    __m512 wv = _mm512_set1_ps(w);
    for (; j + 16 <= d; j += 16) _mm512_storeu_ps(out + j, _mm512_fmadd_ps(wv, ld16(v, j, bf), _mm512_loadu_ps(out + j)));
#endif
    for (; j < d; ++j) out[j] += w * ld(v, j, bf);
  }
}

/* the rows [a, b) of N that thread t of T takes in an even split */
#define SPLIT(N, t, T, a, b) int64_t a = (N) * (t) / (T), b = (N) * ((t) + 1) / (T)

/* One token of one sequence: logits [vocab] of token `id` at position `pos` (fp32 or bf16, the model's type),
 * its key and value written to `slot` of every layer's cache (k_caches[l], v_caches[l]: [kv_heads, max_len,
 * head_dim] in the model's type), attending over slots [0, slot]. cos/sin: the rotary rows of `pos` in the
 * model's type (NULL with learned positions). scratch: 4-byte slots, dim + (heads + 2 kv_heads) * head_dim +
 * heads * head_dim + 2 d_ff + threads * (dim + head_dim + head_dim + max_len) of them. */
void lmkit_step(const lmkit_model* m, void* const* k_caches, void* const* v_caches, int64_t max_len, int64_t id,
                int64_t pos, int64_t slot, const void* cos, const void* sin, void* logits, float* scratch,
                int threads) {
  const int64_t D = m->dim, H = m->n_heads, HKV = m->n_kv_heads, HD = m->head_dim, F = m->d_ff;
  const int64_t NQKV = (H + 2 * HKV) * HD, group = H / HKV;
  const int bf = m->bf16;
  const int64_t es = bf ? 2 : 4;
  float* x = scratch; /* the residual stream, in the model's type (as are xn, qkv, att, hid, up) */
  float* qkv = x + D;
  float* att = qkv + NQKV;
  float* hid = att + H * HD;
  float* up = hid + F;
  float* local = up + F;
  for (int64_t k = 0; k < D; ++k) {
    float v = ld(m->embed, id * D + k, bf);
    st(x, k, m->pos_embed ? v + ld(m->pos_embed, pos * D + k, bf) : v, bf);
  }
  #pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    float* xn = local + t * (D + 2 * HD + max_len);
    float* q32 = xn + D;  /* one query head in fp32 */
    float* o32 = q32 + HD;  /* its attention output in fp32 */
    float* p = o32 + HD;
    for (int64_t l = 0; l < m->n_layers; ++l) {
      const lmkit_layer* L = m->layers + l;
      char* kc = (char*)k_caches[l];
      char* vc = (char*)v_caches[l];
      norm_rows(x, xn, D, m->eps, m->rms, bf);
      { SPLIT(NQKV, t, T, a, b); rows(xn, L->qkv_w, L->qkv_b, qkv, a, b, D, 0, bf); }
      #pragma omp barrier
      { /* rotary on this thread's query heads and kv heads; its keys and values into `slot` */
        SPLIT(H, t, T, a, b);
        if (cos) for (int64_t hq = a; hq < b; ++hq) rope_head((char*)qkv + hq * HD * es, cos, sin, HD, bf);
        SPLIT(HKV, t, T, c, e);
        for (int64_t g = c; g < e; ++g) {
          char* k = (char*)qkv + (H + g) * HD * es;
          if (cos) rope_head(k, cos, sin, HD, bf);
          memcpy(kc + (g * max_len + slot) * HD * es, k, HD * es);
          memcpy(vc + (g * max_len + slot) * HD * es, (char*)qkv + (H + HKV + g) * HD * es, HD * es);
        }
      }
      #pragma omp barrier
      {
        SPLIT(H, t, T, a, b);
        for (int64_t hq = a; hq < b; ++hq) {
          int64_t g = hq / group;
          for (int64_t j = 0; j < HD; ++j) q32[j] = ld(qkv, hq * HD + j, bf);
          attend_head(q32, kc + g * max_len * HD * es, vc + g * max_len * HD * es, o32, p, slot + 1, HD, m->scale, bf);
          for (int64_t j = 0; j < HD; ++j) st(att, hq * HD + j, o32[j], bf);
        }
      }
      #pragma omp barrier
      { SPLIT(D, t, T, a, b); rows(att, L->o_w, L->o_b, x, a, b, H * HD, 1, bf); }
      #pragma omp barrier
      norm_rows(x, xn, D, m->eps, m->rms, bf);
      { /* this thread's gate rows, then the same rows of up, then the activation of its block */
        SPLIT(F, t, T, a, b);
        rows(xn, L->ff_w, L->ff_b, hid, a, b, D, 0, bf);
        if (m->gated)
          rows(xn, (const char*)L->ff_w + F * D * es, L->ff_b ? (const char*)L->ff_b + F * es : NULL,
               up, a, b, D, 0, bf);
        act_rows(hid, m->gated ? up : NULL, hid, a, b, m->act, bf);
      }
      #pragma omp barrier
      { SPLIT(D, t, T, a, b); rows(hid, L->dn_w, L->dn_b, x, a, b, F, 1, bf); }
      #pragma omp barrier
    }
    norm_rows(x, xn, D, m->eps, m->rms, bf);
    for (int64_t k = 0; k < D; ++k) {
      float v = rnd(ld(xn, k, bf) * ld(m->norm_w, k, bf), bf);
      st(xn, k, m->norm_b ? v + ld(m->norm_b, k, bf) : v, bf);
    }
    { SPLIT(m->vocab, t, T, a, b); rows(xn, m->lm_w, m->lm_b, logits, a, b, D, 0, bf); }
  }
}
