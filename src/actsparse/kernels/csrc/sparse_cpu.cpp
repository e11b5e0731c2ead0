// CPU kernels that turn activation sparsity into fewer weight bytes read, in one compiled
// call each (no index tensors built in Python, no embedding_bag set-up):
//
//   actsparse::sparse_linear(x, weight_t, bias, rule, param, scale) -> y
//       y = rule(x) @ weight_t + bias, reading only the rows of weight_t (in, out) whose
//       input survives the rule in some row of the batch (the union);
//   actsparse::neuron_ffn(x, w_in, w_up, w_out_t, idx, act, b_in, b_out) -> y
//       the FFN on the neurons idx only: the rows idx of w_in, w_up and w_out_t are read.
//
// The rule is applied here, in the same pass that gathers the kept inputs. Codes (one place:
// RULE_CODES in native.py mirrors them):
//   0 none            skip exact zeros of x (the rule ran elsewhere)
//   1 threshold       keep |x| > param
//   2 topk            keep the param (an integer count) largest |x| of each row
//   3 weighted_topk   keep the param largest |x| * scale of each row (WINA)
//   4 scored_thresh   keep |x| * scale > param (R-Sparse's scores)
// A NaN input is kept by `none` (it is not zero) and dropped by the comparisons, as the
// PyTorch operators in methods/sparsity/ops.py do.
//
// Threads: ATen's OpenMP pool (torch.set_num_threads governs it) splits the output columns
// (wide outputs) or the kept rows (narrow ones) between threads; see rows_times_values.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

