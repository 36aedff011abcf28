"""Shared timing for the PyTorch side of the benchmarks: median of CUDA-event-timed repetitions
after warm-up, the same method as the C++ benchmarks."""
import torch


def median_ms(fn, reps=50, warmup=10):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]
