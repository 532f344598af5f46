"""Sparse rendering's requested pixels (mirrors `cuda/src/requests.cu`): which pixels of each
tile are requested, and the checks that they lie in the image (and, for reused intersections,
among the pixels the entries were binned for)."""
import torch

from .. import meta
from .preprocess import tile_grid


def check_requests(settings, pixels, allowed=None):
    """ValueError unless every (row, col) of `pixels` is inside the image and, with `allowed`
    row masks, requested in them."""
    if not len(pixels):
        return
    W, H = settings.image_width, settings.image_height
    rows, cols = pixels[:, 0], pixels[:, 1]
    outside = int(((rows < 0) | (cols < 0) | (rows >= H) | (cols >= W)).sum())
    if outside:
        raise ValueError(f"pixels: expected (row, col) pairs with 0 <= row < {H} and 0 <= col < {W}; {outside} of "
                         f"the {len(pixels)} are outside")
    if allowed is not None:
        t = meta.TILE_SIZE
        tiles_x, _ = tile_grid(settings)
        tile = (rows // t) * tiles_x + cols // t
        if not bool(((allowed[tile, rows % t] >> (cols % t)) & 1).bool().all()):
            raise ValueError("pixels: some requested pixels are not among those `intersections` was built for; "
                             "build it with these pixels (or without pixels)")


def request_masks(settings, pixels):
    """(tile_active [n_tiles] bool, row_masks [n_tiles, TILE_SIZE] int32): bit x of row y of a
    tile's masks is set when pixel (x, y) of the tile is requested."""
    t = meta.TILE_SIZE
    tiles_x, tiles_y = tile_grid(settings)
    image = torch.zeros(tiles_y * t, tiles_x * t, dtype=torch.int32, device=pixels.device)
    image[pixels[:, 0], pixels[:, 1]] = 1
    bits = 1 << torch.arange(t, dtype=torch.int32, device=pixels.device)
    masks = (image.reshape(tiles_y, t, tiles_x, t).transpose(1, 2) * bits).sum(-1, dtype=torch.int32)
    masks = masks.reshape(tiles_x * tiles_y, t)
    return (masks != 0).any(1), masks
