import os

import torch

os.environ.setdefault("THINWIRE_FUSED", "0")  # reference kernels unless a test opts in
torch.set_num_threads(1)  # tests run two workers on two cores
