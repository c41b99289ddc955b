"""Heavy kernels shared by mixers: each with a sequential reference, a chunked pure-PyTorch path and the fused
CUDA kernel where one exists."""
