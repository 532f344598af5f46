"""Model layer, camera loaders, render.py and render_fly_through.py (CPU)."""
import json
import math
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import REPO
from svraster_cuda import cameras, demo
from svraster_cuda.model import ModelError, SVRasterModel
from svraster_cuda.params import SH_C0, SH_C1, SH_C2, SH_C3, SH_eval, sh_basis


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo") / "model"
    demo.write_demo(folder, n_views=4, width=48, height=36)
    return folder


def test_checkpoint_round_trip_renders_identically(demo_model, tmp_path):
    model = SVRasterModel.load(demo_model)
    cam = demo.demo_cameras(1, 40, 30)[0]
    before = model.render(cam, need_depth=True)
    model.save(tmp_path / "copy", iteration=1234)
    again = SVRasterModel.load(tmp_path / "copy")
    assert again.iteration == 1234 and again.config == model.config
    after = again.render(cam, need_depth=True)
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_quantized_checkpoint(demo_model, tmp_path):
    model = SVRasterModel.load(demo_model)
    model.save(tmp_path / "q", iteration=7, quantize=True)
    state = torch.load(tmp_path / "q" / "checkpoints" / "iter000007_model.pt", weights_only=True)
    assert state["quantized"] and state["_geo_grid_pts"]["index"].dtype == torch.uint8
    assert isinstance(state["_sh0"], list) and len(state["_sh0"]) == 3 and len(state["_shs"]) == 15
    q = SVRasterModel.load(tmp_path / "q")
    assert q._shs.shape == model._shs.shape and q._sh0.shape == model._sh0.shape
    # 256-level codebooks: values within the codebook spacing of the originals.
    assert (q._sh0 - model._sh0).abs().max() < 0.05 * (model._sh0.max() - model._sh0.min())
    cam = demo.demo_cameras(1, 40, 30)[0]
    a, b = model.render(cam)["color"], q.render(cam)["color"]
    assert cameras_psnr(a, b) > 25


def cameras_psnr(a, b):
    return -10 * math.log10(float(((a.detach() - b.detach()) ** 2).mean()) + 1e-12)


def test_sh_against_closed_form():
    gen = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(50, 3, generator=gen, dtype=torch.float64), dim=1)
    x, y, z = dirs.T
    expect = torch.stack([
        -SH_C1 * y, SH_C1 * z, -SH_C1 * x,
        SH_C2[0] * x * y, SH_C2[1] * y * z, SH_C2[2] * (2 * z * z - x * x - y * y), SH_C2[3] * x * z, SH_C2[4] * (x * x - y * y),
        SH_C3[0] * y * (3 * x * x - y * y), SH_C3[1] * x * y * z, SH_C3[2] * y * (4 * z * z - x * x - y * y),
        SH_C3[3] * z * (2 * z * z - 3 * x * x - 3 * y * y), SH_C3[4] * x * (4 * z * z - x * x - y * y),
        SH_C3[5] * z * (x * x - y * y), SH_C3[6] * x * (x * x - 3 * y * y)], 1)
    assert torch.allclose(sh_basis(3, dirs), expect)
    # The real SH are orthonormal on the sphere (with SH_C0 for l = 0): check on a dense grid.
    u = torch.linspace(0, 1, 400, dtype=torch.float64)
    th, ph = torch.meshgrid(torch.acos(1 - 2 * (u + 0.5 / 400).clamp(max=1)), 2 * math.pi * u, indexing="ij")
    d = torch.stack([th.sin() * ph.cos(), th.sin() * ph.sin(), th.cos()], -1).reshape(-1, 3)
    basis = torch.cat([torch.full((len(d), 1), SH_C0, dtype=torch.float64), sh_basis(3, d)], 1)
    gram = basis.T @ basis * (4 * math.pi / len(d))
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=2e-2)


