"""`python -m svraster_cuda`: which rendering path this installation uses."""
import torch

from . import cuda_backend, meta

if __name__ == "__main__":
    cuda = torch.cuda.is_available()
    ext = cuda_backend.available()
    print(f"svraster_cuda: torch {torch.__version__}; CUDA device: {'yes' if cuda else 'no'}; "
          f"CUDA extension: {'built' if ext else 'not built'}; "
          f"{'CUDA tensors use the kernels' if ext else 'the PyTorch reference path is used'}; "
          f"MAX_NUM_LEVELS={meta.MAX_NUM_LEVELS} MAX_N_SAMP={meta.MAX_N_SAMP} STEP_SZ_SCALE={meta.STEP_SZ_SCALE:g}")
