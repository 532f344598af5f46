// Stage 1 (mirrors reference/preprocess.py): per voxel, the conservative tile rectangle of
// its part in front of the near plane, the octants of rays that can reach it, and the number
// of tiles each octant gets an entry in (only tiles where it may cover a requested pixel, when
// sparse).
#include <algorithm>

#include <cub/device/device_select.cuh>
#include <thrust/iterator/counting_iterator.h>

#include "math.cuh"

namespace svr {
namespace {

__device__ __forceinline__ float3 to_camera(const Camera& cam, float3 p) {
    const float* m = cam.w2c;
    return make_float3(m[0] * p.x + m[1] * p.y + m[2] * p.z + m[3], m[4] * p.x + m[5] * p.y + m[6] * p.z + m[7],
                       m[8] * p.x + m[9] * p.y + m[10] * p.z + m[11]);
}

// Tiles holding requests in the inclusive tile rectangle r: four reads of the summed-area table.
__device__ __forceinline__ int active_tiles_in(const RequestedPixels& req, int tiles_x, int4 r) {
    const int stride = tiles_x + 1;
    const int32_t* sat = req.tile_sat;
    return sat[(r.w + 1) * stride + r.z + 1] - sat[r.y * stride + r.z + 1] - sat[(r.w + 1) * stride + r.x] +
           sat[r.y * stride + r.x];
}

// The tiles of `tile_rect` the voxel is binned into (all of them unless pixels are requested).
__device__ __forceinline__ int tiles_binned(const RequestedPixels& req, int tiles_x, int4 pixel_rect, int4 tile_rect) {
    const int area = tile_area(tile_rect);
    if (!req.tile_masks) return area;
    const int active = active_tiles_in(req, tiles_x, tile_rect);
    if (active == 0 || area > MAX_EXACT_TILES) return active;
    int count = 0;
    for (int ty = tile_rect.y; ty <= tile_rect.w; ++ty)
        for (int tx = tile_rect.x; tx <= tile_rect.z; ++tx) count += bins_into(req, pixel_rect, tx, ty, tiles_x, true);
    return count;
}

// A cheap test before the exact footprint: true when the voxel, wholly in front of the near
// plane, projects outside the image, or (`cull_by_tiles`) onto tiles none of which holds a
// requested pixel. The tile test pays only where few tiles hold requests: with random 1% of
// 1080p about half do, the bound rarely misses them all, and the test cost the sparse
// preprocess more than the footprints it skipped (133 -> 126 us at R6M without it, session 21).
// It bounds the box by its axis-aligned box in camera space (centre p, the centre c in camera
// space; half-extents h * sum_j |w2c_ij|, exact for any affine w2c) and x/z, y/z over that box
// by their values at its corners; the extents grow by a thousandth plus the rounding of the
// transform, and the screen bound by a pixel, so that it culls only voxels the exact test culls
// too. Anything close to the camera, not finite or not surely outside is left to the exact test.
__device__ __forceinline__ bool surely_culled(const Camera& cam, const RequestedPixels& requests, bool cull_by_tiles,
                                              float3 c, float3 p, float h, float near, float fx, float fy) {
    const float* m = cam.w2c;
    // |h|: a box of negative size has the corners of its positive twin (never drawn, but in view alike).
    const float grow = 1.001f * fabsf(h) + 1e-5f * (fabsf(c.x) + fabsf(c.y) + fabsf(c.z));
    const float ex = grow * (fabsf(m[0]) + fabsf(m[1]) + fabsf(m[2])) + 1e-5f * fabsf(m[3]);
    const float ey = grow * (fabsf(m[4]) + fabsf(m[5]) + fabsf(m[6])) + 1e-5f * fabsf(m[7]);
    const float ez = grow * (fabsf(m[8]) + fabsf(m[9]) + fabsf(m[10])) + 1e-5f * fabsf(m[11]);
    const float z_min = p.z - ez, z_max = p.z + ez;
    if (!(z_min >= near)) return false;
    // Two reciprocals instead of eight divisions: their rounding (an ulp of x/z, a thousandth
    // of a pixel at most) is far inside the pixel of margin.
    const float inv_min = footprint_rcp(z_min), inv_max = footprint_rcp(z_max);
    const float x_lo = fminf((p.x - ex) * inv_min, (p.x - ex) * inv_max) * fx + cam.cx - 1.5f;
    const float x_hi = fmaxf((p.x + ex) * inv_min, (p.x + ex) * inv_max) * fx + cam.cx + 0.5f;
    const float y_lo = fminf((p.y - ey) * inv_min, (p.y - ey) * inv_max) * fy + cam.cy - 1.5f;
    const float y_hi = fmaxf((p.y + ey) * inv_min, (p.y + ey) * inv_max) * fy + cam.cy + 0.5f;
    if (!(isfinite(x_lo) && isfinite(x_hi) && isfinite(y_lo) && isfinite(y_hi))) return false;
    if (x_hi < 0.f || y_hi < 0.f || x_lo > float(cam.width - 1) || y_lo > float(cam.height - 1)) return true;
    if (!cull_by_tiles) return false;
    // The bound's pixels hold the exact rectangle's (clamped to the image alike), so its tiles
    // hold the tiles the exact footprint would test.
    const int4 bound = make_int4(int(ceilf(fmaxf(x_lo, 0.f))), int(ceilf(fmaxf(y_lo, 0.f))),
                                 int(floorf(fminf(x_hi, float(cam.width - 1)))),
                                 int(floorf(fminf(y_hi, float(cam.height - 1)))));
    return active_tiles_in(requests, cam.tiles_x(), tile_rect(bound)) == 0;
}

struct VoxelFootprint {
    int4 rect = make_int4(0, 0, -1, -1);  // empty unless the voxel has entries
    uint32_t octant_mask = 0;
    int tiles = 0;  // of each octant's entries
};

// The footprint of the voxel of centre c and size len: nothing when culled.
__device__ __forceinline__ VoxelFootprint preprocess_voxel(const Camera& cam, const RequestedPixels& requests,
                                                           bool cull_by_tiles, float3 c, float len) {
    VoxelFootprint out;
    const float h = 0.5f * len;
    const float3 cam_pos = make_float3(cam.c2w[3], cam.c2w[7], cam.c2w[11]);

    const float3 dc = make_float3(c.x - cam_pos.x, c.y - cam_pos.y, c.z - cam_pos.z);
    if (!(dc.x * dc.x + dc.y * dc.y + dc.z * dc.z >= cam.near * cam.near)) return out;

    // The part with z_cam >= near is the hull of the corners in front and the edge crossings
    // (projected from z >= FOOTPRINT_NEAR_MIN, so that near = 0 never divides by zero).
    const float near = fmaxf(cam.near, FOOTPRINT_NEAR_MIN);
    // Focal lengths in pixels.
    const float fx = cam.width / (2.f * cam.tanfovx), fy = cam.height / (2.f * cam.tanfovy);
    const float3 p = to_camera(cam, c);
    if (surely_culled(cam, requests, cull_by_tiles, c, p, h, near, fx, fy)) return out;
    // Corner k = 4x + 2y + z is the centre plus or minus the box's half-edges in camera space
    // (the rotation's columns times h): 42 additions instead of eight 3x4 transforms. Its
    // rounding differs from the reference's matrix product as the transforms' did, by far less
    // than the rectangle's margin.
    const float* m = cam.w2c;
    const float3 ex = make_float3(m[0] * h, m[4] * h, m[8] * h), ey = make_float3(m[1] * h, m[5] * h, m[9] * h),
                 ez = make_float3(m[2] * h, m[6] * h, m[10] * h);
    float3 corner[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const float3 ax = (k & 4) ? ex : make_float3(-ex.x, -ex.y, -ex.z);
        const float3 ay = (k & 2) ? ey : make_float3(-ey.x, -ey.y, -ey.z);
        const float3 az = (k & 1) ? ez : make_float3(-ez.x, -ez.y, -ez.z);
        corner[k] = make_float3(((p.x + ax.x) + ay.x) + az.x, ((p.y + ax.y) + ay.y) + az.y,
                                ((p.z + ax.z) + ay.z) + az.z);
    }
    // The extremes of x/z and y/z over the points, mapped to pixels once: the map (a scale by the
    // positive focal length, then the offsets) rounds monotonically, so the extremes of the
    // mapped points are the mapped extremes, bit for bit.
    float rx_lo = INFINITY, rx_hi = -INFINITY, ry_lo = INFINITY, ry_hi = -INFINITY;
    bool any = false;
    auto add = [&](float3 p) {
        const float inv_z = footprint_rcp(p.z);
        const float rx = p.x * inv_z, ry = p.y * inv_z;
        rx_lo = fminf(rx_lo, rx); rx_hi = fmaxf(rx_hi, rx);
        ry_lo = fminf(ry_lo, ry); ry_hi = fmaxf(ry_hi, ry);
        any = true;
    };
    float z_min = corner[0].z;
#pragma unroll
    for (int k = 1; k < 8; ++k) z_min = fminf(z_min, corner[k].z);
    if (z_min >= near) {  // wholly in front, as most voxels are: no edge crosses the plane
#pragma unroll
        for (int k = 0; k < 8; ++k) add(corner[k]);
    } else {
#pragma unroll
        for (int k = 0; k < 8; ++k)
            if (corner[k].z >= near) add(corner[k]);
        // The 12 edges (c, c | bit), corner c = 4x + 2y + z: unrolled, so that every corner
        // index is a constant and the corners stay in registers (a table of edges put them on
        // the stack).
#pragma unroll
        for (int bit = 1; bit <= 4; bit <<= 1)
#pragma unroll
            for (int c = 0; c < 8; ++c) {
                if (c & bit) continue;
                const float3 p0 = corner[c], p1 = corner[c | bit];
                if ((p0.z < near) != (p1.z < near)) {
                    const float s = fminf(fmaxf((near - p0.z) / (p1.z - p0.z), 0.f), 1.f);
                    add(make_float3(p0.x + s * (p1.x - p0.x), p0.y + s * (p1.y - p0.y), near));
                }
            }
    }
    if (!any) return out;
    // A hundredth of a pixel of margin keeps the rectangle conservative under rounding.
    const float margin = 1e-2f;
    const float x_lo = fminf(fmaxf(rx_lo * fx + cam.cx - 0.5f, -1.f), float(cam.width)) - margin;
    const float x_hi = fminf(fmaxf(rx_hi * fx + cam.cx - 0.5f, -1.f), float(cam.width)) + margin;
    const float y_lo = fminf(fmaxf(ry_lo * fy + cam.cy - 0.5f, -1.f), float(cam.height)) - margin;
    const float y_hi = fminf(fmaxf(ry_hi * fy + cam.cy - 0.5f, -1.f), float(cam.height)) + margin;
    const int x0 = max(int(ceilf(x_lo)), 0), x1 = min(int(floorf(x_hi)), cam.width - 1);
    const int y0 = max(int(ceilf(y_lo)), 0), y1 = min(int(floorf(y_hi)), cam.height - 1);
    if (x0 > x1 || y0 > y1) return out;

    // A ray reaches the box with a negative component along an axis only if the box extends
    // below the camera there (a non-negative one only if it extends above).
    const bool neg[3] = {c.x - h < cam_pos.x, c.y - h < cam_pos.y, c.z - h < cam_pos.z};
    const bool pos[3] = {c.x + h >= cam_pos.x, c.y + h >= cam_pos.y, c.z + h >= cam_pos.z};
    uint32_t mask = 0;
#pragma unroll
    for (int q = 0; q < 8; ++q)
        if (((q & 4) ? neg[0] : pos[0]) && ((q & 2) ? neg[1] : pos[1]) && ((q & 1) ? neg[2] : pos[2])) mask |= 1u << q;
    // No octant (only a box of negative size, never drawn): no entries, as in the reference,
    // so that a voxel is in view exactly where its octant mask is not zero.
    if (mask == 0) return out;

    const int4 rect = make_int4(x0, y0, x1, y1);
    const int n_tiles = tiles_binned(requests, cam.tiles_x(), rect, tile_rect(rect));
    if (n_tiles == 0) return out;
    out.rect = rect;
    out.octant_mask = mask;
    out.tiles = n_tiles;
    return out;
}

// The octree levels a path uses: below them its 3-bit slots are zero.
__device__ __forceinline__ int used_levels(uint64_t path) {
    const int unused = path ? __ffsll((long long)path) - 1 : 3 * MAX_NUM_LEVELS;
    return MAX_NUM_LEVELS - min(unused / 3, MAX_NUM_LEVELS);
}

constexpr int PREPROCESS_BLOCK = 256;
// Blocks of a preprocess grid at most (a few per multiprocessor; each thread loops over voxels).
constexpr int PREPROCESS_MAX_BLOCKS = 1024;

// A grid-stride loop over the voxels. The frame counts are summed per thread, per warp and
// per block before one atomic each: with a block per 256 voxels, the atomics of 24k blocks
// on the same three addresses queued behind each other. The entry sum is 64-bit throughout
// (a voxel may have 8 octants x 2^20 tiles of entries), so that an oversized frame is
// reported, never wrapped.
// Four blocks a multiprocessor: the kernel fits the 64 registers that leaves without spilling
// (with the block size alone the compiler also chose 64 registers, and spilled 32 bytes).
// MATRICES_ON_DEVICE: the camera's matrices are loaded from `matrices` into shared memory
// (the camera by value is the fast path: its fields are the instructions' constant operands).
template <bool MATRICES_ON_DEVICE>
__global__ void __launch_bounds__(PREPROCESS_BLOCK, 4)
preprocess_kernel(Camera cam_arg, CameraMatrices matrices, RequestedPixels requests, int n,
                  const int64_t* __restrict__ octpaths, const float* __restrict__ centers,
                  const float* __restrict__ lengths, short4* __restrict__ pixel_rect,
                  uint8_t* __restrict__ octant_mask, int32_t* __restrict__ item_tiles,
                  unsigned long long* __restrict__ counts, float* __restrict__ camera_position) {
    __shared__ Camera shared_cam;
    if constexpr (MATRICES_ON_DEVICE) {
        if (threadIdx.x < 32) {
            const int i = threadIdx.x, row = (i % 16) / 4, col = i % 4;
            const bool c2w = i >= 16;
            const float value = c2w ? matrices.c2w[row * matrices.c2w_strides[0] + col * matrices.c2w_strides[1]]
                                    : matrices.w2c[row * matrices.w2c_strides[0] + col * matrices.w2c_strides[1]];
            if (blockIdx.x == 0) matrices.values[i] = value;
            if (row < 3) (c2w ? shared_cam.c2w : shared_cam.w2c)[4 * row + col] = value;
        }
        if (threadIdx.x == 32) {
            shared_cam.width = cam_arg.width;
            shared_cam.height = cam_arg.height;
            shared_cam.tanfovx = cam_arg.tanfovx;
            shared_cam.tanfovy = cam_arg.tanfovy;
            shared_cam.cx = cam_arg.cx;
            shared_cam.cy = cam_arg.cy;
            shared_cam.near = cam_arg.near;
        }
        __syncthreads();
    }
    const Camera& cam = MATRICES_ON_DEVICE ? shared_cam : cam_arg;
    // Constant indices: one indexed by the thread had every thread copy the camera (124 bytes) to
    // its stack first.
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        camera_position[0] = cam.c2w[3];
        camera_position[1] = cam.c2w[7];
        camera_position[2] = cam.c2w[11];
    }
    __shared__ unsigned long long warp_entries[PREPROCESS_BLOCK / 32], warp_fingerprint[PREPROCESS_BLOCK / 32];
    const int warp = threadIdx.x / 32;
    // The paths' fingerprint in a loop of its own, four loads in flight: summed in the
    // footprint loop, it took the kernel past 64 registers (73: fewer blocks resident, 0.18 ->
    // 0.21 ms at O6M), and one load at a time cost 0.02 ms. The levels the paths use are taken
    // here too, over all voxels: taken over the voxels in view in the footprint loop, the path
    // was loaded a second time there, and waiting on that load was 13% of the kernel's stall
    // samples (R6M). A level used only out of view costs the item sort three more key bits.
    // A path's used levels depend on its lowest set bit alone: the most any path uses are those
    // of the paths' bitwise OR.
    const int stride = gridDim.x * blockDim.x;
    unsigned long long fingerprint = 0;
    uint64_t paths_or = 0;
    for (int first = blockIdx.x * blockDim.x + threadIdx.x; first < n; first += 4 * stride) {
        uint64_t path[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const int v = first + k * stride;
            path[k] = v < n ? uint64_t(octpaths[v]) : 0;
        }
#pragma unroll
        for (int k = 0; k < 4; ++k)
            if (first + k * stride < n) {
                fingerprint += path_fingerprint(path[k], first + k * stride);
                paths_or |= path[k];
            }
    }
    unsigned levels = unsigned(used_levels(paths_or));
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) fingerprint += __shfl_down_sync(FULL_MASK, fingerprint, d);
    if (threadIdx.x % 32 == 0) warp_fingerprint[warp] = fingerprint;