def test_sh_eval_values_and_gradient():
    gen = torch.Generator().manual_seed(1)
    n = 6
    centers = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    cam = torch.tensor([0.3, -2.0, 1.0], dtype=torch.float64)
    sh0 = torch.randn(n, 3, generator=gen, dtype=torch.float64).requires_grad_()
    shs = torch.randn(n, 15, 3, generator=gen, dtype=torch.float64).requires_grad_()
    idx = torch.tensor([0, 2, 3, 5])
    rgb = SH_eval.apply(3, idx, centers, cam, None, sh0, shs)
    d = torch.nn.functional.normalize(centers[idx] - cam, dim=1)
    expect = (SH_C0 * sh0[idx] + (sh_basis(3, d)[:, :, None] * shs[idx]).sum(1) + 0.5).clamp(min=0)
    assert torch.allclose(rgb[idx], expect) and torch.all(rgb[[1, 4]] == 0)
    assert torch.autograd.gradcheck(lambda a, b: SH_eval.apply(3, idx, centers, cam, None, a, b), (sh0, shs))


# --- cameras ---------------------------------------------------------------------------------
def test_nerf_transforms(tmp_path):
    c2w_gl = [[1, 0, 0, 0.5], [0, 1, 0, -1.0], [0, 0, 1, 4.0], [0, 0, 0, 1]]
    (tmp_path / "transforms_train.json").write_text(json.dumps({
        "camera_angle_x": 2 * math.atan(0.5), "w": 100, "h": 80,
        "frames": [{"file_path": "./train/r_0", "transform_matrix": c2w_gl},
                   {"file_path": "./train/r_1", "transform_matrix": c2w_gl, "cx": 40.0, "camera_angle_y": 2 * math.atan(0.25)}]}))
    cams = cameras.load_transforms(tmp_path / "transforms_train.json")
    a, b = cams
    assert (a.width, a.height, a.cx, a.cy) == (100, 80, 50.0, 40.0) and (a.fx, a.fy) == pytest.approx((100.0, 100.0))
    assert b.cx == 40.0 and b.fy == pytest.approx(160.0)
    # OpenGL (y up, looking down -z) -> OpenCV (y down, looking down +z): flip y and z axes.
    assert torch.allclose(a.c2w, torch.tensor([[1, 0, 0, 0.5], [0, -1, 0, -1.0], [0, 0, -1, 4.0], [0, 0, 0, 1]]))
    assert a.name == "r_0"


def _rotation_quat(angle):
    return [math.cos(angle / 2), 0.0, 0.0, math.sin(angle / 2)]   # about z, (w, x, y, z)


def _write_colmap(folder, binary, model_name="PINHOLE"):
    folder.mkdir(parents=True)
    q, t = _rotation_quat(math.pi / 2), [1.0, 2.0, 3.0]
    params = {"PINHOLE": [300.0, 310.0, 160.0, 120.0], "SIMPLE_PINHOLE": [300.0, 160.0, 120.0],
              "OPENCV": [300.0, 310.0, 160.0, 120.0, 0, 0, 0, 0]}[model_name]
    model_id = {"SIMPLE_PINHOLE": 0, "PINHOLE": 1, "OPENCV": 4}[model_name]
    if binary:
        with open(folder / "cameras.bin", "wb") as f:
            f.write(struct.pack("<Q", 1) + struct.pack("<iiQQ", 1, model_id, 320, 240) + struct.pack(f"<{len(params)}d", *params))
        with open(folder / "images.bin", "wb") as f:
            f.write(struct.pack("<Q", 1) + struct.pack("<i7di", 5, *q, *t, 1) + b"img_a.jpg\x00" + struct.pack("<Q", 0))
    else:
        (folder / "cameras.txt").write_text(f"# comment\n1 {model_name} 320 240 {' '.join(map(str, params))}\n")
        (folder / "images.txt").write_text(f"# comment\n5 {' '.join(map(str, q))} {' '.join(map(str, t))} 1 img_a.jpg\n\n")


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("model_name", ["PINHOLE", "SIMPLE_PINHOLE"])
def test_colmap(tmp_path, binary, model_name):
    _write_colmap(tmp_path / "sparse" / "0", binary, model_name)
    (cam,) = cameras.load_colmap(tmp_path / "sparse" / "0")
    assert (cam.width, cam.height, cam.fx, cam.cx, cam.cy) == (320, 240, 300.0, 160.0, 120.0)
    assert cam.fy == (310.0 if model_name == "PINHOLE" else 300.0)
    w2c = torch.tensor([[0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]], dtype=torch.float32)
    assert torch.allclose(cam.w2c, w2c, atol=1e-6)
    assert cam.name == "img_a.jpg" and cam.image_path.endswith("images/img_a.jpg")


