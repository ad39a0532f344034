"""`make kernels-aot`: every Triton kernel compiled for A100 (sm_80), H100 (sm_90) and B200 (sm_100),
without a GPU, with the launches the host code really makes.

The host functions (`attention_triton_forward`, `rms_norm_triton_forward`, ...) are called on `meta`
tensors of real model shapes inside `launch.compile_target(arch)` (so they choose blocks, warps and
stages for that GPU) and `launch.record_launches()` (so nothing runs); each distinct launch is then
compiled with `triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`, specialised as
Triton's launcher would (argument types, 16-byte alignment, integers divisible by 16), and ptxas's
`-v` log is read. It fails (exit 1) on a compile error, shared memory over the target's per-block
limit (`launch.SHARED_MEMORY_LIMIT`), spills over the kernel's threshold (`SPILL_LIMIT`) or a grid
over CUDA's limits, and writes the table to benchmarks/results/kernels-aot[-full].md.

    python benchmarks/kernels_aot.py [--full] [--arch 80 90 100] [--only attention_fwd ...]

Default: one variant per distinct launch configuration (kernel, dtype, blocks, warps, stages) and
target, masks all on (causal, window, packed documents), bf16 and fp32: the CI check. --full: every
shape of SHAPES, bf16/fp16/fp32, every mask combination and an odd sequence length (not in CI).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

# Uninterpreted Triton on a CPU-only torch, and a fresh cache so every compile runs ptxas and logs.
os.environ["TRITON_INTERPRET"] = "0"
os.environ["MINIBRIDGE_TRITON_COMPILE_ONLY"] = "1"
os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="minibridge-aot-"))
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # what a launch on the GPU gets (Triton <= 3.9 default)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from minibridge.kernels.attention_triton import attention_triton_forward  # noqa: E402
from minibridge.kernels.attention_triton_bwd import attention_triton_backward  # noqa: E402
from minibridge.kernels.rms_norm import rms_norm_triton_backward, rms_norm_triton_forward  # noqa: E402
from minibridge.kernels.rope import rope_triton  # noqa: E402
from minibridge.kernels.launch import check_grid, compile_target, record_launches, shared_memory_limit  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ARCHS = (80, 90, 100)
# (name, hidden, heads, kv heads, head_dim, sliding window or None): the widths of the supported models
SHAPES = {
    "llama-3.2-1b": (2048, 32, 8, 64, None),
    "llama-3.1-8b": (4096, 32, 8, 128, None),
    "llama-3.1-405b": (16384, 128, 8, 128, None),
    "gemma-3-1b": (1152, 4, 1, 256, 512),
    "gemma-3-27b": (5376, 32, 16, 128, 1024),
}
CI_SHAPES = ("llama-3.2-1b", "llama-3.1-8b", "llama-3.1-405b", "gemma-3-1b")
# Spill bytes (stores + loads per thread) a kernel may show before the check fails. 16-bit attention
# and the other kernels must not spill; fp32 attention (IEEE dots, 4-byte tiles) spills up to ~34 KB,
# a known cost of a path rarely taken on a GPU (README, "On a GPU"). The RMSNorm backward at 405B width
# (one 16k-column row per tile, 16 warps, 128 registers) spills 64-112 B: tolerated, listed there too.
SPILL_LIMIT = {"attention": 0, "attention-fp32": 80_000, "_rms_norm_bwd_kernel": 1024}


def record(arch: int, full: bool, only: set[str], shapes: tuple[str, ...] = tuple(SHAPES)) -> list:
    """Every launch the host functions make for the chosen shapes on compute capability `arch`."""
    if full:
        plan = [(s, d) for s in SHAPES for d in (torch.bfloat16, torch.float16, torch.float32)]
    else:  # fp32 at one width: its blocks differ from bf16's (the A100 finding), its compiles are slow
        plan = [(s, torch.bfloat16) for s in CI_SHAPES] + [("llama-3.1-8b", torch.float32)]
    plan = [(s, d) for s, d in plan if s in shapes]
    lengths = (4096, 4095) if full else (4096,)
    masks = [(True, True, True), (True, False, False), (True, True, False), (False, False, True)] if full else [
        (True, True, True)]  # (causal, window when the model has one, packed documents)
    meta = dict(device="meta")
    with compile_target(arch), record_launches() as launches:
        for name, dtype, T in ((s, d, t) for s, d in plan for t in lengths):
            hidden, H, Hkv, D, window = SHAPES[name]
            if want(only, "rms_norm"):  # the hidden states; Gemma's per-head q/k norms too
                for rows, width in ((T, hidden), (T * H, D)) if window else ((T, hidden),):
                    x, w = torch.empty(rows, width, dtype=dtype, **meta), torch.empty(width, dtype=dtype, **meta)
                    for gemma in (True, False) if full else (window is not None,):
                        y, rstd = rms_norm_triton_forward(x, w, 1e-6, gemma)
                        rms_norm_triton_backward(y, x, w, rstd, gemma)
            q = torch.empty(1, T, H, D, dtype=dtype, **meta)
            k, v = (torch.empty(1, T, Hkv, D, dtype=dtype, **meta) for _ in range(2))
            if want(only, "rope"):
                cos = torch.empty(1, T, D, dtype=dtype, **meta).expand(1, T, D)
                for backward in (False, True):
                    rope_triton(q, k, cos, cos, backward)
            for causal, windowed, docs in masks:
                doc_ids = torch.empty(1, T, dtype=torch.int32, **meta) if docs else None
                win = window if windowed and causal else None
                if want(only, "attention_fwd"):
                    out, lse = attention_triton_forward(q, k, v, causal, win, D**-0.5, doc_ids)
                if want(only, "attention_bwd"):
                    out, lse = torch.empty_like(q), torch.empty(1, H, T, dtype=torch.float32, **meta)
                    attention_triton_backward(out, q, k, v, out, lse, causal, win, D**-0.5, doc_ids)
    return launches


def want(only: set[str], group: str) -> bool:
    return not only or group in only


def bind(launch, backend):
    """(options, signature, constexprs, attrs) as JITFunction.run builds them for this backend (Triton's
    own binder and `_pack_args`: internals of the pinned Triton, which the AOT check is written for)."""
    kernel, kwargs = launch.kernel, dict(launch.kwargs)
    kwargs.update(debug=False, instrumentation_mode="", fpsan_homomorphic_casts=False)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*launch.args, **kwargs)
    return kernel._pack_args(backend, kwargs, bound, specialization, options)


def named(launch, constexprs: dict) -> dict:
    """Constexpr values by parameter name (Triton keys them by argument path, e.g. (17,))."""
    return {launch.kernel.arg_names[path[0]]: value for path, value in constexprs.items()}


def variant_key(launch, signature, constexprs, full: bool) -> tuple:
    """What makes two launches compile to the same variant; without --full, the argument types (dtype,
    integer specialisations) and boolean mask flags are left out: one variant per launch configuration
    (kernel, blocks, warps, stages), the first recorded (bf16, every mask on)."""
    consts = tuple(sorted((k, v) for k, v in named(launch, constexprs).items() if full or not isinstance(v, bool)))
    sig = tuple(signature.values()) if full else ()
    return launch.name, sig, consts, launch.kwargs.get("num_warps"), launch.kwargs.get("num_stages")


def compile_one(launch, arch: int) -> dict:
    """Compile one launch for `arch`; registers, spills and shared memory from ptxas and Triton."""
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    options, signature, constexprs, attrs = bind(launch, backend)
    log = io.StringIO()
    triton.knobs.nvidia.dump_ptxas_log = True
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(ASTSource(launch.kernel, signature, constexprs, attrs), target=target,
                                      options=options.__dict__)
    except Exception as err:  # a compile error is a finding, reported with the variant
        return dict(error=f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}")
    text, ptx = log.getvalue(), compiled.asm["ptx"]
    registers = max(map(int, re.findall(r"Used (\d+) registers", text)), default=-1)
    spills = sum(map(int, re.findall(r"(\d+) bytes spill (?:stores|loads)", text)))
    mma = ("tcgen05" if "tcgen05.mma" in ptx else "wgmma" if "wgmma.mma_async" in ptx
           else "mma.v2" if "mma.sync" in ptx else "-")
    return dict(registers=registers, spills=spills, shared=compiled.metadata.shared, mma=mma,
                seconds=time.perf_counter() - start, signature=signature, constexprs=named(launch, constexprs))


def input_dtype(signature: dict) -> str:
    """The first tensor argument's element type ('bf16', 'fp32', ...)."""
    return next((t[1:] for t in signature.values() if t.startswith("*")), "?")


