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

// Entry value: octant in the top 3 bits, voxel id in the low 29 (hence MAX_VOXELS).
constexpr int VOXEL_ID_BITS = 29;
constexpr uint32_t VOXEL_ID_MASK = (1u << VOXEL_ID_BITS) - 1;

// Which (voxel, tile) pairs get entries: all of them, or (sparse rendering) only those where
// the voxel's pixel rectangle holds a requested pixel of the tile (see bins_into in math.cuh).
struct RequestedPixels {
    const uint32_t* tile_summary;  // [n_tiles]: bit x set when column x of the tile holds a request, bit
                                   // 16 + y when row y does (0: no request); null: every pixel is rendered
    const int32_t* tile_sat;     // summed-area table of the tiles holding requests, [tiles_y + 1, tiles_x + 1] with a zero
                                 // first row and column: a rectangle's count in four reads
    const uint32_t* row_masks;   // [n_tiles, TILE_SIZE]: bit x of row y set when pixel (x, y) of the tile
                                 // is requested
};

// What a frame's one device-to-host read brings back: counters the kernels accumulate
// (unsigned long long, zeroed by the caller) before the entry buffers can be sized.
enum FrameCount {
    COUNT_ENTRIES,           // (tile, octant) entries over all voxels
    COUNT_USED_LEVELS,       // the most octree levels any voxel in view uses: the rank bits that can differ
    COUNT_IN_VIEW,           // voxels with at least one entry
    COUNT_OUTSIDE_REQUESTS,  // requested pixels outside the image (sparse rendering; an error)
    COUNT_WIDE,              // voxels with entries and more than WIDE_CANDIDATES candidates
    WIDE_CURSOR,             // not read: duplicate_with_keys' cursor in its list of wide voxels
    N_FRAME_COUNTS
};

// --- requests.cu (sparse rendering)
// Marks the requested pixels (int64 [P, 2] of row, col) in row_masks ([n_tiles, TILE_SIZE],
// zeroed by the caller), counting those outside the image, and fills tile_summary and tile_sat
// (see RequestedPixels).
void mark_requests(const Camera& cam, int n_requests, const int64_t* pixels, uint32_t* row_masks,
                   uint32_t* tile_summary, int32_t* tile_sat, unsigned long long* n_outside, cudaStream_t stream);
// Grouping requests into warps (the PixelSet below), step 1: per request its (row, col) as int2,
// its tile (-1 when invalid) and its rank among its tile's requests (tile_counts zeroed by the
// caller). invalid[0] counts requests outside the image; invalid[1] those not set in `allowed`
// (row masks the entries were binned for; null allows all).
void bin_requests(const Camera& cam, int n_requests, const int64_t* pixels, const uint32_t* allowed, int2* requests,
                  int32_t* tile_of, int32_t* rank, int32_t* tile_counts, unsigned long long* invalid,
                  cudaStream_t stream);
// Step 2: the warps of each tile in tile_order (ceil(tile_counts / 32), scanned), warp_tiles
// and lane_requests (both prefilled with -1 by the caller: spare warps, idle lanes).
// `scratch` holds assign_warps_scratch_bytes(n_tiles) bytes.
size_t assign_warps_scratch_bytes(int n_tiles);
void assign_warps(int n_tiles, int n_requests, const int32_t* tile_order, const int32_t* tile_counts,
                  const int32_t* tile_of, const int32_t* rank, void* scratch, int32_t* warp_start,
                  int32_t* warp_tiles, int32_t* lane_requests, cudaStream_t stream);

// --- preprocess.cu
// Per voxel, conservative pixel rectangle (x0, y0, x1, y1 inclusive; int16, as images are at
// most MAX_IMAGE_SIZE pixels wide), read by binning (the render kernels read each entry's
// rectangle within its tile, written by identify_tile_ranges),
// octant mask and number of (tile, octant) entries (0 when culled); the frame counts
// COUNT_ENTRIES, COUNT_USED_LEVELS, COUNT_IN_VIEW and COUNT_WIDE; and camera_position[3], the
// c2w translation (vox_fn's argument: on the device without a host-to-device copy, which would
// wait for the GPU's queue, nor a launch of its own).
void preprocess(const Camera& cam, const RequestedPixels& requests, int n_voxels, const int64_t* octpaths,
                const float* centers, const float* lengths, short4* pixel_rect, uint8_t* octant_mask,
                int32_t* n_duplicates, unsigned long long* counts, float* camera_position, cudaStream_t stream);
// The voxels in view (those with entries), in index order, into in_view[COUNT_IN_VIEW]: vox_fn's
// argument. `scratch` holds scratch_bytes = in_view_scratch_bytes(n_voxels) bytes.
size_t in_view_scratch_bytes(int n_voxels);
void select_in_view(int n_voxels, const int32_t* n_duplicates, int64_t* in_view, void* scratch, size_t scratch_bytes,
                    cudaStream_t stream);

