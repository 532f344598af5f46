"""Public rendering API, a drop-in for SVRaster's `svraster_cuda.renderer`.

`rasterize_voxels` runs preprocess and binning, asks `vox_fn` for the parameters of the voxels
in view, then `_RasterizeVoxels` composites them differentiably. CUDA tensors use the compiled
extension when it is there; everything else uses the PyTorch reference (same results)."""
from typing import NamedTuple

import torch

from . import backend, meta, validation
from .params import GatherGeoParams, SH_eval

__all__ = ["RasterSettings", "rasterize_voxels", "_RasterizeVoxels", "GatherGeoParams", "SH_eval"]


class RasterSettings(NamedTuple):
    color_mode: str
    n_samp_per_vox: int
    image_width: int
    image_height: int
    tanfovx: float
    tanfovy: float
    cx: float
    cy: float
    w2c_matrix: torch.Tensor
    c2w_matrix: torch.Tensor
    bg_color: float = 0
    near: float = meta.NEAR_DEFAULT
    need_depth: bool = False
    need_normal: bool = False
    track_max_w: bool = False
    lambda_R_concen: float = 0
    lambda_ascending: float = 0
    lambda_dist: float = 0
    gt_color: torch.Tensor = torch.empty(0)
    debug: bool = False


def rasterize_voxels(raster_settings, octree_paths, vox_centers, vox_lengths, vox_fn):
    """Render voxels. Returns (color [3,H,W], depth [3,H,W], normal [3,H,W], T [1,H,W],
    max_w [N,1]); depth, normal and max_w are empty unless requested in the settings."""
    validation.check_voxels(octree_paths, vox_centers, vox_lengths, values=raster_settings.debug)
    validation.check_settings(raster_settings, vox_centers.device)
    impl = backend.for_device(vox_centers.device)
    in_view, state = impl.rasterize_preprocess(raster_settings, octree_paths, vox_centers, vox_lengths)

    cam_pos = raster_settings.c2w_matrix[:3, 3].to(vox_centers.device)
    params = vox_fn(in_view, cam_pos, raster_settings.color_mode)
    validation.check_vox_params(params, len(vox_centers), vox_centers.device, values=raster_settings.debug)
    return _RasterizeVoxels.apply(state, raster_settings, octree_paths, vox_centers, vox_lengths,
                                  params["geos"], params["rgbs"], params["subdiv_p"])


class _RasterizeVoxels(torch.autograd.Function):
    """Differentiable in geos and rgbs; the gradient written to `subdiv_p` is the subdivision
    priority sum_pixels |dL/dalpha * alpha| (SPEC section 4), not a true gradient."""

    @staticmethod
    def forward(ctx, state, raster_settings, octree_paths, vox_centers, vox_lengths, geos, rgbs, subdiv_p):
        impl = backend.for_device(vox_centers.device)
        (color, depth, normal, T, max_w), saved = impl.rasterize_forward(
            raster_settings, state, vox_centers, vox_lengths, geos, rgbs)
        ctx.impl, ctx.state, ctx.raster_settings = impl, state, raster_settings
        # Outputs kept for backward go through save_for_backward: as plain ctx attributes they
        # would form a reference cycle (output -> grad_fn -> ctx -> output) that keeps every
        # frame's buffers alive until Python's garbage collector runs.
        saved = tuple(saved or ())
        ctx.n_saved = len(saved)
        ctx.save_for_backward(vox_centers, vox_lengths, geos, rgbs, *saved)
        ctx.mark_non_differentiable(max_w)
        return color, depth, normal, T, max_w

    @staticmethod
    def backward(ctx, dL_dcolor, dL_ddepth, dL_dnormal, dL_dT, _dL_dmax_w):
        vox_centers, vox_lengths, geos, rgbs, *saved = ctx.saved_tensors
        grad_geos, grad_rgbs, priority = ctx.impl.rasterize_backward(
            ctx.raster_settings, ctx.state, saved, vox_centers, vox_lengths, geos, rgbs,
            dL_dcolor.contiguous(), dL_ddepth.contiguous(), dL_dnormal.contiguous(), dL_dT.contiguous())
        return None, None, None, None, None, grad_geos, grad_rgbs, priority
