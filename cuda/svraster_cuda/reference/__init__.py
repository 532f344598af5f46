"""Pure-PyTorch reference renderer: the CPU fallback and the test oracle.

One module per pipeline stage, named like the CUDA sources they mirror:
`preprocess` -> `binning` (duplicate with keys, sort, tile ranges) -> `forward`
(per-tile compositing) and `backward`; `math` holds what they share."""
from typing import NamedTuple

import torch

from .. import meta

from .backward import render_backward
from .binning import Binning, bin_voxels
from .forward import ACC, Rays, intersect, median_depth, pixel_chunks, shade_hits
from .math import pixel_rays, ray_quadrant
from .preprocess import Preprocessed, preprocess, tile_grid

__all__ = ["rasterize_preprocess", "rasterize_forward", "rasterize_backward", "ReferenceState"]


class ReferenceState(NamedTuple):
    """What the forward pass leaves for the backward pass (the kernels' buffers)."""
    preprocessed: Preprocessed
    binning: Binning
    rays: Rays


def make_rays(settings, dtype, device):
    d_cam, rd, cam_norm = pixel_rays(settings, dtype, device)
    W, H = settings.image_width, settings.image_height
    tiles_x, _ = tile_grid(settings)
    ys, xs = torch.meshgrid(torch.arange(H, device=device), torch.arange(W, device=device), indexing="ij")
    tile = (ys // meta.TILE_SIZE) * tiles_x + xs // meta.TILE_SIZE
    group = tile * 8 + ray_quadrant(rd)
    origin = settings.c2w_matrix[:3, 3].to(device=device, dtype=dtype)
    return Rays(origin, rd.reshape(-1, 3), cam_norm.reshape(-1), group.reshape(-1))


def rasterize_preprocess(settings, octree_paths, vox_centers, vox_lengths):
    """Stages 1-4. Returns (indices of the voxels in view [K], state)."""
    pre = preprocess(settings, vox_centers, vox_lengths)
    tiles_x, tiles_y = tile_grid(settings)
    binning = bin_voxels(pre, octree_paths, tiles_x, tiles_y)
    rays = make_rays(settings, vox_centers.dtype, vox_centers.device)
    return torch.nonzero(pre.n_duplicates)[:, 0], ReferenceState(pre, binning, rays)


def rasterize_forward(settings, state, vox_centers, vox_lengths, geos, rgbs):
    """Stage 5. Returns the outputs (color [3,H,W], depth [3,H,W] or empty, normal [3,H,W] or
    empty, T [1,H,W], max_w [N,1] or empty) and what the backward needs besides (nothing here:
    it recomputes)."""
    dtype, device = geos.dtype, geos.device
    W, H = settings.image_width, settings.image_height
    n_pix = W * H
    rays, binning = state.rays, state.binning
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
        return x.reshape(H, W, channels).permute(2, 0, 1).to(dtype).contiguous()

    empty = torch.empty(0, dtype=dtype, device=device)
    color = color + trans[:, None] * settings.bg_color
    outputs = (image(color, 3),
               image(depth, 3) if depth is not None else empty,
               image(normal, 3) if normal is not None else empty,
               image(trans[:, None], 1),
               max_w[:, None].to(dtype) if max_w is not None else empty)
    return outputs, None


def rasterize_backward(settings, state, _saved, vox_centers, vox_lengths, geos, rgbs, dL_dcolor, dL_ddepth, dL_dnormal, dL_dT):
    """Gradients (dL/dgeos [N,8], dL/drgbs [N,3], subdivision priority [N,1])."""
    return render_backward(settings, state, vox_centers, vox_lengths, geos, rgbs, dL_dcolor, dL_ddepth, dL_dnormal, dL_dT)
