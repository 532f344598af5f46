"""float64 gradcheck of the differentiable path, and the regularisers against the SPEC formulas."""
import pytest
import torch

from helpers import make_settings, random_octree
from svraster_cuda import reference, validation
from svraster_cuda.renderer import _RasterizeVoxels, _intersect


def _scene(seed=5):
    octpath, _, centers, lengths = random_octree(seed, max_level=2, keep_prob=0.5)
    return octpath, centers.double(), lengths.double()


@pytest.mark.parametrize("n_samp", [1, 2, 3])
def test_gradcheck(n_samp):
    octpath, centers, lengths = _scene()
    gen = torch.Generator().manual_seed(n_samp)
    n = len(octpath)
    # Densities keep alpha below MAX_ALPHA: where it is clamped, the SPEC's straight-through
    # derivative is by design not the derivative of the clamped forward.
    geos = (torch.rand(n, 8, generator=gen, dtype=torch.float64) * 1.5 - 2.5).requires_grad_(True)
    rgbs = torch.rand(n, 3, generator=gen, dtype=torch.float64).requires_grad_(True)
    settings = make_settings((2.1, -1.7, 1.3), (0.0, 0.1, 0.0), width=7, height=6, fov_deg=50, n_samp_per_vox=n_samp,
                             need_depth=True, need_normal=True, bg_color=0.4)
    settings = settings._replace(w2c_matrix=settings.w2c_matrix.double(), c2w_matrix=settings.c2w_matrix.double())
    intersections = _intersect(settings, validation.camera_args(settings), octpath, centers, lengths, None)
    layout = reference.pixel_layout(settings, intersections.state, None, torch.float64, "cpu")
    subdiv = torch.zeros(n, 1, dtype=torch.float64)

    def fn(g, r):
        color, depth, normal, T, _ = _RasterizeVoxels.apply(settings, intersections.state, layout, centers, lengths, g, r,
                                                            subdiv)
        return color, depth[0], normal, T

    assert torch.autograd.gradcheck(fn, (geos, rgbs), eps=1e-6, atol=1e-5, rtol=1e-4)
