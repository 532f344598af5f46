// The pipeline's stages as plain CUDA host functions on raw device pointers (no PyTorch here:
// the bindings in bindings.cpp own memory and validation). In order:
//   preprocess -> duplicate_with_keys -> sort_entries -> identify_tile_ranges -> render_forward
//   and render_backward (or render_topk).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cuda_runtime.h>

#include "constants.h"

// Members used on both sides (this header is also compiled by the host compiler).
#ifdef __CUDACC__
#define SVR_HOST_DEVICE __host__ __device__
#else
#define SVR_HOST_DEVICE
#endif

namespace svr {

struct Camera {
    int width, height;
    float tanfovx, tanfovy, cx, cy, near;
    float w2c[12];  // first three rows of the row-major 4x4 world-to-camera matrix
    float c2w[12];  // first three rows of the row-major 4x4 camera-to-world matrix
    SVR_HOST_DEVICE int tiles_x() const { return (width + TILE_SIZE - 1) / TILE_SIZE; }
    SVR_HOST_DEVICE int tiles_y() const { return (height + TILE_SIZE - 1) / TILE_SIZE; }
};

// Camera matrices that stay in device memory (float32 CUDA tensors, as training code often
// keeps them): preprocess, the only kernel before the frame's device read that needs them,
// loads them itself, so that the host does not read them back (waiting for the GPU's queue)
// before the frame's first launch. Block 0 also stores them, all 32 values, for that read:
// every later kernel takes the camera by value again.
struct CameraMatrices {
    const float* w2c;            // row-major 4x4 at element strides (row, column)
    const float* c2w;
    int64_t w2c_strides[2], c2w_strides[2];
    float* values;               // [32]: w2c then c2w, row-major (written for the host's read)
};

// Entry value: octant in the top 3 bits, voxel id in the low 29 (hence MAX_VOXELS).
constexpr int VOXEL_ID_BITS = 29;
constexpr uint32_t VOXEL_ID_MASK = (1u << VOXEL_ID_BITS) - 1;

// Which (voxel, tile) pairs get entries: all of them, or (sparse rendering) only those where
// the voxel's pixel rectangle holds a requested pixel of the tile (see bins_into in math.cuh).
static_assert(TILE_SIZE * TILE_SIZE == 64, "a tile's requested pixels are one 64-bit mask");
struct RequestedPixels {
    const uint64_t* tile_masks;  // [n_tiles]: bit TILE_SIZE * y + x set when pixel (x, y) of the tile is
                                 // requested (0: no request); null: every pixel is rendered
    const int32_t* tile_sat;     // summed-area table of the tiles holding requests, [tiles_y + 1, tiles_x + 1] with a zero
                                 // first row and column: a rectangle's count in four reads
};

// What a frame's one device-to-host read brings back: counters the kernels accumulate
// (unsigned long long, zeroed by the caller) before the entry buffers can be sized.
enum FrameCount {
    COUNT_ENTRIES,           // (tile, octant) entries over all voxels
    COUNT_USED_LEVELS,       // the most octree levels any voxel uses: the rank bits that can differ
    COUNT_IN_VIEW,           // voxels with at least one entry
    COUNT_OUTSIDE_REQUESTS,  // requested pixels outside the image (sparse rendering; an error)
    COUNT_ITEMS,             // (voxel, octant) items of the voxels with entries
    COUNT_WIDE,              // items whose voxel spans more than WIDE_CANDIDATES tiles
    PATHS_FINGERPRINT,       // a 64-bit hash of all octpaths and their indices: are cached ranks current?
    WIDE_CURSOR,             // not read: duplicate_with_keys' cursor in its list of wide voxels
    N_FRAME_COUNTS
};

// --- requests.cu (sparse rendering)
// The requested pixels (int64 [P, 2] of row, col) grouped into warps of one tile (the PixelSet
// below), step 1: per request its (row, col) as int2, its tile (-1 when invalid) and its rank
// among its tile's requests (tile_counts zeroed by the caller); n_outside counts the requests
// outside the image. A fresh frame's requests also set their bits in `tile_masks` ([n_tiles],
// zeroed by the caller; else null); those of reused intersections must be set in `allowed`
// (the tile masks the entries were binned for; else null), n_not_allowed counts the others.
void bin_requests(const Camera& cam, int n_requests, const int64_t* pixels, const uint64_t* allowed,
                  uint64_t* tile_masks, int2* requests, int32_t* tile_of, int32_t* rank, int32_t* tile_counts,
                  unsigned long long* n_outside, unsigned long long* n_not_allowed, cudaStream_t stream);
// The summed-area table of the tiles holding requests (see RequestedPixels), from tile_masks.
void tile_table(const Camera& cam, const uint64_t* tile_masks, int32_t* tile_sat, cudaStream_t stream);
// Step 2: the warps of each tile in tile_order (null: index order; ceil(tile_counts /
// per_warp), scanned), warp_tiles and lane_requests (both prefilled with -1 by the caller:
// spare warps, idle lanes; a warp's requests in its first per_warp lanes). `scratch` holds
// assign_warps_scratch_bytes(n_tiles) bytes.
size_t assign_warps_scratch_bytes(int n_tiles);
void assign_warps(int n_tiles, int n_requests, int per_warp, const int32_t* tile_order, const int32_t* tile_counts,
                  const int32_t* tile_of, const int32_t* rank, void* scratch, int32_t* warp_start,
                  int32_t* warp_tiles, int32_t* lane_requests, cudaStream_t stream);
// Requests a warp takes. A frame of few requests has fewer warps than the GPU holds, and its
// render lasts as long as the walk of its longest list: a tile full of requests (a patch) then
// shares its list among eight warps of SPLIT_WARP_REQUESTS, as the whole image's longest lists
// are shared among four blocks. Above SPLIT_REQUESTS_MAX requests (an eighth of 1080p),
// warps of 32, as the whole image's. H100, O6M, 1% of 1080p in 8x8 patches: the frame's GPU
// time 0.55 -> 0.41 ms (its render 0.31 ms in warps of 32); random 1% and 10% no slower.
constexpr int SPLIT_WARP_REQUESTS = 8;
constexpr int64_t SPLIT_REQUESTS_MAX = 1 << 18;
inline int requests_per_warp(int64_t n_requests) {
    return n_requests <= SPLIT_REQUESTS_MAX ? SPLIT_WARP_REQUESTS : 32;
}

// --- preprocess.cu
// Per voxel, conservative pixel rectangle (x0, y0, x1, y1 inclusive; int16, as images are at
// most MAX_IMAGE_SIZE pixels wide), read by binning (the render kernels read each entry's
// rectangle within its tile, written by identify_tile_ranges), octant mask (of the octants
// its entries are for; 0 when culled) and number of tiles each of its octants gets an entry
// in (rectangle and tile count written only where the octant mask is not zero); the frame
// counts COUNT_ENTRIES, COUNT_IN_VIEW, COUNT_ITEMS and COUNT_WIDE, and COUNT_USED_LEVELS and
// PATHS_FINGERPRINT over every voxel, culled or not; and camera_position[3], the c2w
// translation (vox_fn's argument: on the device without a host-to-device copy, which would
// wait for the GPU's queue, nor a launch of its own). With `matrices` (else null), cam's w2c
// and c2w are not used: the kernel loads the matrices from device memory.
void preprocess(const Camera& cam, const CameraMatrices* matrices, const RequestedPixels& requests, int n_voxels,
                const int64_t* octpaths, const float* centers, const float* lengths, short4* pixel_rect,
                uint8_t* octant_mask, int32_t* item_tiles, unsigned long long* counts, float* camera_position,
                cudaStream_t stream);
// The voxels in view (those with entries: a non-zero octant mask), in index order, into
// in_view[COUNT_IN_VIEW]: vox_fn's argument. `scratch` holds scratch_bytes =
// in_view_scratch_bytes(n_voxels) bytes.
size_t in_view_scratch_bytes(int n_voxels);
void select_in_view(int n_voxels, const uint8_t* octant_mask, int64_t* in_view, void* scratch, size_t scratch_bytes,
                    cudaStream_t stream);

// --- binning.cu
// A tile's list must be in front-to-back rank order for each octant. Sorting the entries by
// (tile, rank) took six radix passes over 48-bit keys (1080p, level 11) with 32-bit values.
// The order is built in two stable stages instead: the items, one per (voxel in view, octant
// it can be reached in), are sorted by rank (ties in voxel order, as before), then written out
// item by item as entries, one per tile (whole image) or binned tile (sparse), and the entries
// are sorted stably by tile alone: a tile's entries keep their items' order. The items are
// fewer than the entries (R6M 4.6M for 9.2M) and pack rank, octant and voxel id in one 64-bit
// key sorted without values; the entries' keys are the tile (and their pixel rectangle in the
// tile, riding above it where the tile fits 16 bits), two passes at 1080p. The rank's top
// `split_bits` go to the entry key instead, into the last radix digit the tile leaves partly
// empty (1080p: 15 tile bits, one rank bit): the entries sorted stably by (tile, top bits) over
// items sorted by the rest are in rank order, and the item sort is a pass shorter where that
// drops its bits to a multiple of 8 (33 -> 32 at level 11).
// Items whose voxel spans more than WIDE_CANDIDATES tiles are only listed by the first kernel,
// and a second one (wide_kernel) gives each listed item a warp of its own: a near voxel spans up
// to a few thousand 8x8 tiles, and such voxels sit together (a background shell).
constexpr int WIDE_CANDIDATES = 32;
// The entry's pixel rectangle in its tile (math.cuh: pack_entry_rect) rides above this bit of
// the entry key when the tile index fits below it (images of up to 65,536 tiles: 2048x2048).
constexpr int ENTRY_RECT_SHIFT = 16;
struct KeyLayout {
    int rank_bits;   // 3 * used_levels: the unused levels at the bottom of the octpaths are zero in every path
    int tile_bits;
    int voxel_bits;  // of the largest voxel id
    int split_bits;  // the rank's top bits, sorted with the tile (none when the items are placed by cached ranks)
    bool ranked;     // the items are placed by cached ranks (not sorted; rank_bits then unused)
    KeyLayout(int n_tiles, int used_levels, int n_voxels, bool ranked_items);
    // Rank, octant and voxel id in one item key (else the rank alone, with the entry value beside).
    SVR_HOST_DEVICE bool packed_items() const { return rank_bits + 3 + voxel_bits <= 64; }
    SVR_HOST_DEVICE bool rect_in_key() const { return tile_bits <= ENTRY_RECT_SHIFT; }
    SVR_HOST_DEVICE int item_bits() const { return rank_bits - split_bits; }
    SVR_HOST_DEVICE int entry_bits() const { return tile_bits + split_bits; }
};
// The sizes the binning's buffers hold: the frame's counts (`counts` null), or capacities of
// at least them, with the counts in the frame's counters on the device (a frame replayed from a
// captured CUDA graph, whose kernel arguments are fixed: bindings.cpp). The kernels then read
// the counts there; CUB's sort and scans cover the capacities, the keys past the frame's
// entries set to ~0 (the stable sort leaves them behind the frame's).
struct BinningSizes {
    int64_t items, entries, wide;
    const unsigned long long* counts;  // the frame's counters, or null: the sizes are its counts
    SVR_HOST_DEVICE bool capacities() const { return counts != nullptr; }
};
// Stage 2a: offsets[v] = the items of voxels 0..v (an inclusive scan of the octant counts;
// `scratch` holds item_offsets_scratch_bytes(n_voxels) bytes).
size_t item_offsets_scratch_bytes(int n_voxels);
void item_offsets(int n_voxels, const uint8_t* octant_mask, int32_t* offsets, void* scratch, size_t scratch_bytes,
                  cudaStream_t stream);
// The items sorted by rank: `keys` (packed), or `values` (octant << 29 | voxel id) with
// `keys` beside them (not packed) or without (placed by cached ranks).
struct SortedItems {
    const uint64_t* keys;
    const uint32_t* values;  // null when packed
};
// Scratch bytes for the sorts and scans of stages 2b-3.
size_t sort_scratch_bytes(int64_t n_items, int64_t n_entries, const KeyLayout& layout);
// Stage 2b: the items, written in voxel order and sorted by rank. Each array comes with a second
// buffer of its size (`values` null when packed): the sort moves the data between the two, so
// that it needs no third copy in its scratch, and says where the results landed.
SortedItems sort_items(const KeyLayout& layout, int n_voxels, const int64_t* octpaths, const uint8_t* octant_mask,
                       const int32_t* item_offsets, int64_t n_items, uint64_t* keys, uint64_t* keys_alt,
                       uint32_t* values, uint32_t* values_alt, void* scratch, size_t scratch_bytes,
                       cudaStream_t stream);
// Stage 2b with cached octant ranks, no sort. The eight front-to-back orders of an octree's
// voxels (ascending order_rank for each ray octant) do not depend on the camera: ranks[q][v],
// q = 0..3, is voxel v's position in order q, and order 7 - q is order q reversed (the
// complement of every key). They are built once per octree (octant_ranks) and found current
// by PATHS_FINGERPRINT. A frame then marks each item's slot q * n + rank in a bitmap of 8n
// bits, scans the words' bit counts, and writes each item at its slot's place among the set
// bits: the items in (octant, rank) order, each octant's in the order the sort gives (ties
// cannot occur: the cache is built only for distinct paths). The entries' key then holds the
// tile alone (KeyLayout's ranked_items).
// octant_ranks: ranks [4, n] of distinct octpaths in [0, 2^48); false (ranks unset) otherwise.
// Buffers: keys [2n], ids [2n], invalid [1], scratch of octant_ranks_scratch_bytes(n) (CUB's);
// it waits for the GPU (built once per octree).
size_t octant_ranks_scratch_bytes(int n_voxels);
bool octant_ranks(int n_voxels, const int64_t* octpaths, int32_t* ranks, uint64_t* keys, uint32_t* ids,
                  int* invalid, void* scratch, size_t scratch_bytes, cudaStream_t stream);
// The frame's part before its counts are known (queued while the host waits for them): the
// bitmap ([ranked_words(n)], zeroed here) and the words' exclusive bit-count scan.
int64_t ranked_words(int n_voxels);
size_t ranked_scratch_bytes(int n_voxels);
void mark_ranked_items(int n_voxels, const int32_t* ranks, const uint8_t* octant_mask, uint32_t* bitmap,
                       int32_t* word_offsets, void* scratch, size_t scratch_bytes, cudaStream_t stream);
// Then the items, octant << 29 | voxel id, in order into values[COUNT_ITEMS], and their tile
// counts (item_tiles of their voxels) into entry_offsets, which duplicate_with_keys scans in place.
SortedItems place_ranked_items(int n_voxels, const int32_t* ranks, const uint8_t* octant_mask,
                               const int32_t* item_tiles, const uint32_t* bitmap, const int32_t* word_offsets,
                               uint32_t* values, int32_t* entry_offsets, cudaStream_t stream);
// entry_offsets [n_items]: the items' entries 0..i, an inclusive scan of their tile counts
// (gathered from item_tiles, or for items placed by ranks, the counts it holds). Queued before
// the entries are allocated: item_tiles is not read after it.
// (Capacities: the offsets past the frame's items are not read.)
void scan_entry_offsets(const KeyLayout& layout, const BinningSizes& sizes, const SortedItems& items,
                        const int32_t* item_tiles, int32_t* entry_offsets, void* scratch, size_t scratch_bytes,
                        cudaStream_t stream);
// Stage 2c (duplicateWithKeys): item i's entries, one per tile of its voxel (as many as
// entry_offsets gives it), from entry_offsets[i - 1]. `wide` holds the frame's COUNT_WIDE item
// indices (listed in any order: each item's entries have their place), `wide_cursor` is zero.
// Capacities: the keys past the frame's entries are set to ~0, which the stable sort
// leaves behind them (no key is larger).
void duplicate_with_keys(const Camera& cam, const RequestedPixels& requests, const KeyLayout& layout,
                         const BinningSizes& sizes, const SortedItems& items, const short4* pixel_rect,
                         const int32_t* entry_offsets, int32_t* wide, unsigned long long* wide_cursor, uint32_t* keys,
                         uint32_t* values, cudaStream_t stream);
// Stage 3: the entries sorted stably by tile (the second buffers as for the items).
struct SortedEntries {
    const uint32_t* keys;  // tile << split_bits | the rank's top bits (and, rect_in_key, the entry's
                           // rectangle above ENTRY_RECT_SHIFT)
    uint32_t* values;      // octant << 29 | voxel id
};
SortedEntries sort_entries(const BinningSizes& sizes, const KeyLayout& layout, uint32_t* keys, uint32_t* keys_alt,
                           uint32_t* values, uint32_t* values_alt, void* scratch, size_t scratch_bytes,
                           cudaStream_t stream);
// Stage 4: ranges[tile] = [first, last + 1) of the tile's slice of the sorted list (zeroed
// first); entry_rects[i] = entry i's pixel rectangle within its tile (math.cuh: pack_entry_rect).
void identify_tile_ranges(const BinningSizes& sizes, int tiles_x, int n_tiles, const KeyLayout& layout,
                          const SortedEntries& sorted, const short4* pixel_rect, uint16_t* entry_rects, int2* ranges,
                          cudaStream_t stream);
// The order the render kernels take the tiles in: longest list first (to within 4.4% of
// length), so that the long lists start early instead of trailing. `scratch` holds
// order_tiles_scratch_bytes() bytes, zeroed by the caller (with the frame's counters: one memset).
size_t order_tiles_scratch_bytes();
void order_tiles(int n_tiles, const int2* ranges, void* scratch, int32_t* tile_order, cudaStream_t stream);

// --- forward.cu / backward.cu / topk.cu
// The pixels a render covers: the whole image (blocks of a tile, outputs [C, H, W]) or a
// list of requested pixels (outputs [C, P] in request order), grouped by tile into warps of at
// most 32 so that a warp still walks one tile's list.
// The whole image's tiles come longest list first: the long lists start early instead of
// trailing behind the rest of the grid. Requests' warps come in that order over the whole
// image's lists, in tile index order over a sparse frame's own (requests.cu).
struct PixelSet {
    const int32_t* tile_order;     // whole image: [n_tiles] the tiles, longest list first
    int n_requests;                // P; 0 for the whole image
    const int2* requests;          // [P] (row, col), or null for the whole image
    int n_warps;
    const int32_t* warp_tiles;     // [n_warps] the tile of each warp, -1 for a spare warp
    const int32_t* lane_requests;  // [n_warps * 32] the request of each lane, -1 for none
    SVR_HOST_DEVICE bool sparse() const { return requests != nullptr; }
};

struct RenderBuffers {
    const int2* ranges;
    const uint32_t* entries;  // sorted values: octant << 29 | voxel id
    const uint16_t* entry_rects;  // [M] each entry's pixel rectangle within its tile
    const float* centers;     // [N, 3]
    const float* lengths;     // [N]
    const float* geos;        // [N, 8]
    const float* rgbs;        // [N, 3] (null for top-K)
};

struct ForwardOptions {
    int n_samp;
    float bg;
    bool need_depth, need_distortion, need_normal, track_max_w;
};

// Per-pixel arrays are [C, H, W] for the whole image and [C, P] for requested pixels.
struct ForwardOutputs {
    float* color;   // [3, ...]
    float* depth;   // [3, ...] or null
    float* normal;  // [3, ...] or null
    float* T;       // [...]
    float* max_w;   // [N] or null
    float* aux;     // [...] when need_distortion: sum of w * contracted midpoint
    int32_t* last;  // [...]: one past the last list entry the pixel used (where backward starts), or null
                    // (no backward follows)
};

void render_forward(const Camera& cam, const PixelSet& pixels, const ForwardOptions& opt, const RenderBuffers& in,
                    const ForwardOutputs& out, cudaStream_t stream);

struct BackwardOptions {
    int n_samp;
    float bg;
    bool need_depth, need_normal;
    float lambda_R_concen, lambda_ascending, lambda_dist;
};

// An image the caller hands the backward, [C, H, W] (or [C, P] for requested pixels, read as
// row 0), with any strides: gradients often arrive as views (expanded from a sum, permuted
// from an HWC loss), and each element is read once, so copying them contiguous first costs a pass.
struct PixelImage {
    const float* data = nullptr;  // null when the option that reads it is off
    int64_t channel_stride = 0, row_stride = 0, col_stride = 0;
    SVR_HOST_DEVICE float at(int channel, int row, int col) const {
        return data[channel * channel_stride + row * row_stride + col * col_stride];
    }
};

struct BackwardInputs {
    const float* T;          // forward outputs
    const float* aux;        // or null (lambda_dist == 0)
    const int32_t* last;
    PixelImage dL_dcolor;    // [3, ...]
    PixelImage dL_ddepth;    // [1 or 3, ...] (channel 0 is read) or null
    PixelImage dL_dnormal;   // [3, ...] or null
    PixelImage dL_dT;        // [1, ...]
    PixelImage gt_color;     // [3, ...] or null (lambda_R_concen == 0)
};

struct BackwardOutputs {
    float* dL_dgeos;   // [N, 8], all three zeroed by the caller
    float* dL_drgbs;   // [N, 3]
    float* priority;   // [N]: sum over pixels |dL/dalpha * alpha|
};

void render_backward(const Camera& cam, const PixelSet& pixels, const BackwardOptions& opt, const RenderBuffers& in,
                     const BackwardInputs& grads, const BackwardOutputs& out, cudaStream_t stream);

// --- topk.cu: per pixel, the k used voxels of largest weight T * alpha, by weight descending
// (ties: front first); ids [k, ...] (-1 padded) and weights [k, ...] (0 padded).
void render_topk(const Camera& cam, const PixelSet& pixels, int n_samp, int k, const RenderBuffers& in, int64_t* ids,
                 float* weights, cudaStream_t stream);

}  // namespace svr
