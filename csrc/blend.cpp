// Schedule-aware blend-index builder (pybind11 module `synpro_megatron._blend`).
//
// Megatron's `build_blending_indices` walks the output positions s = 0..N-1 and gives each one to
// the source with the largest deficit `w_k * max(s,1) - count_k` (ties -> lowest k). We apply the
// same rule to a schedule's cumulative target T_k(s). The schedule arrives as a table of segments
// (computed once in Python, shared with the numpy fallback so both see the same doubles); inside
// segment q, with j = max(s,1) - start_q as a double:
//
//   constant: error_k = weight_k * j           + resid_k
//   linear:   error_k = j * (weight_k + slope_k * j) + resid_k
//
// where resid_k = base_k - count_k (base_k = T_k(start_q)), recomputed whenever count_k changes,
// and resid_k = -inf for a source with weight 0 throughout the segment (never drawn there). For
// the first segment base = 0, so `weight*j + (0 - count)` equals Megatron's `weight*j - count`
// bit for bit. The fallback in synpro_megatron/blending/indices.py evaluates the same
// expressions in the same order; keep the two in step.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

// Fused multiply-add would change the rounding and break byte-equality with the numpy fallback
// (and with Megatron's helper on x86-64, built without FMA). Forbid contraction explicitly.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace py = pybind11;

