"""Bad input: a clear exception naming the argument; legal edge cases render."""
import itertools
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import make_settings, random_octree, random_params, render
from svraster_cuda import validation
from svraster_cuda.renderer import rasterize_voxels


@pytest.fixture(scope="module")
def scene():
    octpath, _, centers, lengths = random_octree(2, max_level=2)
    geos, rgbs = random_params(len(octpath), 2)
    return octpath, centers, lengths, geos, rgbs


SETTINGS = make_settings((2.0, 2.0, 2.0), (0.0, 0.0, 0.0), width=8, height=8)


def _call(settings, octpath, centers, lengths, params):
    return rasterize_voxels(settings, octpath, centers, lengths, lambda idx, cam_pos, mode: params)


def _params(geos, rgbs):
    return {"geos": geos, "rgbs": rgbs, "subdiv_p": torch.zeros(len(geos), 1)}


@pytest.mark.parametrize("change, exc, words", [
    (dict(n_samp_per_vox=0), ValueError, "n_samp_per_vox"),
    (dict(n_samp_per_vox=4), ValueError, "n_samp_per_vox"),
    (dict(image_width=0), ValueError, "image_width"),
    (dict(image_height=-3), ValueError, "image_height"),
    (dict(image_width=20000), ValueError, "16384"),
    (dict(tanfovx=0.0), ValueError, "tanfovx"),
    (dict(tanfovy=math.nan), ValueError, "tanfovy"),
    (dict(cx=math.inf), ValueError, "cx"),
    (dict(near=-1.0), ValueError, "near"),
    (dict(w2c_matrix=torch.full((4, 4), math.nan)), ValueError, "w2c_matrix"),
    (dict(c2w_matrix=torch.eye(3)), ValueError, "c2w_matrix"),
    (dict(lambda_R_concen=1.0), ValueError, "gt_color"),
])
def test_bad_settings(scene, change, exc, words):
    octpath, centers, lengths, geos, rgbs = scene
    with pytest.raises(exc, match=words):
        _call(SETTINGS._replace(**change), octpath, centers, lengths, _params(geos, rgbs))


_NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 20000), st.booleans(),
                     st.sampled_from([np.float32(0.5), np.float64(-1.0), 10 ** 400]),
                     st.builds(torch.tensor, st.floats(-2, 2)))


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    "image_width": _NUMBERS, "image_height": _NUMBERS, "n_samp_per_vox": _NUMBERS, "tanfovx": _NUMBERS,
    "tanfovy": _NUMBERS, "cx": _NUMBERS, "cy": _NUMBERS, "bg_color": _NUMBERS, "near": _NUMBERS,
    "lambda_R_concen": _NUMBERS, "lambda_ascending": _NUMBERS, "lambda_dist": _NUMBERS,
    "w2c_matrix": st.sampled_from([torch.full((4, 4), 1e308, dtype=torch.float64), torch.eye(4) * math.inf,
                                   torch.eye(4, dtype=torch.int64), torch.nn.Parameter(torch.eye(4))]),
}))
def test_quick_settings_check_agrees(change):
    """check_settings' one-expression test of plain settings (validation._plainly_valid)
    accepts only settings that the checks one by one accept, and returns the same camera."""
    _assert_quick_settings_check_agrees(SETTINGS._replace(**change))


@pytest.mark.parametrize("name", ["image_width", "image_height", "n_samp_per_vox", "tanfovx", "tanfovy", "cx", "cy",
                                  "bg_color", "near", "lambda_R_concen", "lambda_ascending", "lambda_dist",
                                  "w2c_matrix", "c2w_matrix"])