    unsigned long long entries = 0;
    unsigned in_view = 0, items = 0, wide = 0;
    // The quick cull tests the tiles holding requests where at most a quarter of the tiles do
    // (the table's last entry counts them all): a patch, or sparse random pixels.
    const int n_tiles = cam.tiles_x() * cam.tiles_y();
    const bool cull_by_tiles =
        requests.tile_masks && 4 * requests.tile_sat[cam.tiles_y() * (cam.tiles_x() + 1) + cam.tiles_x()] <= n_tiles;
    // Each voxel's centre and size are loaded a loop step ahead, so that their latency hides
    // behind the previous voxel's arithmetic.
    int v = blockIdx.x * blockDim.x + threadIdx.x;
    float3 c_next = make_float3(0.f, 0.f, 0.f);
    float len_next = 0.f;
    if (v < n) {
        c_next = make_float3(centers[3 * v], centers[3 * v + 1], centers[3 * v + 2]);
        len_next = lengths[v];
    }
    for (; v < n; v += stride) {
        const float3 c = c_next;
        const float len = len_next;
        if (v + stride < n) {
            const int u = v + stride;
            c_next = make_float3(centers[3 * u], centers[3 * u + 1], centers[3 * u + 2]);
            len_next = lengths[u];
        }
        const VoxelFootprint f = preprocess_voxel(cam, requests, cull_by_tiles, c, len);
        octant_mask[v] = uint8_t(f.octant_mask);  // 0 when culled: the items' scan reads every voxel's
        if (f.tiles > 0) {  // nothing reads the rectangle or tile count of a voxel without entries
            pixel_rect[v] = make_short4(short(f.rect.x), short(f.rect.y), short(f.rect.z), short(f.rect.w));
            item_tiles[v] = f.tiles;
            const unsigned octants = __popc(f.octant_mask);
            entries += unsigned(f.tiles) * octants;
            ++in_view;
            items += octants;
            if (tile_area(tile_rect(f.rect)) > WIDE_CANDIDATES) wide += octants;
        }
    }
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) entries += __shfl_down_sync(FULL_MASK, entries, d);
    in_view = __reduce_add_sync(FULL_MASK, in_view);
    levels = __reduce_max_sync(FULL_MASK, levels);
    items = __reduce_add_sync(FULL_MASK, items);
    wide = __reduce_add_sync(FULL_MASK, wide);
    __shared__ unsigned warp_in_view[PREPROCESS_BLOCK / 32], warp_levels[PREPROCESS_BLOCK / 32],
        warp_items[PREPROCESS_BLOCK / 32], warp_wide[PREPROCESS_BLOCK / 32];
    if (threadIdx.x % 32 == 0) {
        warp_entries[warp] = entries;
        warp_in_view[warp] = in_view;
        warp_levels[warp] = levels;
        warp_items[warp] = items;
        warp_wide[warp] = wide;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned long long sum = 0, block_fingerprint = 0;
        unsigned block_in_view = 0, max_levels = 0, block_items = 0, block_wide = 0;
        for (int w = 0; w < PREPROCESS_BLOCK / 32; ++w) {
            sum += warp_entries[w];
            block_fingerprint += warp_fingerprint[w];
            block_in_view += warp_in_view[w];
            max_levels = max(max_levels, warp_levels[w]);
            block_items += warp_items[w];
            block_wide += warp_wide[w];
        }
        if (block_in_view > 0) {
            atomicAdd(counts + COUNT_ENTRIES, sum);
            atomicAdd(counts + COUNT_IN_VIEW, (unsigned long long)block_in_view);
            atomicAdd(counts + COUNT_ITEMS, (unsigned long long)block_items);
        }
        atomicMax(counts + COUNT_USED_LEVELS, (unsigned long long)max_levels);
        if (block_wide > 0) atomicAdd(counts + COUNT_WIDE, (unsigned long long)block_wide);
        atomicAdd(counts + PATHS_FINGERPRINT, block_fingerprint);
    }
}

}  // namespace

