// Stages 2-4 (mirror reference/binning.py): duplicate each voxel into one entry per
// (tile, octant), radix-sort the entries by (tile, front-to-back rank), and find each tile's
// slice. A tile's list interleaves its octants; each pixel reads only entries of its own
// octant, which are in exact front-to-back order for it (SPEC 3.2).
#include <cub/device/device_radix_sort.cuh>

#include "math.cuh"

namespace svr {
namespace {

int bits_for(int n) {
    int bits = 0;
    while ((1ll << bits) < n) ++bits;
    return bits;
}

__global__ void duplicate_kernel(int n, int tiles_x, RequestedPixels requests, KeyLayout layout,
                                 const int64_t* __restrict__ octpaths,
                                 const short4* __restrict__ pixel_rect, const uint8_t* __restrict__ octant_mask,
                                 const int32_t* __restrict__ n_duplicates, const int32_t* __restrict__ offsets,
                                 uint64_t* __restrict__ keys,
                                 uint32_t* __restrict__ tile_keys, uint32_t* __restrict__ values) {
    const int v = blockIdx.x * blockDim.x + threadIdx.x;
    if (v >= n) return;
    const int32_t count = n_duplicates[v];
    if (count == 0) return;  // culled, or no active tile
    const uint32_t mask = octant_mask[v];
    const int4 p = widen(pixel_rect[v]);
    const int4 r = make_int4(p.x / TILE_SIZE, p.y / TILE_SIZE, p.z / TILE_SIZE, p.w / TILE_SIZE);
    const bool exact = (r.z - r.x + 1) * (r.w - r.y + 1) <= MAX_EXACT_TILES;  // as preprocess counted
    int at = offsets[v] - count;
    const uint64_t path = uint64_t(octpaths[v]);
    const bool single = layout.single();
    for (int q = 0; q < 8; ++q) {
        if (!(mask >> q & 1u)) continue;
        const uint64_t rank = order_rank(path, q) >> (RANK_BITS - layout.rank_bits);
        const uint32_t value = uint32_t(q) << VOXEL_ID_BITS | uint32_t(v);
        for (int ty = r.y; ty <= r.w; ++ty)
            for (int tx = r.x; tx <= r.z; ++tx) {
                const uint32_t tile = uint32_t(ty * tiles_x + tx);
                if (requests.tile_summary && !bins_into(requests, p, tx, ty, tiles_x, exact)) continue;
                keys[at] = single ? (uint64_t(tile) << layout.rank_bits | rank) : rank;
                if (!single) tile_keys[at] = tile;
                values[at++] = value;
            }
    }
}

__global__ void iota_kernel(int64_t n, uint32_t* out) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) out[i] = uint32_t(i);
}

__global__ void gather_kernel(int64_t n, const uint32_t* __restrict__ order, const uint32_t* __restrict__ tile_keys,
                              const uint32_t* __restrict__ values, uint32_t* __restrict__ tile_out,
                              uint32_t* __restrict__ values_out) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    tile_out[i] = tile_keys[order[i]];
    values_out[i] = values[order[i]];
}

template <bool SingleKey>
__global__ void ranges_kernel(int64_t n, int rank_bits, const uint64_t* __restrict__ keys,
                              const uint32_t* __restrict__ tile_keys, int2* __restrict__ ranges) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    auto tile_of = [&](int64_t j) { return SingleKey ? uint32_t(keys[j] >> rank_bits) : tile_keys[j]; };
    const uint32_t tile = tile_of(i);
    if (i == 0 || tile_of(i - 1) != tile) ranges[tile].x = int(i);
    if (i == n - 1 || tile_of(i + 1) != tile) ranges[tile].y = int(i + 1);
}

int grid_for(int64_t n, int block) { return int((n + block - 1) / block); }

// The render order of the tiles, longest list first, by a counting sort on the list length's
// logarithm in sixteenths of an octave (lengths within 4.4% share a bucket): one block, one
// launch (a full argsort was a dozen). The order inside a bucket is left to the atomics: it
// changes the schedule, never a pixel.
constexpr int ORDER_STEPS_PER_OCTAVE = 16;
constexpr int ORDER_BUCKETS = 32 * ORDER_STEPS_PER_OCTAVE;

__device__ __forceinline__ int order_bucket(int2 range) {
    const int length = range.y - range.x;
    return length > 0 ? min(ORDER_BUCKETS - 1, 1 + int(ORDER_STEPS_PER_OCTAVE * log2f(float(length)))) : 0;
}

__global__ void tile_order_kernel(int n_tiles, const int2* __restrict__ ranges, int32_t* __restrict__ order) {
    __shared__ int slot[ORDER_BUCKETS];
    for (int b = threadIdx.x; b < ORDER_BUCKETS; b += blockDim.x) slot[b] = 0;
    __syncthreads();
    for (int t = threadIdx.x; t < n_tiles; t += blockDim.x) atomicAdd(&slot[order_bucket(ranges[t])], 1);
    __syncthreads();
    if (threadIdx.x == 0) {  // the first slot of each bucket, the longest bucket first
        int sum = 0;
        for (int b = ORDER_BUCKETS - 1; b >= 0; --b) {
            const int count = slot[b];
            slot[b] = sum;
            sum += count;
        }
    }
    __syncthreads();
    for (int t = threadIdx.x; t < n_tiles; t += blockDim.x) order[atomicAdd(&slot[order_bucket(ranges[t])], 1)] = t;
}

}  // namespace