namespace {

constexpr int64_t kBlock = 2048;  // output columns summed together: 8 KB of float32, in L1
constexpr int64_t kMinSpan = 256;  // fewest output columns worth a thread
constexpr int64_t kWide = 4096;  // outputs from which the threads split columns, not rows

inline float to_float(float v) { return v; }
inline float to_float(c10::BFloat16 v) {
  uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// The kept inputs of a batch, gathered once: the union of their indices (ascending) and, for
// each, the value every batch row multiplies that weight row by (0 where that row dropped it).
// One per thread, reused from call to call: a decode step makes ~200 calls.
struct Kept {
  std::vector<int64_t> rows;  // weight rows to read
  std::vector<float> values;  // (rows.size(), B), row-major: values[j * B + b]
};

// What the top-K rules keep of one row: the `k` largest scores; the k-th largest is found by
// nth_element on a copy, then entries above it are kept and ties at it in index order until
// `k` are (NaN scores count as the largest, as in torch.topk).
void topk_keep(const float* score, int64_t K, int64_t k, std::vector<uint8_t>& keep) {
  keep.assign(K, 0);
  if (k <= 0) return;
  if (k >= K) {
    std::fill(keep.begin(), keep.end(), 1);
    return;
  }
  static thread_local std::vector<float> tmp;
  tmp.resize(K);
  for (int64_t i = 0; i < K; ++i) tmp[i] = std::isnan(score[i]) ? INFINITY : score[i];
  std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.end(), std::greater<float>());
  const float kth = tmp[k - 1];
  int64_t above = 0;
  for (int64_t i = 0; i < K; ++i) {
    const float si = std::isnan(score[i]) ? INFINITY : score[i];
    if (si > kth) {
      keep[i] = 1;
      ++above;
    }
  }
  for (int64_t i = 0; i < K && above < k; ++i) {
    const float si = std::isnan(score[i]) ? INFINITY : score[i];
    if (si == kth) {
      keep[i] = 1;
      ++above;
    }
  }
}

// Whether the rule keeps input i of a row (not the top-K rules: those rank the whole row).
template <typename T>
inline bool keeps(int64_t rule, float v, float t, const float* scale, int64_t i) {
  if (rule == 0) return v != 0.0f;
  if (rule == 1) return std::fabs(v) > t;
  return std::fabs(v) * scale[i] > t;
}

template <typename T>
const Kept& gather(const T* x, int64_t B, int64_t K, int64_t rule, double param,
                   const float* scale) {
  static thread_local Kept tls_out;
  static thread_local std::vector<float> tls_kept;  // (B, K): the values each row keeps
  static thread_local std::vector<uint8_t> tls_keep;  // one row's top-K decisions
  static thread_local std::vector<float> tls_score;
  // plain references and pointers: the loops below then index memory, not thread-locals
  Kept& out = tls_out;
  out.rows.resize(K);
  out.values.resize(K * B);
  int64_t* rows = out.rows.data();
  float* vals = out.values.data();
  int64_t n = 0;
  const float t = static_cast<float>(param);
  const bool ranked = rule == 2 || rule == 3;
  if (B == 1 && !ranked) {  // a decode step: one pass
    for (int64_t i = 0; i < K; ++i) {
      const float v = to_float(x[i]);
      if (keeps<T>(rule, v, t, scale, i)) {
        rows[n] = i;
        vals[n++] = v;
      }
    }
    out.rows.resize(n);
    out.values.resize(n);
    return out;
  }
  std::vector<float>& kept_v = tls_kept;
  kept_v.assign(B * K, 0.0f);
  float* kept = kept_v.data();
  for (int64_t b = 0; b < B; ++b) {
    const T* xb = x + b * K;
    float* kb = kept + b * K;
    if (ranked) {
      std::vector<float>& score = tls_score;
      score.resize(K);
      for (int64_t i = 0; i < K; ++i) {
        const float a = std::fabs(to_float(xb[i]));
        score[i] = rule == 3 ? a * scale[i] : a;
      }
      topk_keep(score.data(), K, static_cast<int64_t>(param), tls_keep);
      const uint8_t* keep = tls_keep.data();
      for (int64_t i = 0; i < K; ++i)
        if (keep[i]) kb[i] = to_float(xb[i]);
    } else {
      for (int64_t i = 0; i < K; ++i) {
        const float v = to_float(xb[i]);
        if (keeps<T>(rule, v, t, scale, i)) kb[i] = v;
      }
    }
  }
  // the union, in index order; a kept zero (top-K of a row with few nonzeros) reads nothing
  for (int64_t i = 0; i < K; ++i) {
    bool any = false;
    for (int64_t b = 0; b < B; ++b) any |= kept[b * K + i] != 0.0f || std::isnan(kept[b * K + i]);
    if (!any) continue;
    rows[n] = i;
    for (int64_t b = 0; b < B; ++b) vals[n * B + b] = kept[b * K + i];
    ++n;
  }
  out.rows.resize(n);
  out.values.resize(n * B);
  return out;
}

// out[b, n0:n1] += sum over kept rows j in [j0, j1) of values[j, b] * w[rows[j], n0:n1],
// eight rows at a time (eight streams from memory in flight), in row order.
template <typename W>
void accumulate(const W* w, int64_t N, const Kept& kept, int64_t B, int64_t j0, int64_t j1,
                int64_t n0, int64_t n1, float* out) {
  const int64_t* rows = kept.rows.data();
  const float* vals = kept.values.data();
  for (int64_t j = j0; j < j1; j += 8) {
    const int64_t m = std::min<int64_t>(8, j1 - j);
    for (int64_t b = 0; b < B; ++b) {
      float* o = out + b * N;
      const float* v = vals + j * B + b;  // v[i * B]: row j + i's value for batch row b
      bool full = m == 8;
      for (int64_t i = 0; full && i < 8; ++i) full = v[i * B] != 0.0f;
      if (full) {
        const W *w0 = w + rows[j] * N, *w1 = w + rows[j + 1] * N, *w2 = w + rows[j + 2] * N,
                *w3 = w + rows[j + 3] * N, *w4 = w + rows[j + 4] * N, *w5 = w + rows[j + 5] * N,
                *w6 = w + rows[j + 6] * N, *w7 = w + rows[j + 7] * N;
        const float v0 = v[0], v1 = v[B], v2 = v[2 * B], v3 = v[3 * B], v4 = v[4 * B],
                    v5 = v[5 * B], v6 = v[6 * B], v7 = v[7 * B];
#pragma omp simd
        for (int64_t n = n0; n < n1; ++n)
          o[n] += (v0 * to_float(w0[n]) + v1 * to_float(w1[n]) + v2 * to_float(w2[n]) +
                   v3 * to_float(w3[n])) +
                  (v4 * to_float(w4[n]) + v5 * to_float(w5[n]) + v6 * to_float(w6[n]) +
                   v7 * to_float(w7[n]));
        continue;
      }
      // a zero is skipped, never multiplied: a skipped row holding inf or NaN stays out
      for (int64_t i = 0; i < m; ++i) {
        const float vi = v[i * B];
        if (vi == 0.0f) continue;
        const W* wi = w + rows[j + i] * N;
#pragma omp simd
        for (int64_t n = n0; n < n1; ++n) o[n] += vi * to_float(wi[n]);
      }
    }
  }
}

// out (B, N) = sum over j of values[j, b] * w[rows[j], :], float32 accumulation.
// Wide outputs: one contiguous span of columns per thread, so each thread streams long runs
// of every kept row, in blocks of columns whose sums stay in L1. Narrow outputs (small
// models, 576 columns): a thread's span would be a few hundred bytes a row, too short for
// the hardware prefetcher, so the kept rows are split between the threads instead, each
// reading whole rows into its own partial sums, added in thread order at the end.
template <typename W>
void rows_times_values(const W* w, int64_t N, const Kept& kept, int64_t B, float* out) {
  const int64_t n_rows = static_cast<int64_t>(kept.rows.size());
  std::fill(out, out + B * N, 0.0f);
  const int64_t threads = at::get_num_threads();
  if (N >= kWide || threads == 1 || n_rows < 8 * threads) {
    const int64_t spans = std::max<int64_t>(1, std::min<int64_t>(threads, N / kMinSpan));
    const int64_t span = ((N + spans - 1) / spans + 15) / 16 * 16;
    at::parallel_for(0, spans, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t c_hi = std::min(N, (p + 1) * span);
        for (int64_t n0 = p * span; n0 < c_hi; n0 += kBlock)
          accumulate(w, N, kept, B, 0, n_rows, n0, std::min(c_hi, n0 + kBlock), out);
      }
    });
    return;
  }
  // row groups of a multiple of 8, one per thread
  const int64_t per = ((n_rows + threads - 1) / threads + 7) / 8 * 8;
  std::vector<float> partial((threads - 1) * B * N, 0.0f);
  at::parallel_for(0, threads, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t j0 = std::min(n_rows, p * per), j1 = std::min(n_rows, j0 + per);
      float* o = p == 0 ? out : partial.data() + (p - 1) * B * N;
      accumulate(w, N, kept, B, j0, j1, 0, N, o);
    }
  });
  for (int64_t p = 1; p < threads; ++p) {
    const float* q = partial.data() + (p - 1) * B * N;
#pragma omp simd
    for (int64_t i = 0; i < B * N; ++i) out[i] += q[i];
  }
}

