// Device math shared by the stages (mirrors cuda/svraster_cuda/reference/math.py).
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

#include "constants.h"
#include "rasterizer.h"

namespace svr {

// repeat(q): the 3-bit octant code copied into all 16 level slots of an octpath.
constexpr uint64_t OCTANT_REPEAT = 0x249249249249ull;
constexpr int RANK_BITS = 3 * MAX_NUM_LEVELS;

__device__ __forceinline__ uint64_t order_rank(uint64_t octpath, int quadrant) {
    return octpath ^ (uint64_t(quadrant) * OCTANT_REPEAT);
}

// Voxel v's term of PATHS_FINGERPRINT (a sum over the voxels, modulo 2^64): the path offset by
// its index times an odd constant, then a multiply between two xorshifts (a bijection of 64-bit
// words), so that any changed path, a swap of two paths or a different voxel count changes the
// sum unless the changed terms happen to cancel. Shifts by 32 are one 32-bit xor each; the
// two rounds of splitmix64's finaliser before took a third of preprocess's stall samples
// (Nsight Compute, R6M).
__device__ __forceinline__ uint64_t path_fingerprint(uint64_t octpath, int v) {
    uint64_t x = octpath + uint64_t(uint32_t(v)) * 0x9e3779b97f4a7c15ull;
    x ^= x >> 32;
    x *= 0xd6e8feb86659fd93ull;
    return x ^ (x >> 32);
}

constexpr unsigned FULL_MASK = 0xffffffffu;

// 1/x from the special-function unit alone, within about an ulp (IEEE's rounding takes a
// multiply-add refinement and a range check besides: seven more instructions). For the screen
// footprints, whose rectangles carry a hundredth of a pixel of margin: preprocess is bound by
// instruction issue (Nsight Compute, R6M: 72% SM throughput, 35% DRAM), and its ten
// reciprocals a voxel were a seventh of its instructions. x is a depth of at least
// FOOTPRINT_NEAR_MIN (never subnormal).
__device__ __forceinline__ float footprint_rcp(float x) {
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

// Sum of `value` over the lanes up to this one (a full warp).
__device__ __forceinline__ int warp_inclusive_sum(int value) {
    const int lane = int(threadIdx.x & 31);
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
        const int n = __shfl_up_sync(FULL_MASK, value, d);
        if (lane >= d) value += n;
    }
    return value;
}

// Items numbered lane by lane (`inclusive`: warp_inclusive_sum of each lane's count): the lane
// holding item j (below the warp's total), the first whose inclusive sum passes j.
__device__ __forceinline__ int lane_holding(int inclusive, int j) {
    int k = 0;
#pragma unroll
    for (int step = 16; step > 0; step >>= 1)
        if (__shfl_sync(FULL_MASK, inclusive, k + step - 1) <= j) k += step;
    return k;
}

// Position of the r-th (from 0) set bit of m.
__device__ __forceinline__ int nth_set_bit(uint32_t m, int r) {
    int pos = 0;
#pragma unroll
    for (int width = 16; width > 0; width >>= 1) {
        const int below = __popc(m & ((1u << width) - 1u));
        if (r >= below) {
            r -= below;
            m >>= width;
            pos += width;
        }
    }
    return pos;
}

// A pixel rectangle as stored (int16) and as used (int).
__device__ __forceinline__ int4 widen(short4 r) { return make_int4(r.x, r.y, r.z, r.w); }

// The tiles (inclusive) an inclusive pixel rectangle touches.
__device__ __forceinline__ int4 tile_rect(int4 p) {
    return make_int4(p.x / TILE_SIZE, p.y / TILE_SIZE, p.z / TILE_SIZE, p.w / TILE_SIZE);
}

// An entry's pixel rectangle within its tile (tile-local pixels, inclusive), four bits a
// side: written once per entry after the sort, so that the render walk tests its candidates
// with one coalesced load instead of a load of the voxel's rectangle behind the entry's.
static_assert(TILE_SIZE <= 16, "a tile-local pixel coordinate takes four bits");
__device__ __forceinline__ uint16_t pack_entry_rect(int4 p, int tile_x0, int tile_y0) {
    const int x0 = max(p.x - tile_x0, 0), y0 = max(p.y - tile_y0, 0);
    const int x1 = min(p.z - tile_x0, TILE_SIZE - 1), y1 = min(p.w - tile_y0, TILE_SIZE - 1);
    return uint16_t(x0 | y0 << 4 | x1 << 8 | y1 << 12);
}
__device__ __forceinline__ int4 unpack_entry_rect(uint16_t r) {
    return make_int4(r & 15, r >> 4 & 15, r >> 8 & 15, r >> 12);
}

// Tiles in an inclusive tile rectangle.
__device__ __forceinline__ int tile_area(int4 r) { return (r.z - r.x + 1) * (r.w - r.y + 1); }

// The pixels of the tile-local rectangle [x0, x1] x [y0, y1] (inclusive, non-empty) as a tile
// mask (rasterizer.h's RequestedPixels: bit TILE_SIZE * y + x for pixel (x, y)): its columns'
// byte repeated over its rows' bytes.
__device__ __forceinline__ uint64_t tile_rect_mask(int x0, int y0, int x1, int y1) {
    const uint64_t columns = ((2u << (x1 - x0)) - 1u) << x0;
    const uint64_t rows = (~0ull >> (TILE_SIZE * (TILE_SIZE - 1 - y1))) & (~0ull << (TILE_SIZE * y0));
    return rows & (columns * 0x0101010101010101ull);
}

// Sparse rendering bins a voxel into tile (tx, ty) only when its pixel rectangle holds a
// requested pixel of the tile: one 8-byte load and a mask (a row mask a pixel row and a
// summary of the requested rows and columns took up to five loads, two of them dependent).
// Rectangles spanning more than MAX_EXACT_TILES tiles (`exact` false) go to every tile holding
// a request: cheaper, and still conservative.
__device__ __forceinline__ bool bins_into(const RequestedPixels& req, int4 rect, int tx, int ty, int tiles_x,
                                          bool exact) {
    const uint64_t requested = __ldg(req.tile_masks + ty * tiles_x + tx);
    if (!requested) return false;
    if (!exact) return true;
    const int x0 = max(rect.x - tx * TILE_SIZE, 0), x1 = min(rect.z - tx * TILE_SIZE, TILE_SIZE - 1);
    const int y0 = max(rect.y - ty * TILE_SIZE, 0), y1 = min(rect.w - ty * TILE_SIZE, TILE_SIZE - 1);
    return (requested & tile_rect_mask(x0, y0, x1, y1)) != 0;
}

struct Ray {
    float3 origin, dir;  // dir has unit length
    float3 inv_dir;      // 1 / dir, with +-1e30 for a zero component (see ray_segment)
    float cam_norm;      // |d_cam|: ray distance / cam_norm = camera depth
    float t_near;        // distance of the near plane z_cam = near along this ray
    int quadrant;        // 4*[dir.x<0] + 2*[dir.y<0] + [dir.z<0]
};

// The direction is computed in double and rounded once: a small component is a difference of
// larger products, and in float its relative error grew to ~1e-6, which moved the entry
// distance of a far voxel by ~1e-5 and its opacity by ~1e-4 (the reference, in float, and the
// kernels, with their own rounding, disagreed by that much). Rounded once, both hold the same
// direction (reference/math.py pixel_rays computes it the same way).
__device__ __forceinline__ Ray pixel_ray(const Camera& cam, int px, int py) {
    const double dx = (px + 0.5 - double(cam.cx)) * (2.0 * double(cam.tanfovx) / cam.width);
    const double dy = (py + 0.5 - double(cam.cy)) * (2.0 * double(cam.tanfovy) / cam.height);
    const double norm = sqrt(dx * dx + dy * dy + 1.0);
    Ray r;
    const float* m = cam.c2w;
    r.dir = make_float3(float((m[0] * dx + m[1] * dy + m[2]) / norm), float((m[4] * dx + m[5] * dy + m[6]) / norm),
                        float((m[8] * dx + m[9] * dy + m[10]) / norm));
    r.origin = make_float3(m[3], m[7], m[11]);
    r.cam_norm = float(norm);
    r.t_near = cam.near * r.cam_norm;
    r.quadrant = (r.dir.x < 0.f) * 4 + (r.dir.y < 0.f) * 2 + (r.dir.z < 0.f);
    r.inv_dir = make_float3(r.dir.x != 0.f ? 1.f / r.dir.x : 1e30f, r.dir.y != 0.f ? 1.f / r.dir.y : 1e30f,
                            r.dir.z != 0.f ? 1.f / r.dir.z : 1e30f);
    return r;
}

// The ray's segment [a, b] inside the box and in front of the near plane; false if empty.
// The box is given relative to the ray's origin (the camera: the same for every pixel, so a
// voxel's relative corners are computed once per warp, not once per pixel).
// A zero direction component has the reciprocal 1e30: the slab bounds become +-huge, so the
// ray is inside that slab for every t (origin between the planes) or for none, and no
// 0 * inf NaN can form. The reference writes the same rule with explicit branches.
__device__ __forceinline__ bool ray_segment(const Ray& r, float3 rel_min, float3 rel_max, float& a, float& b) {
    const float x0 = rel_min.x * r.inv_dir.x, x1 = rel_max.x * r.inv_dir.x;
    const float y0 = rel_min.y * r.inv_dir.y, y1 = rel_max.y * r.inv_dir.y;
    const float z0 = rel_min.z * r.inv_dir.z, z1 = rel_max.z * r.inv_dir.z;
    a = fmaxf(fmaxf(fmaxf(fminf(x0, x1), fminf(y0, y1)), fminf(z0, z1)), r.t_near);
    b = fminf(fminf(fmaxf(x0, x1), fmaxf(y0, y1)), fmaxf(z0, z1));
    return a <= b;
}

// A box's corners relative to `origin`, rounded as (corner - origin) with corner = min + length.
__device__ __forceinline__ void relative_box(float3 box_min, float length, float3 origin, float3& rel_min,
                                             float3& rel_max) {
    rel_min = make_float3(box_min.x - origin.x, box_min.y - origin.y, box_min.z - origin.z);
    rel_max = make_float3(box_min.x + length - origin.x, box_min.y + length - origin.y, box_min.z + length - origin.z);
}

// Trilinear weights of corners c = 4x + 2y + z at local coordinates u in [0,1]^3.
__device__ __forceinline__ void trilinear_weights(float3 u, float w[8]) {
#pragma unroll
    for (int c = 0; c < 8; ++c)
        w[c] = ((c & 4) ? u.x : 1.f - u.x) * ((c & 2) ? u.y : 1.f - u.y) * ((c & 1) ? u.z : 1.f - u.z);
}

__device__ __forceinline__ float3 local_coords(const Ray& r, float t, float3 box_min, float inv_length) {
    return make_float3((r.origin.x + t * r.dir.x - box_min.x) * inv_length,
                       (r.origin.y + t * r.dir.y - box_min.y) * inv_length,
                       (r.origin.z + t * r.dir.z - box_min.z) * inv_length);
}

__device__ __forceinline__ float trilinear(const float geo[8], float3 u) {
    float w[8];
    trilinear_weights(u, w);
    float d = 0.f;
#pragma unroll
    for (int c = 0; c < 8; ++c) d += geo[c] * w[c];
    return d;
}

// sigma(d) = d above the knee, knee * exp((d - knee) / knee) below; and its derivative.
__device__ __forceinline__ float density_activation(float d) {
    return d > ACTIVATION_KNEE ? d : ACTIVATION_KNEE * expf((d - ACTIVATION_KNEE) * (1.f / ACTIVATION_KNEE));
}
__device__ __forceinline__ float density_activation_grad(float d) {
    return d > ACTIVATION_KNEE ? 1.f : expf((d - ACTIVATION_KNEE) * (1.f / ACTIVATION_KNEE));
}

// min(MAX_ALPHA, x) that lets NaN through: a NaN density must not become an opaque voxel.
__device__ __forceinline__ float clamp_alpha(float x) { return x > MAX_ALPHA ? MAX_ALPHA : x; }

__device__ __forceinline__ float contract(float x) { return x < 1.f ? x : 2.f - 1.f / x; }

// Density gradient over the corners (direction of increasing density).
__device__ __forceinline__ float3 corner_gradient(const float g[8]) {
    return make_float3(g[4] + g[5] + g[6] + g[7] - g[0] - g[1] - g[2] - g[3],
                       g[2] + g[3] + g[6] + g[7] - g[0] - g[1] - g[4] - g[5],
                       g[1] + g[3] + g[5] + g[7] - g[0] - g[2] - g[4] - g[6]);
}

// Per-voxel quadrature along one ray segment: everything forward and backward recompute.
template <int N>
struct Quadrature {
    float delta;        // (b - a) / N
    float t[N];         // sample distances
    float3 u[N];        // local coordinates of the samples
    float d[N];         // raw densities
    float integral_k[N];
    float integral;     // sum of integral_k
    float alpha;        // min(MAX_ALPHA, 1 - exp(-integral))

