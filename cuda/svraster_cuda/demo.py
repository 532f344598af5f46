"""The embedded demo scene: built procedurally in about a second and written as an SVRaster
model folder (config.yaml, checkpoints/iter000000_model.pt, cameras.json), so that the demo
exercises the same loader as a trained model. Three opaque and semi-transparent objects on a
floor, inside a coarse background shell: a multi-level octree, densities on shared grid
points, SH colours (degree 3) with view-dependent highlights."""
from pathlib import Path

import torch

from . import cameras, meta, scenes, utils
from .model import ModelConfig, SVRasterModel
from .params import SH_C0

OBJECT_LEVEL = 7           # finest level (root cube [-2, 2]^3): voxels of 3.1 cm
FLOOR_LEVEL, SHELL_LEVEL = 5, 3
FLOOR_Z = -0.42


def _floor_sdf(p):
    return (p[..., 2] - FLOOR_Z).abs() - 0.02


def density(p, fine):
    """Raw density at points p: opaque sphere and box, semi-transparent torus, floor, shell."""
    sdf_objects, obj = scenes.objects_sdf(p)
    opaque = -sdf_objects / fine * 6.0
    # Densities are scaled by STEP_SZ_SCALE = 100 per unit length: clear space needs d < -8.
    translucent = -sdf_objects / (4 * fine) * 0.8 - 2.5
    objects = torch.where(obj == 2, translucent, opaque)
    floor = -_floor_sdf(p) / fine * 2.0 + ((p[..., :2].norm(dim=-1) < 1.3).float() - 1) * 50
    shell = (p.norm(dim=-1) - 1.7) * 20.0 - 3.0
    return torch.maximum(torch.maximum(objects, floor), shell)


def build_model(object_level=OBJECT_LEVEL):
    fine = 2 * scenes.ROOT_HALF / 2 ** object_level

    def near_objects(c, size):
        sdf, obj = scenes.objects_sdf(c)
        band = torch.where(obj == 2, 4.5 * fine, 1.5 * fine)
        return sdf.abs() < size * 0.87 + band

    def near_floor(c, size):
        return (_floor_sdf(c).abs() < size * 0.87) & (c[..., :2].norm(dim=-1) < 1.3 + size)

    parts = []
    for keep, level in ((near_objects, object_level), (near_floor, FLOOR_LEVEL)):
        ijk, lv = scenes.refine_octree(keep, level)
        parts.append((ijk, lv))
    # The background: every coarse cell outside radius 1 (the density field clears the inside).
    n = 2 ** SHELL_LEVEL
    shell_ijk = torch.stack(torch.meshgrid(*[torch.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3)
    shell_ijk = shell_ijk[scenes.cell_geometry(shell_ijk, SHELL_LEVEL)[0].norm(dim=-1) > 1.0]
    # Coarser parts give way to finer ones where they overlap.
    obj_ijk, obj_lv = parts[0]
    floor_ijk, floor_lv = parts[1]
    floor_ijk = floor_ijk[~_covers(floor_ijk, floor_lv, obj_ijk, obj_lv)]
    shell_ijk = shell_ijk[~_covers(shell_ijk, SHELL_LEVEL, torch.cat([obj_ijk >> (obj_lv - FLOOR_LEVEL), floor_ijk]), FLOOR_LEVEL)]
    ijk = torch.cat([obj_ijk, floor_ijk, shell_ijk])
    level = torch.cat([torch.full((len(obj_ijk), 1), obj_lv), torch.full((len(floor_ijk), 1), floor_lv),
                       torch.full((len(shell_ijk), 1), SHELL_LEVEL)]).to(torch.int8)
    octpath = utils.ijk_2_octpath(ijk, level)
    extent = torch.tensor([2 * scenes.ROOT_HALF])
    model = SVRasterModel(octpath, level, torch.zeros(3), extent, torch.zeros(0, 1), torch.zeros(len(ijk), 3),
                          torch.zeros(len(ijk), 15, 3), 3, ModelConfig(ss=1.0, sh_degree=3, black_background=True))
    # Densities on the shared grid points (level-16 lattice positions).
    n_grid = int(model.vox_key.max()) + 1
    lattice = torch.zeros(n_grid, 3, dtype=torch.long)
    corner = torch.tensor([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)])
    shift = (meta.MAX_NUM_LEVELS - level.long())[:, None, :]
    lattice[model.vox_key.reshape(-1)] = ((ijk[:, None, :] + corner) << shift).reshape(-1, 3)
    points = -scenes.ROOT_HALF + lattice.double() * (2 * scenes.ROOT_HALF / 2 ** meta.MAX_NUM_LEVELS)
    model._geo_grid_pts = density(points.float(), fine)[:, None].float()
    # Colours: base colour in the DC term, a view-dependent sheen in degrees 1-3.
    centers = model.vox_centers
    _, obj = scenes.objects_sdf(centers)
    base = scenes.OBJECT_COLORS[obj] * (0.8 + 0.2 * torch.sin(centers * 11).mean(-1, keepdim=True))
    on_floor = level[:, 0] == FLOOR_LEVEL
    checker = ((torch.floor(centers[:, 0] * 4) + torch.floor(centers[:, 1] * 4)) % 2)[:, None]
    base[on_floor] = (0.35 + 0.3 * checker[on_floor]).expand(-1, 3)
    base[level[:, 0] == SHELL_LEVEL] = torch.tensor([0.45, 0.55, 0.75]) + 0.1 * torch.sin(centers[level[:, 0] == SHELL_LEVEL] * 3)
    model._sh0 = (base - 0.5) / SH_C0
    gen = torch.Generator().manual_seed(0)
    shs = torch.randn(len(ijk), 15, 3, generator=gen) * 0.02
    shs[:, 1] += 0.35 * (obj == 0).float()[:, None]          # the sphere brightens seen from below/above
    shs[:, 0] += 0.25 * (obj == 1).float()[:, None]          # the box changes with the azimuth
    shs[:, 5] += 0.2 * (obj == 2).float()[:, None]
    model._shs = shs * (~on_floor & (level[:, 0] != SHELL_LEVEL)).float()[:, None, None]
    return model


def _covers(ijk, level, fine_ijk, fine_level):
    """Mask of cells (ijk at `level`) that contain any of the finer cells."""
    n = 2 ** level

    def linear(x):
        return (x[:, 0] * n + x[:, 1]) * n + x[:, 2]

    ancestors = fine_ijk >> (fine_level - level)
    return torch.isin(linear(ijk), linear(ancestors))


def demo_cameras(n_views=8, width=320, height=240):
    return cameras.orbit(n_views, (0.0, 0.0, -0.1), 1.45, width, height, fov_deg=65.0, elevation_deg=28.0)


def write_demo(folder, n_views=8, width=320, height=240):
    """Build the demo model and write it (with its cameras) to `folder`; returns the folder."""
    folder = Path(folder)
    model = build_model()
    model.config.source_path = str(folder.resolve())
    model.config.eval = True
    model.config.test_every = 4
    model.save(folder, iteration=0)
    cameras.save_camera_json(folder / "cameras.json", demo_cameras(n_views, width, height))
    return folder
