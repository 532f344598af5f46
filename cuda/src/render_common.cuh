// What the render kernels (forward, backward, top-K) share: which pixel a thread renders, the
// voxel record a warp reads for an entry of its tile's list, the filter that lets a warp skip
// entries 32 at a time, the front-to-back walk, and the compile-time dispatch over kernel
// variants.
//
// Each warp walks its tile's list on its own (no block barriers): lane l loads entry
// `group + l` and its pixel rectangle (coalesced, and shared through L1 by the tile's warps),
// a ballot keeps the entries that may cover one of the warp's live pixels, their lanes stage
// the voxel records in shared memory, and the warp visits them in order.
#pragma once
#include <climits>
#include <utility>

#include "math.cuh"

namespace svr {

// One block per tile, one thread per pixel: the warps are independent, but on one
// multiprocessor they share the tile's candidate and record loads through L1 (measured: four
// 64-thread blocks per tile were 2-11% slower on the benchmark scenes).
constexpr int BLOCK_THREADS = TILE_SIZE * TILE_SIZE;
constexpr int WARPS_PER_BLOCK = BLOCK_THREADS / 32;
constexpr unsigned FULL_MASK = 0xffffffffu;

// A thread's pixel, the tile whose list its warp walks, and where its outputs go.
struct PixelTask {
    int tile;
    int px, py;
    bool active;  // a pixel of the image (whole image) or a request (sparse)
    int index;    // into per-pixel arrays: py * W + px, or the request's row
    int stride;   // between channels of per-pixel arrays: W * H, or P
};

// In a whole-image block, each warp renders a WARP_W x WARP_H block of the tile: squarer than
// two 16-pixel rows, so fewer voxel rectangles touch a warp's pixels (and a warp walks only the
// candidates that do).
constexpr int WARP_W = 8, WARP_H = 32 / WARP_W;
static_assert(TILE_SIZE % WARP_W == 0 && TILE_SIZE % WARP_H == 0, "warp blocks tile the tile");

// Whole image: block b renders tile tile_order[b] (longest list first). Requested pixels: one
// warp per PixelSet warp, WARPS_PER_BLOCK of them per block. Returns false (for the whole
// warp) when the warp has nothing to do.
__device__ __forceinline__ bool locate_pixel(const Camera& cam, const PixelSet& set, PixelTask& task) {
    if (!set.sparse()) {
        task.tile = set.tile_order[blockIdx.x];
        const int tiles_x = cam.tiles_x();
        const int warp = int(threadIdx.x / 32), lane = int(threadIdx.x & 31);
        constexpr int WARPS_X = TILE_SIZE / WARP_W;
        task.px = (task.tile % tiles_x) * TILE_SIZE + (warp % WARPS_X) * WARP_W + lane % WARP_W;
        task.py = (task.tile / tiles_x) * TILE_SIZE + (warp / WARPS_X) * WARP_H + lane / WARP_W;
        task.active = task.px < cam.width && task.py < cam.height;
        task.index = task.active ? task.py * cam.width + task.px : 0;
        task.stride = cam.width * cam.height;
        return true;
    }
    const int warp = int(blockIdx.x) * WARPS_PER_BLOCK + int(threadIdx.x / 32);
    if (warp >= set.n_warps) return false;
    task.tile = set.warp_tiles[warp];
    if (task.tile < 0) return false;  // a spare warp
    const int request = set.lane_requests[32 * warp + (threadIdx.x & 31)];
    task.active = request >= 0;
    const int2 rc = task.active ? set.requests[request] : make_int2(0, 0);
    task.px = rc.y;
    task.py = rc.x;
    task.index = task.active ? request : 0;
    task.stride = set.n_requests;
    return true;
}

inline dim3 render_grid(const Camera& cam, const PixelSet& set) {
    if (set.sparse()) return dim3((set.n_warps + WARPS_PER_BLOCK - 1) / WARPS_PER_BLOCK);
    return dim3(cam.tiles_x() * cam.tiles_y());
}
inline bool nothing_to_render(const PixelSet& set) { return set.sparse() && set.n_warps == 0; }

// One candidate of a tile's list, as a lane holds it while the warp decides.
struct Candidate {
    uint32_t entry;  // octant << 29 | voxel id
    int4 rect;       // the voxel's conservative pixel rectangle (x0, y0, x1, y1)

    __device__ __forceinline__ int octant() const { return int(entry >> VOXEL_ID_BITS); }
    __device__ __forceinline__ uint32_t voxel() const { return entry & VOXEL_ID_MASK; }

    // The cheap per-pixel test before the ray-box test: same octant, inside the rectangle.
    __device__ __forceinline__ bool may_cover(int px, int py, int quadrant) const {
        return octant() == quadrant && px >= rect.x && py >= rect.y && px <= rect.z && py <= rect.w;
    }
};

__device__ __forceinline__ Candidate load_candidate(const RenderBuffers& in, int index) {
    const uint32_t entry = in.entries[index];
    return {entry, in.pixel_rect[entry & VOXEL_ID_MASK]};
}

// With at most this many live pixels, a warp tests each candidate against every one of them
// (a shuffle per pixel); with more, against their bounding box and octants.
constexpr int FEW_LIVE_PIXELS = 4;

// The lanes' pixels as the warp filters its list: each lane holds one candidate, and the warp
// keeps those that may cover a *live* pixel (one still compositing). Recomputed for every group
// of 32 candidates, so the filter tightens as pixels saturate (and is exact for the few pixels
// of a sparse warp).
struct WarpPixels {
    int px, py, quadrant;  // this lane's pixel and ray octant