// --- binning.cu
// Voxels with more (tile, octant) candidates than this (see entry_candidates in math.cuh) are
// binned by a warp each, after the others: a thread (or, for requested pixels, a warp of 32
// voxels) walking a near voxel's thousand candidates alone made the binning's tail.
constexpr int WIDE_CANDIDATES = 32;
// The sort key is (tile, rank) with the rank reduced to its informative `rank_bits`
// (3 * used_levels: the unused levels at the bottom of the octpaths are zero in every path).
// Both share one 64-bit key when they fit; otherwise the entries are sorted twice (rank, then
// stably by tile). Where they leave the key's top 16 bits free, the entry's pixel rectangle in
// its tile rides there through the sort (which reads only the bits below).
constexpr int ENTRY_RECT_SHIFT = 48;
struct KeyLayout {
    int rank_bits, tile_bits;
    KeyLayout(int n_tiles, int used_levels);
    SVR_HOST_DEVICE bool single() const { return rank_bits + tile_bits <= 64; }
    SVR_HOST_DEVICE bool rect_in_key() const { return rank_bits + tile_bits <= ENTRY_RECT_SHIFT; }
};
// Scratch bytes for the sorts of `n_entries` entries.
size_t sort_scratch_bytes(int64_t n_entries, const KeyLayout& layout);
// Writes each voxel's entries at `offsets[v] - n_duplicates[v]` (offsets = inclusive scan;
// int32, as the caller has checked that the total is below 2^31).
// `tile_keys` is written only when !layout.single(). `wide` holds the frame's COUNT_WIDE voxel
// ids (listed in any order: each voxel's entries have their place), `wide_cursor` is zero.
void duplicate_with_keys(const Camera& cam, const RequestedPixels& requests, const KeyLayout& layout, int n_voxels,
                         const int64_t* octpaths, const short4* pixel_rect, const uint8_t* octant_mask,
                         const int32_t* n_duplicates, const int32_t* offsets, int n_wide, int32_t* wide,
                         unsigned long long* wide_cursor, uint64_t* keys, uint32_t* tile_keys, uint32_t* values,
                         cudaStream_t stream);
// Sorts entries by (tile, rank). Each array comes with a second buffer of its size; the sort
// moves the data between the two (so that it needs no third copy in its scratch) and says
// where the results landed. `index_scratch` holds 2 * n_entries uint32 (used only by the
// two-pass sort).
struct SortedEntries {
    const uint64_t* keys;       // single-key layout: sorted keys (else null)
    const uint32_t* tile_keys;  // two-pass layout: sorted tiles (else null)
    uint32_t* values;           // sorted values
};
SortedEntries sort_entries(int64_t n_entries, const KeyLayout& layout, uint64_t* keys, uint64_t* keys_alt,
                           uint32_t* tile_keys, uint32_t* tile_keys_alt, uint32_t* values, uint32_t* values_alt,
                           uint32_t* index_scratch, void* scratch, size_t scratch_bytes, cudaStream_t stream);
// ranges[tile] = [first, last + 1) of the tile's slice of the sorted list (zeroed first);
// entry_rects[i] = entry i's pixel rectangle within its tile (math.cuh: pack_entry_rect).
void identify_tile_ranges(int64_t n_entries, int tiles_x, int n_tiles, const KeyLayout& layout,
                          const SortedEntries& sorted, const short4* pixel_rect, uint16_t* entry_rects, int2* ranges,
                          cudaStream_t stream);
// The order the render kernels take the tiles in: longest list first (to within 4.4% of
// length), so that the long lists start early instead of trailing. `scratch` holds
// order_tiles_scratch_bytes() bytes.
size_t order_tiles_scratch_bytes();
void order_tiles(int n_tiles, const int2* ranges, void* scratch, int32_t* tile_order, cudaStream_t stream);

// --- forward.cu / backward.cu / topk.cu
// The pixels a render covers: the whole image (blocks of a tile, outputs [C, H, W]) or a
// list of requested pixels (outputs [C, P] in request order), grouped by tile into warps of at
// most 32 so that a warp still walks one tile's list.
// Tiles (whole image) or warps (requests) come longest list first: the long lists start early
// instead of trailing behind the rest of the grid.
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
    int32_t* last;  // [...]: one past the last list entry the pixel used (where backward starts)
};

void render_forward(const Camera& cam, const PixelSet& pixels, const ForwardOptions& opt, const RenderBuffers& in,
                    const ForwardOutputs& out, cudaStream_t stream);

struct BackwardOptions {
    int n_samp;
    float bg;
    bool need_depth, need_normal;
    float lambda_R_concen, lambda_ascending, lambda_dist;
};

// An incoming gradient image [C, H, W] (or [C, P] for requested pixels, read as row 0) with
// any strides: gradients often arrive as views (expanded from a sum, permuted from an HWC
// loss), and each element is read once, so copying them contiguous first costs a pass.
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
    const float* gt_color;   // [3, ...] or null
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
