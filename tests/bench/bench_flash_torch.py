"""PyTorch SDPA (flash and cuDNN backends) on the shapes of bench_flash, same conventions:
bf16, B=1, [B, H, S, D] inputs, TFLOP/s = 4*B*H*S*S*D (halved if causal), fwd+bwd = 3.5x,
median of CUDA-event-timed repetitions after warm-up. One line per shape and backend."""
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from torch_timing import median_ms


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    max_s = int(sys.argv[2]) if len(sys.argv) > 2 else 65536
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__)
    shapes = [(4096, 16, 128), (16384, 16, 128), (65536, 16, 128), (16384, 32, 64)]
    for S, H, D in shapes:
        for causal in (False, True):
            if S > max_s:
                continue
            g = torch.Generator(device="cuda").manual_seed(0)
            q, k, v, do = (torch.randn(1, H, S, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4))
            qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
            flops = 4.0 * H * S * S * D / (2 if causal else 1)
            r, w = (min(reps, 5), 1) if S >= 65536 else (reps, 2)  # S=64k runs take seconds
            for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
                try:
                    with sdpa_kernel(backend):
                        fwd = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), r, w)

                        def fb():
                            o = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
                            o.backward(do)

                        fwdbwd = median_ms(fb, r, w)
                    print(f"torch-{name} S={S} H={H} D={D} {'causal' if causal else 'full'} "
                          f"fwd {flops / fwd * 1e-9:.1f} fwdbwd {3.5 * flops / fwdbwd * 1e-9:.1f}", flush=True)
                except Exception as e:  # a backend may not support a shape on this GPU
                    print(f"torch-{name} S={S} H={H} D={D} {'causal' if causal else 'full'} unavailable: "
                          f"{type(e).__name__}: {str(e).splitlines()[0][:100]}", flush=True)


if __name__ == "__main__":
    main()
