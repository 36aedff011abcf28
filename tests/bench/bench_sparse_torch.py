"""FlexAttention side of bench_sparse (issue 19), same conventions: bf16, B=1, H=16, D=128,
[B, H, S, D] inputs, S = 16k and 64k, median of CUDA-event-timed repetitions after warm-up
(torch_timing.py; S=64k at most 5 repetitions), compiled flex_attention with a BlockMask from
create_block_mask (128-blocks, built before timing; compilation in the untimed warm-up).
Cases (bench_sparse.cpp's): causal; window4096 (q - kv < 4096, causal); window4096+g64 (also
kv < 64); strided1024/64 (q - kv < 1024 or (q - kv) % 64 == 0, causal). Prints
"case <case> S=<S> torch-flex: fwd <ms> ms, fwd+bwd <ms> ms | <TFLOP/s on visible pairs>".
Arguments: [repetitions=10] [max S=65536] [min S=0]."""
import sys

import torch

from torch_timing import median_ms

H, D = 16, 128
WINDOW, GLOBAL, STRIDE_WINDOW, STRIDE = 4096, 64, 1024, 64


def count_pairs(S, w, g=0, s=0):  # bench_sparse.cpp's count_pairs
    i = torch.arange(S, dtype=torch.float64)
    n = torch.clamp(i + 1, max=w)
    if g:
        n += torch.clamp(torch.clamp(i - w + 1, min=0), max=g)
    if s:
        n += torch.clamp(torch.div(i, s, rounding_mode="floor") - (w + s - 1) // s + 1, min=0)
    return float(n.sum())


def main():
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    max_s = int(sys.argv[2]) if len(sys.argv) > 2 else 65536
    min_s = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    for limit in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 64)
    flex = torch.compile(flex_attention, dynamic=False)
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)

    def causal(b, h, q, kv):
        return q >= kv

    def window(b, h, q, kv):
        return (q >= kv) & (q - kv < WINDOW)

    def window_global(b, h, q, kv):
        return (q >= kv) & ((q - kv < WINDOW) | (kv < GLOBAL))

    def strided(b, h, q, kv):
        return (q >= kv) & ((q - kv < STRIDE_WINDOW) | ((q - kv) % STRIDE == 0))

    for S in (16384, 65536):
        if S > max_s or S < min_s:
            continue
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v, do = [torch.randn(1, H, S, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4)]
        r, w = (min(reps, 5), 1) if S >= 65536 else (reps, 2)
        cases = [("causal", causal, S * S / 2), ("window4096", window, count_pairs(S, WINDOW)),
                 ("window4096+g64", window_global, count_pairs(S, WINDOW, g=GLOBAL)),
                 ("strided1024/64", strided, count_pairs(S, STRIDE_WINDOW, s=STRIDE))]
        for name, mask_mod, pairs in cases:
            tag = f"case {name} S={S} torch-flex:"
            try:
                bm = create_block_mask(mask_mod, None, None, S, S, device="cuda", _compile=True)
                attend = lambda a, b, c: flex(a, b, c, block_mask=bm)
                fwd = median_ms(lambda: attend(q, k, v), r, w)
                qkv = [t.detach().clone().requires_grad_() for t in (q, k, v)]
                fb = median_ms(lambda: torch.autograd.grad(attend(*qkv), qkv, do), r, w)
            except Exception as e:
                print(f"{tag} unavailable: {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}",
                      flush=True)
                continue
            flops = 4.0 * D * H * pairs
            print(f"{tag} fwd {fwd:.3f} ms, fwd+bwd {fb:.3f} ms | {flops / fwd * 1e-9:.1f} / "
                  f"{3.5 * flops / fb * 1e-9:.1f} TFLOP/s on {pairs:.4g} visible pairs", flush=True)
        del q, k, v, do
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
