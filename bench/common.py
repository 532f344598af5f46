"""Benchmark scenes and cameras shared by the reference and CUDA benchmarks."""
import math

import torch

from svraster_cuda.cameras import look_at
from svraster_cuda.renderer import RasterSettings
from svraster_cuda.scenes import procedural_scene

# name: (finest level, translucent, background shell level, surface band)
SCENES = {
    "O1.4M": (10, False, 0, 1.87),
    "O6M": (11, False, 0, 1.87),
    "R1.5M": (10, True, 4, 0.5),
    "R6M": (11, True, 4, 0.5),
    "R300k": (9, True, 4, 0.35),
}


def orbit_settings(name, n_views, width, height, device, fov_deg=60.0, **kw):
    """Orbit cameras: outside the objects for O scenes, inside the shell for R scenes."""
    radius = 1.35 if name.startswith("R") else 2.6
    views = []
    for i in range(n_views):
        phi = 2 * math.pi * i / n_views
        eye = (radius * math.cos(phi), radius * math.sin(phi), 0.35 * radius * math.sin(3 * phi))
        c2w = look_at(eye, (0.0, 0.0, 0.0))
        w2c = torch.linalg.inv(c2w)
        tanx = math.tan(math.radians(fov_deg) / 2)
        views.append(RasterSettings(color_mode="rgb", n_samp_per_vox=1, image_width=width, image_height=height,
                                    tanfovx=tanx, tanfovy=tanx * height / width, cx=width / 2, cy=height / 2,
                                    w2c_matrix=w2c.float().to(device), c2w_matrix=c2w.float().to(device), **kw))
    return views


def make_scene(name, device):
    level, translucent, shell, band = SCENES[name]
    scene = procedural_scene(level, translucent=translucent, shell_level=shell, band=band)
    return {k: v.to(device) for k, v in scene.items()}


def random_pixels(n, width, height, generator):
    """n random (row, col) pixels of a width x height image: int64 [n, 2] on the CUDA device."""
    return torch.stack([torch.randint(0, height, (n,), generator=generator),
                        torch.randint(0, width, (n,), generator=generator)], 1).cuda()


def patch_pixels(n, width, height, generator, tile=8):
    """About n pixels in whole tile x tile squares at random places on the tile grid (a batch of
    small patches): int64 [n', 2] (row, col) on the CUDA device, n' the nearest multiple of
    tile * tile that fits."""
    tiles_x, tiles_y = width // tile, height // tile
    chosen = torch.randperm(tiles_x * tiles_y, generator=generator)[:max(1, round(n / tile**2))]
    ty, tx = chosen // tiles_x, chosen % tiles_x
    dy, dx = torch.meshgrid(torch.arange(tile), torch.arange(tile), indexing="ij")
    rows = (ty[:, None] * tile + dy.reshape(1, -1)).reshape(-1)
    cols = (tx[:, None] * tile + dx.reshape(1, -1)).reshape(-1)
    return torch.stack([rows, cols], 1).cuda()