def test_colmap_unsupported_model(tmp_path):
    _write_colmap(tmp_path / "s", False, "OPENCV")
    with pytest.raises(cameras.CameraError, match="OPENCV is not supported"):
        cameras.load_colmap(tmp_path / "s")


def test_malformed_camera_files(tmp_path):
    """Truncated, wrongly typed or absurd camera files fail with a message naming the file."""
    _write_colmap(tmp_path / "bin", True)
    data = (tmp_path / "bin" / "images.bin").read_bytes()
    (tmp_path / "bin" / "images.bin").write_bytes(data[:30])                       # truncated
    with pytest.raises(cameras.CameraError, match="malformed COLMAP"):
        cameras.load_colmap(tmp_path / "bin")
    _write_colmap(tmp_path / "huge", True)
    (tmp_path / "huge" / "cameras.bin").write_bytes(struct.pack("<Q", 2 ** 40))    # claims 2^40 cameras
    with pytest.raises(cameras.CameraError, match="malformed COLMAP"):
        cameras.load_colmap(tmp_path / "huge")
    (tmp_path / "t.json").write_text('{"frames": [{"transform_matrix": "not a matrix"}], "camera_angle_x": 1}')
    with pytest.raises(cameras.CameraError, match="transform_matrix"):
        cameras.load_transforms(tmp_path / "t.json")
    (tmp_path / "c.json").write_text('{"cameras": [{"width": "wide"}]}')
    with pytest.raises(cameras.CameraError, match="c.json: malformed camera entry"):
        cameras.load_camera_json(tmp_path / "c.json")
    (tmp_path / "config.yaml").write_text("model: !!python/object/apply:os.system ['echo hacked']\n")
    from svraster_cuda.model import ModelConfig
    with pytest.raises(ModelError, match="config.yaml: cannot read config"):
        ModelConfig.load(tmp_path / "config.yaml")


def test_fly_through_is_closed_and_smooth():
    keys = demo.demo_cameras(8, 40, 30)
    path = cameras.fly_through(keys, 64)
    pos = torch.stack([c.position for c in path])
    steps = (pos.roll(-1, 0) - pos).norm(dim=1)
    assert len(path) == 64 and steps.max() < 3 * steps.mean()   # closed: the last frame leads back to the first


# --- command lines ---------------------------------------------------------------------------
def run(*args, cwd=REPO):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_render_py_demo(tmp_path):
    r = run("render.py", "--out", str(tmp_path), "--width", "40", "--height", "30", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "demo scene" in r.stdout and "test: 2 views" in r.stdout
    renders = sorted((tmp_path / "test" / "ours_0" / "renders").glob("*.png"))
    assert len(renders) == 2 and len(list((tmp_path / "train" / "ours_0" / "viz").glob("*_depth.png"))) == 6
    # The written test renders equal the library's render of the same cameras.
    from PIL import Image
    model = SVRasterModel.load(tmp_path / "model")
    cams = {c.name: c for c in cameras.load_camera_json(tmp_path / "model" / "cameras.json")}
    for path in renders:
        img = torch.from_numpy(np.array(Image.open(path))).float().permute(2, 0, 1) / 255
        assert img.shape == (3, 30, 40)
        ref = model.render(cams[path.stem])["color"].clamp(0, 1)
        assert cameras_psnr(img, ref) >= 40


def test_render_py_model_folder_with_gt(demo_model, tmp_path):
    # Ground truth images for the demo's cameras make the PSNR path run.
    model = SVRasterModel.load(demo_model)
    from PIL import Image
    cams = cameras.load_camera_json(demo_model / "cameras.json")
    for c in cams:
        c.image_path = str(tmp_path / f"{c.name}.png")
        img = (model.render(c)["color"].clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).numpy()
        Image.fromarray(img).save(c.image_path)
    data = json.loads((demo_model / "cameras.json").read_text())
    (tmp_path / "cams.json").write_text(json.dumps(data))
    r = run("render.py", str(demo_model), "--out", str(tmp_path / "out"), "--skip_train", "--rgb_only", "--use_jpg")
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "out" / "test" / "ours_0" / "renders").glob("*.jpg"))) == 1
    r = run("render.py", str(demo_model), "--eval_fps", "--skip_train")
    assert r.returncode == 0 and "FPS" in r.stdout and "48x36" in r.stdout, r.stdout + r.stderr