    __device__ __forceinline__ void evaluate(const Ray& r, float a, float b, float3 box_min, float inv_length,
                                             const float geo[8]) {
        delta = (b - a) * (1.f / N);
        integral = 0.f;
#pragma unroll
        for (int k = 0; k < N; ++k) {
            t[k] = a + (k + 0.5f) * delta;
            u[k] = local_coords(r, t[k], box_min, inv_length);
            d[k] = trilinear(geo, u[k]);
            integral_k[k] = STEP_SZ_SCALE * delta * density_activation(d[k]);
            integral += integral_k[k];
        }
        alpha = clamp_alpha(1.f - expf(-integral));
    }

    // N = 1: the same state from the raw density and integral `evaluate` computed (the
    // backward keeps them from its first pass instead of interpolating again).
    __device__ __forceinline__ void resume(const Ray& r, float a, float b, float3 box_min, float inv_length,
                                           float density, float kept_integral) {
        static_assert(N == 1, "resume keeps one quadrature point");
        delta = (b - a) * (1.f / N);
        t[0] = a + 0.5f * delta;
        u[0] = local_coords(r, t[0], box_min, inv_length);
        d[0] = density;
        integral_k[0] = integral = kept_integral;
        alpha = clamp_alpha(1.f - expf(-integral));
    }

    // The voxel's own depth value: n=1 alpha (a+b)/2; n>1 the front-to-back composite of t_k.
    __device__ __forceinline__ float depth_value(float a, float b) const {
        if (N == 1) return alpha * 0.5f * (a + b);
        float trans = 1.f, value = 0.f;
#pragma unroll
        for (int k = 0; k < N; ++k) {
            const float ak = clamp_alpha(1.f - expf(-integral_k[k]));
            value += trans * ak * t[k];
            trans *= 1.f - ak;
        }
        return value;
    }
};

}  // namespace svr
