// Stages 2-4 (mirror reference/binning.py): one entry per (voxel, tile, octant), sorted by
// (tile, front-to-back rank), and each tile's slice. A tile's list interleaves its octants;
// each pixel reads only entries of its own octant, which are in exact front-to-back order for
// it (SPEC 3.2). The reference sorts the entries by (tile, rank) at once; here the (voxel,
// octant) items are sorted by rank first and their entries then stably by tile, which gives
// the same lists (rasterizer.h says why).
#include <algorithm>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/transform_iterator.h>

#include "math.cuh"

namespace svr {
namespace {

int bits_for(int n) {
    int bits = 0;
    while ((1ll << bits) < n) ++bits;
    return bits;
}

// The frame's count `which`: the buffers' `size`, or (capacities) the count on the device.
__device__ __forceinline__ int64_t frame_count(const BinningSizes& sizes, FrameCount which, int64_t size) {
    return sizes.capacities() ? int64_t(sizes.counts[which]) : size;
}

// Stage 2b: a thread per voxel writes its items (voxel order, octants ascending: the ties of
// the stable rank sort stay in that order, as with one sort of all entries).
__global__ void list_items_kernel(int n, KeyLayout layout, const int64_t* __restrict__ octpaths,
                                  const uint8_t* __restrict__ octant_mask, const int32_t* __restrict__ offsets,
                                  uint64_t* __restrict__ keys, uint32_t* __restrict__ values) {
    const int v = blockIdx.x * blockDim.x + threadIdx.x;
    if (v >= n) return;
    const uint32_t mask = octant_mask[v];
    if (!mask) return;  // culled
    const uint64_t path = uint64_t(octpaths[v]);
    int at = offsets[v] - __popc(mask);
    for (int q = 0; q < 8; ++q) {
        if (!(mask >> q & 1u)) continue;
        const uint64_t rank = order_rank(path, q) >> (RANK_BITS - layout.rank_bits);
        if (layout.packed_items()) {
            keys[at] = (rank << 3 | uint64_t(q)) << layout.voxel_bits | uint64_t(v);
        } else {
            keys[at] = rank;
            values[at] = uint32_t(q) << VOXEL_ID_BITS | uint32_t(v);
        }
        ++at;
    }
}

// The sorted items as the duplicate kernels read them.
struct ItemReader {
    KeyLayout layout;
    SortedItems items;
    // Item i's entry value: octant << 29 | voxel id.
    __device__ __forceinline__ uint32_t value(int64_t i) const {
        if (items.values) return items.values[i];
        const uint64_t key = items.keys[i];
        const uint32_t voxel = uint32_t(key) & ((1u << layout.voxel_bits) - 1u);
        return uint32_t(key >> layout.voxel_bits & 7u) << VOXEL_ID_BITS | voxel;
    }
    // Item i's rank's top split_bits (nothing lies above the rank in a packed key).
    __device__ __forceinline__ uint32_t split_rank(int64_t i) const {
        if (layout.split_bits == 0) return 0u;
        const int shift = layout.item_bits() + (layout.packed_items() ? 3 + layout.voxel_bits : 0);
        return uint32_t(items.keys[i] >> shift);
    }
};

// Item i's first entry (`offsets`: the inclusive scan of the items' entry counts).
__device__ __forceinline__ int item_start(const int32_t* __restrict__ offsets, int i) {
    return i > 0 ? offsets[i - 1] : 0;
}

// The number of entries of item i (the tiles its voxel is binned into): scanned into offsets.
struct ItemEntries {
    ItemReader reader;
    const int32_t* item_tiles;
    __host__ __device__ int operator()(int64_t i) const {
#ifdef __CUDA_ARCH__
        return item_tiles[reader.value(i) & VOXEL_ID_MASK];
#else
        return 0;  // never called on the host
#endif
    }
};

// Set bits: the items of an octant mask, the items marked in a word of the ranks' bitmap.
struct BitCount {
    __host__ __device__ int operator()(uint32_t bits) const {
#ifdef __CUDA_ARCH__
        return __popc(bits);
#else
        return __builtin_popcount(bits);
#endif
    }
};

// Stage 2c, whole image: a thread per item writes its entries, tile rows in order. Requested
// pixels: each candidate tile costs a bins_into test (a load of the tile's request mask), and
// a thread per voxel ran its tests one after the other (0.160 ms at R6M, 1% of the pixels,
// with session 7's tests). There the lanes of a warp walk the candidates of their 32 items
// together, 32 at a time in the same order, and keep the binned ones by ballot (0.130 ms). The
// same walk for the whole image was slower than a thread each (0.139 against 0.125 ms): more
// instructions per entry, and no tests to spread.
// In both, an item of more than WIDE_CANDIDATES tiles is only listed, and wide_kernel gives
// each listed item a warp of its own (R6M: 0.21 -> 0.12 ms whole image, 0.28 -> 0.09 ms for 1%
// of the pixels, measured per voxel). Letting a warp take over its own wide voxels had gained
// nothing (0.167 ms): the tail moved with them.
constexpr int DUPLICATE_BLOCK = 256;

struct EntryWriter {
    KeyLayout layout;
    uint32_t* keys;
    uint32_t* values;
    // Entry `at`: in tile (tx, ty), the item of entry value `value`, rank top bits `split_rank`
    // and pixel rectangle p.
    __device__ __forceinline__ void write(int at, int4 p, int tx, int ty, int tiles_x, uint32_t value,
                                          uint32_t split_rank) const {
        const uint32_t key = uint32_t(ty * tiles_x + tx) << layout.split_bits | split_rank;
        keys[at] = layout.rect_in_key()
                       ? uint32_t(pack_entry_rect(p, tx * TILE_SIZE, ty * TILE_SIZE)) << ENTRY_RECT_SHIFT | key
                       : key;
        values[at] = value;
    }
};

// The items binned by a warp each (wide_kernel).
struct WideList {
    int32_t* ids;
    unsigned long long* cursor;
    __device__ __forceinline__ void add(int i) const { ids[atomicAdd(cursor, 1ull)] = i; }
};

// Candidate tile j (rows in order) of tile rectangle r.
__device__ __forceinline__ int2 candidate(int4 r, int j) {
    const int width = r.z - r.x + 1;
    return make_int2(r.x + j % width, r.y + j / width);
}

// Capacities: the keys past the frame's entries, ~0, sort behind them.
__device__ __forceinline__ void fill_key_tail(const BinningSizes& sizes, uint32_t* __restrict__ keys) {
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t j = frame_count(sizes, COUNT_ENTRIES, 0) + blockIdx.x * blockDim.x + threadIdx.x; j < sizes.entries;
         j += stride)
        keys[j] = ~0u;
}

template <bool SPARSE>
__global__ void __launch_bounds__(DUPLICATE_BLOCK)
duplicate_kernel(BinningSizes sizes, int tiles_x, RequestedPixels requests, EntryWriter writer, WideList wide,
                 ItemReader items, const short4* __restrict__ pixel_rect, const int32_t* __restrict__ offsets) {
    if (sizes.capacities()) fill_key_tail(sizes, writer.keys);
    const int n = int(frame_count(sizes, COUNT_ITEMS, sizes.items));
    const int i = blockIdx.x * blockDim.x + threadIdx.x, lane = int(threadIdx.x & 31);
    // This lane's item: its entry value, pixel rectangle and candidate tiles; a wide item is
    // listed, and its entries are skipped in this warp's output.
    uint32_t value = 0, split = 0;
    int4 p = make_int4(0, 0, -1, -1);
    int start = 0, count = 0, candidates = 0;
    if (i < n) {
        value = items.value(i);
        split = items.split_rank(i);
        p = widen(pixel_rect[value & VOXEL_ID_MASK]);
        start = item_start(offsets, i);
        count = offsets[i] - start;  // coalesced, where the voxel's tile count would be a gather
        candidates = tile_area(tile_rect(p));
        if (candidates > WIDE_CANDIDATES) {
            wide.add(i);
            candidates = 0;
        }
    }
    if (!SPARSE) {
        if (candidates == 0) return;
        const int4 r = tile_rect(p);
        int at = start;
        for (int ty = r.y; ty <= r.w; ++ty)
            for (int tx = r.x; tx <= r.z; ++tx) writer.write(at++, p, tx, ty, tiles_x, value, split);
        return;
    }
    int skipped = candidates == 0 ? count : 0;
    if (!__any_sync(FULL_MASK, candidates > 0)) return;
    // Inclusive sums over the lanes: candidates, skipped entries.
    const int end = warp_inclusive_sum(candidates);
    skipped = warp_inclusive_sum(skipped);
    const int total = __shfl_sync(FULL_MASK, end, 31);
    // The items' entries are contiguous (offsets is their inclusive scan): the warp writes from
    // its first item's on (that item is in range, since the warp has candidates), the kept
    // candidates in order, past the places of the wide items before theirs.
    int out = __shfl_sync(FULL_MASK, start, 0);
    const uint32_t lanes_below = (1u << lane) - 1u;
    for (int first = 0; first < total; first += 32) {
        const int j = first + lane;
        const int k = lane_holding(end, j);  // the lane whose candidates hold candidate j
        const int start = __shfl_sync(FULL_MASK, end - candidates, k);
        const int skipped_before = __shfl_sync(FULL_MASK, skipped, k);  // lane k itself is not wide
        const int4 pk = make_int4(__shfl_sync(FULL_MASK, p.x, k), __shfl_sync(FULL_MASK, p.y, k),
                                  __shfl_sync(FULL_MASK, p.z, k), __shfl_sync(FULL_MASK, p.w, k));
        const uint32_t value_k = __shfl_sync(FULL_MASK, value, k), split_k = __shfl_sync(FULL_MASK, split, k);
        const int4 r = tile_rect(pk);
        const int2 t = candidate(r, j - start);
        const bool exact = tile_area(r) <= MAX_EXACT_TILES;  // as preprocess counted
        const bool keep = j < total && bins_into(requests, pk, t.x, t.y, tiles_x, exact);
        const uint32_t kept = __ballot_sync(FULL_MASK, keep);
        if (keep)
            writer.write(out + skipped_before + __popc(kept & lanes_below), pk, t.x, t.y, tiles_x, value_k, split_k);
        out += __popc(kept);
    }
}

// A warp per listed item: its lanes take 32 candidate tiles at a time, in the order a thread
// would, and keep (for requested pixels) the binned ones by ballot.
template <bool SPARSE>
__global__ void __launch_bounds__(DUPLICATE_BLOCK)
wide_kernel(BinningSizes sizes, const int32_t* __restrict__ wide, int tiles_x, RequestedPixels requests,
            EntryWriter writer, ItemReader items, const short4* __restrict__ pixel_rect,
            const int32_t* __restrict__ offsets) {
    const int w = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = int(threadIdx.x & 31);
    if (w >= frame_count(sizes, COUNT_WIDE, sizes.wide)) return;
    const int i = wide[w];
    const uint32_t value = items.value(i), split = items.split_rank(i);
    const int v = int(value & VOXEL_ID_MASK);
    const int4 p = widen(pixel_rect[v]);
    const int4 r = tile_rect(p);
    const bool exact = tile_area(r) <= MAX_EXACT_TILES;  // as preprocess counted
    const int candidates = tile_area(r);
    int out = item_start(offsets, i);
    const uint32_t lanes_below = (1u << lane) - 1u;
    for (int first = 0; first < candidates; first += 32) {
        const int j = first + lane;
        const int2 t = candidate(r, j);
        const bool keep = j < candidates && (!SPARSE || bins_into(requests, p, t.x, t.y, tiles_x, exact));
        const uint32_t kept = __ballot_sync(FULL_MASK, keep);
        if (keep) writer.write(out + __popc(kept & lanes_below), p, t.x, t.y, tiles_x, value, split);
        out += __popc(kept);
    }
}

// Each tile's slice of the sorted list, and each entry's pixel rectangle within its tile: from
// the key's top bits where it rode there, else from the voxel's rectangle (a gather: 0.07 ms
// for the 9.2M entries of R6M at 1080p, against 0.03 ms for the whole kernel without it). A
// thread takes RANGES_PER_THREAD consecutive entries, their keys in one 16-byte load: a thread
// an entry loaded each key three times (its own and its neighbours') and spent as many
// instructions per entry.
constexpr int RANGES_PER_THREAD = 4;
template <bool RectInKey>
__global__ void ranges_kernel(BinningSizes sizes, int tiles_x, KeyLayout layout, const uint32_t* __restrict__ keys,
                              const uint32_t* __restrict__ values, const short4* __restrict__ pixel_rect,
                              uint16_t* __restrict__ entry_rects, int2* __restrict__ ranges) {
    const int64_t first = RANGES_PER_THREAD * (int64_t(blockIdx.x) * blockDim.x + threadIdx.x);
    const int64_t n = frame_count(sizes, COUNT_ENTRIES, sizes.entries);
    if (first >= n) return;
    const int count = int(min(int64_t(RANGES_PER_THREAD), n - first));
    const uint32_t tile_mask = (1u << layout.tile_bits) - 1u;
    auto tile_of = [&](uint32_t key) { return key >> layout.split_bits & tile_mask; };
    uint32_t key[RANGES_PER_THREAD];
    if (count == RANGES_PER_THREAD) {
        static_assert(RANGES_PER_THREAD == 4, "one uint4 of keys");
        const uint4 k = *reinterpret_cast<const uint4*>(keys + first);  // first is a multiple of 4
        key[0] = k.x; key[1] = k.y; key[2] = k.z; key[3] = k.w;
    } else {
#pragma unroll
        for (int j = 0; j < RANGES_PER_THREAD; ++j) key[j] = j < count ? keys[first + j] : 0u;
    }
    // A tile's slice starts where the tile differs from the previous entry's and ends where it
    // differs from the next one's (the neighbours outside this thread's entries read once).
    bool has_previous = first > 0;
    uint32_t previous = has_previous ? tile_of(keys[first - 1]) : 0u;
#pragma unroll
    for (int j = 0; j < RANGES_PER_THREAD; ++j) {
        if (j >= count) break;
        const uint32_t tile = tile_of(key[j]);
        if (!has_previous || tile != previous) {
            ranges[tile].x = int(first + j);
            if (has_previous && j > 0) ranges[previous].y = int(first + j);
        }
        has_previous = true;
        previous = tile;
    }
    const int64_t end = first + count;
    if (end == n || tile_of(keys[end]) != previous) ranges[previous].y = int(end);
    if (RectInKey && count == RANGES_PER_THREAD) {
        *reinterpret_cast<ushort4*>(entry_rects + first) =
            make_ushort4(uint16_t(key[0] >> ENTRY_RECT_SHIFT), uint16_t(key[1] >> ENTRY_RECT_SHIFT),
                         uint16_t(key[2] >> ENTRY_RECT_SHIFT), uint16_t(key[3] >> ENTRY_RECT_SHIFT));
        return;
    }
#pragma unroll
    for (int j = 0; j < RANGES_PER_THREAD; ++j) {
        if (j >= count) break;
        if (RectInKey) {
            entry_rects[first + j] = uint16_t(key[j] >> ENTRY_RECT_SHIFT);
        } else {
            const uint32_t tile = tile_of(key[j]);
            const int4 rect = widen(pixel_rect[values[first + j] & VOXEL_ID_MASK]);
            entry_rects[first + j] =
                pack_entry_rect(rect, int(tile % tiles_x) * TILE_SIZE, int(tile / tiles_x) * TILE_SIZE);
        }
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

// --- Cached octant ranks (rasterizer.h). Voxel v's rank in octant q's order.
__device__ __forceinline__ uint32_t octant_rank(const int32_t* __restrict__ ranks, int n, int q, int v) {
    return q < 4 ? uint32_t(ranks[int64_t(q) * n + v]) : uint32_t(n - 1 - ranks[int64_t(7 - q) * n + v]);
}

// Slots q * n + rank < 8 * MAX_VOXELS < 2^32.
__device__ __forceinline__ uint32_t octant_slot(const int32_t* __restrict__ ranks, int n, int q, int v) {
    return uint32_t(q) * uint32_t(n) + octant_rank(ranks, n, q, v);
}

// Mark and place wait on chains of dependent loads (octant mask, rank, bitmap word; Nsight
// Compute, R6M: a third of place's stall samples at the mask, a third at the rank), a thread
// per voxel: each thread takes several voxels instead, 32 apart (a warp's runs of 32
// consecutive voxels), their octant masks (and counts) loaded together. R6M view 0 (session
// 19, run 8): mark 36.0 -> 29.9 / 28.8 us with two / four voxels a thread, place 41.1 -> 36.8 /
// 42.0 us.
constexpr int MARK_VOXELS = 4, PLACE_VOXELS = 2;
// The first of this thread's `per_thread` voxels.
__device__ __forceinline__ int ranked_first_voxel(int per_thread) {
    return (int(blockIdx.x * blockDim.x) + int(threadIdx.x & ~31u)) * per_thread + int(threadIdx.x & 31);
}

// Adjacent voxels tend to have adjacent ranks (voxels stored in octree order: a warp's slots
// of one octant fall in a word or two), and 32 atomics on one word queue behind each other
// (0.096 ms at O6M): the lanes OR their bits over each run of lanes with the same word first,
// and the run's first lane sets them.
__global__ void mark_ranked_kernel(int n, const int32_t* __restrict__ ranks, const uint8_t* __restrict__ octant_mask,
                                   uint32_t* __restrict__ bitmap) {
    const int first = ranked_first_voxel(MARK_VOXELS), lane = int(threadIdx.x & 31);
    uint32_t masks[MARK_VOXELS];
#pragma unroll
    for (int k = 0; k < MARK_VOXELS; ++k) masks[k] = first + 32 * k < n ? octant_mask[first + 32 * k] : 0u;
#pragma unroll
    for (int k = 0; k < MARK_VOXELS; ++k) {
        const int v = first + 32 * k;
        const uint32_t mask = masks[k];
        // Only the octants some lane has (a warp's voxels are usually seen from one or two).
        for (uint32_t octants = __reduce_or_sync(FULL_MASK, mask); octants; octants &= octants - 1) {
            const int q = __ffs(octants) - 1;
            const bool has = mask >> q & 1u;
            const uint32_t slot = has ? octant_slot(ranks, n, q, v) : 0u;
            const uint32_t word = has ? slot / 32 : ~0u;
            uint32_t bits = has ? 1u << (slot % 32) : 0u;
            // After the step of distance d, a lane holds the bits of its run's lanes up to 2d - 1 ahead.
#pragma unroll
            for (int d = 1; d < 32; d <<= 1) {
                const uint32_t ahead_word = __shfl_down_sync(FULL_MASK, word, d);
                const uint32_t ahead_bits = __shfl_down_sync(FULL_MASK, bits, d);
                if (lane + d < 32 && ahead_word == word) bits |= ahead_bits;
            }
            const uint32_t behind_word = __shfl_up_sync(FULL_MASK, word, 1);
            if (has && (lane == 0 || behind_word != word)) atomicOr(&bitmap[word], bits);
        }
    }
}

__global__ void place_ranked_kernel(int n, const int32_t* __restrict__ ranks, const uint8_t* __restrict__ octant_mask,
                                    const int32_t* __restrict__ item_tiles, const uint32_t* __restrict__ bitmap,
                                    const int32_t* __restrict__ word_offsets, uint32_t* __restrict__ values,
                                    int32_t* __restrict__ tiles) {
    const int first = ranked_first_voxel(PLACE_VOXELS);
    uint32_t masks[PLACE_VOXELS];
    int counts[PLACE_VOXELS];
#pragma unroll
    for (int k = 0; k < PLACE_VOXELS; ++k) masks[k] = first + 32 * k < n ? octant_mask[first + 32 * k] : 0u;
#pragma unroll
    for (int k = 0; k < PLACE_VOXELS; ++k) counts[k] = masks[k] ? item_tiles[first + 32 * k] : 0;
#pragma unroll
    for (int k = 0; k < PLACE_VOXELS; ++k) {
        const int v = first + 32 * k;
        for (uint32_t mask = masks[k]; mask; mask &= mask - 1) {
            const int q = __ffs(mask) - 1;
            const uint32_t slot = octant_slot(ranks, n, q, v), word = slot / 32;
            const int at = word_offsets[word] + __popc(bitmap[word] & ((1u << (slot % 32)) - 1u));
            values[at] = uint32_t(q) << VOXEL_ID_BITS | uint32_t(v);
            tiles[at] = counts[k];
        }
    }
}

// Building the ranks: the keys of octant q with the voxel ids, then (sorted) each id's place.
// Whether the paths can be cached is checked with octant 0's (`invalid` null for the others).
__global__ void octant_keys_kernel(int n, int q, const int64_t* __restrict__ octpaths, uint64_t* __restrict__ keys,
                                   uint32_t* __restrict__ ids, int* __restrict__ invalid) {
    const int v = blockIdx.x * blockDim.x + threadIdx.x;
    if (v >= n) return;
    const uint64_t path = uint64_t(octpaths[v]);
    if (invalid && path >> RANK_BITS) *invalid = 1;  // the sort below orders the rank bits alone
    keys[v] = order_rank(path, q);
    ids[v] = uint32_t(v);
}

__global__ void octant_ranks_kernel(int n, const uint64_t* __restrict__ keys, const uint32_t* __restrict__ ids,
                                    int32_t* __restrict__ ranks, int* __restrict__ invalid) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    // Equal paths tie, and ties go in voxel order, which order 7 - q reversed would not keep.
    if (invalid && i > 0 && keys[i] == keys[i - 1]) *invalid = 1;
    ranks[ids[i]] = i;
}

}  // namespace

KeyLayout::KeyLayout(int n_tiles, int used_levels, int n_voxels, bool ranked_items)
    : rank_bits(3 * used_levels), tile_bits(bits_for(n_tiles)), voxel_bits(bits_for(n_voxels)),
      ranked(ranked_items) {
    // The bits the entry sort's 8-bit digits cover anyway, within the key's room for the order.
    const int covered = std::min((tile_bits + 7) / 8 * 8, rect_in_key() ? ENTRY_RECT_SHIFT : 32);
    split_bits = ranked_items ? 0 : std::min(rank_bits, covered - tile_bits);
}

// CUB is always given at least one bit to sort (a layout can have zero).
int sort_bits(int bits) { return bits > 0 ? bits : 1; }
// The packed items' rank bits sit above the octant and voxel id.
int item_begin_bit(const KeyLayout& layout) { return layout.packed_items() ? 3 + layout.voxel_bits : 0; }

auto octant_counts(const uint8_t* octant_mask) { return thrust::make_transform_iterator(octant_mask, BitCount{}); }
auto item_entries(const KeyLayout& layout, const SortedItems& items, const int32_t* item_tiles) {
    return thrust::make_transform_iterator(thrust::counting_iterator<int64_t>(0),
                                           ItemEntries{ItemReader{layout, items}, item_tiles});
}

size_t item_offsets_scratch_bytes(int n_voxels) {
    size_t bytes = 0;
    cub::DeviceScan::InclusiveSum(nullptr, bytes, octant_counts(nullptr), (int32_t*)nullptr, n_voxels);
    return bytes;
}

void item_offsets(int n_voxels, const uint8_t* octant_mask, int32_t* offsets, void* scratch, size_t scratch_bytes,
                  cudaStream_t stream) {
    if (n_voxels > 0)
        cub::DeviceScan::InclusiveSum(scratch, scratch_bytes, octant_counts(octant_mask), offsets, n_voxels, stream);
}

size_t sort_scratch_bytes(int64_t n_items, int64_t n_entries, const KeyLayout& layout) {
    size_t items = 0, scan = 0, ranked_scan = 0, entries = 0;
    const int bits = sort_bits(layout.item_bits()), begin = item_begin_bit(layout);
    cub::DoubleBuffer<uint64_t> item_keys(nullptr, nullptr);
    cub::DoubleBuffer<uint32_t> words(nullptr, nullptr), values(nullptr, nullptr);
    if (layout.ranked)
        cub::DeviceScan::InclusiveSum(nullptr, ranked_scan, (int32_t*)nullptr, int(n_items));
    else if (layout.packed_items())
        cub::DeviceRadixSort::SortKeys(nullptr, items, item_keys, int(n_items), begin, begin + bits);
    else
        cub::DeviceRadixSort::SortPairs(nullptr, items, item_keys, values, int(n_items), 0, bits);
    if (!layout.ranked)
        cub::DeviceScan::InclusiveSum(nullptr, scan, item_entries(layout, {}, nullptr), (int32_t*)nullptr,
                                      int(n_items));
    cub::DeviceRadixSort::SortPairs(nullptr, entries, words, values, int(n_entries), 0, sort_bits(layout.entry_bits()));
    return std::max({items, scan, ranked_scan, entries});
}

SortedItems sort_items(const KeyLayout& layout, int n_voxels, const int64_t* octpaths, const uint8_t* octant_mask,
                       const int32_t* item_offsets, int64_t n_items, uint64_t* keys, uint64_t* keys_alt,
                       uint32_t* values, uint32_t* values_alt, void* scratch, size_t scratch_bytes,
                       cudaStream_t stream) {
    cub::DoubleBuffer<uint64_t> sorted_keys(keys, keys_alt);
    cub::DoubleBuffer<uint32_t> sorted_values(values, values_alt);
    if (n_items == 0) return {keys, values};
    list_items_kernel<<<grid_for(n_voxels, 256), 256, 0, stream>>>(n_voxels, layout, octpaths, octant_mask,
                                                                    item_offsets, keys, values);
    // With no bits left to them (all in the entry key), the items stay in voxel order.
    if (layout.item_bits() == 0) return {keys, values};
    const int bits = layout.item_bits(), begin = item_begin_bit(layout);
    if (layout.packed_items()) {
        cub::DeviceRadixSort::SortKeys(scratch, scratch_bytes, sorted_keys, int(n_items), begin, begin + bits, stream);
        return {sorted_keys.Current(), nullptr};
    }
    cub::DeviceRadixSort::SortPairs(scratch, scratch_bytes, sorted_keys, sorted_values, int(n_items), 0, bits, stream);
    return {sorted_keys.Current(), sorted_values.Current()};
}

int64_t ranked_words(int n_voxels) { return (int64_t(n_voxels) * 8 + 31) / 32; }

auto bit_counts(const uint32_t* bitmap) { return thrust::make_transform_iterator(bitmap, BitCount{}); }

size_t ranked_scratch_bytes(int n_voxels) {
    size_t bytes = 0;
    cub::DeviceScan::ExclusiveSum(nullptr, bytes, bit_counts(nullptr), (int32_t*)nullptr, int(ranked_words(n_voxels)));
    return bytes;
}

void mark_ranked_items(int n_voxels, const int32_t* ranks, const uint8_t* octant_mask, uint32_t* bitmap,
                       int32_t* word_offsets, void* scratch, size_t scratch_bytes, cudaStream_t stream) {
    if (n_voxels == 0) return;
    const int words = int(ranked_words(n_voxels));
    cudaMemsetAsync(bitmap, 0, sizeof(uint32_t) * words, stream);
    mark_ranked_kernel<<<grid_for(n_voxels, 256 * MARK_VOXELS), 256, 0, stream>>>(n_voxels, ranks, octant_mask,
                                                                                  bitmap);
    cub::DeviceScan::ExclusiveSum(scratch, scratch_bytes, bit_counts(bitmap), word_offsets, words, stream);
}

SortedItems place_ranked_items(int n_voxels, const int32_t* ranks, const uint8_t* octant_mask,
                               const int32_t* item_tiles, const uint32_t* bitmap, const int32_t* word_offsets,
                               uint32_t* values, int32_t* entry_offsets, cudaStream_t stream) {
    if (n_voxels > 0)
        place_ranked_kernel<<<grid_for(n_voxels, 256 * PLACE_VOXELS), 256, 0, stream>>>(
            n_voxels, ranks, octant_mask, item_tiles, bitmap, word_offsets, values, entry_offsets);
    return {nullptr, values};
}

size_t octant_ranks_scratch_bytes(int n_voxels) {
    size_t bytes = 0;
    cub::DoubleBuffer<uint64_t> keys(nullptr, nullptr);
    cub::DoubleBuffer<uint32_t> ids(nullptr, nullptr);
    cub::DeviceRadixSort::SortPairs(nullptr, bytes, keys, ids, n_voxels, 0, RANK_BITS);
    return bytes;
}

bool octant_ranks(int n_voxels, const int64_t* octpaths, int32_t* ranks, uint64_t* keys, uint32_t* ids,
                  int* invalid, void* scratch, size_t scratch_bytes, cudaStream_t stream) {
    const size_t n = size_t(n_voxels);
    cudaMemsetAsync(invalid, 0, sizeof(int), stream);
    const int grid = grid_for(n_voxels, 256);
    for (int q = 0; q < 4 && n_voxels > 0; ++q) {
        int* check = q == 0 ? invalid : nullptr;
        octant_keys_kernel<<<grid, 256, 0, stream>>>(n_voxels, q, octpaths, keys, ids, check);
        cub::DoubleBuffer<uint64_t> sorted_keys(keys, keys + n);
        cub::DoubleBuffer<uint32_t> sorted_ids(ids, ids + n);
        cub::DeviceRadixSort::SortPairs(scratch, scratch_bytes, sorted_keys, sorted_ids, n_voxels, 0, RANK_BITS,
                                        stream);
        octant_ranks_kernel<<<grid, 256, 0, stream>>>(n_voxels, sorted_keys.Current(), sorted_ids.Current(),
                                                      ranks + q * n, check);
    }
    int host_invalid = 0;
    cudaMemcpyAsync(&host_invalid, invalid, sizeof(int), cudaMemcpyDeviceToHost, stream);
    cudaStreamSynchronize(stream);
    return host_invalid == 0;
}

void scan_entry_offsets(const KeyLayout& layout, const BinningSizes& sizes, const SortedItems& items,
                        const int32_t* item_tiles, int32_t* entry_offsets, void* scratch, size_t scratch_bytes,
                        cudaStream_t stream) {
    const int64_t n_items = sizes.items;
    if (n_items == 0) return;
    if (items.keys)
        cub::DeviceScan::InclusiveSum(scratch, scratch_bytes, item_entries(layout, items, item_tiles), entry_offsets,
                                      int(n_items), stream);
    else  // placed by ranks: entry_offsets holds the items' tile counts, in order
        cub::DeviceScan::InclusiveSum(scratch, scratch_bytes, entry_offsets, int(n_items), stream);
}

void duplicate_with_keys(const Camera& cam, const RequestedPixels& requests, const KeyLayout& layout,
                         const BinningSizes& sizes, const SortedItems& items, const short4* pixel_rect,
                         const int32_t* entry_offsets, int32_t* wide, unsigned long long* wide_cursor, uint32_t* keys,
                         uint32_t* values, cudaStream_t stream) {
    if (sizes.items == 0) return;
    const EntryWriter writer{layout, keys, values};
    const WideList list{wide, wide_cursor};
    const ItemReader reader{layout, items};
    const dim3 grid(grid_for(sizes.items, DUPLICATE_BLOCK)), wide_grid(grid_for(sizes.wide * 32, DUPLICATE_BLOCK));
    if (requests.tile_masks) {
        duplicate_kernel<true><<<grid, DUPLICATE_BLOCK, 0, stream>>>(sizes, cam.tiles_x(), requests, writer, list,
                                                                    reader, pixel_rect, entry_offsets);
        if (sizes.wide > 0)
            wide_kernel<true><<<wide_grid, DUPLICATE_BLOCK, 0, stream>>>(sizes, wide, cam.tiles_x(), requests, writer,
                                                                        reader, pixel_rect, entry_offsets);
    } else {
        duplicate_kernel<false><<<grid, DUPLICATE_BLOCK, 0, stream>>>(sizes, cam.tiles_x(), requests, writer, list,
                                                                     reader, pixel_rect, entry_offsets);
        if (sizes.wide > 0)
            wide_kernel<false><<<wide_grid, DUPLICATE_BLOCK, 0, stream>>>(sizes, wide, cam.tiles_x(), requests,
                                                                         writer, reader, pixel_rect, entry_offsets);
    }
}

SortedEntries sort_entries(const BinningSizes& sizes, const KeyLayout& layout, uint32_t* keys, uint32_t* keys_alt,
                           uint32_t* values, uint32_t* values_alt, void* scratch, size_t scratch_bytes,
                           cudaStream_t stream) {
    cub::DoubleBuffer<uint32_t> sorted_keys(keys, keys_alt), sorted_values(values, values_alt);
    if (sizes.entries > 0)
        cub::DeviceRadixSort::SortPairs(scratch, scratch_bytes, sorted_keys, sorted_values, int(sizes.entries), 0,
                                        sort_bits(layout.entry_bits()), stream);
    return {sorted_keys.Current(), sorted_values.Current()};
}

size_t order_tiles_scratch_bytes() { return 2 * sizeof(int) * ORDER_BUCKETS; }

void order_tiles(int n_tiles, const int2* ranges, void* scratch, int32_t* tile_order, cudaStream_t stream) {
    if (n_tiles == 0) return;
    int* histogram = static_cast<int*>(scratch);
    int* taken = histogram + ORDER_BUCKETS;
    const int blocks = grid_for(n_tiles, ORDER_THREADS);
    tile_histogram_kernel<<<blocks, ORDER_THREADS, 0, stream>>>(n_tiles, ranges, histogram);
    tile_order_kernel<<<blocks, ORDER_THREADS, 0, stream>>>(n_tiles, ranges, histogram, taken, tile_order);
}

void identify_tile_ranges(const BinningSizes& sizes, int tiles_x, int n_tiles, const KeyLayout& layout,
                          const SortedEntries& sorted, const short4* pixel_rect, uint16_t* entry_rects, int2* ranges,
                          cudaStream_t stream) {
    cudaMemsetAsync(ranges, 0, sizeof(int2) * n_tiles, stream);
    if (sizes.entries == 0) return;
    const dim3 grid(grid_for((sizes.entries + RANGES_PER_THREAD - 1) / RANGES_PER_THREAD, 256));
    if (layout.rect_in_key())
        ranges_kernel<true><<<grid, 256, 0, stream>>>(sizes, tiles_x, layout, sorted.keys, nullptr, nullptr,
                                                      entry_rects, ranges);
    else
        ranges_kernel<false><<<grid, 256, 0, stream>>>(sizes, tiles_x, layout, sorted.keys, sorted.values,
                                                       pixel_rect, entry_rects, ranges);
}

}  // namespace svr
