// The `_C` extension: PyTorch tensors in, the stages of rasterizer.h on the current stream,
// tensors out. Inputs are checked here again (the Python layer checks first), so that no
// CPU tensor, wrong dtype or wrong size ever reaches a kernel.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <vector>

#include "rasterizer.h"

namespace {

using torch::Tensor;

// A CUDA tensor on `like`'s device, of `dtype`, contiguous, with `shape` (-1: any size).
void check_tensor(const Tensor& t, const char* name, at::ScalarType dtype, std::vector<int64_t> shape,
                  const Tensor& like) {
    TORCH_CHECK_VALUE(t.is_cuda(), name, ": expected a CUDA tensor, got one on ", t.device());
    TORCH_CHECK_VALUE(t.device() == like.device(), name, ": expected a tensor on ", like.device(), ", got ",
                      t.device());
    TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, ": expected dtype ", dtype, ", got ", t.scalar_type());
    TORCH_CHECK_VALUE(t.is_contiguous(), name, ": expected a contiguous tensor");
    bool ok = t.dim() == int64_t(shape.size());
    for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || shape[i] == t.size(int64_t(i));
    TORCH_CHECK_VALUE(ok, name, ": expected shape ", c10::IntArrayRef(shape), " (-1: any), got ", t.sizes());
}

// camera = [W, H, tanfovx, tanfovy, cx, cy, near, w2c (12 values), c2w (12 values)]
svr::Camera make_camera(const std::vector<double>& camera) {
    TORCH_CHECK_VALUE(camera.size() == 31, "camera: expected 31 numbers, got ", camera.size());
    svr::Camera cam;
    cam.width = int(camera[0]);
    cam.height = int(camera[1]);
    TORCH_CHECK_VALUE(cam.width > 0 && cam.height > 0 && cam.width <= 16384 && cam.height <= 16384,
                      "image_width/image_height: expected 1..16384, got ", cam.width, " x ", cam.height);
    cam.tanfovx = float(camera[2]);
    cam.tanfovy = float(camera[3]);
    cam.cx = float(camera[4]);
    cam.cy = float(camera[5]);
    cam.near = float(camera[6]);
    for (int i = 0; i < 12; ++i) {
        cam.w2c[i] = float(camera[7 + i]);
        cam.c2w[i] = float(camera[19 + i]);
    }
    return cam;
}

template <typename T>
T* ptr(const Tensor& t) { return t.numel() ? reinterpret_cast<T*>(t.data_ptr()) : nullptr; }

