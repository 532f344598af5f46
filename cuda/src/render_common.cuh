// What the forward and backward render kernels share: the per-tile batch of voxel records
// in shared memory and the compile-time dispatch over their variants.
#pragma once
#include <utility>

#include "math.cuh"

namespace svr {

constexpr int BLOCK_PIXELS = TILE_SIZE * TILE_SIZE;

// One voxel of a tile's list, staged in shared memory by the block.
struct VoxelRecord {
    float3 box_min;
    float length;
    float geo[8];
    float rgb[3];
    uint32_t entry;  // octant << 29 | voxel id
    uint32_t rect_lo, rect_hi;  // pixel rectangle corners packed as x | y << 16

    // The cheap test first: is the pixel inside the voxel's conservative rectangle, and does
    // its ray octant match the entry's?
    __device__ __forceinline__ bool may_cover(int px, int py, int quadrant) const {
        return int(entry >> VOXEL_ID_BITS) == quadrant && px >= int(rect_lo & 0xffffu) && py >= int(rect_lo >> 16) &&
               px <= int(rect_hi & 0xffffu) && py <= int(rect_hi >> 16);
    }
};

// The pixels of one warp: a 16 x 2 strip of the tile, and the ray octants among them.
struct WarpFootprint {
    int x0, y0, x1, y1;
    uint32_t octants;  // bit q set when a lane's ray has octant q

    __device__ __forceinline__ WarpFootprint(int tile_x, int tile_y, int quadrant) {
        const int warp = threadIdx.x / 32;
        constexpr int ROWS = 32 / TILE_SIZE;
        x0 = tile_x * TILE_SIZE;
        x1 = x0 + TILE_SIZE - 1;
        y0 = tile_y * TILE_SIZE + warp * ROWS;
        y1 = y0 + ROWS - 1;
        octants = __reduce_or_sync(0xffffffffu, 1u << quadrant);
    }

    // Can any lane of the warp be covered by this record?
    __device__ __forceinline__ bool may_touch(const VoxelRecord& rec) const {
        return (octants >> (rec.entry >> VOXEL_ID_BITS) & 1u) && x1 >= int(rec.rect_lo & 0xffffu) &&
               y1 >= int(rec.rect_lo >> 16) && x0 <= int(rec.rect_hi & 0xffffu) && y0 <= int(rec.rect_hi >> 16);
    }
};

__device__ __forceinline__ void load_record(const RenderBuffers& in, uint32_t entry, VoxelRecord& rec) {
    const uint32_t v = entry & VOXEL_ID_MASK;
    rec.entry = entry;
    rec.length = in.lengths[v];
    const float h = 0.5f * rec.length;
    rec.box_min = make_float3(in.centers[3 * v] - h, in.centers[3 * v + 1] - h, in.centers[3 * v + 2] - h);
    const float4* g = reinterpret_cast<const float4*>(in.geos + 8 * size_t(v));
    const float4 g0 = g[0], g1 = g[1];
    rec.geo[0] = g0.x; rec.geo[1] = g0.y; rec.geo[2] = g0.z; rec.geo[3] = g0.w;
    rec.geo[4] = g1.x; rec.geo[5] = g1.y; rec.geo[6] = g1.z; rec.geo[7] = g1.w;
    rec.rgb[0] = in.rgbs[3 * v]; rec.rgb[1] = in.rgbs[3 * v + 1]; rec.rgb[2] = in.rgbs[3 * v + 2];
    const int4 r = in.pixel_rect[v];
    rec.rect_lo = uint32_t(r.x) | uint32_t(r.y) << 16;
    rec.rect_hi = uint32_t(r.z) | uint32_t(r.w) << 16;
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
