"""Builds `svraster_cuda`. With CUDA PyTorch and nvcc present (install with
`pip install --no-build-isolation -e .`), compiles the `_C` extension from cuda/src;
otherwise installs the pure-PyTorch package and says so."""
import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join("cuda", "src")
# Regular installs carry a copy of the constants header for `svraster_cuda.meta`.
shutil.copyfile(os.path.join(ROOT, SRC, "constants.h"), os.path.join(ROOT, "cuda", "svraster_cuda", "_constants.h"))


def cuda_extension():
    if os.environ.get("SVRASTER_NO_CUDA") == "1":
        return None, "SVRASTER_NO_CUDA=1"
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        return None, "PyTorch is not importable at build time"
    if torch.version.cuda is None or CUDA_HOME is None:
        return None, "no CUDA build of PyTorch with nvcc"
    sources = sorted(glob.glob(os.path.join(SRC, "*.cu"))) + sorted(glob.glob(os.path.join(SRC, "*.cpp")))
    ext = CUDAExtension(
        name="svraster_cuda._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, SRC)],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"]},
    )
    return (ext, BuildExtension.with_options(use_ninja=True)), None


built, reason = cuda_extension()
if built is None:
    print(f"svraster_cuda: CUDA extension not built ({reason}); the PyTorch reference path will be used.", file=sys.stderr)

setup(
    name="svraster_cuda",
    version="0.1.0",
    description="Exact, differentiable sparse-voxel (SVRaster) rasterizer with a PyTorch reference",
    packages=["svraster_cuda", "svraster_cuda.reference"],
    py_modules=[],
    package_dir={"": "cuda"},
    package_data={"svraster_cuda": ["_constants.h"]},
    python_requires=">=3.9",
    install_requires=["torch", "numpy", "pillow", "pyyaml", "tqdm"],
    extras_require={"test": ["pytest", "hypothesis", "imageio", "imageio-ffmpeg"], "video": ["imageio", "imageio-ffmpeg"]},
    ext_modules=[built[0]] if built else [],
    cmdclass={"build_ext": built[1]} if built else {},
)
