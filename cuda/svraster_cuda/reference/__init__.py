"""Pure-PyTorch reference renderer: the CPU fallback and the test oracle.

One module per pipeline stage, named like the CUDA sources they mirror:
`preprocess` -> `binning` (duplicate with keys, sort, tile ranges) -> `forward`
(per-tile compositing) and `backward`; `requests` handles sparse pixel requests; `math` holds
what they share."""
from typing import NamedTuple

import torch

from .. import meta

from .backward import render_backward
from .binning import Binning, bin_voxels
from .forward import ACC, Rays, intersect, median_depth, pixel_chunks, shade_hits, topk_of_hits
from .math import pixel_rays, ray_quadrant
from .preprocess import Preprocessed, preprocess, tile_grid
from .requests import check_requests, request_masks

__all__ = ["camera_position", "rasterize_preprocess", "pixel_layout", "rasterize_forward", "rasterize_differentiable",
           "RasterizeVoxels",
           "rasterize_topk", "ReferenceState"]


class ReferenceState(NamedTuple):
    """What preprocess and binning leave for rendering (the kernels' buffers)."""
    preprocessed: Preprocessed
    binning: Binning

    @property
    def tile_masks(self):
        """The requested pixels the entries were binned for ([n_tiles] int64 masks), None: all."""
        requests = self.preprocessed.requests
        return None if requests is None else requests[1]


