// Fused multi-step LIF/IF neuron for the CPU: forward and backward through time in one pass.
//
// Built and loaded by spikegrad/fused/cpu.py (plain C ABI, called through ctypes; no torch
// headers). The equations are those of spikegrad/dynamics.py, evaluated in the same order
// and precision as the reference loop so that the spikes are bit-identical:
//
//   h_t = leak * u_{t-1} + input_scale * x_t          (two products, then the sum; no FMA)
//   s_t = (h_t - threshold >= 0)
//   u_t = h_t * (1 - s_t) + v_reset * s_t              (hard reset)
//   u_t = h_t - threshold * s_t                        (soft reset)
//
// Layout: x, spikes, gradients are [T, N] contiguous (N = all non-time elements). Work is
// split over blocks of neurons (OpenMP over blocks); inside a block the time loop is outer
// and the neuron loop inner, contiguous and vectorised.
//
// Backward saves nothing but the input x: it recomputes h_t for its block into a small
// buffer (T x block, in cache), then runs the adjoint recurrence backwards in time:
//
//   dh_t = du_t * du_t/dh_t + (dL/ds_t + du_t * du_t/ds_t) * g(h_t - threshold)
//   dx_t = input_scale * dh_t,   du_{t-1} = leak * dh_t,   dleak += dh_t * u_{t-1}
//
// with du_t/ds_t = 0 under detach_reset. g is the surrogate derivative: one of the formulas
// below (each mirrors a Surrogate.derivative in spikegrad/surrogates.py and is tested
// against it), or a tensor computed by that method (kind 0).
//
// Storage and compute types: float32 and float64 tensors compute in their own precision.
// float16 and bfloat16 tensors (mixed precision) are read and widened to float, computed in
// float exactly as a float32 tensor holding the same values would be, and narrowed back
// (round to nearest even) only where stored: spikes (exactly 0 or 1), the final potential
// and the gradients. The potentials h (for monitoring, or for a surrogate without a kernel
// formula) and g_given are in the compute type.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __linux__
#include <sys/mman.h>
#endif
#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

