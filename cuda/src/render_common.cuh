// What the render kernels (forward, backward, top-K) share: which pixel a thread renders, the
// voxel records a warp reads for the entries of its tile's list, the pair walk over them (front
// to back or back to front), and the compile-time dispatch over kernel variants.
//
// Each warp walks its tile's list on its own (no block barriers): lane l loads entry
// `group + l` and its pixel rectangle in the tile (coalesced, shared through L1 by the tile's
// warps; front to back, a group ahead), the warp keeps the entries that may cover one of its
// live pixels, their lanes stage the voxel records in shared memory, and the warp evaluates
// them pair by pair (see walk_pairs), or, front to back where the pairs spread evenly over its
// pixels, pixel by pixel (walk_own_candidates).
#pragma once
#include <type_traits>
#include <utility>

#include "math.cuh"

namespace svr {

// One block per tile, one thread per pixel. A warp walks every entry of its tile's list, and
// each costs it a load and a cover test even where the voxel misses the warp's pixels: 8x8
// tiles (two warps) against 16x16 (eight) bin 7-62% more entries on the benchmark scenes but
// cut the render kernels enough to win (H100, R6M fwd+bwd 5.35-5.44 -> 4.73-4.74 ms). With
// 16x16 tiles, four 64-thread blocks per tile had been 2-11% slower than one 256-thread block:
// the blocks shared the list but not its loads.
constexpr int BLOCK_THREADS = TILE_SIZE * TILE_SIZE;
constexpr int WARPS_PER_BLOCK = BLOCK_THREADS / 32;

// A thread's pixel, the tile whose list its warp walks, and where its outputs go.
struct PixelTask {
    int tile;
    int px, py;
    bool active;  // a pixel of the image (whole image) or a request (sparse)
    int index;    // into per-pixel arrays: py * W + px, or the request's row
    int stride;   // between channels of per-pixel arrays: W * H, or P
    int row, col; // the same place in arrays [C, H, W] or [C, P] of any strides: (py, px) or (0, request)
    bool split;   // one of SPLIT_PARTS blocks of a long list's tile
};

// In a whole-image block, each warp renders a WARP_W x WARP_H block of the tile: squarer than
// two 16-pixel rows, so fewer voxel rectangles touch a warp's pixels (and a warp walks only the
// candidates that do).
constexpr int WARP_W = 8, WARP_H = 32 / WARP_W;
static_assert(TILE_SIZE % WARP_W == 0 && TILE_SIZE % WARP_H == 0, "warp blocks tile the tile");

// Whole image: the tiles in tile_order (longest list first), a block each, except that those
// among the first SPLIT_TILES whose lists hold SPLIT_MIN_ENTRIES or more take SPLIT_PARTS blocks,
// block part j rendering row j of each warp's 8 x 4 pixels (the other lanes idle as pixels but
// work in the walk's loads and pair evaluations); the parts after the first of a shorter list's
// tile return at once. A warp's walk of a long list is the kernel's critical path: O6M's
// longest list (8,641 entries, at a silhouette, whose rays never saturate) rendered alone took
// more than the whole image's forward kernel (bench/bench_tail.py: 633 against 508 us, as
// requested pixels). With a quarter of the pixels a warp evaluates about a quarter of the pairs, and
// four warps walk the list side by side. H100, 1080p (session 12, run 8, three rounds against
// no split): O6M forward 1.45-1.46 -> 1.37-1.38 ms, forward+backward 2.16-2.18 -> 1.95-1.99;
// R1.5M and R6M within 1% (no R1.5M list reaches SPLIT_MIN_ENTRIES). Splitting every list of
// the first tiles, lists from 2,048 entries, or into eight parts (half rows) made R6M's
// forward+backward slower (4.5 -> 4.6-4.8 ms): its long lists are of large voxels that cover a
// whole warp, and more warps repeat more of the walk for fewer saved pairs. SPLIT_TILES = 1024
// measured like 256, with more blocks that return at once.
// Requested pixels: one warp per PixelSet warp, WARPS_PER_BLOCK of them per block. Returns false
// (for the whole warp) when the warp has nothing to do.
constexpr int SPLIT_TILES = 256;
constexpr int SPLIT_MIN_ENTRIES = 3072;
constexpr int SPLIT_PARTS = WARP_H;
SVR_HOST_DEVICE inline int split_tiles(const Camera& cam) {
    const int n_tiles = cam.tiles_x() * cam.tiles_y();
    return n_tiles < SPLIT_TILES ? n_tiles : SPLIT_TILES;
}

__device__ __forceinline__ bool locate_pixel(const Camera& cam, const PixelSet& set, const int2* ranges,
                                             PixelTask& task) {
    if (!set.sparse()) {
        const int block = int(blockIdx.x), n_split = split_tiles(cam), split_blocks = SPLIT_PARTS * n_split;
        bool split = block < split_blocks;
        task.tile = set.tile_order[split ? block / SPLIT_PARTS : block - split_blocks + n_split];
        if (split) {
            const int2 range = ranges[task.tile];
            if (range.y - range.x < SPLIT_MIN_ENTRIES) {
                if (block % SPLIT_PARTS != 0) return false;
                split = false;
            }
        }
        const int tiles_x = cam.tiles_x();
        const int warp = int(threadIdx.x / 32), lane = int(threadIdx.x & 31);
        constexpr int WARPS_X = TILE_SIZE / WARP_W;
        task.px = (task.tile % tiles_x) * TILE_SIZE + (warp % WARPS_X) * WARP_W + lane % WARP_W;
        task.py = (task.tile / tiles_x) * TILE_SIZE + (warp / WARPS_X) * WARP_H + lane / WARP_W;
        task.active = task.px < cam.width && task.py < cam.height && (!split || lane / WARP_W == block % SPLIT_PARTS);
        task.split = split;
        task.index = task.active ? task.py * cam.width + task.px : 0;
        task.stride = cam.width * cam.height;
        task.row = task.active ? task.py : 0;
        task.col = task.active ? task.px : 0;
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
    task.row = 0;
    task.col = task.index;
    task.split = false;
    return true;
}

inline dim3 render_grid(const Camera& cam, const PixelSet& set) {
    if (set.sparse()) return dim3((set.n_warps + WARPS_PER_BLOCK - 1) / WARPS_PER_BLOCK);
    return dim3(cam.tiles_x() * cam.tiles_y() + (SPLIT_PARTS - 1) * split_tiles(cam));
}
inline bool nothing_to_render(const PixelSet& set) { return set.sparse() && set.n_warps == 0; }

// One candidate of a tile's list, as a lane holds it while the warp decides.
struct Candidate {
    uint32_t entry;  // octant << 29 | voxel id
    int4 rect;       // the voxel's conservative pixel rectangle (x0, y0, x1, y1) in tile pixels

    __device__ __forceinline__ int octant() const { return int(entry >> VOXEL_ID_BITS); }
    __device__ __forceinline__ uint32_t voxel() const { return entry & VOXEL_ID_MASK; }

    // The cheap per-pixel test before the ray-box test: same octant, inside the rectangle
    // (tile pixel (px, py)).
    __device__ __forceinline__ bool may_cover(int px, int py, int quadrant) const {
        return octant() == quadrant && px >= rect.x && py >= rect.y && px <= rect.z && py <= rect.w;
    }
};

// A voxel's geometry: what the pair walk stages and the forward's median depth re-reads.
struct VoxelGeometry {
    float geo[8];
    float3 box_min;
    float length, inv_length;
};

__device__ __forceinline__ void load_geometry(const RenderBuffers& in, uint32_t v, VoxelGeometry& out) {
    const float length = in.lengths[v];
    const float h = 0.5f * length;
    out.length = length;
    out.inv_length = 1.f / length;
    out.box_min = make_float3(in.centers[3 * v] - h, in.centers[3 * v + 1] - h, in.centers[3 * v + 2] - h);
    const float4* g = reinterpret_cast<const float4*>(in.geos + 8 * size_t(v));
    const float4 g0 = g[0], g1 = g[1];
    out.geo[0] = g0.x; out.geo[1] = g0.y; out.geo[2] = g0.z; out.geo[3] = g0.w;
    out.geo[4] = g1.x; out.geo[5] = g1.y; out.geo[6] = g1.z; out.geo[7] = g1.w;
}

// --- The pair walk (forward, backward, top-K). A warp's pixels are few per voxel (a voxel
// covers a handful of the 32), so visiting each voxel with every lane leaves most lanes idle in
// the costly part, the ray's segment and quadrature. Instead, for each group of 32 candidates
// the warp lists the (candidate, pixel) pairs that may meet (pixel in the rectangle, same
// octant, still compositing), evaluates them one pair per lane, and then each pixel composites
// its own results in list order. Every value is computed as the per-pixel walk computes it
// (same ray, same record, same operations), so the pixels are unchanged bit for bit.

// One pair's evaluation; alpha 0 when the ray misses the box (skipped like any faint voxel).
struct PairResult {
    float alpha, a, b;
    float depth;  // the voxel's own depth value (Quadrature::depth_value), when asked for
};

// What a warp shares during the pair walk, per block, one slot per lane; arrays of 16-byte
// groups so that lanes reading different slots hit different banks.
struct PairStage {
    float4 ray_dir[BLOCK_THREADS];  // each lane's ray direction and t_near
    float4 ray_inv[BLOCK_THREADS];  // its reciprocal direction
    float4 record[4][BLOCK_THREADS];  // candidates: geo[0:4], geo[4:8], (box_min, 1/size), (size, r, g, b)
    int4 meta[BLOCK_THREADS];       // candidates: (cover: lanes it may meet, first pair, entry, list index)
    PairResult result[BLOCK_THREADS];  // this round's pair results, one per lane
};

__device__ __forceinline__ float3 xyz(float4 v) { return make_float3(v.x, v.y, v.z); }

__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }
// Voxel v's record towards L2 (what stage_record will load).
template <bool WITH_RGB>
__device__ __forceinline__ void prefetch_record(const RenderBuffers& in, uint32_t v) {
    prefetch_l2(in.centers + 3 * size_t(v));
    prefetch_l2(in.lengths + v);
    prefetch_l2(in.geos + 8 * size_t(v));
    if (WITH_RGB) prefetch_l2(in.rgbs + 3 * size_t(v));
}

template <bool WITH_RGB>
__device__ __forceinline__ void stage_record(const RenderBuffers& in, uint32_t v, PairStage& s, int slot) {
    VoxelGeometry g;
    load_geometry(in, v, g);
    s.record[0][slot] = make_float4(g.geo[0], g.geo[1], g.geo[2], g.geo[3]);
    s.record[1][slot] = make_float4(g.geo[4], g.geo[5], g.geo[6], g.geo[7]);
    s.record[2][slot] = make_float4(g.box_min.x, g.box_min.y, g.box_min.z, g.inv_length);
    s.record[3][slot] = WITH_RGB ? make_float4(g.length, in.rgbs[3 * v], in.rgbs[3 * v + 1], in.rgbs[3 * v + 2])
                                 : make_float4(g.length, 0.f, 0.f, 0.f);
}

__device__ __forceinline__ void staged_geo(const PairStage& s, int slot, float geo[8]) {
    const float4 g0 = s.record[0][slot], g1 = s.record[1][slot];
    geo[0] = g0.x; geo[1] = g0.y; geo[2] = g0.z; geo[3] = g0.w;
    geo[4] = g1.x; geo[5] = g1.y; geo[6] = g1.z; geo[7] = g1.w;
}

__device__ __forceinline__ float3 staged_rgb(const PairStage& s, int slot) {
    const float4 r = s.record[3][slot];
    return make_float3(r.y, r.z, r.w);
}

__device__ __forceinline__ float3 staged_box_min(const PairStage& s, int slot) { return xyz(s.record[2][slot]); }
__device__ __forceinline__ float staged_inv_length(const PairStage& s, int slot) { return s.record[2][slot].w; }

// The staged ray of lane slot `ray_slot` (its origin, the camera, is every lane's).
__device__ __forceinline__ Ray staged_ray(const PairStage& s, float3 origin, int ray_slot) {
    const float4 dir = s.ray_dir[ray_slot], inv = s.ray_inv[ray_slot];
    Ray ray;
    ray.origin = origin;
    ray.dir = xyz(dir);
    ray.t_near = dir.w;
    ray.inv_dir = xyz(inv);
    return ray;
}

// Pair evaluation: the ray of lane slot `ray_slot` through the candidate in `slot`. With
// `kept`, also the raw density and integral of a one-point quadrature (Quadrature::resume).
template <int N, bool DEPTH>
__device__ __forceinline__ PairResult evaluate_pair(const PairStage& s, float3 origin, int ray_slot, int slot,
                                                    float2* kept) {
    const Ray ray = staged_ray(s, origin, ray_slot);
    const float4 box = s.record[2][slot];
    // The box relative to the camera, rounded as the reference rounds it (a few additions per
    // pair instead of two more 16-byte records per candidate in shared memory).
    float3 rel_min, rel_max;
    relative_box(xyz(box), s.record[3][slot].x, origin, rel_min, rel_max);
    PairResult r{0.f, 0.f, 0.f, 0.f};
    const bool hit = ray_segment(ray, rel_min, rel_max, r.a, r.b);
    // Almost every pair meets its box (the rectangles are tight): a miss's quadrature is
    // computed like a hit's and dropped, without a branch around it.
    float geo[8];
    staged_geo(s, slot, geo);
    Quadrature<N> quad;
    quad.evaluate(ray, r.a, r.b, xyz(box), box.w, geo);
    r.alpha = hit ? quad.alpha : 0.f;
    if (DEPTH) r.depth = hit ? quad.depth_value(r.a, r.b) : 0.f;
    if (N == 1 && kept && hit) *kept = make_float2(quad.d[0], quad.integral);
    return r;
}

// Lanes of a whole-image warp (an 8 x 4 pixel block at (bx, by), lane = 8 y + x) inside a
// pixel rectangle.
static_assert(WARP_W == 8 && WARP_H == 4, "block_lanes packs one warp row per byte");
__device__ __forceinline__ uint32_t block_lanes(int4 rect, int bx, int by) {
    const int x0 = max(rect.x - bx, 0), x1 = min(rect.z - bx, WARP_W - 1);
    const int y0 = max(rect.y - by, 0), y1 = min(rect.w - by, WARP_H - 1);
    if (x0 > x1 || y0 > y1) return 0u;
    const uint32_t row = ((2u << (x1 - x0)) - 1u) << x0;                      // columns x0..x1
    const uint32_t rows = (0x01010101u >> (8 * (WARP_H - 1 - (y1 - y0)))) << (8 * y0);  // a bit per row y0..y1
    return row * rows;
}

// The 32 x 32 bit matrix whose row i is lane i's `row`, transposed: lane j gets the bits i of
// the rows holding bit j (the off-diagonal blocks swap places, halving the block size five times).
__device__ __forceinline__ uint32_t transpose_bits(uint32_t row) {
    const int lane = int(threadIdx.x & 31);
    constexpr uint32_t low_halves[5] = {0x0000FFFFu, 0x00FF00FFu, 0x0F0F0F0Fu, 0x33333333u, 0x55555555u};
#pragma unroll
    for (int level = 0; level < 5; ++level) {
        const int s = 16 >> level;
        const uint32_t m = low_halves[level];
        const uint32_t other = __shfl_xor_sync(FULL_MASK, row, s);
        row = (lane & s) ? (row & ~m) | ((other >> s) & m) : (row & m) | ((other << s) & ~m);
    }
    return row;
}

// What a pair walk hands a pixel for one of its pairs: the candidate's slot in the stage, its
// list index and entry, the pair's slot and its result.
struct PairVisit {
    int slot;
    int index;
    uint32_t entry;
    int pair_slot;
    PairResult result;
};

// What a lane evaluated in a round (for the walk's per-round hook): the pairs of a candidate
// are held by adjacent lanes.
struct PairRound {
    bool valid;     // this lane evaluated a pair
    int slot;       // its candidate's slot
    int ray_slot;   // its pixel's slot
    int candidate;  // its candidate's position in the group; 32 + lane when not valid
    uint32_t entry;
};

// No per-round hook.
struct NoFinish {
    __device__ __forceinline__ void operator()(const PairStage&, const PairRound&) const {}
};

// Front to back, a group whose pairs spread evenly over the warp's pixels is walked per pixel
// instead: each lane takes its own pixel's candidates in list order (its column of the cover
// matrix), evaluating and compositing each at once, for as many steps as the busiest pixel has
// candidates. A pair round costs more than two such steps: finding each lane's pair, passing
// its result through shared memory, then each pixel compositing its pairs of the round one
// after another while the others wait (the R scenes' candidates cover a few pixels each: on
// R6M, Nsight Compute counted three compositing iterations per round, about two and a half
// pairs for the round's busiest pixel and a last test finding its next pair in a later round).
// A group is walked per pixel where its pairs fill at least PER_PIXEL_PERCENT of the busiest
// pixel's steps times 32 lanes (10, 25, 40 and 60 measured alike; H100, 1080p: R6M forward
// render 1.14-1.23 -> 0.87-0.97 ms with reused intersections, the O scenes unchanged: their
// long lists at silhouettes keep the pair walk). Same pairs, same order, same operations: the
// pixels are unchanged bit for bit.
constexpr int PER_PIXEL_PERCENT = 25;
__device__ __forceinline__ bool walk_per_pixel(int count, uint32_t my_candidates) {
    const int total = int(__reduce_add_sync(FULL_MASK, unsigned(count)));
    const int busiest = int(__reduce_max_sync(FULL_MASK, unsigned(__popc(my_candidates))));
    return 100 * total >= PER_PIXEL_PERCENT * 32 * busiest;
}

template <int N, bool DEPTH, typename Consume>
__device__ __forceinline__ void walk_own_candidates(const PairStage& stage, float3 origin, uint32_t my_candidates,
                                                    const bool& done, Consume& consume) {
    const int warp_slot = int(threadIdx.x & ~31u);
    for (;;) {
        const bool more = my_candidates && !done;
        if (!__any_sync(FULL_MASK, more)) break;
        if (more) {
            const int slot = warp_slot + __ffs(my_candidates) - 1;
            my_candidates &= my_candidates - 1;
            const int4 meta = stage.meta[slot];
            const PairResult result = evaluate_pair<N, DEPTH>(stage, origin, int(threadIdx.x), slot, nullptr);
            consume(stage, PairVisit{slot, meta.w, uint32_t(meta.z), int(threadIdx.x), result});
        }
    }
}

// A warp's pair walk over its tile's list. Front to back: a pixel takes part until it is
// `done`, and the walk stops when every pixel is. Back to front: a pixel takes the entries
// before its `limit` (one past the last its forward used). For each group of 32 candidates
// (lane c holds the c-th in walking order), rounds of up to 32 pairs: each lane evaluates one
// pair, then calls consume(stage, visit) for each of its own pairs of the round in walking
// order (each pair exactly once; lanes diverge here: no warp collectives), then
// finish(stage, round) once (all lanes together). With `kept` (the backward's one-point
// quadrature, a slot per thread), each lane also keeps there its pair's raw density and
// integral (Quadrature::resume); the forward and top-K leave that shared memory out, and their
// blocks fit more per multiprocessor. Front to back, groups may be walked per pixel instead
// (walk_own_candidates: consume only, no rounds), so the front-to-back walks take no hook.
template <bool BACK_TO_FRONT, int N, bool DEPTH, bool WITH_RGB, typename Consume, typename Finish>
__device__ __forceinline__ void walk_pairs(const RenderBuffers& in, int2 range, const PixelTask& task, bool sparse,
                                           const Ray& ray, const bool& done, int limit, float2* kept,
                                           Consume&& consume, Finish&& finish) {
    static_assert(BACK_TO_FRONT || std::is_same<std::decay_t<Finish>, NoFinish>::value,
                  "front to back, groups walked per pixel have no rounds to finish");
    __shared__ PairStage stage;
    const int lane = int(threadIdx.x & 31), warp_slot = int(threadIdx.x & ~31u);
    stage.ray_dir[threadIdx.x] = make_float4(ray.dir.x, ray.dir.y, ray.dir.z, ray.t_near);
    stage.ray_inv[threadIdx.x] = make_float4(ray.inv_dir.x, ray.inv_dir.y, ray.inv_dir.z, 0.f);
    uint32_t octant_lanes = 0;  // lane q < 8: the lanes whose ray octant is q
#pragma unroll
    for (int q = 0; q < 8; ++q) {
        const uint32_t m = __ballot_sync(FULL_MASK, ray.quadrant == q);
        if (lane == q) octant_lanes = m;
    }
    // The pixel and its warp's block in tile pixels (tiles start at multiples of TILE_SIZE).
    const int tx = task.px % TILE_SIZE, ty = task.py % TILE_SIZE;
    const int bx = tx - lane % WARP_W, by = ty - lane / WARP_W;
    const uint32_t lanes_below = (1u << lane) - 1u;
    __syncwarp();

    // Back to front, the walk starts after the last entry any of the warp's pixels used.
    const int walk_end = BACK_TO_FRONT ? __reduce_max_sync(FULL_MASK, limit) : range.y;
    const int n_groups = (walk_end - range.x + 31) / 32;
    // Front to back, the next group's candidate is loaded while the warp works on this one's:
    // a long list (thousands of entries at the silhouettes of opaque scenes, whose rays never
    // saturate) is walked group after group, and its load no longer waits at the head of each
    // (O6M forward render kernel 0.57 -> 0.51 ms). Back to front, the backward kernel is at its
    // register limit, spilled more and got slower (O6M 0.59 -> 0.67 ms): it loads in place.
    uint32_t next_entry = 0u;
    uint16_t next_rect = 0u;
    auto prefetch = [&](int g) {
        const int index = range.x + 32 * g + lane;
        if (index < range.y) {
            next_entry = in.entries[index];
            next_rect = in.entry_rects[index];
        }
    };
    if (!BACK_TO_FRONT) prefetch(0);
    for (int g = 0; g < n_groups; ++g) {
        // This lane's candidate, and the lanes it may meet: `live`.
        int index;
        bool valid;
        uint32_t live;
        Candidate mine{0u, make_int4(1, 1, 0, 0)};  // covers nothing
        if (BACK_TO_FRONT) {
            const int top = walk_end - 32 * g, low = max(range.x, top - 32);
            index = top - 1 - lane;
            valid = index >= low;
            // Lanes whose limit falls inside the group take only part of it.
            live = __ballot_sync(FULL_MASK, limit >= top);
            for (uint32_t m = __ballot_sync(FULL_MASK, limit > low && limit < top); m; m &= m - 1) {
                const int j = __ffs(m) - 1;
                if (__shfl_sync(FULL_MASK, limit, j) > index) live |= 1u << j;
            }
            if (valid) mine = Candidate{in.entries[index], unpack_entry_rect(in.entry_rects[index])};
        } else {
            live = __ballot_sync(FULL_MASK, !done);
            if (!live) break;
            index = range.x + 32 * g + lane;
            valid = index < range.y;
            if (valid) mine = Candidate{next_entry, unpack_entry_rect(next_rect)};
            prefetch(g + 1);
        }
        uint32_t cover = 0;
        if (sparse) {  // any pixels: test each live one
            for (uint32_t m = __reduce_or_sync(FULL_MASK, live); m; m &= m - 1) {
                const int j = __ffs(m) - 1;
                const bool meets = mine.may_cover(__shfl_sync(FULL_MASK, tx, j), __shfl_sync(FULL_MASK, ty, j),
                                                  __shfl_sync(FULL_MASK, ray.quadrant, j));
                cover |= uint32_t(meets) << j;
            }
            cover &= live;
        } else {
            cover = block_lanes(mine.rect, bx, by) & __shfl_sync(FULL_MASK, octant_lanes, mine.octant()) & live;
        }
        if (!valid) cover = 0u;
        if (!__any_sync(FULL_MASK, cover != 0u)) continue;
        const int count = __popc(cover);
        // The candidates whose pairs this lane's pixel is in: the cover bits, transposed.
        uint32_t my_candidates = transpose_bits(cover);
        const bool per_pixel = !BACK_TO_FRONT && walk_per_pixel(count, my_candidates);
        // Pairs are numbered candidate by candidate: an inclusive scan of the counts.
        const int end = per_pixel ? count : warp_inclusive_sum(count);
        if (cover) {
            stage_record<WITH_RGB>(in, mine.voxel(), stage, threadIdx.x);
            stage.meta[threadIdx.x] = make_int4(int(cover), end - count, int(mine.entry), index);
        }
        // A split tile's warps wait on their list's walk: the next group's records head for L2
        // while this group's pairs are evaluated.
        if (!BACK_TO_FRONT && task.split && range.x + 32 * (g + 1) + lane < range.y)
            prefetch_record<WITH_RGB>(in, next_entry & VOXEL_ID_MASK);
        __syncwarp();
        if (per_pixel) {
            walk_own_candidates<N, DEPTH>(stage, ray.origin, my_candidates, done, consume);
            __syncwarp();  // the records are overwritten by the next group's
            continue;
        }
        const int total = __shfl_sync(FULL_MASK, end, 31);

        for (int first = 0; first < total; first += 32) {
            if (!BACK_TO_FRONT && first > 0 && __all_sync(FULL_MASK, done)) break;
            // Lane l evaluates pair first + l; its candidate is the first whose pairs end past it.
            const int p = first + lane;
            const int k = lane_holding(end, p);
            PairRound round{p < total, warp_slot + k, 0, p < total ? k : 32 + lane, 0u};
            if (round.valid) {
                const int4 meta = stage.meta[round.slot];
                round.ray_slot = warp_slot + nth_set_bit(uint32_t(meta.x), p - meta.y);
                round.entry = uint32_t(meta.z);
                stage.result[threadIdx.x] = evaluate_pair<N, DEPTH>(stage, ray.origin, round.ray_slot, round.slot,
                                                                    kept ? kept + threadIdx.x : nullptr);
            }
            __syncwarp();
            // This pixel's pairs of the round, in walking order (a pixel's pairs are numbered
            // in the order of their candidates).
            while (my_candidates && (BACK_TO_FRONT || !done)) {
                const int c = __ffs(my_candidates) - 1;
                const int4 meta = stage.meta[warp_slot + c];
                const int q = meta.y + __popc(uint32_t(meta.x) & lanes_below) - first;
                if (q >= 32) break;  // in a later round
                my_candidates &= my_candidates - 1;
                consume(stage, PairVisit{warp_slot + c, meta.w, uint32_t(meta.z), warp_slot + q,
                                         stage.result[warp_slot + q]});
            }
            __syncwarp();
            finish(stage, round);
            __syncwarp();  // the results are overwritten by the next round
        }
    }
}

// A render kernel's compile-time variant: the outputs and options it is built for, a bit each.
enum RenderVariant : unsigned { WITH_DEPTH = 1u, WITH_NORMAL = 2u, WITH_DISTORTION = 4u, WITH_MAX_W = 8u };

template <typename F, typename NConst, unsigned... V>
void dispatch_bits(unsigned variant, F& f, NConst n, std::integer_sequence<unsigned, V...>) {
    ((variant == V ? f(n, std::integral_constant<unsigned, V>{}) : void()), ...);
}

// Calls f(std::integral_constant<int, n>{}, std::integral_constant<unsigned, variant>{}) for
// the runtime n (1..MAX_N_SAMP) and variant (below 2^BITS): one instantiation per combination,
// no copied kernels.
template <int BITS, typename F>
void dispatch_variant(int n, unsigned variant, F&& f) {
    constexpr auto variants = std::make_integer_sequence<unsigned, 1u << BITS>{};
    switch (n) {
        case 1: dispatch_bits(variant, f, std::integral_constant<int, 1>{}, variants); break;
        case 2: dispatch_bits(variant, f, std::integral_constant<int, 2>{}, variants); break;
        default: dispatch_bits(variant, f, std::integral_constant<int, 3>{}, variants); break;
    }
}

}  // namespace svr