void preprocess(const Camera& cam, const CameraMatrices* matrices, const RequestedPixels& requests, int n_voxels,
                const int64_t* octpaths, const float* centers, const float* lengths, short4* pixel_rect,
                uint8_t* octant_mask, int32_t* item_tiles, unsigned long long* counts, float* camera_position,
                cudaStream_t stream) {
    // At least one block, which writes the camera position (and the matrices' values).
    const int blocks =
        std::max(1, std::min((n_voxels + PREPROCESS_BLOCK - 1) / PREPROCESS_BLOCK, PREPROCESS_MAX_BLOCKS));
    const auto kernel = matrices ? preprocess_kernel<true> : preprocess_kernel<false>;
    kernel<<<blocks, PREPROCESS_BLOCK, 0, stream>>>(cam, matrices ? *matrices : CameraMatrices{}, requests, n_voxels,
                                                    octpaths, centers, lengths, pixel_rect, octant_mask, item_tiles,
                                                    counts, camera_position);
}

// CUB's selection of the indices whose octant mask is not zero, in one pass (ATen's
// nonzero_static took four kernels), a byte a voxel (the tile counts, four bytes a voxel, are
// released before the entries are allocated). The scratch holds CUB's temporary storage, then
// the number selected.
size_t in_view_scratch_bytes(int n_voxels) {
    size_t bytes = 0;
    cub::DeviceSelect::Flagged(nullptr, bytes, thrust::counting_iterator<int64_t>(0), (const uint8_t*)nullptr,
                               (int64_t*)nullptr, (int64_t*)nullptr, n_voxels);
    return (bytes + sizeof(int64_t) - 1) / sizeof(int64_t) * sizeof(int64_t) + sizeof(int64_t);
}

void select_in_view(int n_voxels, const uint8_t* octant_mask, int64_t* in_view, void* scratch, size_t scratch_bytes,
                    cudaStream_t stream) {
    if (n_voxels == 0) return;
    size_t temp_bytes = scratch_bytes - sizeof(int64_t);
    int64_t* n_selected = reinterpret_cast<int64_t*>(static_cast<char*>(scratch) + temp_bytes);
    cub::DeviceSelect::Flagged(scratch, temp_bytes, thrust::counting_iterator<int64_t>(0), octant_mask, in_view,
                               n_selected, n_voxels, stream);
}

}  // namespace svr