namespace {

// ---- half-precision storage types: bit patterns, converted without branches (so that the
// loops around them vectorise) and without any particular instruction set.

struct Half {  // IEEE binary16
  uint16_t bits;
};
struct BFloat {  // bfloat16: the upper half of a float
  uint16_t bits;
};

template <typename S>
struct ComputeOf {
  using type = S;
};
template <>
struct ComputeOf<Half> {
  using type = float;
};
template <>
struct ComputeOf<BFloat> {
  using type = float;
};
template <typename S>
using compute_t = typename ComputeOf<S>::type;

inline float widen(float v) { return v; }
inline double widen(double v) { return v; }
inline float widen(BFloat v) { return __builtin_bit_cast(float, static_cast<uint32_t>(v.bits) << 16); }
inline float widen(Half v) {
  const uint32_t sign = static_cast<uint32_t>(v.bits & 0x8000u) << 16;
  const uint32_t em = v.bits & 0x7fffu;  // exponent and mantissa
  // normal: rebias the exponent by 127 - 15; infinity / NaN: move the all-ones exponent to 255
  const uint32_t rebiased = (em << 13) + (em >= 0x7c00u ? 0x70000000u : 0x38000000u);
  // subnormal or zero: mantissa * 2^-24, exact in float
  const uint32_t scaled = __builtin_bit_cast(uint32_t, static_cast<float>(static_cast<int32_t>(em)) *
                                                           5.9604644775390625e-8f);
  return __builtin_bit_cast(float, (em < 0x0400u ? scaled : rebiased) | sign);
}

template <typename S>
inline S narrow(compute_t<S> v) {
  return v;
}
template <>
inline BFloat narrow<BFloat>(float v) {
  const uint32_t u = __builtin_bit_cast(uint32_t, v);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // to nearest, ties to even
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  return BFloat{static_cast<uint16_t>(nan ? ((u >> 16) | 0x40u) : rounded)};
}
template <>
inline Half narrow<Half>(float v) {
  const uint32_t u = __builtin_bit_cast(uint32_t, v);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;  // |v|
  // normal results (|v| >= 2^-14): rebias, then round the 13 dropped bits to nearest even; a carry
  // out of the mantissa moves the exponent up, past the largest exponent to infinity (clamped)
  uint32_t normal = (a - 0x38000000u + 0xfffu + ((a >> 13) & 1u)) >> 13;
  normal = normal < 0x7c00u ? normal : 0x7c00u;
  // subnormal results: adding 0.5 (whose ulp is 2^-24) lets the float adder round |v| to a
  // multiple of 2^-24; the mantissa bits are then the subnormal's (1024 = the smallest normal)
  const uint32_t subnormal = __builtin_bit_cast(uint32_t, __builtin_bit_cast(float, a) + 0.5f) - 0x3f000000u;
  uint32_t out = a < 0x38800000u ? subnormal : normal;
  out = a > 0x7f800000u ? 0x7e00u : out;  // NaN
  return Half{static_cast<uint16_t>(out | sign)};
}

enum SurrogateKind { GIVEN = 0, RECTANGLE = 1, TRIANGLE = 2, SIGMOID = 3, ATAN = 4, FAST_SIGMOID = 5,
                     DSPIKE = 6 };

// Constants cast to the tensor's dtype, as torch casts Python scalars in the reference.
template <typename F>
struct Consts {
  F leak, scale, threshold, v_reset, v_init;
  F p[4];  // surrogate parameters, meaning per kind (see surrogate_grad)
};

template <typename F>
Consts<F> make_consts(const double* neuron, const double* surrogate) {
  Consts<F> c;
  c.leak = static_cast<F>(neuron[0]);
  c.scale = static_cast<F>(neuron[1]);
  c.threshold = static_cast<F>(neuron[2]);
  c.v_reset = static_cast<F>(neuron[3]);
  c.v_init = static_cast<F>(neuron[4]);
  for (int i = 0; i < 4; ++i) c.p[i] = static_cast<F>(surrogate ? surrogate[i] : 0.0);
  return c;
}

// exp(y) for y <= 0 in float, branch-free so that loops calling it vectorise (libm's expf
// and std::floor do not, without -ffast-math). Range reduction y = k*ln2 + r, |r| <= ln2/2,
// k rounded to nearest by the 1.5*2^23 trick (exact for |k| < 2^22), then the degree-7
// Taylor series of exp(r) (truncation below 1e-8 relative); about 1 ulp.
inline float exp_nonpositive(float y) {
  y = y < -87.0f ? -87.0f : y;
  const float k = (y * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = y - k * 0.693359375f;     // ln2 split in a part exact in float
  r = r - k * -2.12194440054690583e-4f;  // and the rest
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;  // 2^k
  return p * __builtin_bit_cast(float, bits);
}
inline double exp_nonpositive(double y) { return std::exp(y); }

inline float tanh_of(float y) {
  const float e = exp_nonpositive(-2.0f * std::fabs(y));
  const float t = (1.0f - e) / (1.0f + e);
  return y < 0.0f ? -t : t;
}
inline double tanh_of(double y) { return std::tanh(y); }

inline float sigmoid_of(float z) {
  const float e = exp_nonpositive(-std::fabs(z));
  const float inv = 1.0f / (1.0f + e);
  return z >= 0.0f ? inv : e * inv;
}
inline double sigmoid_of(double z) { return 1.0 / (1.0 + std::exp(-z)); }

// g(x), x = h - threshold; each line mirrors Surrogate.derivative, operation for operation.
// The constants come by value (not through a pointer) so that loops calling this stay
// branch-free and vectorise: a select reading memory would not be if-converted.
template <typename F, int KIND>
inline F surrogate_grad(F x, F p0, F p1, F p2, F p3) {
  const F ax = std::fabs(x);
  if constexpr (KIND == RECTANGLE) {  // p = (width/2, height)
    return ax < p0 ? p1 : F(0);
  } else if constexpr (KIND == TRIANGLE) {  // p = (alpha, alpha^2)
    const F g = p0 - p1 * ax;
    return g > F(0) ? g : F(0);
  } else if constexpr (KIND == SIGMOID) {  // p = (alpha,)
    const F s = sigmoid_of(p0 * x);
    return p0 * s * (F(1) - s);
  } else if constexpr (KIND == ATAN) {  // p = (pi/2 * alpha, alpha/2)
    const F y = p0 * x;
    return p1 / (F(1) + y * y);
  } else if constexpr (KIND == FAST_SIGMOID) {  // p = (slope,)
    const F d = F(1) + p0 * ax;
    return F(1) / (d * d);
  } else if constexpr (KIND == DSPIKE) {  // p = (window/2, temperature, window, scale/window)
    const F t = tanh_of(p1 * x / p2);
    const F sech2 = F(1) - t * t;
    return (ax <= p0 ? p3 : F(0)) * sech2;
  } else {
    (void)p2;
    (void)p3;
    return F(0);
  }
}

// Copy a block row from the cache-resident staging buffer to its place in a large output
// with non-temporal (streaming) stores where the destination is aligned: the output is
// written once and not read soon, so skipping the read-for-ownership saves a quarter of the
// traffic of that stream. Plain copy elsewhere.
inline void stream_row(float* dst, const float* src, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  if ((reinterpret_cast<uintptr_t>(dst) & 63) == 0) {
    for (; i + 16 <= n; i += 16) _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
  }
#elif defined(__AVX__)
  if ((reinterpret_cast<uintptr_t>(dst) & 31) == 0) {
    for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
  }
#endif
  for (; i < n; ++i) dst[i] = src[i];
}
inline void stream_row(double* dst, const double* src, int64_t n) { std::memcpy(dst, src, sizeof(double) * n); }
template <typename S>
inline void stream_row(S* dst, const S* src, int64_t n) {
  std::memcpy(dst, src, sizeof(S) * n);
}

inline void stream_fence() {
#if defined(__AVX512F__) || defined(__AVX__)
  _mm_sfence();
#endif
}

template <typename F, bool HARD>
inline F after_reset(F h, F spike, F threshold, F v_reset) {
  if constexpr (HARD) {
    return h * (F(1) - spike) + v_reset * spike;
  } else {
    return h - threshold * spike;
  }
}

template <typename S, bool HARD, bool WRITE_H>
void forward_block(const S* x, const S* v0, S* spikes, S* v_final, compute_t<S>* h_out, int64_t T, int64_t N,
                   int64_t n0, int64_t bn, const Consts<compute_t<S>>& c, compute_t<S>* u, S* stage) {
  using F = compute_t<S>;
  const F leak = c.leak, scale = c.scale, threshold = c.threshold, v_reset = c.v_reset;
  for (int64_t i = 0; i < bn; ++i) u[i] = v0 ? widen(v0[n0 + i]) : c.v_init;
  for (int64_t t = 0; t < T; ++t) {
    const S* xt = x + t * N + n0;
    F* ht = WRITE_H ? h_out + t * N + n0 : nullptr;
#pragma omp simd
    for (int64_t i = 0; i < bn; ++i) {
      const F h = leak * u[i] + scale * widen(xt[i]);
      const F s = (h - threshold >= F(0)) ? F(1) : F(0);
      stage[i] = narrow<S>(s);
      if constexpr (WRITE_H) ht[i] = h;
      u[i] = after_reset<F, HARD>(h, s, threshold, v_reset);
    }
    stream_row(spikes + t * N + n0, stage, bn);
  }
  if (v_final) {
    for (int64_t i = 0; i < bn; ++i) v_final[n0 + i] = narrow<S>(u[i]);
  }
}

template <typename S, int KIND, bool HARD, bool DETACH, bool LEAK_GRAD>
void backward_block(const S* x, const S* v0, const S* grad_s, const S* grad_v_final,
                    const compute_t<S>* g_given, S* grad_x, S* grad_v0, double* leak_partial, int64_t T,
                    int64_t N, int64_t n0, int64_t bn, const Consts<compute_t<S>>& c, compute_t<S>* hbuf,
                    compute_t<S>* du, compute_t<S>* u0) {
  using F = compute_t<S>;
  const F leak = c.leak, scale = c.scale, threshold = c.threshold, v_reset = c.v_reset;
  const F p0 = c.p[0], p1 = c.p[1], p2 = c.p[2], p3 = c.p[3];
  // 1. Recompute h_t for this block (the forward pass without writing spikes).
  for (int64_t i = 0; i < bn; ++i) u0[i] = v0 ? widen(v0[n0 + i]) : c.v_init;
  std::memcpy(du, u0, sizeof(F) * bn);  // du doubles as the running potential here
  for (int64_t t = 0; t < T; ++t) {
    const S* xt = x + t * N + n0;
    F* ht = hbuf + t * bn;
#pragma omp simd
    for (int64_t i = 0; i < bn; ++i) {
      const F h = leak * du[i] + scale * widen(xt[i]);
      ht[i] = h;
      du[i] = after_reset<F, HARD>(h, (h - threshold >= F(0)) ? F(1) : F(0), threshold, v_reset);
    }
  }
  // 2. Adjoint recurrence, t = T-1 .. 0. u_{t-1} (for the leak gradient) is rebuilt from
  // h_{t-1}, or is u0 at t = 0; FIRST makes that choice at compile time.
  for (int64_t i = 0; i < bn; ++i) du[i] = grad_v_final ? widen(grad_v_final[n0 + i]) : F(0);
  double leak_acc = 0.0;
  auto adjoint_step = [&](int64_t t, auto first) {
    constexpr bool FIRST = decltype(first)::value;
    const F* ht = hbuf + t * bn;
    const F* hprev = FIRST ? u0 : hbuf + (t - 1) * bn;
    const S* gst = grad_s + t * N + n0;
    const F* ggt = KIND == GIVEN ? g_given + t * N + n0 : nullptr;
    S* gxt = grad_x + t * N + n0;  // plain stores: streaming stores measured slower here
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < bn; ++i) {
      const F h = ht[i];
      const F xm = h - threshold;
      const F s = xm >= F(0) ? F(1) : F(0);
      F g;
      if constexpr (KIND == GIVEN) {
        g = ggt[i];
      } else {
        g = surrogate_grad<F, KIND>(xm, p0, p1, p2, p3);
      }
      const F d = du[i];
      const F gs = widen(gst[i]);
      F dh;
      if constexpr (HARD) {
        const F ds = DETACH ? gs : gs + d * (v_reset - h);
        dh = d * (F(1) - s) + ds * g;
      } else {
        const F ds = DETACH ? gs : gs - threshold * d;
        dh = d + ds * g;
      }
      gxt[i] = narrow<S>(scale * dh);
      if constexpr (LEAK_GRAD) {
        F u_prev = hprev[i];
        if constexpr (!FIRST) {
          u_prev = after_reset<F, HARD>(u_prev, (u_prev - threshold >= F(0)) ? F(1) : F(0), threshold,
                                        v_reset);
        }
        acc += static_cast<double>(dh) * static_cast<double>(u_prev);
      }
      du[i] = leak * dh;
    }
    leak_acc += acc;
  };
  for (int64_t t = T - 1; t >= 1; --t) adjoint_step(t, std::false_type{});
  adjoint_step(0, std::true_type{});
  if (grad_v0) {
    for (int64_t i = 0; i < bn; ++i) grad_v0[n0 + i] = narrow<S>(du[i]);
  }
  if (LEAK_GRAD) *leak_partial = leak_acc;
}

inline int clamp_threads(int threads, int64_t blocks) {
  if (threads < 1) threads = 1;
  if (blocks < threads) threads = static_cast<int>(blocks < 1 ? 1 : blocks);
  return threads;
}

template <typename S>
void forward(const S* x, const S* v0, S* spikes, S* v_final, compute_t<S>* h_out, int64_t T, int64_t N,
             const double* neuron, int hard, int64_t block, int threads) {
  using F = compute_t<S>;
  const Consts<F> c = make_consts<F>(neuron, nullptr);
  const int64_t blocks = (N + block - 1) / block;
  threads = clamp_threads(threads, blocks);
#pragma omp parallel num_threads(threads)
  {
    std::vector<F> u(block);
    std::vector<S> stage(block);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t n0 = b * block;
      const int64_t bn = N - n0 < block ? N - n0 : block;
      if (hard && h_out) {
        forward_block<S, true, true>(x, v0, spikes, v_final, h_out, T, N, n0, bn, c, u.data(), stage.data());
      } else if (hard) {
        forward_block<S, true, false>(x, v0, spikes, v_final, h_out, T, N, n0, bn, c, u.data(), stage.data());
      } else if (h_out) {
        forward_block<S, false, true>(x, v0, spikes, v_final, h_out, T, N, n0, bn, c, u.data(), stage.data());
      } else {
        forward_block<S, false, false>(x, v0, spikes, v_final, h_out, T, N, n0, bn, c, u.data(),
                                       stage.data());
      }
    }
    stream_fence();
  }
}