KeyLayout::KeyLayout(int n_tiles, int used_levels) : rank_bits(3 * used_levels), tile_bits(bits_for(n_tiles)) {}

// CUB is always given at least one bit to sort (a layout can have zero).
int sort_bits(int bits) { return bits > 0 ? bits : 1; }

size_t sort_scratch_bytes(int64_t n_entries, const KeyLayout& layout) {
    size_t a = 0, b = 0;
    const int n = int(n_entries);
    cub::DoubleBuffer<uint64_t> keys(nullptr, nullptr);
    cub::DoubleBuffer<uint32_t> words(nullptr, nullptr), values(nullptr, nullptr);
    if (layout.single()) {
        cub::DeviceRadixSort::SortPairs(nullptr, a, keys, values, n, 0, sort_bits(layout.rank_bits + layout.tile_bits));
    } else {
        cub::DeviceRadixSort::SortPairs(nullptr, a, keys, values, n, 0, sort_bits(layout.rank_bits));
        cub::DeviceRadixSort::SortPairs(nullptr, b, words, values, n, 0, sort_bits(layout.tile_bits));
    }
    return a > b ? a : b;
}

void duplicate_with_keys(const Camera& cam, const RequestedPixels& requests, const KeyLayout& layout, int n_voxels,
                         const int64_t* octpaths, const short4* pixel_rect, const uint8_t* octant_mask,
                         const int32_t* n_duplicates, const int32_t* offsets, uint64_t* keys, uint32_t* tile_keys,
                         uint32_t* values, cudaStream_t stream) {
    if (n_voxels == 0) return;
    duplicate_kernel<<<grid_for(n_voxels, 256), 256, 0, stream>>>(n_voxels, cam.tiles_x(), requests, layout, octpaths,
                                                                  pixel_rect, octant_mask, n_duplicates, offsets, keys,
                                                                  tile_keys, values);
}

SortedEntries sort_entries(int64_t n_entries, const KeyLayout& layout, uint64_t* keys, uint64_t* keys_alt,
                           uint32_t* tile_keys, uint32_t* tile_keys_alt, uint32_t* values, uint32_t* values_alt,
                           uint32_t* index_scratch, void* scratch, size_t scratch_bytes, cudaStream_t stream) {
    const int n = int(n_entries);
    cub::DoubleBuffer<uint64_t> sorted_keys(keys, keys_alt);
    if (layout.single()) {
        cub::DoubleBuffer<uint32_t> sorted_values(values, values_alt);
        if (n > 0)
            cub::DeviceRadixSort::SortPairs(scratch, scratch_bytes, sorted_keys, sorted_values, n, 0,
                                            sort_bits(layout.rank_bits + layout.tile_bits), stream);
        return {sorted_keys.Current(), nullptr, sorted_values.Current()};
    }
    // Two stable passes: by rank (carrying the entry index), then by tile.
    cub::DoubleBuffer<uint32_t> order(index_scratch, index_scratch + n_entries);
    cub::DoubleBuffer<uint32_t> sorted_tiles(tile_keys_alt, tile_keys), sorted_values(values_alt, values);
    if (n > 0) {
        iota_kernel<<<grid_for(n_entries, 256), 256, 0, stream>>>(n_entries, order.Current());
        cub::DeviceRadixSort::SortPairs(scratch, scratch_bytes, sorted_keys, order, n, 0, sort_bits(layout.rank_bits),
                                        stream);
        // The tiles and values in rank order, into the second buffers.
        gather_kernel<<<grid_for(n_entries, 256), 256, 0, stream>>>(n_entries, order.Current(), tile_keys, values,
                                                                    tile_keys_alt, values_alt);
        cub::DeviceRadixSort::SortPairs(scratch, scratch_bytes, sorted_tiles, sorted_values, n, 0,
                                        sort_bits(layout.tile_bits), stream);
    }
    return {nullptr, sorted_tiles.Current(), sorted_values.Current()};
}

void order_tiles(int n_tiles, const int2* ranges, int32_t* tile_order, cudaStream_t stream) {
    tile_order_kernel<<<1, 1024, 0, stream>>>(n_tiles, ranges, tile_order);
}

void identify_tile_ranges(int64_t n_entries, int n_tiles, const KeyLayout& layout, const SortedEntries& sorted,
                          int2* ranges, cudaStream_t stream) {
    cudaMemsetAsync(ranges, 0, sizeof(int2) * n_tiles, stream);
    if (n_entries == 0) return;
    if (layout.single())
        ranges_kernel<true><<<grid_for(n_entries, 256), 256, 0, stream>>>(n_entries, layout.rank_bits, sorted.keys,
                                                                           nullptr, ranges);
    else
        ranges_kernel<false><<<grid_for(n_entries, 256), 256, 0, stream>>>(n_entries, layout.rank_bits, nullptr,
                                                                            sorted.tile_keys, ranges);
}

}  // namespace svr