def test_render_fly_through(demo_model, tmp_path):
    pytest.importorskip("imageio_ffmpeg", reason="video encoding needs imageio-ffmpeg (pip install -e .[video])")
    out = tmp_path / "fly.mp4"
    r = run("render_fly_through.py", str(demo_model), "--n_frames", "9", "--fps", "10", "--out", str(out))
    assert r.returncode == 0, r.stderr
    import imageio.v2 as imageio
    reader = imageio.get_reader(str(out))
    assert reader.count_frames() == 9 and tuple(reader.get_meta_data()["size"]) == (48, 36)


def test_absurd_sizes_fail_before_allocating(tmp_path):
    """A checkpoint claiming 2^40 voxels (a zero-stride tensor: the file is tiny) is refused
    from its metadata, before anything of that size is allocated."""
    huge = torch.zeros(1, dtype=torch.long).as_strided((2 ** 40, 1), (0, 0))
    state = {"active_sh_degree": 0, "scene_center": torch.zeros(3), "scene_extent": torch.ones(1),
             "octpath": huge, "octlevel": torch.ones(1, 1, dtype=torch.int8).as_strided((2 ** 40, 1), (0, 0)),
             "_geo_grid_pts": torch.zeros(1, 1), "_sh0": torch.zeros(1, 3), "_shs": torch.zeros(1, 0, 3), "quantized": False}
    (tmp_path / "checkpoints").mkdir()
    torch.save(state, tmp_path / "checkpoints" / "iter000001_model.pt")
    assert (tmp_path / "checkpoints" / "iter000001_model.pt").stat().st_size < 10_000
    with pytest.raises(ModelError, match="1099511627776 voxels exceed"):
        SVRasterModel.load(tmp_path)


@pytest.mark.parametrize("case", ["missing", "corrupt", "pickle", "keys", "no_cameras", "unwritable"])
def test_cli_errors_are_one_line(demo_model, tmp_path, case):
    ckpt_dir = tmp_path / "m" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    args = [str(tmp_path / "m")]
    if case == "missing":
        args = [str(tmp_path / "nothing_here")]
    elif case == "corrupt":
        (ckpt_dir / "iter000001_model.pt").write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    elif case == "pickle":
        import pickle
        (ckpt_dir / "iter000001_model.pt").write_bytes(pickle.dumps(cameras.Camera))   # refused by weights_only
    elif case == "keys":
        torch.save({"octpath": torch.zeros(1, 1, dtype=torch.long)}, ckpt_dir / "iter000001_model.pt")
    elif case == "no_cameras":
        args = [str(demo_model), "--cameras", str(tmp_path / "empty.json")]
        (tmp_path / "empty.json").write_text('{"cameras": []}')
    elif case == "unwritable":
        (tmp_path / "file").write_text("")
        args = [str(demo_model), "--out", str(tmp_path / "file" / "sub")]
    r = run("render.py", *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("render.py: error:") and "Traceback" not in r.stderr, r.stderr