template <typename S, int KIND, bool HARD, bool DETACH, bool LEAK_GRAD>
void backward_blocks(const S* x, const S* v0, const S* grad_s, const S* grad_v_final,
                     const compute_t<S>* g_given, S* grad_x, S* grad_v0, double* leak_partials, int64_t T,
                     int64_t N, const Consts<compute_t<S>>& c, int64_t block, int threads) {
  const int64_t blocks = (N + block - 1) / block;
  threads = clamp_threads(threads, blocks);
#pragma omp parallel num_threads(threads)
  {
    std::vector<compute_t<S>> buf(static_cast<size_t>(T + 2) * block);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t n0 = b * block;
      const int64_t bn = N - n0 < block ? N - n0 : block;
      backward_block<S, KIND, HARD, DETACH, LEAK_GRAD>(
          x, v0, grad_s, grad_v_final, g_given, grad_x, grad_v0, LEAK_GRAD ? leak_partials + b : nullptr,
          T, N, n0, bn, c, buf.data(), buf.data() + T * block, buf.data() + (T + 1) * block);
    }
  }
}

template <typename S, int KIND>
int backward_kind(const S* x, const S* v0, const S* grad_s, const S* grad_v_final, const compute_t<S>* g_given,
                  S* grad_x, S* grad_v0, double* leak_partials, int64_t T, int64_t N,
                  const Consts<compute_t<S>>& c, int hard, int detach, int64_t block, int threads) {
  const int code = (hard ? 4 : 0) + (detach ? 2 : 0) + (leak_partials ? 1 : 0);
#define SG_CASE(CODE, H, D, L)                                                                    \
  case CODE:                                                                                      \
    backward_blocks<S, KIND, H, D, L>(x, v0, grad_s, grad_v_final, g_given, grad_x, grad_v0,      \
                                      leak_partials, T, N, c, block, threads);                    \
    return 0;
  switch (code) {
    SG_CASE(0, false, false, false)
    SG_CASE(1, false, false, true)
    SG_CASE(2, false, true, false)
    SG_CASE(3, false, true, true)
    SG_CASE(4, true, false, false)
    SG_CASE(5, true, false, true)
    SG_CASE(6, true, true, false)
    SG_CASE(7, true, true, true)
  }
#undef SG_CASE
  return -1;
}