void check_cpu_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "actsparse CPU kernel: `", name, "` must be on the CPU");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16,
              "actsparse CPU kernel: `", name, "` must be float32 or bfloat16, got ",
              t.scalar_type());
}

at::Tensor finish(at::Tensor y, const c10::optional<at::Tensor>& bias, at::ScalarType dtype) {
  if (bias.has_value()) y.add_(bias->to(at::kFloat));
  return y.to(dtype);
}

at::Tensor sparse_linear(const at::Tensor& x_in, const at::Tensor& weight_t,
                         const c10::optional<at::Tensor>& bias, int64_t rule, double param,
                         const c10::optional<at::Tensor>& scale_in) {
  check_cpu_float(x_in, "x");
  check_cpu_float(weight_t, "weight_t");
  TORCH_CHECK(x_in.dim() == 2, "sparse_linear: x must be (B, K), got ", x_in.sizes());
  TORCH_CHECK(weight_t.dim() == 2 && weight_t.is_contiguous(),
              "sparse_linear: weight_t must be a contiguous (K, N) matrix");
  TORCH_CHECK(x_in.scalar_type() == weight_t.scalar_type(),
              "sparse_linear: x and weight_t must share a dtype");
  TORCH_CHECK(x_in.size(1) == weight_t.size(0), "sparse_linear: x has ", x_in.size(1),
              " inputs, weight_t has ", weight_t.size(0), " rows");
  TORCH_CHECK(rule >= 0 && rule <= 4, "sparse_linear: unknown rule code ", rule);
  const bool scored = rule == 3 || rule == 4;
  TORCH_CHECK(!scored || scale_in.has_value(), "sparse_linear: rule ", rule, " needs `scale`");
  at::Tensor scale;
  if (scored) {
    scale = scale_in->to(at::kFloat).contiguous();
    TORCH_CHECK(scale.numel() == x_in.size(1), "sparse_linear: scale has ", scale.numel(),
                " entries for ", x_in.size(1), " inputs");
  }
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), K = x.size(1), N = weight_t.size(1);
  at::Tensor y = at::empty({B, N}, x.options().dtype(at::kFloat));
  const float* s = scored ? scale.data_ptr<float>() : nullptr;
  if (x.scalar_type() == at::kFloat) {
    const Kept& kept = gather(x.data_ptr<float>(), B, K, rule, param, s);
    rows_times_values(weight_t.data_ptr<float>(), N, kept, B, y.data_ptr<float>());
  } else {
    const Kept& kept = gather(x.data_ptr<c10::BFloat16>(), B, K, rule, param, s);
    rows_times_values(weight_t.data_ptr<c10::BFloat16>(), N, kept, B, y.data_ptr<float>());
  }
  return finish(y, bias, x.scalar_type());
}

inline float activate(float z, int64_t act) {
  switch (act) {
    case 0: return z > 0.0f ? z : 0.0f;                                   // relu
    case 1: return z / (1.0f + std::exp(-z));                             // silu
    case 2: return 0.5f * z * (1.0f + std::erf(z * 0.7071067811865476f));  // gelu
    case 3: return z > 0.0f ? z * z : 0.0f;                               // relu2
    default: {                                                            // gelu, tanh form
      float inner = 0.7978845608028654f * (z + 0.044715f * z * z * z);
      return 0.5f * z * (1.0f + std::tanh(inner));
    }
  }
}