def pixel_layout(settings, state, pixels, dtype, device, verify=False):
    """The rays to render: every pixel (pixels None) or the requested (row, col) pairs [P, 2];
    `verify` checks those first (inside the image, among the pixels `state` was binned for)."""
    if pixels is not None and verify:
        check_requests(settings, pixels, state.tile_masks)
    d_cam, rd, cam_norm = pixel_rays(settings, dtype, device)
    W, H = settings.image_width, settings.image_height
    if pixels is None:
        rows = torch.arange(H, device=device).repeat_interleave(W)
        cols = torch.arange(W, device=device).repeat(H)
        shape = (H, W)
    else:
        rows, cols = pixels[:, 0].to(device), pixels[:, 1].to(device)
        shape = (len(pixels),)
    tiles_x, _ = tile_grid(settings)
    tile = (rows // meta.TILE_SIZE) * tiles_x + cols // meta.TILE_SIZE
    rd, cam_norm = rd[rows, cols], cam_norm[rows, cols]
    origin = settings.c2w_matrix[:3, 3].to(device=device, dtype=dtype)
    return Rays(origin, rd, cam_norm, tile * 8 + ray_quadrant(rd), rows, cols, shape)


def camera_position(settings, _state, device):
    """vox_fn's camera position on `device`."""
    return settings.c2w_matrix[:3, 3].to(device)


def rasterize_preprocess(settings, _camera, octree_paths, vox_centers, vox_lengths, pixels=None, _lay_out=False):
    """Stages 1-4, for every pixel or (sparse) the requested (row, col) pairs `pixels` [P, 2]
    (ValueError for one outside the image). Returns (indices of the voxels with entries [K],
    state). The pixels are laid out by pixel_layout alone (`_lay_out` is the CUDA path's)."""
    requests = None
    if pixels is not None:
        check_requests(settings, pixels)
        requests = request_masks(settings, pixels)
    pre = preprocess(settings, vox_centers, vox_lengths, requests)
    tiles_x, tiles_y = tile_grid(settings)
    binning = bin_voxels(pre, octree_paths, tiles_x, tiles_y)
    if requests is None:
        in_view = torch.nonzero(pre.n_duplicates)[:, 0]
    else:
        in_view = torch.unique(binning.entry_voxel)
    return in_view, ReferenceState(pre, binning)


def rasterize_forward(settings, state, rays, vox_centers, vox_lengths, geos, rgbs):
    """Stage 5 for the rays of `pixel_layout`. Returns the outputs (color [3,*S], depth [3,*S]
    or empty, normal [3,*S] or empty, T [1,*S], max_w [N,1] or empty; S = rays.shape), without
    autograd's graph (RasterizeVoxels below differentiates them; its backward recomputes)."""
    dtype, device = geos.dtype, geos.device
    n_pix = len(rays.group)
    binning = state.binning
    color = torch.zeros(n_pix, 3, dtype=ACC, device=device)
    trans = torch.ones(n_pix, dtype=ACC, device=device)
    depth = torch.zeros(n_pix, 3, dtype=ACC, device=device) if settings.need_depth else None
    normal = torch.zeros(n_pix, 3, dtype=ACC, device=device) if settings.need_normal else None
    max_w = torch.zeros(len(geos), dtype=ACC, device=device) if settings.track_max_w else None

    with torch.no_grad():
        for pixels in pixel_chunks(rays, binning):
            hits = intersect(settings, rays, binning, state.preprocessed.pixel_rect, pixels, vox_centers, vox_lengths)
            shaded = shade_hits(settings, rays, pixels, hits, vox_centers, vox_lengths, geos, rgbs, len(pixels))
            color[pixels] = shaded["color"]
            trans[pixels] = shaded["T"]
            if depth is not None:
                depth[pixels, 0] = shaded["depth_mean"]
                if settings.lambda_dist > 0:
                    depth[pixels, 1] = shaded["distortion_acc"]
                depth[pixels, 2] = median_depth(settings, rays, pixels, hits, shaded, len(pixels))
            if normal is not None:
                normal[pixels] = shaded["normal"]
            if max_w is not None:
                max_w.scatter_reduce_(0, hits.voxel, shaded["weight"], "amax")

    def image(x, channels):
        return x.reshape(*rays.shape, channels).movedim(-1, 0).to(dtype).contiguous()

    empty = torch.empty(0, dtype=dtype, device=device)
    color = color + trans[:, None] * settings.bg_color
    outputs = (image(color, 3),
               image(depth, 3) if depth is not None else empty,
               image(normal, 3) if normal is not None else empty,
               image(trans[:, None], 1),
               max_w[:, None].to(dtype) if max_w is not None else empty)
    return outputs


class RasterizeVoxels(torch.autograd.Function):
    """The reference's differentiable render (the compiled renderer has the same Function in
    C++, bindings.cpp's RasterizeVoxels, so that a training step's backward runs without
    Python). Differentiable in geos and rgbs; the gradient written to `subdiv_p` is the
    subdivision priority sum_pixels |dL/dalpha * alpha| (SPEC section 4), not a true gradient."""

    @staticmethod
    def forward(ctx, settings, state, rays, vox_centers, vox_lengths, geos, rgbs, subdiv_p):
        outputs = rasterize_forward(settings, state, rays, vox_centers, vox_lengths, geos, rgbs)
        ctx.settings, ctx.state, ctx.rays = settings, state, rays
        ctx.save_for_backward(vox_centers, vox_lengths, geos, rgbs)
        ctx.mark_non_differentiable(outputs[4])
        return outputs

    @staticmethod
    def backward(ctx, dL_dcolor, dL_ddepth, dL_dnormal, dL_dT, _dL_dmax_w):
        grad_geos, grad_rgbs, priority = render_backward(ctx.settings, ctx.state, ctx.rays, *ctx.saved_tensors,
                                                         dL_dcolor, dL_ddepth, dL_dnormal, dL_dT)
        return None, None, None, None, None, grad_geos, grad_rgbs, priority


def rasterize_differentiable(settings, state, rays, vox_centers, vox_lengths, geos, rgbs, subdiv_p):
    """rasterize_forward's outputs with autograd's graph (RasterizeVoxels)."""
    return RasterizeVoxels.apply(settings, state, rays, vox_centers, vox_lengths, geos, rgbs, subdiv_p)


def rasterize_topk(settings, state, rays, vox_centers, vox_lengths, geos, k):
    """The k voxels of largest blending weight per ray: ids [k, *S] int64, weights [k, *S]."""
    settings = settings._replace(need_depth=False, need_normal=False)
    n_pix = len(rays.group)
    ids = torch.full((n_pix, k), -1, dtype=torch.long, device=geos.device)
    weights = torch.zeros(n_pix, k, dtype=torch.float32, device=geos.device)
    no_rgbs = geos.new_zeros(len(geos), 3)
    with torch.no_grad():
        for pixels in pixel_chunks(rays, state.binning):
            hits = intersect(settings, rays, state.binning, state.preprocessed.pixel_rect, pixels, vox_centers,
                             vox_lengths)
            shaded = shade_hits(settings, rays, pixels, hits, vox_centers, vox_lengths, geos, no_rgbs, len(pixels))
            ids[pixels], weights[pixels] = topk_of_hits(hits, shaded, k, len(pixels))
    return ids.T.reshape(k, *rays.shape), weights.T.reshape(k, *rays.shape)