template <typename S>
int backward(const S* x, const S* v0, const S* grad_s, const S* grad_v_final, const compute_t<S>* g_given,
             S* grad_x, S* grad_v0, double* leak_partials, int64_t T, int64_t N, const double* neuron,
             const double* surrogate, int kind, int hard, int detach, int64_t block, int threads) {
  const Consts<compute_t<S>> c = make_consts<compute_t<S>>(neuron, surrogate);
#define SG_KIND(K)                                                                                      \
  case K:                                                                                               \
    return backward_kind<S, K>(x, v0, grad_s, grad_v_final, g_given, grad_x, grad_v0, leak_partials, T, \
                               N, c, hard, detach, block, threads);
  switch (kind) {
    SG_KIND(GIVEN)
    SG_KIND(RECTANGLE)
    SG_KIND(TRIANGLE)
    SG_KIND(SIGMOID)
    SG_KIND(ATAN)
    SG_KIND(FAST_SIGMOID)
    SG_KIND(DSPIKE)
  }
#undef SG_KIND
  return -1;
}

template <typename F, int KIND>
void eval_kind(const F* x, F* out, int64_t n, const F* p) {
  for (int64_t i = 0; i < n; ++i) out[i] = surrogate_grad<F, KIND>(x[i], p[0], p[1], p[2], p[3]);
}

