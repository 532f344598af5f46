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

// Whole image: a thread per voxel writes its entries, octant by octant, tile rows in order.
// Requested pixels: each candidate (octant, tile) costs a bins_into test (dependent loads of the
// tile's summary and row masks), and a thread per voxel ran its voxel's tests one after the
// other (0.160 ms at R6M, 1% of the pixels). There the lanes of a warp walk the candidates of
// their 32 voxels together, 32 at a time in the same order, and keep the binned ones by ballot
// (0.130 ms). The same walk for the whole image was slower than a thread per voxel (0.139
// against 0.125 ms): more instructions per entry, and no tests to spread.
// In both, a voxel of more than WIDE_CANDIDATES candidates is only listed, and wide_kernel
// gives each listed voxel a warp of its own: a near voxel spans up to a few thousand 8x8 tiles,
// and such voxels sit together in the arrays (a background shell), so a thread or a warp of 32
// of them made the kernel's tail (R6M: 0.21 -> 0.12 ms whole image, 0.28 -> 0.09 ms for 1% of
// the pixels). Letting a warp take over its own voxels of many candidates had gained nothing
// (0.167 ms): the tail moved with them.
constexpr int DUPLICATE_BLOCK = 256;

struct EntryWriter {
    KeyLayout layout;
    uint64_t* keys;
    uint32_t* tile_keys;
    uint32_t* values;

    __device__ __forceinline__ uint64_t rank(uint64_t path, int q) const {
        return order_rank(path, q) >> (RANK_BITS - layout.rank_bits);
    }
    // Entry `at`: voxel `voxel` (pixel rectangle p) in tile (tx, ty) for octant q.
    __device__ __forceinline__ void write(int at, int4 p, int tx, int ty, int tiles_x, uint64_t rank, int q,
                                          uint32_t voxel) const {
        const uint32_t tile = uint32_t(ty * tiles_x + tx);
        if (layout.rect_in_key()) {
            const uint64_t rect = pack_entry_rect(p, tx * TILE_SIZE, ty * TILE_SIZE);
            keys[at] = rect << ENTRY_RECT_SHIFT | uint64_t(tile) << layout.rank_bits | rank;
        } else if (layout.single()) {
            keys[at] = uint64_t(tile) << layout.rank_bits | rank;
        } else {
            keys[at] = rank;
            tile_keys[at] = tile;
        }
        values[at] = uint32_t(q) << VOXEL_ID_BITS | voxel;
    }
};

// The voxels binned by a warp each (wide_kernel).
struct WideList {
    int32_t* ids;
    unsigned long long* cursor;
    __device__ __forceinline__ void add(int v) const { ids[atomicAdd(cursor, 1ull)] = v; }
};

// Candidate j (octant ordinal major, then tile rows) of a voxel with tile rectangle r.
struct TileCandidate {
    int octant_ordinal, tx, ty;
};
__device__ __forceinline__ TileCandidate candidate(int4 r, int j) {
    const int width = r.z - r.x + 1, area = tile_area(r);
    const int octant_ordinal = j / area, t = j - octant_ordinal * area;
    return {octant_ordinal, r.x + t % width, r.y + t / width};
}

