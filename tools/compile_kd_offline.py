"""Compile the fused KD kernels for an NVIDIA target without a GPU (Triton's own ptxas): catches
compile errors in the paths the interpreter does not take, and prints registers and spills.

    python tools/compile_kd_offline.py                 # sm_90 (H100/H200), every regime
    python tools/compile_kd_offline.py --arch 100 --quick

Needs triton with its NVIDIA backend; TRITON_INTERPRET must be unset.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/toolargs.py, also when loaded by path
from toolargs import Parser, at_least, one_line_errors  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def resource_usage(cubin: bytes | None) -> str:
    """'REG:n STACK:n ...' from cuobjdump --dump-resource-usage (Triton's own copy), or ''."""
    import re
    import subprocess
    import tempfile

    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cubin or not tool.exists():
        return ""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    return f"regs={found[1]} stack={found[2]} local(spill)={found[4]}" if found else out.strip()[-120:]


@one_line_errors
def main() -> int:
    ap = Parser(description=__doc__.splitlines()[0])
    # a CUDA compute capability (80 A100, 90 H100/H200, 100 B200): 0 aborted in LLVM, -5 failed every kernel (59th B13)
    ap.add_argument("--arch", type=at_least(50, 200), default=90)
    ap.add_argument("--quick", action="store_true", help="one variant per kernel")
    args = ap.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("unset TRITON_INTERPRET: this compiles the kernels for a GPU")
    import triton
    from triton.backends.compiler import GPUTarget

    from distill_export.losses import kd_kernels as K

    target = GPUTarget("cuda", args.arch, 32)
    scalars = {"k_soft": "fp32", "w_kd": "fp32", "g_kd": "fp32", "w_ce0": "fp32", "ignore_index": "i32"}
    failures = 0

    def build(fn, sig, consts, num_warps, label):
        nonlocal failures
        t0 = time.perf_counter()
        try:
            signature = {**sig, **{k: "constexpr" for k in consts}}
            src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=consts)
            kernel = triton.compile(src, target=target, options={"num_warps": num_warps, "num_stages": consts.get("NUM_STAGES", 2)})
            print(f"ok   {label:70s} {time.perf_counter() - t0:5.1f}s shared={kernel.metadata.shared} "
                  f"{resource_usage(kernel.asm.get('cubin'))}")
        except Exception as exc:  # noqa: BLE001
            failures += 1
            print(f"FAIL {label}: {type(exc).__name__}: {str(exc)[:2000]}")

    for dt in (["bf16", "fp32"] if not args.quick else ["bf16"]):
        rows_sig = {"s_ptr": f"*{dt}", "t_ptr": f"*{dt}", "y_ptr": "*i64", "g_ptr": f"*{dt}", "loss_ptr": "*fp32",
                    "inv_n_lab_ptr": "*fp32", "N": "i32", "C": "i32", "C_BUCKET": "i32", "stride_s": "i64",
                    "stride_t": "i64", "stride_g": "i64", **scalars}
        combos = [(True, True, True, False), (False, False, True, False), (True, False, False, True)]
        shapes = [(True, 8, 1024, 8), (True, 1, 8192, 16), (False, 1, 4096, 8), (False, 2, 4096, 16)]
        for (has_ce, ce_mean, grad, same_t), (single, rows, block, warps) in itertools.product(
                combos[:1] if args.quick else combos, shapes):
            consts = dict(HAS_CE=has_ce, CE_MEAN=ce_mean, COMPUTE_GRAD=grad, SAME_T=same_t, SINGLE=single,
                          ROWS=rows, BLOCK=block, NUM_STAGES=2)
            build(K._kd_rows_kernel, rows_sig, consts, warps,
                  f"rows {dt} single={single} R={rows} B={block} ce={has_ce} grad={grad} sameT={same_t} w={warps}")
        stats_sig = {"s_ptr": f"*{dt}", "t_ptr": f"*{dt}", "ws_ptr": "*fp32", "C": "i32", "C_BUCKET": "i32",
                     "stride_s": "i64", "stride_t": "i64", "n_chunks": "i32", "k_soft": "fp32"}
        for has_ce in (True, False):
            build(K._kd_split_stats_kernel, stats_sig,
                  dict(HAS_CE=has_ce, SAME_T=False, CHUNK=16384, BLOCK=4096, NUM_STAGES=2), 8,
                  f"split_stats {dt} ce={has_ce}")
            grad_sig = {"s_ptr": f"*{dt}", "t_ptr": f"*{dt}", "y_ptr": "*i64", "g_ptr": f"*{dt}", "loss_ptr": "*fp32",
                        "inv_n_lab_ptr": "*fp32", "ws_ptr": "*fp32", "C": "i32", "C_BUCKET": "i32", "stride_s": "i64",
                        "stride_t": "i64", "stride_g": "i64", "n_chunks": "i32", **scalars}
            build(K._kd_split_grad_kernel, grad_sig,
                  dict(HAS_CE=has_ce, CE_MEAN=has_ce, COMPUTE_GRAD=True, SAME_T=False, CHUNK=16384, BLOCK=4096,
                       N_CHUNKS_P2=8, NUM_STAGES=2), 8, f"split_grad {dt} ce={has_ce}")
        build(K._kd_scale_grad_kernel, {"g_ptr": f"*{dt}", "go_ptr": "*fp32", "C": "i32", "stride_g": "i64",
                                        "stride_go": "i64"}, dict(BLOCK=4096), 4, f"scale_grad {dt}")
    print(f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