def test_quick_settings_check_agrees_field_by_field(name):
    """The same agreement with one setting changed at a time, through values at and beyond
    each range's ends (random combinations seldom change a single setting alone)."""
    values = [-1, -1e-9, 0, 0.0, 1, 3, 4, 2.5, 16384, 16385, 10 ** 400, math.nan, math.inf, -math.inf, True,
              np.float32(0.5), torch.tensor(0.3), "1"]
    if name.endswith("matrix"):
        values = [np.eye(4), torch.eye(4).tolist(), torch.eye(4, dtype=torch.int64), torch.eye(3),
                  torch.eye(4, dtype=torch.float64), torch.nn.Parameter(torch.eye(4)), torch.eye(4) * math.inf, None]
    for value in values:
        _assert_quick_settings_check_agrees(SETTINGS._replace(**{name: value}))


def _assert_quick_settings_check_agrees(s):
    try:
        validation._check_each_setting(s, None)
    except (ValueError, TypeError, OverflowError) as exc:
        assert not validation._plainly_valid(s)
        with pytest.raises(type(exc), match=re.escape(str(exc)[:20])):
            validation.check_settings(s, torch.device("cpu"))
        return
    try:
        expected = validation.camera_args(s)  # the matrices' values
    except ValueError:
        with pytest.raises(ValueError, match="finite"):
            validation.check_settings(s, torch.device("cpu"))
        return
    assert validation.check_settings(s, torch.device("cpu")) == expected


def test_device_camera_only_for_float32_matrices_on_the_device():
    """The compiled renderer leaves the matrices where they are (validation.DeviceCamera) only
    when both are float32 on the voxels' device; otherwise their values are read here."""
    cpu = torch.device("cpu")
    camera = validation.check_settings(SETTINGS, cpu, matrices_stay=True)
    assert isinstance(camera, validation.DeviceCamera)
    assert camera.scalars == validation.camera_args(SETTINGS)[:7]
    assert camera.w2c is SETTINGS.w2c_matrix and camera.c2w is SETTINGS.c2w_matrix
    for name in ("w2c_matrix", "c2w_matrix"):
        s = SETTINGS._replace(**{name: getattr(SETTINGS, name).double()})
        assert validation.check_settings(s, cpu, matrices_stay=True) == validation.camera_args(s)
    expected = validation.camera_args(SETTINGS)
    assert validation.check_settings(SETTINGS, torch.device("meta"), matrices_stay=True) == expected
    assert validation.check_settings(SETTINGS, cpu) == expected


_VOXEL_TENSORS = [torch.zeros(5, 1, dtype=torch.int64), torch.zeros(5, 3), torch.ones(5, 1), torch.zeros(4, 1, dtype=torch.int64),
                  torch.zeros(5, 1, dtype=torch.int32), torch.zeros(5, 3, dtype=torch.float64), torch.ones(5),
                  torch.ones(5, 2), torch.zeros(5, 3, 1), torch.zeros(0, 3), torch.zeros(0, 1), -torch.ones(5, 1),
                  torch.nn.Parameter(torch.zeros(5, 3)), torch.zeros(5, 3)[:, :1], torch.zeros(3, 5).t(),
                  torch.ones(5, 1, device="meta"), torch.zeros(5, 1, dtype=torch.int64, device="meta"), 3.0, None]


def test_quick_voxels_check_agrees():
    """check_voxels' one-expression test (validation._plain_voxels) accepts exactly the plain
    tensors that its checks one by one accept, so it raises the same errors, and the sizes'
    values are checked on the CPU either way: every triple of the tensors above."""
    for voxels in itertools.product(_VOXEL_TENSORS, repeat=3):
        try:
            validation._check_each_voxel_tensor(*voxels)
        except (TypeError, ValueError) as exc:
            assert not validation._plain_voxels(*voxels), voxels
            with pytest.raises(type(exc), match=re.escape(str(exc)[:20])):
                validation.check_voxels(*voxels)
            continue
        assert validation._plain_voxels(*voxels) == all(type(t) is torch.Tensor for t in voxels), voxels
        lengths = voxels[2]
        if len(lengths) and lengths.device.type == "cpu" and not bool((lengths > 0).all()):
            with pytest.raises(ValueError, match="vox_lengths: expected positive"):
                validation.check_voxels(*voxels)
        else:
            validation.check_voxels(*voxels)


