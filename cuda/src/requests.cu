// Sparse rendering's requested pixels (mirrors reference/requests.py): which pixels of each
// tile are requested (a 64-bit mask a tile, and a summed-area table of the tiles holding
// requests; read by preprocess and binning), and the requests grouped into warps of one tile
// each (the PixelSet of the render kernels): the tiles in a given order (the whole image's
// lists reused, longest first), else in index order (a sparse frame's own short lists: a
// layout that needs no list lengths is queued before the frame's device read, while the GPU
// is busy with preprocess). Requests outside the image (or not among the allowed ones) are
// counted, never followed: the caller reads the counts and raises.
#include <cub/device/device_scan.cuh>

#include "math.cuh"

namespace svr {
namespace {

// A request's bit in its tile's mask (rasterizer.h's RequestedPixels).
__device__ __forceinline__ uint64_t request_bit(int64_t row, int64_t col) {
    return 1ull << (TILE_SIZE * int(row % TILE_SIZE) + int(col % TILE_SIZE));
}

// The tile of a request inside the image; -1 (and the count bumped) for one outside it.
__device__ __forceinline__ int request_tile(const Camera& cam, int64_t row, int64_t col,
                                            unsigned long long* n_outside) {
    if (row < 0 || col < 0 || row >= cam.height || col >= cam.width) {
        atomicAdd(n_outside, 1ull);
        return -1;
    }
    return int(row / TILE_SIZE) * cam.tiles_x() + int(col / TILE_SIZE);
}

// The summed-area table of the tiles holding requests (zero first row and column), in
// two kernels of a warp per line (one block for the whole table took 0.026 ms at 1080p): each
// warp scans a tile row, 32 tiles per step by shuffles, then a column of the row sums the same
// way.
constexpr int TABLE_THREADS = 256, TABLE_WARPS = TABLE_THREADS / 32;

__global__ void __launch_bounds__(TABLE_THREADS)
tile_rows_kernel(int tiles_x, int tiles_y, const uint64_t* __restrict__ tile_masks, int32_t* __restrict__ sat) {
    const int stride = tiles_x + 1;
    const int lane = int(threadIdx.x & 31), ty = int(blockIdx.x * TABLE_WARPS + threadIdx.x / 32);
    if (blockIdx.x == 0)
        for (int x = threadIdx.x; x < stride; x += blockDim.x) sat[x] = 0;
    if (ty >= tiles_y) return;
    int32_t* row = sat + (ty + 1) * stride;
    if (lane == 0) row[0] = 0;
    int carry = 0;
    for (int x0 = 0; x0 < tiles_x; x0 += 32) {
        const int tx = x0 + lane, tile = ty * tiles_x + tx;
        const int active = tx < tiles_x && tile_masks[tile] != 0;
        const int sum = warp_inclusive_sum(active);
        if (tx < tiles_x) row[tx + 1] = carry + sum;
        carry += __shfl_sync(FULL_MASK, sum, 31);
    }
}

__global__ void __launch_bounds__(TABLE_THREADS)
tile_columns_kernel(int tiles_x, int tiles_y, int32_t* __restrict__ sat) {
    const int stride = tiles_x + 1;
    const int lane = int(threadIdx.x & 31), x = 1 + int(blockIdx.x * TABLE_WARPS + threadIdx.x / 32);
    if (x >= stride) return;
    int carry = 0;
    for (int y0 = 1; y0 <= tiles_y; y0 += 32) {
        const int y = y0 + lane;
        const int sum = warp_inclusive_sum(y <= tiles_y ? sat[y * stride + x] : 0);
        if (y <= tiles_y) sat[y * stride + x] = carry + sum;
        carry += __shfl_sync(FULL_MASK, sum, 31);
    }
}

__global__ void bin_kernel(Camera cam, int n, const int64_t* __restrict__ pixels, const uint64_t* __restrict__ allowed,
                           unsigned long long* __restrict__ tile_masks, int2* __restrict__ requests,
                           int32_t* __restrict__ tile_of, int32_t* __restrict__ rank, int32_t* __restrict__ tile_counts,
                           unsigned long long* __restrict__ n_outside, unsigned long long* __restrict__ n_not_allowed) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int64_t row = pixels[2 * i], col = pixels[2 * i + 1];
    int tile = request_tile(cam, row, col, n_outside);
    if (tile >= 0 && allowed && !(allowed[tile] & request_bit(row, col))) {
        atomicAdd(n_not_allowed, 1ull);
        tile = -1;
    }
    requests[i] = tile >= 0 ? make_int2(int(row), int(col)) : make_int2(0, 0);
    tile_of[i] = tile;
    if (tile < 0) return;
    if (tile_masks) atomicOr(tile_masks + tile, (unsigned long long)request_bit(row, col));
    // The lane order inside a tile's warps is free: each lane's outputs depend on its pixel only.
    rank[i] = atomicAdd(tile_counts + tile, 1);
}

__global__ void ordered_warps_kernel(int n_tiles, int per_warp, const int32_t* __restrict__ tile_order,
                                     const int32_t* __restrict__ tile_counts, int32_t* __restrict__ warps) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n_tiles) warps[i] = (tile_counts[tile_order ? tile_order[i] : i] + per_warp - 1) / per_warp;
}

