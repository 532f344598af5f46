"""Procedural sparse-voxel scenes: a few SDF objects in [-1, 1]^3, an octree refined in a band
around their surfaces, densities on the voxel corners from the SDF. The octree's root cube is
[-2, 2]^3 so that a background shell can surround a camera outside the objects. Used by the
benchmark, the embedded demo and the tests."""
import torch

from . import utils

ROOT_HALF = 2.0   # the octree root cube is [-ROOT_HALF, ROOT_HALF]^3

CORNERS = torch.tensor([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)])


def objects_sdf(p):
    """Signed distance to a sphere, a rounded box and a torus; also an object id per point."""
    sphere = (p - torch.tensor([-0.45, 0.0, 0.05])).norm(dim=-1) - 0.33
    q = (p - torch.tensor([0.4, -0.35, -0.05])).abs() - torch.tensor([0.22, 0.22, 0.3])
    box = q.clamp(min=0).norm(dim=-1) + q.amax(-1).clamp(max=0) - 0.03
    t = p - torch.tensor([0.35, 0.45, 0.0])
    torus = torch.stack([t[..., :2].norm(dim=-1) - 0.28, t[..., 2]], -1).norm(dim=-1) - 0.09
    stacked = torch.stack([sphere, box, torus], -1)
    sdf, obj = stacked.min(-1)
    return sdf, obj


OBJECT_COLORS = torch.tensor([[0.85, 0.3, 0.25], [0.25, 0.55, 0.85], [0.9, 0.75, 0.2]])


def refine_octree(keep_fn, max_level, min_level=1):
    """Leaves (ijk, level) of the octree that splits every cell for which `keep_fn(centers, size)`
    is true down to `max_level`; finest cells kept by keep_fn are the leaves."""
    ijk = CORNERS.clone()
    level = 1
    while level < max_level:
        ijk = ijk[keep_fn(*cell_geometry(ijk, level))]
        ijk = (ijk[:, None, :] * 2 + CORNERS).reshape(-1, 3)
        level += 1
    return ijk[keep_fn(*cell_geometry(ijk, level))], level


def cell_geometry(ijk, level):
    """Centres [N, 3] (float32) and edge length of cells at `level` of the root cube."""
    size = 2 * ROOT_HALF / 2 ** level
    return (-ROOT_HALF + (ijk.double() + 0.5) * size).float(), size


def procedural_scene(max_level=8, translucent=False, shell_level=0, band=1.0):
    """Voxels of the SDF objects (opaque surfaces, or semi-transparent density ramps over
    several voxels when `translucent`), plus a coarse shell of background voxels at
    `shell_level` outside a sphere around them when `shell_level > 0`. Returns a dict of
    voxel tensors (octpath, octlevel, vox_centers, vox_lengths, geos, rgbs)."""
    ramp = 4.0 if translucent else 1.0   # voxels over which density rises

    def near_surface(c, size):
        sdf, _ = objects_sdf(c)
        return sdf.abs() < size * (0.87 + band * ramp)

    ijk, level = refine_octree(near_surface, max_level)
    centers, size = cell_geometry(ijk, level)
    lengths = torch.full((len(ijk), 1), size)
    corners = centers[:, None, :] + (CORNERS.float() - 0.5) * size
    sdf, _ = objects_sdf(corners)
    if translucent:
        geos = -sdf / (size * ramp) * 1.5 - 0.5          # ramps from faint to ~2 over `ramp` voxels
    else:
        geos = -sdf / size * 30.0                          # opaque within a voxel of the surface
    _, obj = objects_sdf(centers)
    rgbs = OBJECT_COLORS[obj] * (0.75 + 0.25 * torch.sin(centers * 9).mean(-1, keepdim=True))
    octlevel = torch.full((len(ijk), 1), level, dtype=torch.int8)
    scene = {"octpath": utils.ijk_2_octpath(ijk, octlevel), "octlevel": octlevel,
             "vox_centers": centers, "vox_lengths": lengths, "geos": geos.float(), "rgbs": rgbs.float()}
    if shell_level:
        scene = merge(scene, background_shell(shell_level))
    return scene


def background_shell(level, inner_radius=1.5):
    """Coarse voxels of the root cube outside a sphere, bluish-grey and fairly dense: a
    background that surrounds a camera placed inside it."""
    n = 2 ** level
    grid = torch.stack(torch.meshgrid(*[torch.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centers, size = cell_geometry(grid, level)
    keep = centers.norm(dim=-1) - size * 0.87 > inner_radius
    ijk, centers = grid[keep], centers[keep]
    octlevel = torch.full((len(ijk), 1), level, dtype=torch.int8)
    corners = centers[:, None, :] + (CORNERS.float() - 0.5) * size
    geos = (corners.norm(dim=-1) - inner_radius) * 4.0 - 2.5
    rgbs = torch.tensor([0.55, 0.6, 0.7]) + 0.2 * torch.sin(centers * 5)
    return {"octpath": utils.ijk_2_octpath(ijk, octlevel), "octlevel": octlevel, "vox_centers": centers,
            "vox_lengths": torch.full((len(ijk), 1), size), "geos": geos.float(), "rgbs": rgbs.clamp(0, 1).float()}


def merge(a, b):
    """Union of fine voxels `a` and coarse voxels `b`, dropping voxels of `b` that contain any
    voxel of `a` (found through their ancestors at b's level)."""
    level_b = int(b["octlevel"][0])
    ijk_a = utils.octpath_2_ijk(a["octpath"], a["octlevel"]) >> (a["octlevel"].long() - level_b)
    ijk_b = utils.octpath_2_ijk(b["octpath"], b["octlevel"])
    n = 2 ** level_b

    def linear(ijk):
        return (ijk[:, 0] * n + ijk[:, 1]) * n + ijk[:, 2]

    keep = ~torch.isin(linear(ijk_b), linear(ijk_a))
    return {k: torch.cat([a[k], b[k][keep]]) for k in a}
