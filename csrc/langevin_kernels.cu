// Kernels of a Langevin step, compiled at run time by NVRTC (csrc/runtime_kernels.cpp) for
// the GPU at hand. Two are of the gradient of a one-block network and replace ATen passes
// over the [K, rows, W] tensors with fewer bytes moved: `heaviside` writes a mask in one
// vectorized pass (ATen's in-place `gt_` on bf16 is an unvectorized kernel at ~2.5x the
// time), and `masked_action_product` applies the first layer's mask and takes the product
// with the action rows in one read of its two inputs, never writing the masked gradient
// out. The third, `langevin_update`, is the step's update in one pass instead of ATen's
// five (small packs' steps are a chain of short kernels, where each launch counts).
//
// Defined by the compiler options: EBMLAB_BF16 (1: elements are bf16, else fp32), ACTIONS
// (the action dimension) and WIDTH (the hidden width: whole 16-byte vectors, 8 bf16 or 4
// fp32 elements each). No headers: bf16 is handled as its bits.

#if EBMLAB_BF16
typedef unsigned short elem;
__device__ __forceinline__ float to_float(elem x) {
  return __uint_as_float(static_cast<unsigned>(x) << 16);
}
#define ELEM_ONE 0x3F80
#else
typedef float elem;
__device__ __forceinline__ float to_float(elem x) { return x; }
#define ELEM_ONE 1.0f
#endif

// Elements per 16-byte vector.
#define PER_VEC (16 / sizeof(elem))
// Lanes that share one row in `masked_action_product`: 4 lanes read 64 contiguous bytes of
// a row, a warp 8 rows at once.
#define ROW_LANES 4

// x[i] = 1 where x[i] > 0, else 0 (NaN gives 0, as ATen's gt_), for n elements starting
// 16-byte aligned.
extern "C" __global__ void heaviside(elem* x, long long n) {
  const long long vectors = n / PER_VEC;
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  const long long first = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  uint4* v = reinterpret_cast<uint4*>(x);
  for (long long i = first; i < vectors; i += stride) {
    uint4 chunk = v[i];
    elem* e = reinterpret_cast<elem*>(&chunk);
#pragma unroll
    for (int j = 0; j < PER_VEC; j++) {
      e[j] = to_float(e[j]) > 0.0f ? ELEM_ONE : 0;
    }
    v[i] = chunk;
  }
  for (long long i = vectors * PER_VEC + first; i < n; i += stride) {
    x[i] = to_float(x[i]) > 0.0f ? ELEM_ONE : 0;
  }
}

