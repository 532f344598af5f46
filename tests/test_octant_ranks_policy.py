"""When the CUDA path builds, offers and drops an octree's cached octant ranks
(cuda_backend.rasterize_preprocess; rasterizer.h says what they are), checked on the CPU with a
stand-in for the extension that reports what it was offered. test_cuda.py's
test_cached_octant_ranks checks the ranks and the frames themselves on the device."""
import pytest
import torch

from svraster_cuda import cuda_backend


class FakeExtension:
    """Answers as `_C` does: the frame's outputs, its paths' fingerprint (here the paths' sum
    plus their count) and no device camera, and the ranks of distinct paths ([0, N] for
    repeated ones)."""

    def __init__(self):
        self.offered, self.built = [], 0

    def rasterize_preprocess(self, camera, paths, centers, lengths, pixels, ranks=None, ranks_fingerprint=0,
                             lay_out=False):
        assert ranks is None or ranks.shape == (4, len(paths))
        self.offered.append(None if ranks is None else ranks_fingerprint)
        return [torch.empty(0)] * 10, int(paths.sum()) + len(paths), []

    def octant_ranks(self, paths):
        self.built += 1
        distinct = len(torch.unique(paths)) == len(paths)
        return torch.zeros(4 if distinct else 0, len(paths), dtype=torch.int32)


@pytest.fixture
def fake(monkeypatch):
    ext = FakeExtension()
    monkeypatch.setattr(cuda_backend, "_load", lambda: ext)
    monkeypatch.delenv("SVRASTER_OCTANT_RANKS", raising=False)
    cuda_backend.release_octant_ranks()
    yield ext
    cuda_backend.release_octant_ranks()


def frame(paths):
    n = len(paths)
    cuda_backend.rasterize_preprocess(None, [0.0] * 31, paths[:, None], torch.zeros(n, 3), torch.ones(n, 1))


def fingerprint(paths):
    return int(paths.sum()) + len(paths)


def test_auto_builds_on_the_second_frame_and_offers_from_the_third(fake):
    a, b = torch.arange(10), torch.arange(10) * 3
    frame(a)
    assert fake.offered == [None] and fake.built == 0
    frame(a)
    assert fake.offered == [None, None] and fake.built == 1
    frame(a)
    assert fake.offered[-1] == fingerprint(a) and fake.built == 1
    # Other paths of the same count: offered (the extension finds them stale), rebuilt on their second frame.
    frame(b)
    assert fake.offered[-1] == fingerprint(a) and fake.built == 1
    frame(b)
    assert fake.built == 2
    frame(b)
    assert fake.offered[-1] == fingerprint(b) and fake.built == 2
    # Released: the next frame of the same paths is a first frame again.
    cuda_backend.release_octant_ranks()
    frame(b)
    assert fake.offered[-1] is None and fake.built == 2
    frame(b)
    frame(b)
    assert fake.offered[-1] == fingerprint(b) and fake.built == 3
    # Another voxel count: not offered.
    frame(torch.arange(7))
    assert fake.offered[-1] is None


def test_repeated_paths_are_built_once_and_never_offered(fake):
    repeated = torch.tensor([1, 2, 2, 5])
    for _ in range(4):
        frame(repeated)
    assert fake.built == 1 and fake.offered == [None] * 4


def test_eager_off_and_a_bad_value(fake, monkeypatch):
    monkeypatch.setenv("SVRASTER_OCTANT_RANKS", "eager")
    frame(torch.arange(5))
    assert fake.built == 1
    frame(torch.arange(5))
    assert fake.offered[-1] == fingerprint(torch.arange(5))
    monkeypatch.setenv("SVRASTER_OCTANT_RANKS", "off")
    for _ in range(3):
        frame(torch.arange(6))
    assert fake.built == 1 and fake.offered[-3:] == [None] * 3
    monkeypatch.setenv("SVRASTER_OCTANT_RANKS", "sometimes")
    with pytest.raises(ValueError, match="SVRASTER_OCTANT_RANKS: expected auto, eager or off"):
        frame(torch.arange(5))