template <typename F>
int surrogate_eval(const F* x, F* out, int64_t n, int kind, const double* surrogate) {
  F p[4];
  for (int i = 0; i < 4; ++i) p[i] = static_cast<F>(surrogate[i]);
  switch (kind) {
    case RECTANGLE: eval_kind<F, RECTANGLE>(x, out, n, p); return 0;
    case TRIANGLE: eval_kind<F, TRIANGLE>(x, out, n, p); return 0;
    case SIGMOID: eval_kind<F, SIGMOID>(x, out, n, p); return 0;
    case ATAN: eval_kind<F, ATAN>(x, out, n, p); return 0;
    case FAST_SIGMOID: eval_kind<F, FAST_SIGMOID>(x, out, n, p); return 0;
    case DSPIKE: eval_kind<F, DSPIKE>(x, out, n, p); return 0;
  }
  return -1;
}

// Bit masks of binary tensors: element i is bit (i % 8) of byte i / 8. Elements are compared
// as bit patterns (Bits, of the element's size) with those of +0.0 (all zero) and 1.0 (one).
template <typename Bits>
int64_t pack_bits(const Bits* x, uint8_t* bits, int64_t n, int threads, Bits one) {
  const Bits zero = 0;
  const int64_t bytes = (n + 7) / 8;
  const int64_t chunk = 1 << 14;  // bytes per task
  const int64_t chunks = (bytes + chunk - 1) / chunk;
  int binary = 1;
  threads = clamp_threads(threads, chunks);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t k = 0; k < chunks; ++k) {
    int ok;
#pragma omp atomic read
    ok = binary;
    if (!ok) continue;
    const int64_t b1 = (k + 1) * chunk < bytes ? (k + 1) * chunk : bytes;
    int good = 1;
    for (int64_t b = k * chunk; b < b1; ++b) {
      uint8_t byte = 0;
      const int64_t i0 = b * 8;
      const int64_t m = n - i0 < 8 ? n - i0 : 8;
      for (int64_t j = 0; j < m; ++j) {
        const Bits v = x[i0 + j];
        good &= (v == zero) | (v == one);
        byte |= static_cast<uint8_t>((v == one) << j);
      }
      bits[b] = byte;
      if (!good) break;
    }
    if (!good) {
#pragma omp atomic write
      binary = 0;
    }
  }
  return binary;
}

