"""fla side of bench_linear_attn, same workload and conventions: B=1, H=16, D=128, bf16, [B, T, H, D]
inputs (q, k ~ N(0, 0.05^2), v, dout ~ N(0, 1)), scale 1.0, no normalisation, the final state
returned (lctx always returns it), median of CUDA-event-timed repetitions after warm-up.
  none   fla.ops.linear_attn.chunk_linear_attn(scale=1.0, normalize=False)
  fixed  fla.ops.retention.chunk_retention(scale=1.0): log decay log(1 - 2^(-5-h)) per head
Prints "fla <case> T=<T> fwd <ms> fwdbwd <ms> | Mtok/s .. | GB/s .." like bench_linear_attn.
Arguments: [repetitions=10] [max T=131072]; T >= 1M runs 3 repetitions."""
import sys

import torch

from torch_timing import median_ms

H, D = 16, 128


def report(what, T, fwd, fb):
    elems = T * H * D
    print(f"fla {what} T={T} fwd {fwd:.3f} fwdbwd {fb:.3f} | Mtok/s {T / fwd * 1e-3:.1f} {T / fb * 1e-3:.1f} | "
          f"GB/s {8 * elems / fwd * 1e-6:.0f} {22 * elems / fb * 1e-6:.0f}", flush=True)


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    max_t = int(sys.argv[2]) if len(sys.argv) > 2 else 131072
    from fla.ops.linear_attn import chunk_linear_attn
    from fla.ops.retention import chunk_retention
    impls = {
        "none": lambda q, k, v: chunk_linear_attn(q, k, v, scale=1.0, normalize=False, output_final_state=True),
        "fixed": lambda q, k, v: chunk_retention(q, k, v, scale=1.0, output_final_state=True),
    }
    for T in (8192, 32768, 131072, 1048576):
        if T > max_t:
            break
        r, w = (min(reps, 3), 1) if T >= 1048576 else (reps, 2)
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v, do = (torch.randn(1, T, H, D, device="cuda", dtype=torch.bfloat16, generator=g) *
                       (0.05 if i < 2 else 1.0) for i in range(4))
        for what, fn in impls.items():
            try:
                fwd = median_ms(lambda: fn(q, k, v), r, w)
                qkv = [t.detach().clone().requires_grad_() for t in (q, k, v)]

                def fwdbwd():
                    o, _ = fn(*qkv)
                    torch.autograd.grad(o, qkv, do)

                fb = median_ms(fwdbwd, r, w)
                report(what, T, fwd, fb)
            except Exception as e:  # out of memory at 1M, a Triton limit: the table shows what ran
                print(f"fla {what} T={T} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