__global__ void warp_tiles_kernel(int n_tiles, const int32_t* __restrict__ tile_order,
                                  const int32_t* __restrict__ warps, const int32_t* __restrict__ warp_end,
                                  int32_t* __restrict__ warp_start, int32_t* __restrict__ warp_tiles) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_tiles) return;
    const int tile = tile_order ? tile_order[i] : i;
    const int start = warp_end[i] - warps[i];
    warp_start[tile] = start;
    for (int w = 0; w < warps[i]; ++w) warp_tiles[start + w] = tile;
}

__global__ void lanes_kernel(int n, int per_warp, const int32_t* __restrict__ tile_of, const int32_t* __restrict__ rank,
                             const int32_t* __restrict__ warp_start, int32_t* __restrict__ lane_requests) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || tile_of[i] < 0) return;
    lane_requests[(warp_start[tile_of[i]] + rank[i] / per_warp) * 32 + rank[i] % per_warp] = i;
}

int blocks_for(int n) { return (n + 255) / 256; }

// assign_warps' scratch: CUB's temporary storage, rounded up to 256 bytes so that the arrays
// after it stay aligned, then the warps per ordered tile and their inclusive scan.
size_t scan_bytes(int n_tiles) {
    size_t bytes = 0;
    cub::DeviceScan::InclusiveSum(nullptr, bytes, static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
                                  n_tiles);
    return (bytes + 255) / 256 * 256;
}

}  // namespace

void tile_table(const Camera& cam, const uint64_t* tile_masks, int32_t* tile_sat, cudaStream_t stream) {
    const int tiles_x = cam.tiles_x(), tiles_y = cam.tiles_y();
    const int row_blocks = (tiles_y + TABLE_WARPS - 1) / TABLE_WARPS;
    const int column_blocks = (tiles_x + TABLE_WARPS - 1) / TABLE_WARPS;
    tile_rows_kernel<<<row_blocks, TABLE_THREADS, 0, stream>>>(tiles_x, tiles_y, tile_masks, tile_sat);
    tile_columns_kernel<<<column_blocks, TABLE_THREADS, 0, stream>>>(tiles_x, tiles_y, tile_sat);
}

void bin_requests(const Camera& cam, int n_requests, const int64_t* pixels, const uint64_t* allowed,
                  uint64_t* tile_masks, int2* requests, int32_t* tile_of, int32_t* rank, int32_t* tile_counts,
                  unsigned long long* n_outside, unsigned long long* n_not_allowed, cudaStream_t stream) {
    if (n_requests == 0) return;
    bin_kernel<<<blocks_for(n_requests), 256, 0, stream>>>(cam, n_requests, pixels, allowed,
                                                           reinterpret_cast<unsigned long long*>(tile_masks), requests,
                                                           tile_of, rank, tile_counts, n_outside, n_not_allowed);
}

size_t assign_warps_scratch_bytes(int n_tiles) { return scan_bytes(n_tiles) + 2 * sizeof(int32_t) * size_t(n_tiles); }

void assign_warps(int n_tiles, int n_requests, int per_warp, const int32_t* tile_order, const int32_t* tile_counts,
                  const int32_t* tile_of, const int32_t* rank, void* scratch, int32_t* warp_start,
                  int32_t* warp_tiles, int32_t* lane_requests, cudaStream_t stream) {
    if (n_requests == 0) return;
    size_t bytes = scan_bytes(n_tiles);
    int32_t* warps = reinterpret_cast<int32_t*>(static_cast<char*>(scratch) + bytes);
    int32_t* warp_end = warps + n_tiles;
    ordered_warps_kernel<<<blocks_for(n_tiles), 256, 0, stream>>>(n_tiles, per_warp, tile_order, tile_counts, warps);
    cub::DeviceScan::InclusiveSum(scratch, bytes, warps, warp_end, n_tiles, stream);
    warp_tiles_kernel<<<blocks_for(n_tiles), 256, 0, stream>>>(n_tiles, tile_order, warps, warp_end, warp_start,
                                                               warp_tiles);
    lanes_kernel<<<blocks_for(n_requests), 256, 0, stream>>>(n_requests, per_warp, tile_of, rank, warp_start,
                                                             lane_requests);
}

}  // namespace svr