    __device__ __forceinline__ uint32_t touched(const Candidate& mine, bool valid, bool live) const {
        const uint32_t live_lanes = __ballot_sync(FULL_MASK, live);
        bool touches = false;
        if (__popc(live_lanes) <= FEW_LIVE_PIXELS) {
            for (uint32_t m = live_lanes; m; m &= m - 1) {
                const int j = __ffs(m) - 1;
                touches |= mine.may_cover(__shfl_sync(FULL_MASK, px, j), __shfl_sync(FULL_MASK, py, j),
                                          __shfl_sync(FULL_MASK, quadrant, j));
            }
        } else {
            const int x0 = __reduce_min_sync(FULL_MASK, live ? px : INT_MAX);
            const int y0 = __reduce_min_sync(FULL_MASK, live ? py : INT_MAX);
            const int x1 = __reduce_max_sync(FULL_MASK, live ? px : INT_MIN);
            const int y1 = __reduce_max_sync(FULL_MASK, live ? py : INT_MIN);
            const uint32_t octants = __reduce_or_sync(FULL_MASK, live ? 1u << quadrant : 0u);
            touches = (octants >> mine.octant() & 1u) && x1 >= mine.rect.x && y1 >= mine.rect.y &&
                      x0 <= mine.rect.z && y0 <= mine.rect.w;
        }
        return __ballot_sync(FULL_MASK, valid && touches);
    }
};

// A voxel's geometry and appearance, read when some lane's ray may pass through it, with what
// every lane would otherwise recompute: the reciprocal size and the corners relative to the
// camera (each computed once, by the lane that loads the record).
// Fields in 16-byte groups, so that the visits can read them from shared memory four at a time.
struct alignas(16) VoxelRecord {
    float geo[8];
    float3 rel_min;
    float inv_length;
    float3 rel_max;
    float length;
    float3 box_min;
    float rgb[3];
};

// WITH_RGB false leaves rec.rgb unset (top-K reads no colours). `origin`: the camera position.
template <bool WITH_RGB = true>
__device__ __forceinline__ void load_record(const RenderBuffers& in, uint32_t v, float3 origin, VoxelRecord& rec) {
    rec.length = in.lengths[v];
    rec.inv_length = 1.f / rec.length;
    const float h = 0.5f * rec.length;
    rec.box_min = make_float3(in.centers[3 * v] - h, in.centers[3 * v + 1] - h, in.centers[3 * v + 2] - h);
    relative_box(rec.box_min, rec.length, origin, rec.rel_min, rec.rel_max);
    const float4* g = reinterpret_cast<const float4*>(in.geos + 8 * size_t(v));
    const float4 g0 = g[0], g1 = g[1];
    rec.geo[0] = g0.x; rec.geo[1] = g0.y; rec.geo[2] = g0.z; rec.geo[3] = g0.w;
    rec.geo[4] = g1.x; rec.geo[5] = g1.y; rec.geo[6] = g1.z; rec.geo[7] = g1.w;
    if (WITH_RGB) {
        rec.rgb[0] = in.rgbs[3 * v]; rec.rgb[1] = in.rgbs[3 * v + 1]; rec.rgb[2] = in.rgbs[3 * v + 2];
    }
}

// The ray's segment through a loaded voxel (see ray_segment).
__device__ __forceinline__ bool ray_segment(const Ray& r, const VoxelRecord& rec, float& a, float& b) {
    return ray_segment(r, rec.rel_min, rec.rel_max, a, b);
}

// A candidate the warp will visit, staged in shared memory by the lane that loaded it: every
// lane issues its loads at once (one memory latency per group of 32 candidates instead of one
// per visited candidate), and the visits read them with broadcast shared-memory loads.
struct StagedCandidate {
    Candidate cand;
    VoxelRecord rec;
};

// This warp's part of the block's stage: one staged candidate per lane.
__device__ __forceinline__ StagedCandidate* warp_stage() {
    __shared__ StagedCandidate stage[BLOCK_THREADS];
    return stage + (threadIdx.x & ~31u);
}

// Lane `lane` stages its candidate when it is in `todo`; the warp then visits them.
template <bool WITH_RGB>
__device__ __forceinline__ void stage_candidates(const RenderBuffers& in, const Candidate& mine, uint32_t todo,
                                                 float3 origin, StagedCandidate* stage) {
    const int lane = int(threadIdx.x & 31);
    if (todo >> lane & 1u) {
        stage[lane].cand = mine;
        load_record<WITH_RGB>(in, mine.voxel(), origin, stage[lane].rec);
    }
    __syncwarp();
}

// The front-to-back walk of a warp over its tile's list `range`: lane l loads candidate
// `group + l`, the warp keeps those that may touch its live pixels (not `done`) and stages them,
// and for each of them, in list order, every lane calls visit(staged candidate, list index)
// (warp-uniform, so visitors may use warp collectives). Stops when every lane is done.
template <bool WITH_RGB, typename Visit>
__device__ __forceinline__ void walk_front_to_back(const RenderBuffers& in, int2 range, const WarpPixels& pixels,
                                                   float3 origin, const bool& done, StagedCandidate* stage,
                                                   Visit&& visit) {
    const int lane = int(threadIdx.x & 31);
    for (int group = range.x; group < range.y && !__all_sync(FULL_MASK, done); group += 32) {
        const bool valid = group + lane < range.y;
        const Candidate mine = valid ? load_candidate(in, group + lane) : Candidate{0u, make_int4(1, 1, 0, 0)};
        uint32_t todo = pixels.touched(mine, valid, !done);
        stage_candidates<WITH_RGB>(in, mine, todo, origin, stage);
        while (todo) {
            const int k = __ffs(todo) - 1;
            todo &= todo - 1;
            visit(stage[k], group + k);
        }
        __syncwarp();  // the stage is overwritten by the next group
    }
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
