"""Where a GPU job's start-up goes, step by step, in one fresh process (what `status.json` phases lump together).

Steps, each timed from the end of the previous one: interpreter start to here, `import torch`, the package's
runner import, CUDA context (`torch.cuda.init` + a first allocation), cuBLAS (a first matmul), the random-weight
model built on the GPU (with a cProfile of that step), `compile_kernels` (hand-written Triton kernels;
torch.compile only for what has none), the first and second warm-up forward passes, and whether Dynamo was
imported at all. Run on the device:

    python3 docs/benchmarks/startup_profile.py esm2_t36_3B_UR50D bf16 $OUT/startup.json
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import sys
import time

from virnucpro.utils.phases import process_start_epoch

T0 = process_start_epoch()


def main() -> int:
    model_name, precision = sys.argv[1], sys.argv[2]
    steps, last = {"interpreter": time.time() - T0}, time.perf_counter()

    def step(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        steps[name] = now - last
        last = now

    import torch

    step("import_torch")
    from virnucpro.pipeline import runner
    from virnucpro.models.weights import resolve_weights

    step("import_runner")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # CPU: a smoke run of the script
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.empty(1, device=device)
    sync()
    step("cuda_context")
    a = torch.ones(64, 64, device=device)
    (a @ a).sum().item()
    step("cublas_first_matmul")
    profile = cProfile.Profile()
    profile.enable()
    weights = resolve_weights(model_name, None, True, 0, device)
    model = runner.build_model(weights, device, precision)
    sync()
    profile.disable()
    step("random_weights_on_gpu")
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(12)
    steps["random_weights_profile"] = text.getvalue().splitlines()[-20:]
    model.compile_kernels()
    step("compile_kernels")
    for n, seqs in enumerate(([b"M" * 40], [b"M" * 100], [b"M" * 40])):
        with torch.inference_mode():
            batch = runner.collate(seqs, [0], runner.Vocabulary.esm2(), 16384).to(device)
            model.embed(batch, weights.spec.num_layers)
        sync()
        step(f"forward_{n}_len{len(seqs[0])}")
    steps["dynamo_imported"] = "torch._dynamo" in sys.modules
    steps["inductor_imported"] = "torch._inductor" in sys.modules
    text = json.dumps(steps, indent=1)
    print(text)
    if len(sys.argv) > 3:
        with open(sys.argv[3], "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