template <typename Bits>
void unpack_bits(const uint8_t* bits, Bits* out, int64_t n, int threads, Bits one) {
  const int64_t chunk = 1 << 17;  // elements per task, a multiple of 8
  const int64_t chunks = (n + chunk - 1) / chunk;
  threads = clamp_threads(threads, chunks);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t k = 0; k < chunks; ++k) {
    const int64_t i1 = (k + 1) * chunk < n ? (k + 1) * chunk : n;
#pragma omp simd
    for (int64_t i = k * chunk; i < i1; ++i) out[i] = ((bits[i >> 3] >> (i & 7)) & 1) ? one : Bits(0);
  }
}

// dtype codes of the C ABI
enum DType { FLOAT32 = 0, FLOAT64 = 1, FLOAT16 = 2, BFLOAT16 = 3 };

}  // namespace

extern "C" {

// Bumped whenever a signature below changes; cpu.py refuses a library of another version.
int sg_abi_version() { return 3; }

// dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16 (x, v0, spikes, v_final). neuron = (leak,
// input_scale, threshold, v_reset, v_init). h_out is in the compute type: float64 for float64, float32
// otherwise. v0, v_final and h_out may be null (start at v_init; final state / potentials not wanted).
int sg_lif_forward(int dtype, const void* x, const void* v0, void* spikes, void* v_final, void* h_out,
                   int64_t T, int64_t N, const double* neuron, int hard, int64_t block, int threads) {
#define SG_FORWARD(CODE, S)                                                                             \
  case CODE:                                                                                            \
    forward<S>(static_cast<const S*>(x), static_cast<const S*>(v0), static_cast<S*>(spikes),            \
               static_cast<S*>(v_final), static_cast<compute_t<S>*>(h_out), T, N, neuron, hard, block, \
               threads);                                                                                \
    return 0;
  switch (dtype) {
    SG_FORWARD(FLOAT32, float)
    SG_FORWARD(FLOAT64, double)
    SG_FORWARD(FLOAT16, Half)
    SG_FORWARD(BFLOAT16, BFloat)
  }
#undef SG_FORWARD
  return -1;
}

// grad_v_final, g_given (kind 0 only; in the compute type, as h_out), grad_v0 and leak_partials (one
// double per block) may be null. Returns 0, or -1 for an unknown dtype/kind.
int sg_lif_backward(int dtype, const void* x, const void* v0, const void* grad_s, const void* grad_v_final,
                    const void* g_given, void* grad_x, void* grad_v0, double* leak_partials, int64_t T,
                    int64_t N, const double* neuron, const double* surrogate, int kind, int hard, int detach,
                    int64_t block, int threads) {
#define SG_BACKWARD(CODE, S)                                                                              \
  case CODE:                                                                                              \
    return backward<S>(static_cast<const S*>(x), static_cast<const S*>(v0), static_cast<const S*>(grad_s), \
                       static_cast<const S*>(grad_v_final), static_cast<const compute_t<S>*>(g_given),    \
                       static_cast<S*>(grad_x), static_cast<S*>(grad_v0), leak_partials, T, N, neuron,    \
                       surrogate, kind, hard, detach, block, threads);
  switch (dtype) {
    SG_BACKWARD(FLOAT32, float)
    SG_BACKWARD(FLOAT64, double)
    SG_BACKWARD(FLOAT16, Half)
    SG_BACKWARD(BFLOAT16, BFloat)
  }
#undef SG_BACKWARD
  return -1;
}

// g(x) of one surrogate formula, for the tests that pin each against Surrogate.derivative.
int sg_surrogate_eval(int dtype, int kind, const double* surrogate, const void* x, void* out, int64_t n) {
  if (dtype == FLOAT32) {
    return surrogate_eval<float>(static_cast<const float*>(x), static_cast<float*>(out), n, kind, surrogate);
  }
  if (dtype == FLOAT64) {
    return surrogate_eval<double>(static_cast<const double*>(x), static_cast<double*>(out), n, kind,
                                  surrogate);
  }
  return -1;
}

// The storage conversions, for the tests that pin them against torch's: widen (direction 0:
// n elements of dtype to float) or narrow (direction 1: float to dtype, to nearest even).
int sg_convert(int dtype, int direction, const void* in, void* out, int64_t n) {
  if (dtype != FLOAT16 && dtype != BFLOAT16) return -1;
  for (int64_t i = 0; i < n; ++i) {
    if (direction == 0) {
      const uint16_t bits = static_cast<const uint16_t*>(in)[i];
      static_cast<float*>(out)[i] = dtype == FLOAT16 ? widen(Half{bits}) : widen(BFloat{bits});
    } else {
      const float v = static_cast<const float*>(in)[i];
      static_cast<uint16_t*>(out)[i] = dtype == FLOAT16 ? narrow<Half>(v).bits : narrow<BFloat>(v).bits;
    }
  }
  return 0;
}

// Ask the kernel to back a fresh (not yet touched) buffer with transparent huge pages: its
// first-touch page faults then cost less (one fault per 2 MiB instead of per 4 KiB).
// A hint only: returns 0 if taken, -1 if refused or unsupported; the buffer works either way.
int sg_advise_huge_pages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t huge = uintptr_t(1) << 21;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + huge - 1) & ~(huge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + static_cast<uintptr_t>(bytes)) & ~(huge - 1);
  if (end <= begin) return -1;
  return madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
  return -1;
