"""PyTorch counterpart of lctx-train for tests/bench/run_bench_train.sh: the model of
configs/bench-4l-2048.yaml (Llama-style, 4 layers, dim 2048, 16 heads of 128, SwiGLU hidden 5632,
byte vocabulary, RoPE, RMSNorm, untied head), eager PyTorch with bf16 parameters, SDPA on the
cuDNN backend, torch.utils.checkpoint around every layer (use_reentrant=False), fused AdamW and
gradient clipping at 1.0. One process per GPU:
    python3 -m torch.distributed.run --standalone --nproc_per_node N bench_train_torch.py S_LIST STEPS BUDGET
With N > 1 the sequence is split over the GPUs by torch.distributed.tensor.experimental.
context_parallel on a ("cp",) device mesh (ring attention, head-tail load-balanced causal
shards; token ids, labels and positions are the sharded buffers) and the gradients are summed
over the ranks. Batch 1.

For each S: warm-up step(s), then STEPS timed steps (torch.cuda.synchronize + wall clock, the
max over ranks); prints
    RESULT impl=torch N=.. S=.. step_s=.. tok_s_gpu=.. mfu=.. peak_gib=..
(median step time; peak_gib = torch.cuda.max_memory_allocated, max over ranks), or
    SKIP impl=torch N=.. S=.. reason=..
on out-of-memory, another error, or when the estimated time would overrun the budget.
MFU = (6 * non-embedding params * S + 6 * layers * heads * head_dim * S^2) / (step_s * 989e12 * N).
Arguments: [S list=65536,262144,1048576] [steps=3] [budget s=600]; options below (--help).
"""
import argparse
import contextlib
import datetime
import gc
import math
import os
import sys
import time

# Long sequences allocate large, differently sized blocks per S: avoid fragmentation OOMs.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

PEAK_FLOPS = 989e12  # dense bf16 per GPU (H100/H200 SXM), as lctx-train's logging.peak_tflops