def spill_limit(name: str, signature: dict) -> int:
    if name in ("_fwd_kernel", "_bwd_preprocess", "_bwd_dkdv_kernel", "_bwd_dq_kernel"):
        return SPILL_LIMIT["attention-fp32" if input_dtype(signature) == "fp32" else "attention"]
    return SPILL_LIMIT.get(name, 0)


def describe(launch, result: dict) -> str:
    consts = result.get("constexprs", {})
    blocks = "x".join(str(v) for k, v in sorted(consts.items()) if k.startswith("BLOCK"))
    dtype = input_dtype(result.get("signature", {}))
    return f"{launch.name} | {dtype} | {blocks} | {launch.kwargs.get('num_warps', 4)} | {launch.kwargs.get('num_stages', 3)}"


_JOBS: list = []  # (arch, launch): read by the forked workers, which inherit it


def compile_job(index: int) -> dict:
    arch, launch = _JOBS[index]
    return compile_one(launch, arch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="every shape, dtype, mask and an odd length")
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), help="compute capabilities")
    parser.add_argument("--only", nargs="+", default=[], choices=["rms_norm", "rope", "attention_fwd",
                                                                    "attention_bwd"])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compiles in parallel")
    parser.add_argument("--no-report", action="store_true", help="print only (tests)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows, failures = [], []
    _JOBS.clear()
    for arch in args.arch:
        variants = {}
        for launch in record(arch, args.full, set(args.only), tuple(args.shapes)):
            try:
                check_grid(launch.grid, launch.name)
            except ValueError as err:
                failures.append(f"sm_{arch} {err}")
            options, signature, constexprs, _ = bind(launch, make_backend(GPUTarget("cuda", arch, 32)))
            variants.setdefault(variant_key(launch, signature, constexprs, args.full), launch)
        _JOBS.extend((arch, launch) for launch in variants.values())
    print(f"kernels_aot: {len(_JOBS)} variants to compile on {args.jobs} processes", flush=True)
    # Longest first (fp32 attention) so the two workers finish together; forked, they inherit _JOBS.
    order = sorted(range(len(_JOBS)), key=lambda i: _JOBS[i][1].args[0].dtype != torch.float32)
    results = {}
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        for index, result in zip(order, pool.imap(compile_job, order)):
            results[index] = result
            print(f"  sm_{_JOBS[index][0]} {describe(_JOBS[index][1], result)}: "
                  f"{result.get('error') or '%.1f s' % result['seconds']}", flush=True)
    for index, (arch, launch) in enumerate(_JOBS):
        result = results[index]
        where = f"sm_{arch} {describe(launch, result)}"
        if "error" in result:
            failures.append(f"{where}: compile error {result['error']}")
            rows.append(f"| sm_{arch} | {describe(launch, result)} | compile error | | | |")
            continue
        limit, allowed = shared_memory_limit(arch), spill_limit(launch.name, result["signature"])
        if result["shared"] > limit:
            failures.append(f"{where}: shared memory {result['shared']} B > sm_{arch} limit {limit} B")
        if result["spills"] > allowed:
            failures.append(f"{where}: spills {result['spills']} B > threshold {allowed} B")
        rows.append(f"| sm_{arch} | {describe(launch, result)} | {result['registers']} | {result['spills']} | "
                    f"{result['shared']} | {result['mma']} | {result['seconds']:.1f} |")
    seconds = time.perf_counter() - start
    cpu = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    lines = [f"# Triton kernels compiled ahead of time ({'full sweep' if args.full else 'one per launch config'})",
             "", f"- Triton {triton.__version__}, torch {torch.__version__}; targets "
             f"{', '.join(f'sm_{a}' for a in args.arch)}; {len(rows)} compiles in {seconds:.0f} s "
             f"({cpu:.0f} s of CPU time, {args.jobs} processes, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})",
             f"- limits: shared memory per block {', '.join(f'sm_{a} {shared_memory_limit(a)} B' for a in args.arch)};"
             f" spills {SPILL_LIMIT} B per thread", "",
             "| target | kernel | dtype | blocks (BLOCK_D, _M, _N...) | warps | stages | registers | spills B | "
             "shared B | tensor cores | compile s |", "|---|---|---|---|---|---|---|---|---|---|---|", *rows, "",
             *(["## Failures", "", *(f"- {f}" for f in failures)] if failures else ["No failures."])]
    print("\n".join(lines))
    if not args.no_report and not args.only and args.arch == list(ARCHS) and args.shapes == list(SHAPES):
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"kernels-aot{'-full' if args.full else ''}.md").write_text("\n".join(lines) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
