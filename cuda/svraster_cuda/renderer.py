"""Public rendering API, a drop-in for SVRaster's `svraster_cuda.renderer`.

`rasterize_voxels` runs preprocess and binning, asks `vox_fn` for the parameters of the voxels
in view, then composites them differentiably through the backend's autograd Function: the
extension's own, in C++, for CUDA tensors where the compiled extension is there; the PyTorch
reference's `_RasterizeVoxels` for everything else, with the same results.

Beyond upstream: `intersect_voxels` keeps preprocess/sort/tile ranges of one camera as a
`TileIntersections` for reuse, `rasterize_voxels_sparse` renders a list of pixels (only the
tiles holding them are processed), and `topk_contributors` lists each pixel's k voxels of
largest blending weight. The CUDA path caches the octant orders of the octree it renders
(16 bytes a voxel) and, while they are current, bins frames through a CUDA graph over a memory
arena it keeps (about a frame's binning memory); `release_octant_ranks` frees both,
SVRASTER_OCTANT_RANKS=off never builds them: see docs/limits.md."""
from typing import NamedTuple

import torch

from . import backend, cuda_backend, meta, reference, validation
from .cuda_backend import release_octant_ranks
from .params import GatherGeoParams, SH_eval

__all__ = ["RasterSettings", "rasterize_voxels", "_RasterizeVoxels", "GatherGeoParams", "SH_eval",
           "TileIntersections", "intersect_voxels", "rasterize_voxels_sparse", "topk_contributors",
           "release_octant_ranks"]


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


class TileIntersections:
    """What preprocess, sort and tile ranges produced for one camera and one set of voxels
    (with `pixels`, for the tiles holding them only). `rasterize_voxels`,
    `rasterize_voxels_sparse` and `topk_contributors` accept it as `intersections=` and skip
    those stages; they refuse one built for another camera, image size or voxel set, or whose
    voxel tensors were modified in place since.

    `in_view` holds the indices of the voxels that have at least one entry."""

    def __init__(self, impl, state, in_view, camera, voxels):
        self.impl, self.state, self.in_view = impl, state, in_view
        self.camera, self.voxels = camera, voxels

    @property
    def sparse(self):
        """Built for a pixel subset (the state keeps the tile masks of the pixels it was binned for)."""
        return self.state.tile_masks is not None

    def __repr__(self):
        scope = "all pixels"
        if self.sparse:
            scope = f"requested pixels in {int((self.state.tile_masks != 0).sum())} tiles"
        return (f"TileIntersections({int(self.camera[0])}x{int(self.camera[1])} image, {self.voxels[0][1][0]} voxels, "
                f"{len(self.in_view)} in view, {scope})")


def _voxel_signature(octree_paths, vox_centers, vox_lengths):
    return tuple((t.data_ptr(), tuple(t.shape), t._version) for t in (octree_paths, vox_centers, vox_lengths))


def _check_inputs(raster_settings, octree_paths, vox_centers, vox_lengths, pixels=None):
    """Checks everything but the pixels' values (the backends check those where they read
    them); returns validation.camera_args(raster_settings), or a validation.DeviceCamera for
    the compiled renderer where the matrices are float32 on the voxels' device."""
    validation.check_voxels(octree_paths, vox_centers, vox_lengths, values=raster_settings.debug)
    device = vox_centers.device
    camera = validation.check_settings(raster_settings, device, None if pixels is None else len(pixels),
                                       matrices_stay=backend.for_device(device) is cuda_backend)
    if pixels is not None:
        validation.check_pixels(pixels, vox_centers.device)
    return camera


def _intersect(raster_settings, camera, octree_paths, vox_centers, vox_lengths, pixels, lay_out=False, keep=False):
    """`lay_out`: the pixels are rendered at once (the backend may lay them out in this call).
    `keep`: the object goes to the caller, who may reuse it (it then records which voxel
    tensors it was built for; a frame's own is never compared, and that costs host time)."""
    impl = backend.for_device(vox_centers.device)
    in_view, state = impl.rasterize_preprocess(raster_settings, camera, octree_paths, vox_centers, vox_lengths, pixels,
                                               lay_out)
    if isinstance(camera, validation.DeviceCamera):
        camera = state.camera  # the values its matrices held, read with the frame's counts
    voxels = _voxel_signature(octree_paths, vox_centers, vox_lengths) if keep else None
    return TileIntersections(impl, state, in_view, camera, voxels)


def intersect_voxels(raster_settings, octree_paths, vox_centers, vox_lengths, pixels=None):
    """Preprocess, duplicate with keys, sort and tile ranges for this camera, kept for reuse.
    With `pixels` (int64 [P, 2] of (row, col)) a voxel is binned only into tiles where it may
    cover one of them: the object then serves sparse renders and top-K queries of those pixels
    (any subset, in any order, with repeats)."""
    camera = _check_inputs(raster_settings, octree_paths, vox_centers, vox_lengths, pixels)
    return _intersect(raster_settings, camera, octree_paths, vox_centers, vox_lengths, pixels, keep=True)