def parse_args(argv):
    p = argparse.ArgumentParser(description="PyTorch training step of configs/bench-4l-2048.yaml at long context "
                                "(see the module docstring)")
    p.add_argument("seqs", nargs="?", default="65536,262144,1048576", help="comma-separated sequence lengths")
    p.add_argument("steps", nargs="?", type=int, default=3, help="timed steps per S (after the warm-up)")
    p.add_argument("budget", nargs="?", type=float, default=600.0, help="time budget in seconds for all S")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per S")
    p.add_argument("--backend", default="cudnn", choices=["cudnn", "flash", "efficient", "math"],
                   help="SDPA backend (math for a CPU smoke test)")
    p.add_argument("--rotate", default="allgather", choices=["allgather", "alltoall"],
                   help="context_parallel K/V rotation (set_rotate_method)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    # The model; the defaults are configs/bench-4l-2048.yaml. Smaller values are for smoke tests.
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--ffn", type=int, default=5632)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--rope-theta", type=float, default=1e6)
    a = p.parse_args(argv)
    a.seqs = [int(x) for x in a.seqs.split(",") if x]
    if a.steps < 1 or a.warmup < 0 or not a.seqs or a.dim % a.heads or (a.dim // a.heads) % 2:
        p.error("need steps >= 1, warmup >= 0, at least one S, dim divisible by heads and an even head dim")
    return a


def build(a):
    """Model classes; defined after the torch import (argument parsing works without torch)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.checkpoint import checkpoint

    backends = {
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }
    sdpa_backend = backends[a.backend]

    def apply_rope(x, cos, sin):
        # Half-split pairing (GPT-NeoX / HF Llama), as lctx's ops::rope: x [B, S, H, hd].
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    class Block(nn.Module):
        def __init__(self, d, h, f):
            super().__init__()
            self.h, self.hd = h, d // h
            self.attn_norm = nn.RMSNorm(d, eps=1e-5)
            self.wqkv = nn.Linear(d, 3 * d, bias=False)
            self.wo = nn.Linear(d, d, bias=False)
            self.mlp_norm = nn.RMSNorm(d, eps=1e-5)
            self.w_gate_up = nn.Linear(d, 2 * f, bias=False)
            self.w_down = nn.Linear(f, d, bias=False)

        def forward(self, x, cos, sin):
            b, s, d = x.shape
            q, k, v = self.wqkv(self.attn_norm(x)).view(b, s, 3, self.h, self.hd).unbind(2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            # F.scaled_dot_product_attention is looked up at call time: context_parallel
            # patches it to ring attention over the cp mesh.
            with sdpa_kernel([sdpa_backend]):
                o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                   is_causal=True)
            x = x + self.wo(o.transpose(1, 2).reshape(b, s, d))
            gate, up = self.w_gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
            return x + self.w_down(F.silu(gate) * up)

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(a.vocab, a.dim)
            self.layers = nn.ModuleList(Block(a.dim, a.heads, a.ffn) for _ in range(a.layers))
            self.final_norm = nn.RMSNorm(a.dim, eps=1e-5)
            self.head = nn.Linear(a.dim, a.vocab, bias=False)
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, std=0.02)

        def forward(self, ids, cos, sin):
            x = self.embedding(ids)
            for layer in self.layers:
                x = checkpoint(layer, x, cos, sin, use_reentrant=False, preserve_rng_state=False)
            return self.head(self.final_norm(x))

    def rope_tables(pos, dtype):
        # pos: [1, S_local] global positions of the local tokens -> cos, sin [1, S_local, 1, hd].
        hd = a.dim // a.heads
        inv_freq = a.rope_theta ** (-torch.arange(0, hd, 2, device=pos.device, dtype=torch.float64) / hd)
        ang = pos.to(torch.float64)[..., None] * inv_freq
        ang = torch.cat((ang, ang), dim=-1)[:, :, None, :]
        return ang.cos().to(dtype), ang.sin().to(dtype)

    return LM, rope_tables, F


def main():
    a = parse_args(sys.argv[1:])
    import torch
    import torch.distributed as dist

    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    cuda = a.device == "cuda"
    if cuda and not torch.cuda.is_available():
        n = int(os.environ.get("WORLD_SIZE", "1"))
        if int(os.environ.get("RANK", "0")) == 0:
            for S in a.seqs:
                print(f"SKIP impl=torch N={n} S={S} reason=no-cuda-device", flush=True)
        return
    if distributed:
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        # A rank left behind by a peer's failure gives up after this long instead of hanging.
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=300))
        rank, n = dist.get_rank(), dist.get_world_size()
    else:
        rank, n = 0, 1
    dev = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16

    def say(line):
        if rank == 0:
            print(line, flush=True)

    def all_max(x):
        if n == 1:
            return float(x)
        t = torch.tensor([float(x)], device=dev, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    LM, rope_tables, F = build(a)
    torch.manual_seed(0)
    model = LM().to(device=dev, dtype=dtype)
    params = list(model.parameters())
    n_params = sum(p.numel() for p in params)
    non_embedding = n_params - model.embedding.weight.numel()
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), eps=1e-8, fused=cuda)

    mesh = None
    if n > 1:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor.experimental import context_parallel
        from torch.distributed.tensor.experimental._attention import set_rotate_method

        try:  # head-tail (load-balanced) causal sharding; the default, made explicit
            from torch.distributed.tensor.experimental._attention import _cp_options

            _cp_options.enable_load_balance = True
        except ImportError:
            pass
        set_rotate_method(a.rotate)
        mesh = init_device_mesh(dev.type, (n,), mesh_dim_names=("cp",))

    name = torch.cuda.get_device_name() if cuda else "cpu"
    say(f"torch {torch.__version__} on {name} x {n}; {n_params} parameters ({non_embedding} non-embedding), "
        f"SDPA {a.backend}, {'context_parallel ' + a.rotate if n > 1 else 'one GPU'}")

    def flops(S):
        return 6.0 * non_embedding * S + 6.0 * a.layers * a.dim * S * S  # heads * head_dim = dim

    def train_step(ids, labels, cos, sin, S):
        logits = model(ids, cos, sin)
        # Sum over the local tokens over all S tokens: gradients summed over ranks = global mean.
        loss = F.cross_entropy(logits.float().view(-1, a.vocab), labels.view(-1), reduction="sum") / S
        loss.backward()
        del logits, loss
        if n > 1:
            works = [dist.all_reduce(p.grad, async_op=True) for p in params]
            for w in works:
                w.wait()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def run_one(S):
        """Warm-up and timed steps at S; returns (median step s, peak bytes), max over ranks."""
        gen = torch.Generator(device=dev).manual_seed(1234 + S)
        ids = torch.randint(0, a.vocab, (1, S), device=dev, generator=gen)
        labels = torch.randint(0, a.vocab, (1, S), device=dev, generator=gen)
        pos = torch.arange(S, device=dev).view(1, S).clone()  # context_parallel resizes it
        if n > 1:
            bufs = [ids, labels, pos]
            ctx = context_parallel(mesh, buffers=bufs, buffer_seq_dims=[1, 1, 1], no_restore_buffers=set(bufs))
        else:
            ctx = contextlib.nullcontext()
        times = []
        with ctx:  # ids, labels, pos now hold this rank's head-tail shard
            cos, sin = rope_tables(pos, dtype)
            for i in range(a.warmup + a.steps):
                sync()
                if n > 1:
                    dist.barrier()
                t0 = time.perf_counter()
                train_step(ids, labels, cos, sin, S)
                sync()
                dt = all_max(time.perf_counter() - t0)
                if i >= a.warmup:
                    times.append(dt)
        times.sort()
        peak = all_max(torch.cuda.max_memory_allocated() if cuda else 0)
        return times[len(times) // 2], peak

    def cleanup():
        opt.zero_grad(set_to_none=True)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    start = time.perf_counter()
    rate = 250e12 * n  # assumed FLOP/s until the first S is measured (budget estimate only)
    oom_at = None
    for S in a.seqs:
        if n > 1 and S % (2 * n):
            say(f"SKIP impl=torch N={n} S={S} reason=S-not-divisible-by-2N")
            continue
        if oom_at is not None and S > oom_at:
            say(f"SKIP impl=torch N={n} S={S} reason=oom-at-S={oom_at}")
            continue
        # Rank 0 decides (its clock) and every rank follows, so the ranks never part ways.
        est = (a.warmup + a.steps) * flops(S) / rate
        left = a.budget - (time.perf_counter() - start)
        skip = all_max(1.0 if (rank == 0 and est > left) else 0.0) > 0
        if skip:
            say(f"SKIP impl=torch N={n} S={S} reason=budget(estimated-{est:.0f}s>{max(left, 0):.0f}s-left)")
            continue
        cleanup()
        err = ""
        try:
            step_s, peak = run_one(S)
        except torch.cuda.OutOfMemoryError:
            err = "oom"
        except Exception as e:  # report and go on with the next S
            msg = str(e).strip().splitlines()
            err = f"{type(e).__name__}:" + "_".join((msg[0] if msg else "").split())[:120]
        cleanup()
        # Assumes a failure hits every rank (same shapes); a rank left alone times out above.
        failed = all_max(1.0 if err else 0.0) > 0
        if failed:
            if err == "oom" or "out of memory" in err.lower():
                oom_at = S if oom_at is None else min(oom_at, S)
            say(f"SKIP impl=torch N={n} S={S} reason={err or 'failed-on-another-rank'}")
            continue
        rate = flops(S) / step_s
        mfu = flops(S) / (step_s * PEAK_FLOPS * n)
        say(f"RESULT impl=torch N={n} S={S} step_s={step_s:.4f} tok_s_gpu={S / step_s / n:.1f} "
            f"mfu={mfu:.4f} peak_gib={peak / 2**30:.2f}")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