// Sparse rendering: tile_active [n_tiles] bool and row_masks [n_tiles, TILE_SIZE] int32 of the
// requested pixels (both empty to bin every tile).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> rasterize_preprocess(const std::vector<double>& camera,
                                                                        const Tensor& octree_paths,
                                                                        const Tensor& vox_centers,
                                                                        const Tensor& vox_lengths,
                                                                        const Tensor& tile_active,
                                                                        const Tensor& row_masks) {
    TORCH_CHECK_VALUE(vox_centers.is_cuda(), "vox_centers: expected a CUDA tensor, got one on ", vox_centers.device());
    const c10::cuda::CUDAGuard guard(vox_centers.device());
    const int64_t n = vox_centers.size(0);
    TORCH_CHECK_VALUE(n <= MAX_VOXELS, "vox_centers: at most ", MAX_VOXELS, " voxels are supported, got ", n);
    check_tensor(vox_centers, "vox_centers", at::kFloat, {n, 3}, vox_centers);
    check_tensor(octree_paths, "octree_paths", at::kLong, {n, 1}, vox_centers);
    check_tensor(vox_lengths, "vox_lengths", at::kFloat, {n, 1}, vox_centers);
    const svr::Camera cam = make_camera(camera);
    const int n_tiles = cam.tiles_x() * cam.tiles_y();
    const auto stream = c10::cuda::getCurrentCUDAStream();
    const auto opts = vox_centers.options();

    Tensor tile_sat;
    svr::RequestedPixels requests{nullptr, nullptr, nullptr};
    if (tile_active.numel()) {
        check_tensor(tile_active, "tile_active", at::kBool, {n_tiles}, vox_centers);
        check_tensor(row_masks, "row_masks", at::kInt, {n_tiles, TILE_SIZE}, vox_centers);
        tile_sat = torch::zeros({cam.tiles_y() + 1, cam.tiles_x() + 1}, opts.dtype(at::kInt));
        tile_sat.slice(0, 1).slice(1, 1).copy_(
            tile_active.reshape({cam.tiles_y(), cam.tiles_x()}).cumsum(0, at::kInt).cumsum(1, at::kInt));
        requests = {ptr<uint8_t>(tile_active), ptr<int32_t>(tile_sat), ptr<uint32_t>(row_masks)};
    }

    Tensor pixel_rect = torch::empty({n, 4}, opts.dtype(at::kInt));
    Tensor octant_mask = torch::empty({n}, opts.dtype(at::kByte));
    Tensor n_duplicates = torch::empty({n}, opts.dtype(at::kInt));
    Tensor free_levels = torch::full({1}, MAX_NUM_LEVELS, opts.dtype(at::kInt));
    svr::preprocess(cam, requests, int(n), ptr<int64_t>(octree_paths), ptr<float>(vox_centers), ptr<float>(vox_lengths),
                    ptr<int4>(pixel_rect), ptr<uint8_t>(octant_mask), ptr<int32_t>(n_duplicates),
                    ptr<int32_t>(free_levels), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    Tensor offsets = torch::cumsum(n_duplicates, 0, at::kLong);
    // The one device-to-host read of the frame: how many entries to allocate, how many rank
    // bits carry information, and how many voxels are in view.
    const Tensor counts = torch::cat({n ? offsets.slice(0, n - 1) : torch::zeros({1}, offsets.options()),
                                      free_levels.to(at::kLong), (n_duplicates > 0).sum().reshape({1})}).cpu();
    const int64_t n_entries = counts[0].item<int64_t>();
    const svr::KeyLayout layout(n_tiles, int(counts[1].item<int64_t>()));
    // With the count known, selecting the voxels in view needs no second read.
    Tensor in_view = torch::nonzero_static(n_duplicates, counts[2].item<int64_t>()).reshape({-1});
    TORCH_CHECK_VALUE(n_entries < (int64_t(1) << 31), "vox_centers: this view needs ", n_entries,
                      " tile-voxel entries; at most 2^31 - 1 are supported (fewer voxels or a smaller image)");
    const bool single = layout.single();
    Tensor keys = torch::empty({2, n_entries}, opts.dtype(at::kLong));
    Tensor values = torch::empty({2, n_entries}, opts.dtype(at::kInt));
    Tensor tile_keys = torch::empty({single ? 0 : 2, n_entries}, opts.dtype(at::kInt));
    Tensor index_scratch = torch::empty({single ? 0 : 2 * n_entries}, opts.dtype(at::kInt));
    Tensor scratch = torch::empty({int64_t(svr::sort_scratch_bytes(n_entries, layout))}, opts.dtype(at::kByte));
    Tensor ranges = torch::empty({n_tiles, 2}, opts.dtype(at::kInt));

    auto* k = ptr<uint64_t>(keys);
    auto* v = ptr<uint32_t>(values);
    auto* tk = ptr<uint32_t>(tile_keys);
    svr::duplicate_with_keys(cam, requests, layout, int(n), ptr<int64_t>(octree_paths), ptr<int4>(pixel_rect),
                             ptr<uint8_t>(octant_mask), ptr<int32_t>(n_duplicates), ptr<int64_t>(offsets), k, tk, v,
                             stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    svr::sort_entries(n_entries, layout, k, k ? k + n_entries : nullptr, tk, tk ? tk + n_entries : nullptr, v,
                      v ? v + n_entries : nullptr, ptr<uint32_t>(index_scratch), scratch.data_ptr(),
                      size_t(scratch.numel()), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    svr::identify_tile_ranges(n_entries, n_tiles, layout, k ? k + n_entries : nullptr, tk ? tk + n_entries : nullptr,
                              ptr<int2>(ranges), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // Render order: tiles with the longest lists first.
    const Tensor tile_order = torch::argsort(ranges.select(1, 1) - ranges.select(1, 0), true, 0, true).to(at::kInt);
    return {in_view, ranges, values[1], pixel_rect, tile_order};
}

// `rgbs` may be undefined where colours are not read (top-K).
svr::RenderBuffers render_buffers(const Tensor& ranges, const Tensor& entries, const Tensor& pixel_rect,
                                  const Tensor& vox_centers,
                                  const Tensor& vox_lengths, const Tensor& geos, const Tensor& rgbs, int n_tiles) {
    const int64_t n = vox_centers.size(0);
    check_tensor(ranges, "ranges", at::kInt, {n_tiles, 2}, vox_centers);
    check_tensor(entries, "entries", at::kInt, {-1}, vox_centers);
    check_tensor(pixel_rect, "pixel_rect", at::kInt, {n, 4}, vox_centers);
    check_tensor(vox_centers, "vox_centers", at::kFloat, {n, 3}, vox_centers);
    check_tensor(vox_lengths, "vox_lengths", at::kFloat, {n, 1}, vox_centers);
    check_tensor(geos, "geos", at::kFloat, {n, 8}, vox_centers);
    if (rgbs.defined()) check_tensor(rgbs, "rgbs", at::kFloat, {n, 3}, vox_centers);
    return {ptr<int2>(ranges), ptr<uint32_t>(entries), ptr<int4>(pixel_rect), ptr<float>(vox_centers), ptr<float>(vox_lengths),
            ptr<float>(geos), rgbs.defined() ? ptr<float>(rgbs) : nullptr};
}

// The pixels to render: the whole image (blocks in tile_order), or (sparse) requests [P, 2]
// int32 (row, col) grouped by tile into warps: warp_tiles [n_warps], lane_requests
// [32 * n_warps] (-1: idle lane).
svr::PixelSet pixel_set(const Tensor& tile_order, bool sparse, const Tensor& requests, const Tensor& warp_tiles,
                        const Tensor& lane_requests, const Tensor& like, int n_tiles) {
    if (!sparse) {
        check_tensor(tile_order, "tile_order", at::kInt, {n_tiles}, like);
        return {ptr<int32_t>(tile_order), 0, nullptr, 0, nullptr, nullptr};
    }
    check_tensor(requests, "requests", at::kInt, {-1, 2}, like);
    check_tensor(warp_tiles, "warp_tiles", at::kInt, {-1}, like);
    check_tensor(lane_requests, "lane_requests", at::kInt, {32 * warp_tiles.size(0)}, like);
    // A non-null pointer marks the set as sparse even when it is empty.
    static const int2 no_requests{0, 0};
    return {nullptr, int(requests.size(0)), requests.numel() ? ptr<int2>(requests) : &no_requests,
            int(warp_tiles.size(0)), ptr<int32_t>(warp_tiles), ptr<int32_t>(lane_requests)};
}

// Shape of a per-pixel output with `channels` channels: [C, H, W], or [C, P] for requests.
std::vector<int64_t> pixel_shape(const svr::Camera& cam, const svr::PixelSet& set, int64_t channels) {
    if (set.sparse()) return {channels, set.n_requests};
    return {channels, cam.height, cam.width};
}

// What every render entry point starts from: checked inputs, the camera, the voxel buffers and
// the pixels to render. `rgbs` may be undefined (top-K reads no colours).
struct RenderCall {
    svr::Camera cam;
    svr::RenderBuffers in;
    svr::PixelSet pixels;
};

RenderCall render_call(const std::vector<double>& camera, int64_t n_samp, const Tensor& ranges, const Tensor& entries,
                       const Tensor& pixel_rect, const Tensor& vox_centers, const Tensor& vox_lengths,
                       const Tensor& geos, const Tensor& rgbs, const Tensor& tile_order, bool sparse,
                       const Tensor& requests, const Tensor& warp_tiles, const Tensor& lane_requests) {
    TORCH_CHECK_VALUE(vox_centers.is_cuda(), "vox_centers: expected a CUDA tensor, got one on ", vox_centers.device());
    TORCH_CHECK_VALUE(n_samp >= 1 && n_samp <= MAX_N_SAMP, "n_samp_per_vox: expected 1..", MAX_N_SAMP, ", got ", n_samp);
    const svr::Camera cam = make_camera(camera);
    const int n_tiles = cam.tiles_x() * cam.tiles_y();
    return {cam, render_buffers(ranges, entries, pixel_rect, vox_centers, vox_lengths, geos, rgbs, n_tiles),
            pixel_set(tile_order, sparse, requests, warp_tiles, lane_requests, vox_centers, n_tiles)};
}

std::vector<Tensor> rasterize_voxels(const std::vector<double>& camera, int64_t n_samp, double bg, bool need_depth,
                                     bool need_distortion, bool need_normal, bool track_max_w, const Tensor& ranges,
                                     const Tensor& entries, const Tensor& pixel_rect, const Tensor& vox_centers,
                                     const Tensor& vox_lengths, const Tensor& geos, const Tensor& rgbs,
                                     const Tensor& tile_order, bool sparse,
                                     const Tensor& requests, const Tensor& warp_tiles, const Tensor& lane_requests) {
    const RenderCall call = render_call(camera, n_samp, ranges, entries, pixel_rect, vox_centers, vox_lengths, geos, rgbs,
                                        tile_order, sparse, requests, warp_tiles, lane_requests);
    const c10::cuda::CUDAGuard guard(vox_centers.device());
    const svr::Camera& cam = call.cam;
    const svr::PixelSet& set = call.pixels;
    const auto opts = geos.options();
    const int64_t n = vox_centers.size(0);
    Tensor color = torch::empty(pixel_shape(cam, set, 3), opts);
    Tensor T = torch::empty(pixel_shape(cam, set, 1), opts);
    Tensor depth = need_depth ? torch::empty(pixel_shape(cam, set, 3), opts) : torch::empty({0}, opts);
    Tensor normal = need_normal ? torch::empty(pixel_shape(cam, set, 3), opts) : torch::empty({0}, opts);
    Tensor max_w = track_max_w ? torch::zeros({n, 1}, opts) : torch::empty({0}, opts);
    Tensor aux = need_distortion ? torch::empty(pixel_shape(cam, set, 1), opts) : torch::empty({0}, opts);
    Tensor last = torch::empty(pixel_shape(cam, set, 1), opts.dtype(at::kInt));
    svr::render_forward(cam, set, {int(n_samp), float(bg), need_depth, need_distortion, need_normal, track_max_w}, call.in,
                        {ptr<float>(color), ptr<float>(depth), ptr<float>(normal), ptr<float>(T), ptr<float>(max_w),
                         ptr<float>(aux), ptr<int32_t>(last)},
                        c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {color, depth, normal, T, max_w, aux, last};
}

std::vector<Tensor> rasterize_voxels_backward(
    const std::vector<double>& camera, int64_t n_samp, double bg, bool need_depth, bool need_normal,
    double lambda_R_concen, double lambda_ascending, double lambda_dist, const Tensor& gt_color, const Tensor& ranges,
    const Tensor& entries, const Tensor& pixel_rect, const Tensor& vox_centers, const Tensor& vox_lengths, const Tensor& geos, const Tensor& rgbs,
    const Tensor& T, const Tensor& aux, const Tensor& last,
    const Tensor& dL_dcolor, const Tensor& dL_ddepth, const Tensor& dL_dnormal, const Tensor& dL_dT,
    const Tensor& tile_order, bool sparse,
    const Tensor& requests, const Tensor& warp_tiles, const Tensor& lane_requests) {
    const RenderCall call = render_call(camera, n_samp, ranges, entries, pixel_rect, vox_centers, vox_lengths, geos, rgbs,
                                        tile_order, sparse, requests, warp_tiles, lane_requests);
    const c10::cuda::CUDAGuard guard(vox_centers.device());
    const svr::Camera& cam = call.cam;
    const svr::PixelSet& set = call.pixels;
    const int64_t n = vox_centers.size(0);
    auto image = [&](const Tensor& t, const char* name, int64_t ch) {
        check_tensor(t, name, at::kFloat, pixel_shape(cam, set, ch), vox_centers);
        return ptr<float>(t);
    };
    check_tensor(last, "last", at::kInt, pixel_shape(cam, set, 1), vox_centers);
    svr::BackwardInputs g{image(T, "T", 1), lambda_dist > 0 ? image(aux, "aux", 1) : nullptr, ptr<int32_t>(last),
                          image(dL_dcolor, "dL_dcolor", 3),
                          need_depth ? image(dL_ddepth, "dL_ddepth", 3) : nullptr,
                          need_normal ? image(dL_dnormal, "dL_dnormal", 3) : nullptr, image(dL_dT, "dL_dT", 1),
                          lambda_R_concen > 0 ? image(gt_color, "gt_color", 3) : nullptr};
    const auto opts = geos.options();
    Tensor dL_dgeos = torch::zeros({n, 8}, opts);
    Tensor dL_drgbs = torch::zeros({n, 3}, opts);
    Tensor priority = torch::zeros({n, 1}, opts);
    svr::render_backward(cam, set,
                         {int(n_samp), float(bg), need_depth, need_normal, float(lambda_R_concen),
                          float(lambda_ascending), float(lambda_dist)},
                         call.in, g, {ptr<float>(dL_dgeos), ptr<float>(dL_drgbs), ptr<float>(priority)},
                         c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {dL_dgeos, dL_drgbs, priority};
}

std::vector<Tensor> rasterize_topk(const std::vector<double>& camera, int64_t n_samp, int64_t k, const Tensor& ranges,
                                   const Tensor& entries, const Tensor& pixel_rect, const Tensor& vox_centers,
                                   const Tensor& vox_lengths, const Tensor& geos, const Tensor& tile_order, bool sparse,
                                   const Tensor& requests,
                                   const Tensor& warp_tiles, const Tensor& lane_requests) {
    TORCH_CHECK_VALUE(k >= 1 && k <= (int64_t(1) << 20), "k: expected 1..2^20, got ", k);
    const RenderCall call = render_call(camera, n_samp, ranges, entries, pixel_rect, vox_centers, vox_lengths, geos,
                                        Tensor(), tile_order, sparse, requests, warp_tiles, lane_requests);
    const c10::cuda::CUDAGuard guard(vox_centers.device());
    Tensor ids = torch::full(pixel_shape(call.cam, call.pixels, k), -1, geos.options().dtype(at::kLong));
    Tensor weights = torch::zeros(pixel_shape(call.cam, call.pixels, k), geos.options());
    svr::render_topk(call.cam, call.pixels, int(n_samp), int(k), call.in, ptr<int64_t>(ids), ptr<float>(weights),
                     c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {ids, weights};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("rasterize_preprocess", &rasterize_preprocess,
          "preprocess, duplicateWithKeys, sort, identifyTileRanges -> (in_view, ranges, entries, pixel_rect, "
          "tile_order)");
    m.def("rasterize_voxels", &rasterize_voxels, "forward render -> [color, depth, normal, T, max_w, aux, last]");
    m.def("rasterize_voxels_backward", &rasterize_voxels_backward, "backward render -> [dL_dgeos, dL_drgbs, priority]");
    m.def("rasterize_topk", &rasterize_topk, "per-pixel top-K contributors -> [ids, weights]");
    m.attr("MAX_NUM_LEVELS") = MAX_NUM_LEVELS;
    m.attr("MAX_N_SAMP") = MAX_N_SAMP;
    m.attr("STEP_SZ_SCALE") = STEP_SZ_SCALE;
    m.attr("MAX_ALPHA") = MAX_ALPHA;
    m.attr("MIN_ALPHA") = MIN_ALPHA;
    m.attr("EARLY_STOP_T") = EARLY_STOP_T;
    m.attr("TILE_SIZE") = TILE_SIZE;
    m.attr("MAX_VOXELS") = MAX_VOXELS;
    m.attr("MAX_EXACT_TILES") = MAX_EXACT_TILES;
}
