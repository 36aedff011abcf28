"""PyTorch counterpart of bench_ring: torch.distributed.tensor.experimental.context_parallel
(ring attention over SDPA's cuDNN and flash backends, load-balanced causal sharding) on the same GPUs,
causal, B=1, H=16, D=128, bf16. Launched by run_bench_ring.sh with
`python3 -m torch.distributed.run --standalone --nproc_per_node N`. Prints
"RESULT impl=torch-cp-<rotate>-<backend> S=.. N=.. t1_fwd=.. t1_fb=.. tn_fwd=.. tn_fb=.." (ms, wall
time, max over ranks, median; forward and forward+backward from the same run; t1 = the same SDPA
backend on one GPU).
Arguments: [comma-separated S list] [repetitions] [time budget s] [rotate methods] [SDPA backends]."""
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

H, D = 16, 128


def main():
    seqs = [int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "131072,524288").split(",")]
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    budget = float(sys.argv[3]) if len(sys.argv) > 3 else 240.0
    rotates = (sys.argv[4] if len(sys.argv) > 4 else "allgather").split(",")
    kernels = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
    backends = (sys.argv[5] if len(sys.argv) > 5 else "cudnn,flash").split(",")
    dist.init_process_group("nccl")
    rank, n = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(rank % torch.cuda.device_count())
    dev = torch.device("cuda")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.experimental import context_parallel
    from torch.distributed.tensor.experimental._attention import set_rotate_method

    mesh = init_device_mesh("cuda", (n,), mesh_dim_names=("cp",))
    if rank == 0:
        print(f"torch {torch.__version__} on {torch.cuda.get_device_name()} x {n}", flush=True)

    def max_over_ranks(x):
        t = torch.tensor([x], device=dev, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()

    def measure(run, count):
        f, fb = [], []
        for _ in range(count):
            torch.cuda.synchronize()
            dist.barrier()
            t0 = time.perf_counter()
            mark = [t0]

            def fwd_done():
                torch.cuda.synchronize()
                mark[0] = time.perf_counter()

            run(fwd_done)
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            f.append(max_over_ranks((mark[0] - t0) * 1e3))
            fb.append(max_over_ranks((t2 - t0) * 1e3))
        f.sort()
        fb.sort()
        return f[len(f) // 2], fb[len(fb) // 2]

    start = time.perf_counter()
    prev_s, prev_t = 0, 0.0
    for S in seqs:
        if prev_s:
            est = prev_t * (S / prev_s) ** 2
            left = budget - (time.perf_counter() - start)
            if est > left:
                if rank == 0:
                    print(f"SKIP S={S}: estimated {est:.0f} s > {left:.0f} s left of the budget", flush=True)
                continue
        r, warm = (1, 0) if S >= 262144 else (reps, 1)
        gen = torch.Generator(device=dev).manual_seed(0)

        def rand():
            return torch.randn(1, H, S, D, device=dev, dtype=torch.bfloat16, generator=gen)

        def attend(tensors, kernel, fwd_done):  # causal SDPA forward, then backward with tensors[3]
            q, k, v = (t.detach().requires_grad_() for t in tensors[:3])
            with sdpa_kernel([kernel]):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                fwd_done()
                out.backward(tensors[3])

        # One GPU: rank 0 attends over the whole sequence.
        full = [rand() for _ in range(4)]
        total = 0.0
        for be in backends:
            kernel = kernels[be]

            def one(fwd_done):
                if rank != 0:
                    return fwd_done()
                attend(full, kernel, fwd_done)

            if warm:
                measure(one, warm)
            t1 = measure(one, r)
            total += t1[1]
            for rot in rotates:
                try:
                    set_rotate_method(rot)
                    bufs = [t.clone() for t in full]
                    with context_parallel(mesh, buffers=bufs, buffer_seq_dims=[2, 2, 2, 2],
                                          no_restore_buffers=set(bufs)):

                        def ring(fwd_done):
                            attend(bufs, kernel, fwd_done)

                        if warm:
                            measure(ring, warm)
                        tn = measure(ring, r)
                    total += tn[1]
                    del bufs
                    if rank == 0:
                        print(f"RESULT impl=torch-cp-{rot}-{be} S={S} N={n} t1_fwd={t1[0]:.3f} t1_fb={t1[1]:.3f} "
                              f"tn_fwd={tn[0]:.3f} tn_fb={tn[1]:.3f}", flush=True)
                except Exception as e:  # report and go on with the next method
                    if rank == 0:
                        print(f"ERROR impl=torch-cp-{rot}-{be} S={S}: {type(e).__name__}: {e}", flush=True)
        del full
        torch.cuda.empty_cache()
        prev_s, prev_t = S, total / 1e3
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