template <bool SPARSE>
__global__ void __launch_bounds__(DUPLICATE_BLOCK)
duplicate_kernel(int n, int tiles_x, RequestedPixels requests, EntryWriter writer, WideList wide,
                 const int64_t* __restrict__ octpaths, const short4* __restrict__ pixel_rect,
                 const uint8_t* __restrict__ octant_mask, const int32_t* __restrict__ n_duplicates,
                 const int32_t* __restrict__ offsets) {
    const int v = blockIdx.x * blockDim.x + threadIdx.x, lane = int(threadIdx.x & 31);
    const int32_t count = v < n ? n_duplicates[v] : 0;
    if (!SPARSE) {
        if (count == 0) return;  // culled
        const int4 p = widen(pixel_rect[v]);
        const uint32_t mask = octant_mask[v];
        if (entry_candidates(p, mask) > WIDE_CANDIDATES) {
            wide.add(v);
            return;
        }
        const int4 r = tile_rect(p);
        const uint64_t path = uint64_t(octpaths[v]);
        int at = offsets[v] - count;
        for (int q = 0; q < 8; ++q) {
            if (!(mask >> q & 1u)) continue;
            const uint64_t rank = writer.rank(path, q);
            for (int ty = r.y; ty <= r.w; ++ty)
                for (int tx = r.x; tx <= r.z; ++tx) writer.write(at++, p, tx, ty, tiles_x, rank, q, uint32_t(v));
        }
        return;
    }
    // This lane's voxel: its pixel rectangle, octants and candidates (tiles x octants); a wide
    // voxel is listed, and its entries are skipped in this warp's output.
    int4 p = make_int4(0, 0, -1, -1);
    uint32_t mask = 0;
    uint64_t path = 0;
    int candidates = 0, skipped = 0;
    if (count > 0) {  // else culled, or no active tile
        p = widen(pixel_rect[v]);
        mask = octant_mask[v];
        path = uint64_t(octpaths[v]);
        candidates = entry_candidates(p, mask);
        if (candidates > WIDE_CANDIDATES) {
            wide.add(v);
            candidates = 0;
            skipped = count;
        }
    }
    if (!__any_sync(FULL_MASK, candidates > 0)) return;
    // Inclusive sums over the lanes: candidates, skipped entries.
    const int end = warp_inclusive_sum(candidates);
    skipped = warp_inclusive_sum(skipped);
    const int total = __shfl_sync(FULL_MASK, end, 31);
    // The voxels' entries are contiguous (offsets is their inclusive scan): the warp writes
    // from its first voxel's on (that voxel is in range, since the warp has candidates), the
    // kept candidates in order, past the places of the wide voxels before theirs.
    int out = __shfl_sync(FULL_MASK, v < n ? offsets[v] - count : 0, 0);
    const uint32_t lanes_below = (1u << lane) - 1u;
    for (int first = 0; first < total; first += 32) {
        const int j = first + lane;
        const int k = lane_holding(end, j);  // the lane whose candidates hold candidate j
        const int start = __shfl_sync(FULL_MASK, end - candidates, k);
        const int skipped_before = __shfl_sync(FULL_MASK, skipped, k);  // lane k itself is not wide
        const int4 pk = make_int4(__shfl_sync(FULL_MASK, p.x, k), __shfl_sync(FULL_MASK, p.y, k),
                                  __shfl_sync(FULL_MASK, p.z, k), __shfl_sync(FULL_MASK, p.w, k));
        const uint32_t mask_k = __shfl_sync(FULL_MASK, mask, k);
        const uint64_t path_k = __shfl_sync(FULL_MASK, path, k);
        const int4 r = tile_rect(pk);
        const TileCandidate c = candidate(r, j - start);
        const bool exact = tile_area(r) <= MAX_EXACT_TILES;  // as preprocess counted
        const bool keep = j < total && bins_into(requests, pk, c.tx, c.ty, tiles_x, exact);
        const uint32_t kept = __ballot_sync(FULL_MASK, keep);
        if (keep) {
            const int q = nth_set_bit(mask_k, c.octant_ordinal);
            writer.write(out + skipped_before + __popc(kept & lanes_below), pk, c.tx, c.ty, tiles_x,
                         writer.rank(path_k, q), q, uint32_t(v - lane + k));
        }
        out += __popc(kept);
    }
}

