"""PyTorch side of bench_ssm (issue 18), same shapes and timing method (median of CUDA-event-timed
repetitions):
- scan: the chunked pure-PyTorch Mamba-1 selective scan a user would otherwise write (chunks of 32
  tokens, log-space cumulative decays inside a chunk, the state carried between chunks; autograd
  for the backward), bf16 I/O with fp32 math, B=1, d_state 16, with z, D, dt_bias and softplus;
  at d_inner 4096 (bench_ssm's shape) and 2048 (the issue's figure: 12.9 / 74.5 ms at 8k).
- ssd: mamba_ssm's Triton mamba_chunk_scan_combined (nheads 32, headdim 64, d_state 128, one group,
  chunk 256), imported from the source tree without the compiled extension (PYTHONPATH with
  .whl/mamba_src, see run_bench_ssm.sh).
Prints "scan torch-chunked ..." and "ssd mamba_ssm ..." lines.
Usage: bench_ssm_torch.py [reps=20] [max_T=1048576] [parts=all|scan|ssd|layer] (layer: lctx only)
"""
import sys

import torch
import torch.nn.functional as F

from torch_timing import median_ms

CHUNK = 32


def chunked_scan(x, dt, A, B, C, D, z, dt_bias):
    """y [b, T, d] of the Mamba-1 scan; x, dt, z [b, T, d], B, C [b, T, n], A [d, n], D, dt_bias [d]."""
    b, T, d = x.shape
    n = A.shape[1]
    x, z, B, C = x.float(), z.float(), B.float(), C.float()
    delta = F.softplus(dt.float() + dt_bias)
    h = torch.zeros(b, d, n, device=x.device)
    ys = []
    for t0 in range(0, T, CHUNK):
        sl = slice(t0, t0 + CHUNK)
        dl = delta[:, sl]                                            # [b, L, d]
        cum = torch.cumsum(dl[..., None] * A, dim=1)                 # [b, L, d, n], log decays
        u = (dl * x[:, sl])[..., None] * B[:, sl, None, :]           # dt B x
        hs = torch.exp(cum) * (h[:, None] + torch.cumsum(torch.exp(-cum) * u, dim=1))
        ys.append(torch.einsum("bldn,bln->bld", hs, C[:, sl]))
        h = hs[:, -1]
    y = torch.cat(ys, dim=1) + D * x
    return (y * F.silu(z)).to(torch.bfloat16)


def bench_scan(T, d, reps):
    n = 16
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(1, T, d, device=dev, generator=g).bfloat16().requires_grad_()
    dt = (torch.randn(1, T, d, device=dev, generator=g) * 0.5 - 4).bfloat16().requires_grad_()
    z = torch.randn(1, T, d, device=dev, generator=g).bfloat16().requires_grad_()
    B = torch.randn(1, T, n, device=dev, generator=g).bfloat16().requires_grad_()
    C = torch.randn(1, T, n, device=dev, generator=g).bfloat16().requires_grad_()
    A = (-torch.rand(d, n, device=dev, generator=g) * 15 - 1).requires_grad_()
    D = torch.ones(d, device=dev, requires_grad=True)
    dt_bias = (torch.rand(d, device=dev, generator=g) * 2 - 1).requires_grad_()
    dy = torch.randn(1, T, d, device=dev, generator=g).bfloat16()
    args = (x, dt, A, B, C, D, z, dt_bias)
    try:
        with torch.no_grad():
            fwd = median_ms(lambda: chunked_scan(*args), reps=reps, warmup=2)
        fb = median_ms(lambda: chunked_scan(*args).backward(dy), reps=reps, warmup=2)
    except torch.OutOfMemoryError:
        print(f"scan torch-chunked T={T} D={d}: out of memory")
        return
    finally:
        torch.cuda.empty_cache()
    print(f"scan torch-chunked T={T} D={d} fwd {fwd:.3f} ms fwdbwd {fb:.3f} ms", flush=True)


# ---- Mamba-2 SSD: mamba_ssm's Triton kernels (bench_ssm.cpp's bench_ssd runs lctx's) ----
def import_ssd():
    """mamba_chunk_scan_combined without mamba_ssm/__init__.py, which imports the compiled
    extension (selective_scan_cuda) that a source tree does not have: the package is registered
    by its path alone, so only the pure-Triton modules load."""
    import importlib.util
    import types
    if "mamba_ssm" not in sys.modules:
        spec = importlib.util.find_spec("mamba_ssm")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("no mamba_ssm on the path (put .whl/mamba_src on PYTHONPATH)")
        pkg = types.ModuleType("mamba_ssm")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["mamba_ssm"] = pkg
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    return mamba_chunk_scan_combined


def bench_ssd(T, reps):
    try:
        mamba_chunk_scan_combined = import_ssd()
    except ImportError as e:
        print(f"ssd mamba_ssm: not importable ({e})")
        return
    H, P, N, G = 32, 64, 128, 1
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(1)
    x = torch.randn(1, T, H, P, device=dev, generator=g).bfloat16().requires_grad_()
    dt = (torch.randn(1, T, H, device=dev, generator=g) * 0.5 - 4).bfloat16().requires_grad_()
    A = (-torch.rand(H, device=dev, generator=g) * 15 - 1).requires_grad_()
    B = (torch.randn(1, T, G, N, device=dev, generator=g) * 0.1).bfloat16().requires_grad_()
    C = (torch.randn(1, T, G, N, device=dev, generator=g) * 0.1).bfloat16().requires_grad_()
    D = torch.ones(H, device=dev, requires_grad=True)
    dt_bias = (torch.rand(H, device=dev, generator=g) * 2 - 1).requires_grad_()
    dy = torch.randn(1, T, H, P, device=dev, generator=g).bfloat16()

    def run():
        return mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size=256, D=D, dt_bias=dt_bias, dt_softplus=True)

    with torch.no_grad():
        fwd = median_ms(run, reps=reps, warmup=3)
    fb = median_ms(lambda: run().backward(dy), reps=reps, warmup=3)
    print(f"ssd mamba_ssm T={T} fwd {fwd:.3f} ms fwdbwd {fb:.3f} ms tokens_per_s_fb {T / fb / 1e3:.2f}M", flush=True)


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    max_t = int(sys.argv[2]) if len(sys.argv) > 2 else 1 << 20
    parts = sys.argv[3] if len(sys.argv) > 3 else "all"
    if parts not in ("all", "scan", "ssd", "layer"):
        sys.exit(f"bench_ssm_torch.py: parts is '{parts}', expected all, scan, ssd or layer")
    print(f"device: {torch.cuda.get_device_name()}")
    if parts in ("all", "scan"):
        for T in (8192, 32768):
            if T <= max_t:
                bench_scan(T, 4096, reps)
        bench_scan(8192, 2048, reps)
    if parts in ("all", "ssd"):
        for T in (8192, 32768, 131072):
            if T <= max_t:
                bench_ssd(T, reps)


if __name__ == "__main__":
    main()
