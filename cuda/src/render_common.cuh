// What the forward and backward render kernels share: the voxel record a warp reads for an
// entry of its tile's list, the warp's pixel footprint used to skip entries 32 at a time, and
// the compile-time dispatch over kernel variants.
//
// Each warp walks its tile's list on its own (no block barriers): lane l loads entry
// `group + l` and its pixel rectangle (coalesced, and shared through L1 by the tile's warps),
// a ballot keeps the entries that may touch the warp's 16x2 pixel strip, and the warp visits
// those in order, reading each voxel's record with warp-uniform loads.
#pragma once
#include <utility>

#include "math.cuh"

namespace svr {

constexpr int BLOCK_PIXELS = TILE_SIZE * TILE_SIZE;
// One block per tile: its warps are independent, but on one multiprocessor they share the
// tile's candidate and record loads through L1 (measured: four 64-thread blocks per tile were
// 2-11% slower on the benchmark scenes).
constexpr int BLOCK_THREADS = 256;
constexpr int BLOCKS_PER_TILE = BLOCK_PIXELS / BLOCK_THREADS;
constexpr unsigned FULL_MASK = 0xffffffffu;

// This thread's pixel: grid (tiles_x, tiles_y, BLOCKS_PER_TILE), BLOCK_THREADS per block.
__device__ __forceinline__ int2 thread_pixel() {
    const int row = blockIdx.z * (BLOCK_THREADS / TILE_SIZE) + threadIdx.x / TILE_SIZE;
    return make_int2(blockIdx.x * TILE_SIZE + threadIdx.x % TILE_SIZE, blockIdx.y * TILE_SIZE + row);
}

inline dim3 render_grid(const Camera& cam) { return dim3(cam.tiles_x(), cam.tiles_y(), BLOCKS_PER_TILE); }

// One candidate of a tile's list, as a lane holds it while the warp decides.
struct Candidate {
    uint32_t entry;  // octant << 29 | voxel id
    int4 rect;       // the voxel's conservative pixel rectangle (x0, y0, x1, y1)

    __device__ __forceinline__ int octant() const { return int(entry >> VOXEL_ID_BITS); }
    __device__ __forceinline__ uint32_t voxel() const { return entry & VOXEL_ID_MASK; }

    // Lane `k`'s candidate, broadcast to the warp.
    __device__ __forceinline__ Candidate from_lane(int k) const {
        return {__shfl_sync(FULL_MASK, entry, k),
                make_int4(__shfl_sync(FULL_MASK, rect.x, k), __shfl_sync(FULL_MASK, rect.y, k),
                          __shfl_sync(FULL_MASK, rect.z, k), __shfl_sync(FULL_MASK, rect.w, k))};
    }

    // The cheap per-pixel test before the ray-box test: same octant, inside the rectangle.
    __device__ __forceinline__ bool may_cover(int px, int py, int quadrant) const {
        return octant() == quadrant && px >= rect.x && py >= rect.y && px <= rect.z && py <= rect.w;
    }
};

__device__ __forceinline__ Candidate load_candidate(const RenderBuffers& in, int index) {
    const uint32_t entry = in.entries[index];
    return {entry, in.pixel_rect[entry & VOXEL_ID_MASK]};
}

// The pixels of one warp: a 16 x 2 strip of the tile, and the ray octants among them.
struct WarpFootprint {
    int x0, y0, x1, y1;
    uint32_t octants;  // bit q set when a lane's ray has octant q

    __device__ __forceinline__ WarpFootprint(int2 pixel, int quadrant) {
        constexpr int ROWS = 32 / TILE_SIZE;
        x0 = pixel.x - pixel.x % TILE_SIZE;
        x1 = x0 + TILE_SIZE - 1;
        y0 = __reduce_min_sync(FULL_MASK, pixel.y);
        y1 = y0 + ROWS - 1;
        octants = __reduce_or_sync(FULL_MASK, 1u << quadrant);
    }

    __device__ __forceinline__ bool may_touch(const Candidate& c) const {
        return (octants >> c.octant() & 1u) && x1 >= c.rect.x && y1 >= c.rect.y && x0 <= c.rect.z && y0 <= c.rect.w;
    }
};

// A voxel's geometry and appearance, read when some lane's ray may pass through it.
struct VoxelRecord {
    float3 box_min;
    float length;
    float geo[8];
    float rgb[3];
};

__device__ __forceinline__ void load_record(const RenderBuffers& in, uint32_t v, VoxelRecord& rec) {
    rec.length = in.lengths[v];
    const float h = 0.5f * rec.length;
    rec.box_min = make_float3(in.centers[3 * v] - h, in.centers[3 * v + 1] - h, in.centers[3 * v + 2] - h);
    const float4* g = reinterpret_cast<const float4*>(in.geos + 8 * size_t(v));
    const float4 g0 = g[0], g1 = g[1];
    rec.geo[0] = g0.x; rec.geo[1] = g0.y; rec.geo[2] = g0.z; rec.geo[3] = g0.w;
    rec.geo[4] = g1.x; rec.geo[5] = g1.y; rec.geo[6] = g1.z; rec.geo[7] = g1.w;
    rec.rgb[0] = in.rgbs[3 * v]; rec.rgb[1] = in.rgbs[3 * v + 1]; rec.rgb[2] = in.rgbs[3 * v + 2];
}

// Calls f(std::integral_constant<int, N>{}, bool_constant<A>{}, bool_constant<B>{}) for the
// runtime values (n in 1..MAX_N_SAMP): one instantiation per variant, no copied kernels.
template <typename F>
void dispatch_variant(int n, bool a, bool b, F&& f) {
    auto with_b = [&](auto n_c, auto a_c) {
        if (b) f(n_c, a_c, std::true_type{}); else f(n_c, a_c, std::false_type{});
    };
    auto with_a = [&](auto n_c) {
        if (a) with_b(n_c, std::true_type{}); else with_b(n_c, std::false_type{});
    };
    switch (n) {
        case 1: with_a(std::integral_constant<int, 1>{}); break;
        case 2: with_a(std::integral_constant<int, 2>{}); break;
        default: with_a(std::integral_constant<int, 3>{}); break;
    }
}

}  // namespace svr