// A warp per listed voxel: its lanes take 32 candidates at a time, in the order a thread
// would, and keep (for requested pixels) the binned ones by ballot.
template <bool SPARSE>
__global__ void __launch_bounds__(DUPLICATE_BLOCK)
wide_kernel(int n_wide, const int32_t* __restrict__ wide, int tiles_x, RequestedPixels requests, EntryWriter writer,
            const int64_t* __restrict__ octpaths, const short4* __restrict__ pixel_rect,
            const uint8_t* __restrict__ octant_mask, const int32_t* __restrict__ n_duplicates,
            const int32_t* __restrict__ offsets) {
    const int w = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = int(threadIdx.x & 31);
    if (w >= n_wide) return;
    const int v = wide[w];
    const int4 p = widen(pixel_rect[v]);
    const uint32_t mask = octant_mask[v];
    const uint64_t path = uint64_t(octpaths[v]);
    const int4 r = tile_rect(p);
    const bool exact = tile_area(r) <= MAX_EXACT_TILES;  // as preprocess counted
    const int candidates = entry_candidates(p, mask);
    int out = offsets[v] - n_duplicates[v];
    const uint32_t lanes_below = (1u << lane) - 1u;
    for (int first = 0; first < candidates; first += 32) {
        const int j = first + lane;
        const TileCandidate c = candidate(r, j);
        const bool keep = j < candidates && (!SPARSE || bins_into(requests, p, c.tx, c.ty, tiles_x, exact));
        const uint32_t kept = __ballot_sync(FULL_MASK, keep);
        if (keep) {
            const int q = nth_set_bit(mask, c.octant_ordinal);
            writer.write(out + __popc(kept & lanes_below), p, c.tx, c.ty, tiles_x, writer.rank(path, q), q,
                         uint32_t(v));
        }
        out += __popc(kept);
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

// Each tile's slice of the sorted list, and each entry's pixel rectangle within its tile: from
// the key's top bits where it rode there, else from the voxel's rectangle (a gather: 0.07 ms
// for the 9.2M entries of R6M at 1080p, against 0.03 ms for the whole kernel without it).
template <bool SingleKey, bool RectInKey>
__global__ void ranges_kernel(int64_t n, KeyLayout layout, int tiles_x, const uint64_t* __restrict__ keys,
                              const uint32_t* __restrict__ tile_keys, const uint32_t* __restrict__ values,
                              const short4* __restrict__ pixel_rect, uint16_t* __restrict__ entry_rects,
                              int2* __restrict__ ranges) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const uint64_t tile_mask = (uint64_t(1) << layout.tile_bits) - 1;
    auto tile_in = [&](uint64_t key) { return uint32_t(key >> layout.rank_bits & tile_mask); };
    auto tile_of = [&](int64_t j) { return SingleKey ? tile_in(keys[j]) : tile_keys[j]; };
    const uint64_t key = SingleKey ? keys[i] : 0;
    const uint32_t tile = SingleKey ? tile_in(key) : tile_keys[i];
    if (i == 0 || tile_of(i - 1) != tile) ranges[tile].x = int(i);
    if (i == n - 1 || tile_of(i + 1) != tile) ranges[tile].y = int(i + 1);
    if (RectInKey) {
        entry_rects[i] = uint16_t(key >> ENTRY_RECT_SHIFT);
    } else {
        const int4 rect = widen(pixel_rect[values[i] & VOXEL_ID_MASK]);
        entry_rects[i] = pack_entry_rect(rect, int(tile % tiles_x) * TILE_SIZE, int(tile / tiles_x) * TILE_SIZE);
    }
}

int grid_for(int64_t n, int block) { return int((n + block - 1) / block); }

// The render order of the tiles, longest list first, by a counting sort on the list length's
// logarithm in sixteenths of an octave (lengths within 4.4% share a bucket). The order inside
// a bucket is left to the atomics: it changes the schedule, never a pixel. Two kernels over
// blocks of tiles (one block over all 32,400 tiles of 1080p took 0.03 ms, waiting on its
// loads): a histogram of the buckets, then each block takes its tiles' slots, one atomic per
// bucket it holds.
constexpr int ORDER_STEPS_PER_OCTAVE = 16;
constexpr int ORDER_BUCKETS = 32 * ORDER_STEPS_PER_OCTAVE;
constexpr int ORDER_THREADS = 1024;
static_assert(ORDER_BUCKETS <= ORDER_THREADS && ORDER_BUCKETS % 32 == 0, "a thread per bucket in the scan");

__device__ __forceinline__ int order_bucket(int2 range) {
    const int length = range.y - range.x;
    return length > 0 ? min(ORDER_BUCKETS - 1, 1 + int(ORDER_STEPS_PER_OCTAVE * log2f(float(length)))) : 0;
}

// histogram[b] += the block's tiles in bucket b; returns this thread's tile's bucket (-1: none)
// and its rank among the block's tiles of that bucket (block_count holds the block's counts).
__device__ __forceinline__ int2 count_buckets(int n_tiles, const int2* __restrict__ ranges, int* block_count) {
    for (int b = threadIdx.x; b < ORDER_BUCKETS; b += blockDim.x) block_count[b] = 0;
    __syncthreads();
    const int t = int(blockIdx.x * blockDim.x + threadIdx.x);
    int2 bucket_rank = make_int2(-1, 0);
    if (t < n_tiles) {
        bucket_rank.x = order_bucket(ranges[t]);
        bucket_rank.y = atomicAdd(&block_count[bucket_rank.x], 1);
    }
    __syncthreads();
    return bucket_rank;
}

__global__ void __launch_bounds__(ORDER_THREADS)
tile_histogram_kernel(int n_tiles, const int2* __restrict__ ranges, int* __restrict__ histogram) {
    __shared__ int block_count[ORDER_BUCKETS];
    count_buckets(n_tiles, ranges, block_count);
    for (int b = threadIdx.x; b < ORDER_BUCKETS; b += blockDim.x)
        if (block_count[b]) atomicAdd(&histogram[b], block_count[b]);
}

__global__ void __launch_bounds__(ORDER_THREADS)
tile_order_kernel(int n_tiles, const int2* __restrict__ ranges, const int* __restrict__ histogram,
                  int* __restrict__ taken, int32_t* __restrict__ order) {
    __shared__ int block_count[ORDER_BUCKETS], first_slot[ORDER_BUCKETS], warp_sums[ORDER_BUCKETS / 32];
    const int2 bucket_rank = count_buckets(n_tiles, ranges, block_count);
    // Each bucket's first slot, the longest bucket first: thread i scans bucket
    // ORDER_BUCKETS - 1 - i (warp scans, then the warps' totals).
    const int i = int(threadIdx.x), lane = i & 31;
    int count = 0, inclusive = 0;
    if (i < ORDER_BUCKETS) {
        count = histogram[ORDER_BUCKETS - 1 - i];
        inclusive = warp_inclusive_sum(count);
        if (lane == 31) warp_sums[i / 32] = inclusive;
    }
    __syncthreads();
    if (i < ORDER_BUCKETS) {
        const int b = ORDER_BUCKETS - 1 - i;
        int start = inclusive - count;
        for (int w = 0; w < i / 32; ++w) start += warp_sums[w];
        if (block_count[b]) first_slot[b] = start + atomicAdd(&taken[b], block_count[b]);
    }
    __syncthreads();
    if (bucket_rank.x >= 0)
        order[first_slot[bucket_rank.x] + bucket_rank.y] = int(blockIdx.x * blockDim.x + threadIdx.x);
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
                         const int32_t* n_duplicates, const int32_t* offsets, int n_wide, int32_t* wide,
                         unsigned long long* wide_cursor, uint64_t* keys, uint32_t* tile_keys, uint32_t* values,
                         cudaStream_t stream) {
    if (n_voxels == 0) return;
    const EntryWriter writer{layout, keys, tile_keys, values};
    const WideList list{wide, wide_cursor};
    const dim3 grid(grid_for(n_voxels, DUPLICATE_BLOCK)), wide_grid(grid_for(int64_t(n_wide) * 32, DUPLICATE_BLOCK));
    if (requests.tile_summary) {
        duplicate_kernel<true><<<grid, DUPLICATE_BLOCK, 0, stream>>>(n_voxels, cam.tiles_x(), requests, writer, list,
                                                                    octpaths, pixel_rect, octant_mask, n_duplicates,
                                                                    offsets);
        if (n_wide > 0)
            wide_kernel<true><<<wide_grid, DUPLICATE_BLOCK, 0, stream>>>(n_wide, wide, cam.tiles_x(), requests, writer,
                                                                        octpaths, pixel_rect, octant_mask,
                                                                        n_duplicates, offsets);
    } else {
        duplicate_kernel<false><<<grid, DUPLICATE_BLOCK, 0, stream>>>(n_voxels, cam.tiles_x(), requests, writer, list,
                                                                     octpaths, pixel_rect, octant_mask, n_duplicates,
                                                                     offsets);
        if (n_wide > 0)
            wide_kernel<false><<<wide_grid, DUPLICATE_BLOCK, 0, stream>>>(n_wide, wide, cam.tiles_x(), requests,
                                                                         writer, octpaths, pixel_rect, octant_mask,
                                                                         n_duplicates, offsets);
    }
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

size_t order_tiles_scratch_bytes() { return 2 * sizeof(int) * ORDER_BUCKETS; }

void order_tiles(int n_tiles, const int2* ranges, void* scratch, int32_t* tile_order, cudaStream_t stream) {
    if (n_tiles == 0) return;
    int* histogram = static_cast<int*>(scratch);
    int* taken = histogram + ORDER_BUCKETS;
    cudaMemsetAsync(scratch, 0, order_tiles_scratch_bytes(), stream);
    const int blocks = grid_for(n_tiles, ORDER_THREADS);
    tile_histogram_kernel<<<blocks, ORDER_THREADS, 0, stream>>>(n_tiles, ranges, histogram);
    tile_order_kernel<<<blocks, ORDER_THREADS, 0, stream>>>(n_tiles, ranges, histogram, taken, tile_order);
}

void identify_tile_ranges(int64_t n_entries, int tiles_x, int n_tiles, const KeyLayout& layout,
                          const SortedEntries& sorted, const short4* pixel_rect, uint16_t* entry_rects, int2* ranges,
                          cudaStream_t stream) {
    cudaMemsetAsync(ranges, 0, sizeof(int2) * n_tiles, stream);
    if (n_entries == 0) return;
    const dim3 grid(grid_for(n_entries, 256));
    if (layout.rect_in_key())
        ranges_kernel<true, true><<<grid, 256, 0, stream>>>(n_entries, layout, tiles_x, sorted.keys, nullptr, nullptr,
                                                            nullptr, entry_rects, ranges);
    else if (layout.single())
        ranges_kernel<true, false><<<grid, 256, 0, stream>>>(n_entries, layout, tiles_x, sorted.keys, nullptr,
                                                             sorted.values, pixel_rect, entry_rects, ranges);
    else
        ranges_kernel<false, false><<<grid, 256, 0, stream>>>(n_entries, layout, tiles_x, nullptr, sorted.tile_keys,
                                                              sorted.values, pixel_rect, entry_rects, ranges);
}

}  // namespace svr