namespace {

constexpr double kNeverDrawn = -std::numeric_limits<double>::infinity();

// Per-source state, in flat arrays so the hot loop touches only a few cache lines.
struct SourceState {
  std::vector<int64_t> count;     // samples drawn so far (drives the deficit)
  std::vector<int64_t> position;  // next sample index to emit (count modulo wrap size)
  std::vector<int64_t> wrap;      // wrap size; INT64_MAX = never wraps
};

// One segment [lo, hi), any number of sources K (used for K > 12, so K >= 2 here; measured faster
// than the fixed-K select loop from K = 13 on).
template <bool Linear>
static void run_segment_dynamic(int64_t lo, int64_t hi, int64_t seg_start, int64_t K,
                                const double *weight, const double *slope, const double *base,
                                const uint8_t *candidate, int16_t *out_source,
                                int64_t *out_sample, SourceState &st) {
  std::vector<double> resid(K), count_d(K);
  for (int64_t k = 0; k < K; ++k) {
    count_d[k] = static_cast<double>(st.count[k]);
    resid[k] = candidate[k] ? base[k] - count_d[k] : kNeverDrawn;
  }
  const double *__restrict w = weight;
  const double *__restrict g = slope;
  double *__restrict r = resid.data();
  int64_t *pos = st.position.data();
  const int64_t *wrap = st.wrap.data();
  for (int64_t s = lo; s < hi; ++s) {
    // max(s,1): position 0 uses the target of one sample, as Megatron does.
    const double j = static_cast<double>((s == 0 ? 1 : s) - seg_start);
    // Two independent scans (even k, odd k) halve the compare chain; merging them by larger
    // error, then lower k, gives the first index of the maximum, as the sequential scan would.
    auto error_of = [&](int64_t k) {
      return Linear ? j * (w[k] + g[k] * j) + r[k] : w[k] * j + r[k];
    };
    int64_t best0 = 0, best1 = 1;
    double error0 = error_of(0), error1 = error_of(1);
    int64_t k = 2;
    for (; k + 1 < K; k += 2) {
      const double e0 = error_of(k), e1 = error_of(k + 1);
      if (e0 > error0) {
        error0 = e0;
        best0 = k;
      }
      if (e1 > error1) {
        error1 = e1;
        best1 = k + 1;
      }
    }
    if (k < K) {
      const double e0 = error_of(k);
      if (e0 > error0) {
        error0 = e0;
        best0 = k;
      }
    }
    const int64_t best = (error1 > error0 || (error1 == error0 && best1 < best0)) ? best1 : best0;
    out_source[s] = static_cast<int16_t>(best);
    const int64_t p = pos[best];
    out_sample[s] = p;
    pos[best] = (p + 1 == wrap[best]) ? 0 : p + 1;
    count_d[best] += 1.0;
    r[best] = base[best] - count_d[best];
  }
  for (int64_t k = 0; k < K; ++k) st.count[k] = static_cast<int64_t>(count_d[k]);
}

// Same loop with K known at compile time: all per-source state lives in local arrays the
// compiler keeps in registers, the argmax is branch-free (selects), and the winner's update is a
// select over k instead of an indexed store (no store-to-load forwarding on the critical path).
template <int K, bool Linear>
static void run_segment_fixed(int64_t lo, int64_t hi, int64_t seg_start, const double *weight,
                              const double *slope, const double *base, const uint8_t *candidate,
                              int16_t *out_source, int64_t *out_sample, SourceState &st) {
  double w[K], g[K], b[K], resid[K], count_d[K];
  int64_t pos[K], wrap[K];
  for (int k = 0; k < K; ++k) {
    w[k] = weight[k];
    g[k] = slope[k];
    b[k] = base[k];
    count_d[k] = static_cast<double>(st.count[k]);  // exact below 2^53
    resid[k] = candidate[k] ? b[k] - count_d[k] : kNeverDrawn;
    pos[k] = st.position[k];
    wrap[k] = st.wrap[k];
  }
  for (int64_t s = lo; s < hi; ++s) {
    const double j = static_cast<double>((s == 0 ? 1 : s) - seg_start);
    int best = 0;
    double best_error = Linear ? j * (w[0] + g[0] * j) + resid[0] : w[0] * j + resid[0];
#pragma GCC unroll 12
    for (int k = 1; k < K; ++k) {
      const double error = Linear ? j * (w[k] + g[k] * j) + resid[k] : w[k] * j + resid[k];
      const bool better = error > best_error;  // strict: ties go to the lowest k
      best_error = better ? error : best_error;
      best = better ? k : best;
    }
    int64_t chosen_pos = 0;
#pragma GCC unroll 12
    for (int k = 0; k < K; ++k) {
      const bool hit = (k == best);
      chosen_pos = hit ? pos[k] : chosen_pos;
      const int64_t next = pos[k] + 1;
      pos[k] = hit ? (next == wrap[k] ? 0 : next) : pos[k];
      count_d[k] = hit ? count_d[k] + 1.0 : count_d[k];
      resid[k] = hit ? b[k] - count_d[k] : resid[k];
    }
    out_source[s] = static_cast<int16_t>(best);
    out_sample[s] = chosen_pos;
  }
  for (int k = 0; k < K; ++k) {
    st.count[k] = static_cast<int64_t>(count_d[k]);
    st.position[k] = pos[k];
  }
}

template <int KC>
static void run_segment_k(bool linear, int64_t lo, int64_t hi, int64_t seg_start, int64_t K,
                          const double *weight, const double *slope, const double *base,
                          const uint8_t *candidate, int16_t *out_source, int64_t *out_sample,
                          SourceState &st) {
  if constexpr (KC == 0) {
    if (linear) {
      run_segment_dynamic<true>(lo, hi, seg_start, K, weight, slope, base, candidate, out_source,
                                out_sample, st);
    } else {
      run_segment_dynamic<false>(lo, hi, seg_start, K, weight, slope, base, candidate,
                                 out_source, out_sample, st);
    }
  } else {
    if (linear) {
      run_segment_fixed<KC, true>(lo, hi, seg_start, weight, slope, base, candidate, out_source,
                                  out_sample, st);
    } else {
      run_segment_fixed<KC, false>(lo, hi, seg_start, weight, slope, base, candidate,
                                   out_source, out_sample, st);
    }
  }
}

using SegmentFn = void (*)(bool, int64_t, int64_t, int64_t, int64_t, const double *,
                           const double *, const double *, const uint8_t *, int16_t *, int64_t *,
                           SourceState &);

// Compile-time K up to 12 (fastest there, measured); the two-lane generic loop beyond.
static SegmentFn pick_segment_fn(int64_t K) {
  switch (K) {
    case 1: return run_segment_k<1>;
    case 2: return run_segment_k<2>;
    case 3: return run_segment_k<3>;
    case 4: return run_segment_k<4>;
    case 5: return run_segment_k<5>;
    case 6: return run_segment_k<6>;
    case 7: return run_segment_k<7>;
    case 8: return run_segment_k<8>;
    case 9: return run_segment_k<9>;
    case 10: return run_segment_k<10>;
    case 11: return run_segment_k<11>;
    case 12: return run_segment_k<12>;
    default: return run_segment_k<0>;
  }
}

static void require(const py::array &a, int ndim, const char *name) {
  if (a.ndim() != ndim) {
    throw std::invalid_argument(std::string(name) + ": expected " + std::to_string(ndim) +
                                "-d array, got " + std::to_string(a.ndim()) + "-d");
  }
}

// Fill dataset_index / dataset_sample_index (preallocated, length N) from a segment table.
//   seg_start [Q] int64, increasing, seg_start[0] == 0
//   seg_linear [Q] uint8, seg_candidate [Q,K] uint8
//   seg_weight, seg_slope, seg_base [Q,K] float64
//   wrap_sizes [K] int64 (<= 0: never wraps)
void build_schedule_indices(py::array_t<int16_t, py::array::c_style> dataset_index,
                            py::array_t<int64_t, py::array::c_style> dataset_sample_index,
                            py::array_t<int64_t, py::array::c_style> seg_start,
                            py::array_t<uint8_t, py::array::c_style> seg_linear,
                            py::array_t<uint8_t, py::array::c_style> seg_candidate,
                            py::array_t<double, py::array::c_style> seg_weight,
                            py::array_t<double, py::array::c_style> seg_slope,
                            py::array_t<double, py::array::c_style> seg_base,
                            py::array_t<int64_t, py::array::c_style> wrap_sizes) {
  require(dataset_index, 1, "dataset_index");
  require(dataset_sample_index, 1, "dataset_sample_index");
  require(seg_start, 1, "seg_start");
  require(seg_linear, 1, "seg_linear");
  require(seg_candidate, 2, "seg_candidate");
  require(seg_weight, 2, "seg_weight");
  require(seg_slope, 2, "seg_slope");
  require(seg_base, 2, "seg_base");
  require(wrap_sizes, 1, "wrap_sizes");

  const int64_t N = dataset_index.shape(0);
  const int64_t Q = seg_start.shape(0);
  const int64_t K = seg_weight.shape(1);
  if (dataset_sample_index.shape(0) != N) {
    throw std::invalid_argument("dataset_sample_index must have the length of dataset_index");
  }
  if (Q < 1 || K < 1 || K >= 32767) {
    throw std::invalid_argument("need at least one segment and 1..32766 sources");
  }
  if (seg_linear.shape(0) != Q || seg_weight.shape(0) != Q || seg_slope.shape(0) != Q ||
      seg_base.shape(0) != Q || seg_candidate.shape(0) != Q || seg_slope.shape(1) != K ||
      seg_base.shape(1) != K || seg_candidate.shape(1) != K || wrap_sizes.shape(0) != K) {
    throw std::invalid_argument("segment table arrays disagree in shape");
  }
  const int64_t *starts = seg_start.data();
  if (starts[0] != 0) throw std::invalid_argument("the first segment must start at 0");
  for (int64_t q = 1; q < Q; ++q) {
    if (starts[q] <= starts[q - 1]) throw std::invalid_argument("segment starts must increase");
  }
  const uint8_t *linear = seg_linear.data();
  const uint8_t *candidate = seg_candidate.data();
  const double *weight = seg_weight.data();
  const double *slope = seg_slope.data();
  const double *base = seg_base.data();

  for (int64_t q = 0; q < Q; ++q) {
    bool any = false;
    for (int64_t k = 0; k < K; ++k) any = any || candidate[q * K + k];
    if (!any && starts[q] < N) throw std::invalid_argument("a segment has no candidate source");
  }

  SourceState st;
  st.count.assign(K, 0);
  st.position.assign(K, 0);
  st.wrap.assign(K, std::numeric_limits<int64_t>::max());
  for (int64_t k = 0; k < K; ++k) {
    const int64_t w = wrap_sizes.data()[k];
    if (w > 0) st.wrap[k] = w;
  }

  int16_t *out_source = dataset_index.mutable_data();
  int64_t *out_sample = dataset_sample_index.mutable_data();
  const SegmentFn fn = pick_segment_fn(K);
  {
    py::gil_scoped_release release;  // pure C++ from here: other Python threads may run
    for (int64_t q = 0; q < Q && starts[q] < N; ++q) {
      const int64_t hi = (q + 1 < Q && starts[q + 1] < N) ? starts[q + 1] : N;
      fn(linear[q] != 0, starts[q], hi, starts[q], K, weight + q * K, slope + q * K,
         base + q * K, candidate + q * K, out_source, out_sample, st);
    }
  }
}

}  // namespace

PYBIND11_MODULE(_blend, m) {
  m.doc() = "Schedule-aware blend-index builder (largest deficit against a cumulative target)";
  m.def("build_schedule_indices", &build_schedule_indices, py::arg("dataset_index").noconvert(),
        py::arg("dataset_sample_index").noconvert(), py::arg("seg_start"), py::arg("seg_linear"),
        py::arg("seg_candidate"), py::arg("seg_weight"), py::arg("seg_slope"),
        py::arg("seg_base"), py::arg("wrap_sizes"),
        "Fill Megatron's dataset_index (int16) and dataset_sample_index (int64) in place from a "
        "segment table (see synpro_megatron.blending.schedule.SegmentTable).");
}
