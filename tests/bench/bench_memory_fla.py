"""fla side of bench_memory, the same workload: B=1, 64 query heads, 4 KV heads (GQA 16) of 128,
bf16, [B, T, H, D] inputs ~ N(0, 1), gates sigmoid(N(0, 1)) per (token, head) and branch.
  fla-nsa     fla.ops.nsa.parallel_nsa: mean-compressed blocks of 64, the top 16 blocks of 64
              (picked from the compressed scores inside), window 0 (fla's window branch needs the
              flash_attn package, absent here)
  flex-window PyTorch FlexAttention, causal sliding window of 512 (compiled, block mask built once)
  fla+flex    the sum: NSA with its window, what lctx's nsa mixer computes (without projections)
Prints "<impl> T=<T> fwd <ms> fwdbwd <ms>" like bench_memory. Arguments: [repetitions=5] [max T=131072]."""
import sys

import torch

from torch_timing import median_ms

HQ, H, D, WINDOW = 64, 4, 128, 512


def timed(name, T, fn, inputs, reps, warm):
    fwd = median_ms(lambda: fn(*inputs), reps, warm)
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    do = torch.randn_like(fn(*inputs))

    def fwdbwd():
        torch.autograd.grad(fn(*leaves), leaves, do)

    fb = median_ms(fwdbwd, reps, warm)
    print(f"{name} T={T} fwd {fwd:.3f} fwdbwd {fb:.3f}", flush=True)
    return fwd, fb


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    max_t = int(sys.argv[2]) if len(sys.argv) > 2 else 131072
    from fla.ops.nsa import parallel_nsa
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    flex = torch.compile(flex_attention)
    for T in (16384, 65536, 131072):
        if T > max_t:
            break
        warm = 1 if T >= 131072 else 2
        g = torch.Generator(device="cuda").manual_seed(0)
        rnd = lambda *s: torch.randn(*s, device="cuda", dtype=torch.bfloat16, generator=g)
        q, k, v = rnd(1, T, HQ, D), rnd(1, T, H, D), rnd(1, T, H, D)
        g_cmp, g_slc = torch.sigmoid(rnd(1, T, HQ)), torch.sigmoid(rnd(1, T, HQ))
        res = {}
        try:
            nsa = lambda q, k, v, gc, gs: parallel_nsa(q, k, v, gc, gs, None, block_counts=16, block_size=64,
                                                      window_size=0)
            res["nsa"] = timed("fla-nsa", T, nsa, (q, k, v, g_cmp, g_slc), reps, warm)
        except Exception as e:  # a Triton limit or out of memory: the table shows what ran
            print(f"fla-nsa T={T} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
        try:
            mask = create_block_mask(lambda b, h, i, j: (j <= i) & (i - j < WINDOW), None, None, T, T)
            # [B, H, T, D] for flex; GQA by enable_gqa
            win = lambda q, k, v: flex(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=mask,
                                       enable_gqa=True).transpose(1, 2)
            res["win"] = timed("flex-window", T, win, (q, k, v), reps, warm)
        except Exception as e:
            print(f"flex-window T={T} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
        if len(res) == 2:
            print(f"fla+flex T={T} fwd {res['nsa'][0] + res['win'][0]:.3f} fwdbwd {res['nsa'][1] + res['win'][1]:.3f}",
                  flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
