// Sparse rendering's requested pixels (mirrors reference/requests.py): which pixels of each
// tile are requested (row masks and a summed-area table of the tiles holding requests, read by
// preprocess and binning), and the requests grouped into warps of one tile each (the PixelSet
// of the render kernels), the tiles of longest list first. Requests outside the image (or not
// among the allowed ones) are counted, never followed: the caller reads the counts and raises.
#include "rasterizer.h"

namespace svr {
namespace {

// The tile of a request inside the image; -1 (and the count bumped) for one outside it.
__device__ __forceinline__ int request_tile(const Camera& cam, int64_t row, int64_t col,
                                            unsigned long long* n_outside) {
    if (row < 0 || col < 0 || row >= cam.height || col >= cam.width) {
        atomicAdd(n_outside, 1ull);
        return -1;
    }
    return int(row / TILE_SIZE) * cam.tiles_x() + int(col / TILE_SIZE);
}

__global__ void mark_kernel(Camera cam, int n, const int64_t* __restrict__ pixels, uint32_t* __restrict__ row_masks,
                            unsigned long long* __restrict__ n_outside) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int64_t row = pixels[2 * i], col = pixels[2 * i + 1];
    const int tile = request_tile(cam, row, col, n_outside);
    if (tile >= 0) atomicOr(row_masks + tile * TILE_SIZE + row % TILE_SIZE, 1u << (col % TILE_SIZE));
}

// One block: tile_active from the row masks, then the summed-area table (zero first row and
// column) by prefix sums along the rows and then down the columns.
__global__ void tile_table_kernel(int tiles_x, int tiles_y, const uint32_t* __restrict__ row_masks,
                                  uint8_t* __restrict__ tile_active, int32_t* __restrict__ sat) {
    const int n_tiles = tiles_x * tiles_y, stride = tiles_x + 1;
    for (int t = threadIdx.x; t < n_tiles; t += blockDim.x) {
        uint32_t any = 0;
        for (int y = 0; y < TILE_SIZE; ++y) any |= row_masks[t * TILE_SIZE + y];
        tile_active[t] = any != 0;
    }
    for (int x = threadIdx.x; x < stride; x += blockDim.x) sat[x] = 0;
    __syncthreads();
    for (int ty = threadIdx.x; ty < tiles_y; ty += blockDim.x) {
        int32_t* row = sat + (ty + 1) * stride;
        int running = 0;
        row[0] = 0;
        for (int tx = 0; tx < tiles_x; ++tx) row[tx + 1] = running += tile_active[ty * tiles_x + tx];
    }
    __syncthreads();
    for (int x = threadIdx.x + 1; x < stride; x += blockDim.x) {
        int running = 0;
        for (int ty = 1; ty <= tiles_y; ++ty) sat[ty * stride + x] = running += sat[ty * stride + x];
    }
}

__global__ void bin_kernel(Camera cam, int n, const int64_t* __restrict__ pixels, const uint32_t* __restrict__ allowed,
                           int2* __restrict__ requests, int32_t* __restrict__ tile_of, int32_t* __restrict__ rank,
                           int32_t* __restrict__ tile_counts, unsigned long long* __restrict__ invalid) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int64_t row = pixels[2 * i], col = pixels[2 * i + 1];
    int tile = request_tile(cam, row, col, invalid);
    if (tile >= 0 && allowed && !(allowed[tile * TILE_SIZE + row % TILE_SIZE] >> (col % TILE_SIZE) & 1u)) {
        atomicAdd(invalid + 1, 1ull);
        tile = -1;
    }
    requests[i] = tile >= 0 ? make_int2(int(row), int(col)) : make_int2(0, 0);
    tile_of[i] = tile;
    // The lane order inside a tile's warps is free: each lane's outputs depend on its pixel only.
    if (tile >= 0) rank[i] = atomicAdd(tile_counts + tile, 1);
}

__global__ void warp_tiles_kernel(int n_tiles, const int32_t* __restrict__ tile_order,
                                  const int32_t* __restrict__ tile_counts, const int64_t* __restrict__ warp_end,
                                  int32_t* __restrict__ warp_start, int32_t* __restrict__ warp_tiles) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_tiles) return;
    const int tile = tile_order[i];
    const int warps = (tile_counts[tile] + 31) / 32;
    const int start = int(warp_end[i]) - warps;
    warp_start[tile] = start;
    for (int w = 0; w < warps; ++w) warp_tiles[start + w] = tile;
}

__global__ void lanes_kernel(int n, const int32_t* __restrict__ tile_of, const int32_t* __restrict__ rank,
                             const int32_t* __restrict__ warp_start, int32_t* __restrict__ lane_requests) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || tile_of[i] < 0) return;
    lane_requests[warp_start[tile_of[i]] * 32 + rank[i]] = i;
}

int blocks_for(int n) { return (n + 255) / 256; }

}  // namespace

void mark_requests(const Camera& cam, int n_requests, const int64_t* pixels, uint32_t* row_masks,
                   uint8_t* tile_active, int32_t* tile_sat, unsigned long long* n_outside, cudaStream_t stream) {
    if (n_requests > 0)
        mark_kernel<<<blocks_for(n_requests), 256, 0, stream>>>(cam, n_requests, pixels, row_masks, n_outside);
    tile_table_kernel<<<1, 1024, 0, stream>>>(cam.tiles_x(), cam.tiles_y(), row_masks, tile_active, tile_sat);
}

void bin_requests(const Camera& cam, int n_requests, const int64_t* pixels, const uint32_t* allowed, int2* requests,
                  int32_t* tile_of, int32_t* rank, int32_t* tile_counts, unsigned long long* invalid,
                  cudaStream_t stream) {
    if (n_requests == 0) return;
    bin_kernel<<<blocks_for(n_requests), 256, 0, stream>>>(cam, n_requests, pixels, allowed, requests, tile_of, rank,
                                                           tile_counts, invalid);
}

void assign_warps(int n_tiles, int n_requests, const int32_t* tile_order, const int32_t* tile_counts,
                  const int64_t* warp_end, const int32_t* tile_of, const int32_t* rank, int32_t* warp_start,
                  int32_t* warp_tiles, int32_t* lane_requests, cudaStream_t stream) {
    if (n_requests == 0) return;
    warp_tiles_kernel<<<blocks_for(n_tiles), 256, 0, stream>>>(n_tiles, tile_order, tile_counts, warp_end, warp_start,
                                                               warp_tiles);
    lanes_kernel<<<blocks_for(n_requests), 256, 0, stream>>>(n_requests, tile_of, rank, warp_start, lane_requests);
}

}  // namespace svr