template <typename W>
float dot(const float* x, const W* w, int64_t D) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t d = 0; d < D; ++d) acc += x[d] * to_float(w[d]);
  return acc;
}

// The neurons' activations h (n, B), each neuron one parallel task: its gate (and up) row
// dotted with every batch row, the activation applied at once.
template <typename W>
Kept neuron_activations(const at::Tensor& x, const W* w_in, const W* w_up, const W* b_in,
                        const int64_t* idx, int64_t n, int64_t act) {
  const int64_t B = x.size(0), D = x.size(1);
  at::Tensor xf = x.to(at::kFloat).contiguous();
  const float* xp = xf.data_ptr<float>();
  Kept kept;
  kept.rows.assign(idx, idx + n);
  kept.values.assign(n * B, 0.0f);
  float* h = kept.values.data();
  at::parallel_for(0, n, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t r = idx[i];
      for (int64_t b = 0; b < B; ++b) {
        float z = dot(xp + b * D, w_in + r * D, D);
        if (b_in) z += to_float(b_in[r]);
        float a = activate(z, act);
        if (w_up) a *= dot(xp + b * D, w_up + r * D, D);
        h[i * B + b] = a;
      }
    }
  });
  return kept;
}

at::Tensor neuron_ffn(const at::Tensor& x_in, const at::Tensor& w_in,
                      const c10::optional<at::Tensor>& w_up, const at::Tensor& w_out_t,
                      const at::Tensor& idx_in, int64_t act, const c10::optional<at::Tensor>& b_in,
                      const c10::optional<at::Tensor>& b_out) {
  check_cpu_float(x_in, "x");
  for (const at::Tensor* t : {&w_in, &w_out_t}) check_cpu_float(*t, "weights");
  TORCH_CHECK(w_in.is_contiguous() && w_out_t.is_contiguous() &&
                  (!w_up.has_value() || w_up->is_contiguous()),
              "neuron_ffn: weights must be contiguous");
  TORCH_CHECK(x_in.dim() == 2 && x_in.size(1) == w_in.size(1), "neuron_ffn: x must be (B, ",
              w_in.size(1), "), got ", x_in.sizes());
  TORCH_CHECK(act >= 0 && act <= 4, "neuron_ffn: unknown activation code ", act);
  TORCH_CHECK(w_out_t.size(0) == w_in.size(0), "neuron_ffn: w_out_t has ", w_out_t.size(0),
              " rows, w_in ", w_in.size(0));
  TORCH_CHECK(!w_up.has_value() || w_up->sizes() == w_in.sizes(),
              "neuron_ffn: w_up must have w_in's shape ", w_in.sizes());
  const at::Tensor idx = idx_in.to(at::kLong).contiguous();
  const int64_t B = x_in.size(0), n = idx.numel(), N = w_out_t.size(1);
  const int64_t* ip = idx.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK(ip[i] >= 0 && ip[i] < w_in.size(0), "neuron_ffn: idx ", ip[i],
                " out of range for ", w_in.size(0), " neurons");
  at::Tensor y = at::empty({B, N}, x_in.options().dtype(at::kFloat));
  auto run = [&](auto tag) {
    using W = decltype(tag);
    const W* up = w_up.has_value() ? w_up->data_ptr<W>() : nullptr;
    at::Tensor bi = b_in.has_value() ? b_in->contiguous() : at::Tensor();
    const W* bip = b_in.has_value() ? bi.data_ptr<W>() : nullptr;
    Kept h = neuron_activations(x_in, w_in.data_ptr<W>(), up, bip, idx.data_ptr<int64_t>(), n,
                                act);
    rows_times_values(w_out_t.data_ptr<W>(), N, h, B, y.data_ptr<float>());
  };
  if (x_in.scalar_type() == at::kFloat) {
    run(float{});
  } else {
    run(c10::BFloat16{});
  }
  return finish(y, b_out, x_in.scalar_type());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(actsparse, m) {
  m.def(
      "sparse_linear(Tensor x, Tensor weight_t, Tensor? bias, int rule, float param, "
      "Tensor? scale) -> Tensor");
  m.def(
      "neuron_ffn(Tensor x, Tensor w_in, Tensor? w_up, Tensor w_out_t, Tensor idx, int act, "
      "Tensor? b_in, Tensor? b_out) -> Tensor");
}

TORCH_LIBRARY_IMPL(actsparse, CPU, m) {
  m.impl("sparse_linear", &sparse_linear);
  m.impl("neuron_ffn", &neuron_ffn);
}
