"""svraster_cuda: exact, differentiable rendering of sparse-voxel radiance fields.

`renderer` is a drop-in for SVRaster's renderer module; `reference` is the pure-PyTorch
implementation used on CPU tensors and as the test oracle; `meta` holds the constants."""
from . import meta, reference, renderer, utils
from .cuda_backend import available as cuda_extension_available

__all__ = ["meta", "reference", "renderer", "utils", "cuda_extension_available"]
