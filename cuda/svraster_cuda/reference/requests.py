"""Sparse rendering's requested pixels (mirrors `cuda/src/requests.cu`): which pixels of each
tile are requested, and the checks that they lie in the image (and, for reused intersections,
among the pixels the entries were binned for)."""
import torch

from .. import meta
from .preprocess import tile_grid


def check_requests(settings, pixels, allowed=None):
    """ValueError unless every (row, col) of `pixels` is inside the image and, with `allowed`
    tile masks, requested in them."""
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
        if not bool(((allowed[tile] >> (t * (rows % t) + cols % t)) & 1).bool().all()):
            raise ValueError("pixels: some requested pixels are not among those `intersections` was built for; "
                             "build it with these pixels (or without pixels)")


def request_masks(settings, pixels):
    """(tile_active [n_tiles] bool, tile_masks [n_tiles] int64): bit TILE_SIZE * y + x of a
    tile's mask is set when pixel (x, y) of the tile is requested."""
    t = meta.TILE_SIZE
    tiles_x, tiles_y = tile_grid(settings)
    image = torch.zeros(tiles_y * t, tiles_x * t, dtype=torch.int64, device=pixels.device)
    image[pixels[:, 0], pixels[:, 1]] = 1
    # Distinct bits sum to their OR (bit 63 wraps to the sign bit, as the mask's int64 holds it).
    bits = 1 << torch.arange(t * t, dtype=torch.int64, device=pixels.device)
    tiles = image.reshape(tiles_y, t, tiles_x, t).transpose(1, 2).reshape(tiles_x * tiles_y, t * t)
    masks = (tiles * bits).sum(-1)
    return masks != 0, masks