def _reuse(intersections, raster_settings, camera, octree_paths, vox_centers, vox_lengths, pixels):
    """(intersections, pixel layout): `intersections` if it was built for these inputs (a clear
    error otherwise), else new ones; the layout of `pixels` over them (None: the whole image).
    Pixels are checked (inside the image, among those binned for) once: by the new
    intersections' preprocess, or by the layout of reused ones."""
    if intersections is None:
        inter = _intersect(raster_settings, camera, octree_paths, vox_centers, vox_lengths, pixels, lay_out=True)
        return inter, inter.impl.pixel_layout(raster_settings, inter.state, pixels, vox_centers.dtype,
                                              vox_centers.device)
    if not isinstance(intersections, TileIntersections):
        raise TypeError(f"intersections: expected a TileIntersections from intersect_voxels(), got "
                        f"{type(intersections).__name__}")
    if isinstance(camera, validation.DeviceCamera):
        camera = validation.camera_args(raster_settings)  # compared by value: read back
    if intersections.camera != camera:
        raise ValueError("intersections: built for another camera or image size than raster_settings "
                         f"(built for {int(intersections.camera[0])}x{int(intersections.camera[1])} and its pose; "
                         f"got {raster_settings.image_width}x{raster_settings.image_height}); call intersect_voxels() again")
    voxels = _voxel_signature(octree_paths, vox_centers, vox_lengths)
    if intersections.voxels != voxels:
        built, got = intersections.voxels[1][1][0], voxels[1][1][0]
        what = f"{built} voxels, got {got}" if built != got else "other voxel tensors, or they were modified in place since"
        raise ValueError(f"intersections: built for {what}; call intersect_voxels() again")
    if intersections.sparse and pixels is None:
        raise ValueError("intersections: built for a pixel subset (intersect_voxels(..., pixels=...)); a dense "
                         "render needs one built without pixels")
    layout = intersections.impl.pixel_layout(raster_settings, intersections.state, pixels, vox_centers.dtype,
                                             vox_centers.device, verify=True)
    return intersections, layout


def rasterize_voxels(raster_settings, octree_paths, vox_centers, vox_lengths, vox_fn, intersections=None):
    """Render voxels. Returns (color [3,H,W], depth [3,H,W], normal [3,H,W], T [1,H,W],
    max_w [N,1]); depth, normal and max_w are empty unless requested in the settings.
    `intersections` (from `intersect_voxels`) skips preprocess and sorting."""
    camera = _check_inputs(raster_settings, octree_paths, vox_centers, vox_lengths)
    inter, layout = _reuse(intersections, raster_settings, camera, octree_paths, vox_centers, vox_lengths, None)
    return _render(raster_settings, inter, layout, vox_centers, vox_lengths, vox_fn)


def rasterize_voxels_sparse(raster_settings, octree_paths, vox_centers, vox_lengths, vox_fn, pixels,
                            intersections=None):
    """Render only the pixels `pixels` (int64 [P, 2] of (row, col); repeats allowed). Returns
    (color [3,P], depth [3,P], normal [3,P], T [1,P], max_w [N,1]), equal to the dense render
    at those pixels, with the same gradients restricted to them. The implicit regularisers
    count each requested pixel (each row) once and are normalised by the image's W * H as in
    the dense case; `gt_color` may be [3,H,W] or [3,P]. Only tiles holding requested pixels
    are processed."""
    camera = _check_inputs(raster_settings, octree_paths, vox_centers, vox_lengths, pixels)
    inter, layout = _reuse(intersections, raster_settings, camera, octree_paths, vox_centers, vox_lengths, pixels)
    if raster_settings.lambda_R_concen > 0 and raster_settings.gt_color.dim() == 3:
        # The pixels are known to be inside the image by now.
        gt = raster_settings.gt_color.to(pixels.device)[:, pixels[:, 0], pixels[:, 1]]
        raster_settings = raster_settings._replace(gt_color=gt)
    return _render(raster_settings, inter, layout, vox_centers, vox_lengths, vox_fn)


def topk_contributors(raster_settings, octree_paths, vox_centers, vox_lengths, geos, k, pixels=None,
                      intersections=None):
    """For each pixel, the k voxels with the largest blending weight w = T * alpha. Returns
    (ids int64 [k,H,W], weights float32 [k,H,W]) -- [k,P] with `pixels` -- sorted by weight
    descending (ties: the front voxel first), padded with id -1 and weight 0. No gradient."""
    camera = _check_inputs(raster_settings, octree_paths, vox_centers, vox_lengths, pixels)
    validation.check_k(k)
    validation.check_tensor("geos", geos, (len(vox_centers), 8), torch.float32, vox_centers.device)
    inter, layout = _reuse(intersections, raster_settings, camera, octree_paths, vox_centers, vox_lengths, pixels)
    with torch.no_grad():
        return inter.impl.rasterize_topk(raster_settings, inter.state, layout, vox_centers, vox_lengths,
                                         geos.detach(), k)


def _camera_position(raster_settings, inter, device):
    """The camera position for vox_fn, on `device`, in the matrices' dtype: a view of c2w
    where it lives there, else the one the intersections' preprocess wrote."""
    c2w = raster_settings.c2w_matrix
    if c2w.device == device:
        return c2w[:3, 3]
    return inter.impl.camera_position(raster_settings, inter.state, device)


def _render(raster_settings, inter, layout, vox_centers, vox_lengths, vox_fn):
    cam_pos = _camera_position(raster_settings, inter, vox_centers.device)
    params = vox_fn(inter.in_view, cam_pos, raster_settings.color_mode)
    validation.check_vox_params(params, vox_centers.shape[0], vox_centers.device, values=raster_settings.debug)
    geos, rgbs, subdiv_p = params["geos"], params["rgbs"], params["subdiv_p"]
    if not torch.is_grad_enabled():
        # The same outputs without the autograd Function's bookkeeping (a frame's host time).
        return inter.impl.rasterize_forward(raster_settings, inter.state, layout, vox_centers, vox_lengths, geos, rgbs)
    return inter.impl.rasterize_differentiable(raster_settings, inter.state, layout, vox_centers, vox_lengths, geos,
                                               rgbs, subdiv_p)


# The reference's autograd Function, under upstream's name (the compiled renderer's is C++).
_RasterizeVoxels = reference.RasterizeVoxels
