"""PyTorch side of bench_ops: the same workloads, timing and output format as bench_ops.cpp.

Usage: python3 bench_ops_torch.py [gemm_size=8192] [norm_rows=16384] [norm_cols=8192]
"""
import sys

import torch

from torch_timing import median_ms


def rms_norm(x, w, eps):
    if hasattr(torch.nn.functional, "rms_norm"):
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), w, eps)
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def main():
    g = int(sys.argv[1]) if len(sys.argv) > 1 else 8192
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 16384
    cols = int(sys.argv[3]) if len(sys.argv) > 3 else 8192
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(dev)} (torch {torch.__version__})")
    torch.manual_seed(0)
    a = torch.randn(g, g, device=dev, dtype=torch.bfloat16)
    b = torch.randn(g, g, device=dev, dtype=torch.bfloat16)
    flops = 2.0 * g * g * g
    ms = median_ms(lambda: torch.matmul(a, b))
    print(f"RESULT gemm_bf16_nn_{g} {flops / ms / 1e9:.1f} TFLOP/s ({ms:.3f} ms)")
    ms = median_ms(lambda: torch.nn.functional.linear(a, b))
    print(f"RESULT gemm_bf16_nt_{g} {flops / ms / 1e9:.1f} TFLOP/s ({ms:.3f} ms)")
    del a, b
    x = torch.randn(rows, cols, device=dev, dtype=torch.bfloat16)
    w = (1.0 + 0.1 * torch.randn(cols, device=dev)).to(torch.bfloat16)
    ms = median_ms(lambda: rms_norm(x, w, 1e-6))
    print(f"RESULT rmsnorm_bf16_{rows}x{cols} {2.0 * rows * cols * 2 / ms / 1e6:.1f} GB/s ({ms:.3f} ms)")
    compiled = torch.compile(rms_norm)
    try:
        ms = median_ms(lambda: compiled(x, w, 1e-6))
        print(f"RESULT rmsnorm_compiled_bf16_{rows}x{cols} {2.0 * rows * cols * 2 / ms / 1e6:.1f} GB/s ({ms:.3f} ms)")
    except Exception as e:  # torch.compile needs a working Triton; report and go on
        print(f"note: torch.compile rms_norm unavailable: {type(e).__name__}")


if __name__ == "__main__":
    main()