#endif
}

// 1 and the bits when every element is exactly +0.0 or 1.0, else 0 (bits then undefined); -1 for an
// unknown dtype.
int64_t sg_pack_bits(int dtype, const void* x, uint8_t* bits, int64_t n, int threads) {
  switch (dtype) {
    case FLOAT32: return pack_bits<uint32_t>(static_cast<const uint32_t*>(x), bits, n, threads, 0x3f800000u);
    case FLOAT64:
      return pack_bits<uint64_t>(static_cast<const uint64_t*>(x), bits, n, threads, 0x3ff0000000000000ull);
    case FLOAT16: return pack_bits<uint16_t>(static_cast<const uint16_t*>(x), bits, n, threads, 0x3c00u);
    case BFLOAT16: return pack_bits<uint16_t>(static_cast<const uint16_t*>(x), bits, n, threads, 0x3f80u);
  }
  return -1;
}

int sg_unpack_bits(int dtype, const uint8_t* bits, void* out, int64_t n, int threads) {
  switch (dtype) {
    case FLOAT32: unpack_bits<uint32_t>(bits, static_cast<uint32_t*>(out), n, threads, 0x3f800000u); return 0;
    case FLOAT64:
      unpack_bits<uint64_t>(bits, static_cast<uint64_t*>(out), n, threads, 0x3ff0000000000000ull);
      return 0;
    case FLOAT16: unpack_bits<uint16_t>(bits, static_cast<uint16_t*>(out), n, threads, 0x3c00u); return 0;
    case BFLOAT16: unpack_bits<uint16_t>(bits, static_cast<uint16_t*>(out), n, threads, 0x3f80u); return 0;
  }
  return -1;
}

}  // extern "C"
