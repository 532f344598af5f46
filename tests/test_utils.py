import pytest
import torch

from svraster_cuda import utils


@pytest.mark.parametrize("level", range(1, 17))
def test_octpath_ijk_round_trip(level):
    gen = torch.Generator().manual_seed(level)
    ijk = torch.randint(0, 2 ** level, (200, 3), generator=gen)
    lv = torch.full((200, 1), level, dtype=torch.int8)
    path = utils.ijk_2_octpath(ijk, lv)
    assert path.shape == (200, 1) and path.dtype == torch.int64
    assert torch.equal(utils.octpath_2_ijk(path, lv), ijk)
    # Top-aligned: bits below the level's slot are zero, the level-1 code is in bits 45..47.
    assert torch.all(path & ((1 << (3 * (16 - level))) - 1) == 0)
    top = (path >> 45) & 7
    assert torch.equal(top[:, 0], ((ijk[:, 0] >> (level - 1)) << 2) | ((ijk[:, 1] >> (level - 1)) << 1) | (ijk[:, 2] >> (level - 1)))


def test_order_rank_is_xor_of_octant():
    path = utils.ijk_2_octpath(torch.tensor([[1, 0, 1]]), torch.tensor([[1]]))
    ranks = utils.voxel_order_rank(path)
    assert ranks.shape == (1, 8)
    assert ranks[0, 0].item() == path.item()
    assert ranks[0, 7].item() == path.item() ^ int("7" * 16, 8)


def test_depth2pts_inverts_camera_depth():
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    depth = torch.full((4, 6), 2.0)
    pts = utils.depth2pts(6, 4, 3.0, 2.0, 0.5, 0.25, c2w, depth)
    assert torch.allclose(pts[..., 2], torch.full((4, 6), 5.0))
    rd = utils.compute_rd(6, 4, 3.0, 2.0, 0.5, 0.25, c2w)
    assert torch.allclose(rd[0, 0], torch.tensor([(0.5 - 3) * 2 * 0.5 / 6, (0.5 - 2) * 2 * 0.25 / 4, 1.0]))