// out[k, r, a] = sum_j p[k, r, j] * (u[k, r, j] > 0) * back[k, j, a] + row[k, a]
// for p, u [K, rows, WIDTH] (rows 16-byte aligned), back [K, WIDTH, ACTIONS] and row
// [K, ACTIONS] (fp32), out [K, rows, ACTIONS] (fp32). Grid: (row blocks of blockDim.x /
// ROW_LANES rows, K); dynamic shared memory: ACTIONS * WIDTH floats (member k's `back`,
// transposed, so that 4 lanes read 4 neighbouring vectors of one action's column). The
// width is a compile-time constant so that a lane's loads of a row are all issued before
// the first is used (one row is only ~9 loads per lane: waiting on each in turn halved the
// speed).
#define VECTORS (WIDTH / PER_VEC)
#define ITERS ((VECTORS + ROW_LANES - 1) / ROW_LANES)
// Loads in flight per lane at a time (registers: 8 per vector pair).
#define BATCH 8
extern "C" __global__ void masked_action_product(const elem* __restrict__ p,
                                                 const elem* __restrict__ u,
                                                 const elem* back, const float* row,
                                                 float* out, int rows) {
  extern __shared__ float4 shared[];
  float* weights = reinterpret_cast<float*>(shared);
  const int k = blockIdx.y;
  const elem* member_back = back + static_cast<long long>(k) * WIDTH * ACTIONS;
  for (int i = threadIdx.x; i < WIDTH * ACTIONS; i += blockDim.x) {
    weights[(i % ACTIONS) * WIDTH + i / ACTIONS] = to_float(member_back[i]);
  }
  __syncthreads();
  const int lane = threadIdx.x % ROW_LANES;
  const int r = blockIdx.x * (blockDim.x / ROW_LANES) + threadIdx.x / ROW_LANES;
  // A lane past the last row reads nothing but takes part in the shuffles below, which
  // need the whole warp.
  const bool active = r < rows;
  const long long base = (static_cast<long long>(k) * rows + r) * WIDTH;
  const uint4* pv = reinterpret_cast<const uint4*>(p + base);
  const uint4* uv = reinterpret_cast<const uint4*>(u + base);
  float acc[ACTIONS];
#pragma unroll
  for (int a = 0; a < ACTIONS; a++) {
    acc[a] = 0.0f;
  }
#pragma unroll
  for (int first = 0; first < ITERS; first += BATCH) {
    uint4 pc[BATCH], uc[BATCH];
#pragma unroll
    for (int i = 0; i < BATCH; i++) {
      const int c = lane + (first + i) * ROW_LANES;
      if (active && first + i < ITERS && c < VECTORS) {
        pc[i] = pv[c];
        uc[i] = uv[c];
      }
    }
#pragma unroll
    for (int i = 0; i < BATCH; i++) {
      const int c = lane + (first + i) * ROW_LANES;
      if (active && first + i < ITERS && c < VECTORS) {
        const elem* pe = reinterpret_cast<const elem*>(&pc[i]);
        const elem* ue = reinterpret_cast<const elem*>(&uc[i]);
        float g[PER_VEC];
#pragma unroll
        for (int e = 0; e < PER_VEC; e++) {
          g[e] = to_float(ue[e]) > 0.0f ? to_float(pe[e]) : 0.0f;
        }
#pragma unroll
        for (int a = 0; a < ACTIONS; a++) {
          const float4* w = reinterpret_cast<const float4*>(weights + a * WIDTH + c * PER_VEC);
#pragma unroll
          for (int q = 0; q < PER_VEC / 4; q++) {
            float4 wq = w[q];
            acc[a] += g[4 * q] * wq.x + g[4 * q + 1] * wq.y + g[4 * q + 2] * wq.z +
                      g[4 * q + 3] * wq.w;
          }
        }
      }
    }
  }
#pragma unroll
  for (int a = 0; a < ACTIONS; a++) {
#pragma unroll
    for (int o = ROW_LANES / 2; o > 0; o /= 2) {
      acc[a] += __shfl_xor_sync(0xffffffffu, acc[a], o);
    }
  }
  if (active && lane == 0) {
    float* o = out + (static_cast<long long>(k) * rows + r) * ACTIONS;
#pragma unroll
    for (int a = 0; a < ACTIONS; a++) {
      o[a] = acc[a] + row[k * ACTIONS + a];
    }
  }
}

// Clamps like ATen's clamp: NaN stays NaN (fminf/fmaxf would drop it).
__device__ __forceinline__ float clamp_to(float x, float low, float high) {
  return x < low ? low : (x > high ? high : x);
}

// One Langevin step of K members' chains (IBC's ULA, src/policy/ebm/langevin.rs):
//   out[k, j] = clamp(a[k, j] - clamp(cn[k] noise[k, j] + cg[k] g[k, j], -clip[k, d],
//                     clip[k, d]), low[k, d], high[k, d]),   d = j % actions,
// for a, g, out [K, per_member] (fp32, contiguous), noise member k's at
// noise + k * noise_stride (its own elements contiguous), and cg, cn [K], clip, low, high
// [K, actions] (fp32). The arithmetic is ATen's: noise times cn rounded, then one fused
// multiply-add of g and cg (as `addcmul`).
extern "C" __global__ void langevin_update(const float* __restrict__ a,
                                           const float* __restrict__ g,
                                           const float* __restrict__ noise,
                                           long long noise_stride, const float* cg,
                                           const float* cn, const float* clip,
                                           const float* low, const float* high,
                                           float* __restrict__ out, long long per_member,
                                           int actions, long long total) {
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const long long k = i / per_member;
    const long long j = i - k * per_member;
    const long long d = k * actions + j % actions;
    const float scaled_noise = noise[k * noise_stride + j] * cn[k];
    const float delta = clamp_to(fmaf(g[i], cg[k], scaled_noise), -clip[d], clip[d]);
    out[i] = clamp_to(a[i] - delta, low[d], high[d]);
  }
}
