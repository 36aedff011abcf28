"""PyTorch side of bench_flash, same conventions: bf16, B=1, [B, H, S, D] inputs, median of
CUDA-event-timed repetitions after warm-up (torch_timing.py; S=64k at most 5 repetitions).

Shapes: SDPA's flash and cuDNN backends, full and causal, TFLOP/s = 4*B*H*S*S*D (halved if
causal), fwd+bwd = 3.5x; "torch-<backend> <shape> fwd <TFLOP/s> fwdbwd <TFLOP/s>".

Masks (issue 22), S = 16k and 64k, H=16, D=128, the cases of bench_flash.cpp: FlexAttention
compiled (torch.compile(flex_attention)) with a BlockMask from create_block_mask for causal,
16 documents of S/16 and of random lengths (mask_mod on a document id tensor, the same cuts as
bench_flash), the sliding window of 4096; ALiBi as a score_mod on the causal BlockMask; and
cuDNN SDPA (sdpa_kernel(SDPBackend.CUDNN_ATTENTION)) for plain causal (SDPA has no
document, ALiBi or window mask short of a dense S x S one). "case <case> S=<S> <impl>: fwd <ms>
ms, fwd+bwd <ms> ms | <TFLOP/s on visible pairs> | <tokens/s>", as bench_flash prints them.
Block masks are built before timing; compilation happens in the untimed warm-up runs.
Arguments: [repetitions=10] [max S=65536]."""
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from torch_timing import median_ms

DOCS, WINDOW, DOC_SEED = 16, 4096, 22  # bench_flash.cpp's kDocs, kWindow, kDocSeed
MASK = (1 << 64) - 1


def random_starts(S, n, seed):
    """bench_documents.h's random_starts: 0 and n - 1 distinct cuts in [1, S) from splitmix64."""
    x, cuts = seed, {0}
    while len(cuts) < n:
        x = (x + 0x9E3779B97F4A7C15) & MASK
        z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        cuts.add(1 + (z ^ (z >> 31)) % (S - 1))
    return sorted(cuts)


def lengths(starts, S):
    return [b - a for a, b in zip(starts, starts[1:] + [S])]


def timed_reps(S, reps):
    return (min(reps, 5), 1) if S >= 65536 else (reps, 2)  # S=64k runs take seconds


def time_attention(attend, q, k, v, do, r, w):
    """Median ms of attend(q, k, v) alone and of it with the gradients of q, k, v for do (on copies
    that require grad): the forward-only run keeps nothing for a backward. The warm-up runs
    include the compilation of compiled attention."""
    fwd = median_ms(lambda: attend(q, k, v), r, w)
    qkv = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    fwdbwd = median_ms(lambda: torch.autograd.grad(attend(*qkv), qkv, do), r, w)
    return fwd, fwdbwd


def random_inputs(S, H, D):
    g = torch.Generator(device="cuda").manual_seed(0)
    return [torch.randn(1, H, S, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4)]


def unavailable(e):  # a backend may not support a call on this GPU or torch
    return f"unavailable: {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"


def bench_shapes(reps, max_s):
    shapes = [(4096, 16, 128), (16384, 16, 128), (65536, 16, 128), (16384, 32, 64)]
    for S, H, D in shapes:
        if S > max_s:
            continue
        q, k, v, do = random_inputs(S, H, D)
        r, w = timed_reps(S, reps)
        for causal in (False, True):
            flops = 4.0 * H * S * S * D / (2 if causal else 1)
            for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
                tag = f"torch-{name} S={S} H={H} D={D} {'causal' if causal else 'full'}"
                try:
                    with sdpa_kernel(backend):
                        fwd, fwdbwd = time_attention(
                            lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=causal), q, k, v, do, r, w)
                    print(f"{tag} fwd {flops / fwd * 1e-9:.1f} fwdbwd {3.5 * flops / fwdbwd * 1e-9:.1f}", flush=True)
                except Exception as e:
                    print(f"{tag} {unavailable(e)}", flush=True)


def mask_cases(S, H):
    """(name, mask_mod, score_mod, visible pairs) as bench_flash.cpp's mask_cases: causal blocks
    of L tokens count L^2/2 pairs."""
    def causal(b, h, q, kv):
        return q >= kv

    def documents(starts):
        doc = torch.zeros(S, dtype=torch.int32, device="cuda")
        doc[torch.tensor(starts[1:], device="cuda", dtype=torch.long)] = 1
        doc = doc.cumsum(0, dtype=torch.int32)

        def mask(b, h, q, kv):
            return (q >= kv) & (doc[q] == doc[kv])

        return mask, sum(n * n / 2 for n in lengths(starts, S))

    def window(b, h, q, kv):
        return (q >= kv) & (q - kv < WINDOW)

    slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / H) for h in range(H)], device="cuda", dtype=torch.float32)

    def alibi(score, b, h, q, kv):
        return score - slopes[h] * (q - kv)

    rand = random_starts(S, DOCS, DOC_SEED)
    print(f"documents S={S} random lengths {','.join(map(str, lengths(rand, S)))}", flush=True)
    eq_mask, eq_pairs = documents([d * (S // DOCS) for d in range(DOCS)])
    rand_mask, rand_pairs = documents(rand)
    return [("causal", causal, None, S * S / 2),
            ("docs16", eq_mask, None, eq_pairs),
            ("docs16-rand", rand_mask, None, rand_pairs),
            ("alibi", causal, alibi, S * S / 2),
            (f"window{WINDOW}", window, None, S * WINDOW - WINDOW * WINDOW / 2)]


def bench_masks(reps, max_s):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    # Every case and length compiles flex_attention once more (new mask_mod / score_mod / shape):
    # more than dynamo's default limit of recompilations.
    for limit in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 64)
    flex = torch.compile(flex_attention, dynamic=False)
    H, D = 16, 128
    for S in (16384, 65536):
        if S > max_s:
            continue
        q, k, v, do = random_inputs(S, H, D)
        r, w = timed_reps(S, reps)

        def report(name, impl, make_attend, pairs):
            tag = f"case {name} S={S} {impl}:"
            try:
                fwd, fwdbwd = time_attention(make_attend(), q, k, v, do, r, w)
            except Exception as e:
                print(f"{tag} {unavailable(e)}", flush=True)
                return
            flops = 4.0 * D * H * pairs
            print(f"{tag} fwd {fwd:.3f} ms, fwd+bwd {fwdbwd:.3f} ms | {flops / fwd * 1e-9:.1f} / "
                  f"{3.5 * flops / fwdbwd * 1e-9:.1f} TFLOP/s on {pairs:.3g} visible pairs | "
                  f"{S / fwd * 1e-3:.2f} / {S / fwdbwd * 1e-3:.2f} Mtok/s", flush=True)

        for name, mask_mod, score_mod, pairs in mask_cases(S, H):
            def flex_case():  # the block mask is built before timing
                block_mask = create_block_mask(mask_mod, None, None, S, S, device="cuda", _compile=True)
                return lambda a, b, c: flex(a, b, c, score_mod=score_mod, block_mask=block_mask)

            report(name, "torch-flex", flex_case, pairs)
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            report("causal", "torch-cudnn",
                   lambda: lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True), S * S / 2)
        del q, k, v, do
        torch.cuda.empty_cache()


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    max_s = int(sys.argv[2]) if len(sys.argv) > 2 else 65536
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__)
    bench_shapes(reps, max_s)
    bench_masks(reps, max_s)


if __name__ == "__main__":
    main()