_MISSING = object()
_PARAM_VALUES = [torch.zeros(5, 8), torch.zeros(5, 3), torch.zeros(5, 1), torch.zeros(4, 8), torch.zeros(5), torch.zeros(5, 1, 1),
                 torch.zeros(8, 5).t(), torch.nn.Parameter(torch.zeros(5, 1)), 1.0, None, _MISSING]
_PARAM_VALUES += [t.to(dtype) for t in _PARAM_VALUES[:3] for dtype in (torch.float64, torch.int64)]
_PARAM_VALUES += [t.to("meta") for t in _PARAM_VALUES[:3]]


def test_quick_params_check_agrees():
    """check_vox_params' one-expression test (validation._plain_params) accepts exactly what its
    checks one by one accept (so it raises the same errors): every triple of the values above
    as geos, rgbs and subdiv_p (or missing), and dicts' stand-ins that are not dicts."""
    cpu = torch.device("cpu")
    for values in itertools.product(_PARAM_VALUES, repeat=3):
        params = {k: v for k, v in zip(("geos", "rgbs", "subdiv_p"), values) if v is not _MISSING}
        try:
            validation._check_each_vox_param(params, 5, cpu)
        except (TypeError, ValueError) as exc:
            assert not validation._plain_params(params, 5, cpu), values
            with pytest.raises(type(exc), match=re.escape(str(exc)[:20])):
                validation.check_vox_params(params, 5, cpu)
            continue
        assert validation._plain_params(params, 5, cpu), values
        validation.check_vox_params(params, 5, cpu)
    for not_a_dict in (None, [torch.zeros(5, 8)], (("geos", torch.zeros(5, 8)),)):
        assert not validation._plain_params(not_a_dict, 5, cpu)
        with pytest.raises(TypeError, match="vox_fn: expected it to return a dict"):
            validation.check_vox_params(not_a_dict, 5, cpu)


def test_bad_tensors(scene):
    octpath, centers, lengths, geos, rgbs = scene
    p = _params(geos, rgbs)
    with pytest.raises(TypeError, match="vox_centers.*float32"):
        _call(SETTINGS, octpath, centers.double(), lengths, p)
    with pytest.raises(ValueError, match="octree_paths.*shape"):
        _call(SETTINGS, octpath[:-1], centers, lengths, p)
    with pytest.raises(TypeError, match="octree_paths.*int64"):
        _call(SETTINGS, octpath.int(), centers, lengths, p)
    with pytest.raises(ValueError, match="vox_lengths.*positive"):
        _call(SETTINGS, octpath, centers, -lengths, p)
    with pytest.raises(ValueError, match=r"vox_fn\(\)\['geos'\].*shape"):
        _call(SETTINGS, octpath, centers, lengths, _params(geos[:, :4], rgbs))
    with pytest.raises(ValueError, match="lacks.*subdiv_p"):
        _call(SETTINGS, octpath, centers, lengths, {"geos": geos, "rgbs": rgbs})
    with pytest.raises(TypeError, match="vox_fn.*dict"):
        _call(SETTINGS, octpath, centers, lengths, (geos, rgbs))


def test_nan_density_is_not_opaque(scene):
    octpath, centers, lengths, geos, rgbs = scene
    settings = make_settings((2.0, 2.0, 2.0), (0.0, 0.0, 0.0), width=16, height=16)
    clean = render(settings, octpath, centers, lengths, geos, rgbs)[0]
    bad = geos.clone()
    bad[:] = math.nan
    color, _, _, T, _ = render(settings, octpath, centers, lengths, bad, rgbs)[0]
    touched = clean[3][0] < 1  # pixels that see any voxel
    assert touched.any()
    assert torch.isnan(T[0][touched]).all() and torch.isnan(color[:, touched]).all()
    assert torch.all(T[0][~touched] == 1)
