"""Shared harness of the bench/ scripts (``bench_text.py``, ``bench_image.py``, ``bench_probe.py``).

Every script runs each of its peers in a fresh interpreter (``<script> --peer NAME ...``), which prints
one ``BENCH_RESULT {json}`` line; the parent collects those lines, tabulates them and writes a JSON
report. The parts that are the same in every script live here:

* parent: :func:`run_peer` (launch one peer, log it, parse its result line, report it on stderr),
  :func:`parse_peers`, :func:`sst2_missing`, :func:`scratch_dir`, :func:`report_stamp`, :func:`machine_info`,
  :func:`versions`, :func:`write_report`, and the Markdown cell helpers :func:`fmt` and :func:`failure_note`;
* child: :func:`setup_child` and :func:`child_main` (run the peer, print its result line),
  :func:`compose_sft` (sft's Hydra config) and :func:`timer_summary` (of the timing callback, kept in
  :data:`SFT_TIMERS`);
* command line: :func:`new_parser`, :func:`add_run_args` and :func:`dispatch`;
* measurements: :func:`peak_rss_mib` (ru_maxrss), :func:`cpu_seconds`, :func:`children_cpu_seconds`,
  :func:`machine_busy_seconds`;
* :class:`FitTimerMixin`: the timing state and hooks of the scripts' Lightning callbacks (checkpoint
  writes via a wrapped ``trainer.save_checkpoint``, fit loop, in-fit validation).

The scripts ``import harness``: run as ``python bench/bench_x.py`` (the parent and its peers alike, as
the peers run the script file too) the script's folder is first on ``sys.path``. Nothing here imports
torch or Lightning at import time, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# ../shared/data beside the repository, as the tests find it (never a machine's absolute path).
SHARED_DATA = HERE.parent.parent / "shared" / "data"
RESULT_MARKER = "BENCH_RESULT "
# Environment defaults of a peer that loads a Hugging Face tokenizer / model (everything offline).
TEXT_ENV = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


# ============================================================================ measurements


def peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def page_faults() -> int:
    """Page faults of this process so far (minor + major): each is a page the kernel maps and zeroes on first touch,
    e.g. after the allocator gave memory back to the OS."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_minflt + usage.ru_majflt


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_seconds() -> float:
    """User + system CPU time of this process's waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes of the machine have used since boot, from /proc/stat (None elsewhere)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# ============================================================================ against the hardware's limit


def matmul_peak_tflops(dtype_name: str, threads: int, n: int = 2048, repeats: int = 8) -> float:
    """This machine's measured matmul peak (TFLOP/s) on ``threads`` threads: the best of ``repeats`` square
    ``n`` x ``n`` products in ``dtype_name`` ("bf16" or "fp32"), after a warm-up. A probe, not a spec sheet:
    the ceiling a training step's matmuls could reach here."""
    import torch

    torch.set_num_threads(threads)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e12


def encoder_train_flops(lengths: Sequence[int], non_embedding_params: int, layers: int, hidden: int,
                        epochs: int = 1) -> float:
    """Model FLOPs of training a Transformer encoder on rows of these real (unpadded) token ``lengths``:
    forward + backward = 3 x forward; forward = 2 x non-embedding parameters per token (every weight one
    multiply-add) plus attention's two L x L products per layer (QK^T and AV: 4 L^2 d). Padding is not
    counted: it is work, not model FLOPs, so a peer that pads less is not penalised."""
    tokens = sum(lengths)
    attention = sum(L * L for L in lengths) * 4 * hidden * layers
    return 3 * (2 * non_embedding_params * tokens + attention) * epochs


# ============================================================================ machine and versions


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags_summary() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return ",".join(f for f in wanted if f in flags) or "none of " + ",".join(wanted)


# An AVX2-only CPU, emulated on a newer one: ATen's CPU kernels, MKL (fp32 matmuls) and oneDNN (bf16 matmuls,
# convolutions) each dispatch to their AVX2 code (what `--cpu-isa avx2` sets for every peer).
AVX2_ONLY_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def cpu_capability() -> str:
    """The instruction set of the ATen kernels this process dispatches to (e.g. AVX512, AVX2)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def machine_info(**extra: Any) -> dict[str, Any]:
    """The report's ``machine`` entry; ``extra`` items go before ``load_avg_at_end``."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "cpu_flags": cpu_flags_summary(), **extra,
            "load_avg_at_end": os.getloadavg()}


def versions(modules: Sequence[str]) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in modules:
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            out[mod] = "unavailable"
    return out


# ============================================================================ command line


def new_parser(doc: str) -> argparse.ArgumentParser:
    """The scripts' parser: the first paragraph of the module docstring as description."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_run_args(p: argparse.ArgumentParser, keep_what: str = "peer logs, sft run dirs") -> None:
    """``--keep``, ``--verbose`` and the internal ``--peer`` / ``--workdir`` (a peer's own process)."""
    p.add_argument("--keep", action="store_true", help=f"keep the temporary work folder ({keep_what})")
    p.add_argument("--verbose", action="store_true", help="echo each peer's stderr")
    p.add_argument("--peer", help=argparse.SUPPRESS)  # internal: run one peer in this process
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)


def dispatch(args: argparse.Namespace, workdir_prefix: str, run_child: Callable[[argparse.Namespace], int],
             run_parent: Callable[[argparse.Namespace], int]) -> int:
    """``--peer NAME``: run that peer here (in ``--workdir``, a fresh temp folder by default); else the parent."""
    if args.peer:
        if args.workdir is None:
            args.workdir = Path(tempfile.mkdtemp(prefix=f"{workdir_prefix}{args.peer}-"))
        args.workdir.mkdir(parents=True, exist_ok=True)
        return run_child(args)
    return run_parent(args)


# ============================================================================ child (one peer)


def setup_child(threads: int, env: Mapping[str, str] = TEXT_ENV) -> None:
    for key, value in env.items():
        os.environ.setdefault(key, value)
    import torch

    torch.set_num_threads(threads)


def child_main(result: dict[str, Any], run: Callable[[], dict[str, Any]],
               derive: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> int:
    """Fill ``result`` with ``run()`` (plus ``status``, then ``derive(result)``), or with the failure when
    either raises; add peak RSS and torch's thread count; print it as the ``BENCH_RESULT`` line."""
    try:
        result.update(run())
        result["status"] = "ok"
        if derive is not None:
            result.update(derive(result))
    except BaseException as e:  # noqa: BLE001 - report, the parent decides
        traceback.print_exc()
        result.update({"status": "failed", "error": f"{type(e).__name__}: {e}"})
    import torch

    result["peak_rss_mib"] = peak_rss_mib()
    result["torch_threads"] = torch.get_num_threads()
    sys.stdout.flush()
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0 if result["status"] == "ok" else 1


SFT_TIMERS: list[Any] = []  # the timing callbacks built in this process (by the scripts' sft_bench_timer)


def compose_sft(overrides: Sequence[str], show: bool = False) -> Any:
    """sft's Hydra config with ``overrides`` (composed as ``sft-run`` does); ``show``: say them on stderr."""
    from hydra import compose, initialize_config_dir

    from sft.config import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    if show:
        print("[bench] sft overrides: " + " ".join(overrides), file=sys.stderr, flush=True)
    return cfg


def timer_summary(required: bool = True) -> dict[str, Any]:
    """The summary of the last timing callback built here ({} when there is none and it is not ``required``)."""
    if not SFT_TIMERS:
        if required:
            raise RuntimeError("the bench timer callback was not instantiated (callbacks.bench_timer ignored?)")
        return {}
    return SFT_TIMERS[-1].summary()


class FitTimerMixin:
    """Timing state and hooks shared by the scripts' Lightning callbacks. Mix it in before the Lightning
    base (``class BenchTimer(harness.FitTimerMixin, L.Callback)``), so this module need not import Lightning.

    ``setup`` wraps ``trainer.save_checkpoint``: every write during fit is timed (``ckpt_s``, ``n_ckpt``;
    the part inside an in-fit validation window also in ``ckpt_in_val_s``). The fit loop is timed from
    on_train_start to on_train_end (wall and this process's CPU time), and every in-fit validation pass
    (sanity checks excluded) in ``val_s`` / ``n_val``. A subclass defining ``__init__`` calls ``super().__init__()``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.train_start: float | None = None
        self.train_end: float | None = None
        self.faults_start = 0
        self.fit_faults: int | None = None  # page faults from on_train_start to on_train_end
        self.cpu_start = self.cpu_end = 0.0
        self.val_s = 0.0
        self.n_val = 0
        self.ckpt_s = 0.0
        self.ckpt_in_val_s = 0.0
        self.ckpt_after_end_s = 0.0  # saves in checkpoint callbacks' on_train_end, which runs after this one's
        self.n_ckpt = 0
        self._val_start: float | None = None
        self._in_val = False
        self._wrapped = False
        self.precision: str | None = None  # what the Trainer ran with (Lightning's resolved setting)
        self.rss_at: dict[str, float] = {}  # peak RSS (MiB) so far, at fit start / fit end

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self._wrapped:
            return
        original = trainer.save_checkpoint
        timer = self

        def timed_save(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                if trainer.state.fn == "fit":
                    dt = time.perf_counter() - t
                    timer.ckpt_s += dt
                    timer.n_ckpt += 1
                    if timer._in_val:
                        timer.ckpt_in_val_s += dt
                    if timer.train_end is not None:
                        timer.ckpt_after_end_s += dt

        trainer.save_checkpoint = timed_save
        self._wrapped = True

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.precision = str(trainer.precision)
        self.rss_at["fit_start"] = peak_rss_mib()
        self.train_start, self.cpu_start = time.perf_counter(), cpu_seconds()
        self.faults_start = page_faults()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.train_end, self.cpu_end = time.perf_counter(), cpu_seconds()
        self.fit_faults = page_faults() - self.faults_start
        self.rss_at["fit_end"] = peak_rss_mib()

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._val_start = time.perf_counter()
            self._in_val = True
            self.n_val += 1

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self._val_start is not None:
            self.val_s += time.perf_counter() - self._val_start
            self._val_start = None
            self._in_val = False

    def fit_times(self) -> dict[str, float]:
        """Training time = the fit loop minus the in-fit validation passes (checkpoint writes inside the
        validation window count as checkpointing, i.e. training time, not validation), plus the saves that
        Lightning runs after this callback's ``on_train_end`` (checkpoint callbacks come last: sft's train-end
        ``last.ckpt``)."""
        total = (self.train_end or time.perf_counter()) - (self.train_start or time.perf_counter())
        total += self.ckpt_after_end_s
        val_pure = self.val_s - self.ckpt_in_val_s
        return {"train_s": total - val_pure, "fit_loop_s": total, "val_in_fit_s": val_pure}

    def cpu_util(self, total: float) -> float | None:
        """CPU cores used during the fit loop of ``total`` seconds (this process's CPU time / wall time)."""
        return (self.cpu_end - self.cpu_start) / total if total else None


# ============================================================================ parent


def sst2_missing(sst2_dir: Path) -> bool:
    """True (after saying which on stderr) when ``sst2_dir`` lacks GLUE SST-2's train.tsv or dev.tsv."""
    for f in ("train.tsv", "dev.tsv"):
        if not (sst2_dir / f).is_file():
            print(f"{sst2_dir / f} does not exist (set --sst2-dir to a GLUE SST-2 folder)", file=sys.stderr)
            return True
    return False


def parse_peers(spec: str, all_peers: Sequence[str]) -> list[str] | None:
    """The comma list of peers; None (after saying why on stderr) when one is unknown."""
    peers = [p.strip() for p in spec.split(",") if p.strip()]
    unknown = [p for p in peers if p not in all_peers]
    if unknown:
        print(f"unknown peer(s) {unknown}; choose from {', '.join(all_peers)}", file=sys.stderr)
        return None
    return peers


@contextlib.contextmanager
def scratch_dir(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary work folder, removed at the end unless ``keep``."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield workdir
    finally:
        if keep:
            print(f"[bench] kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _text(out: str | bytes | None) -> str:
    return out.decode() if isinstance(out, bytes) else (out or "")


def run_peer(script: str | Path, name: str, peer_args: Sequence[str], *, log_path: Path, timeout: int,
             verbose: bool, describe: Callable[[dict[str, Any]], str], label: str | None = None,
             env: Mapping[str, str] | None = None, show_env: Sequence[str] = (),
             tag: Mapping[str, Any] | None = None, load_avg: bool = False,
             contention: bool = False) -> dict[str, Any]:
    """Run ``script --peer name *peer_args`` in a fresh interpreter (cwd: the repository root) and return
    its ``BENCH_RESULT`` dict (a failed one when there is none), plus ``stderr_tail`` when it failed,
    ``tag``, ``process_wall_s``, ``exit_code``, ``load_avg_after`` (``load_avg``) and ``other_cpu_cores``
    (``contention``: the cores other processes used meanwhile, from /proc/stat minus this process tree's
    CPU time). The full stdout / stderr go to ``log_path``; progress lines (named ``label``, default
    ``name``, with ``describe(result)`` when it is ok) to stderr. ``env``: the peer's environment (default
    this one's); ``show_env``: variables of it named in the log and the progress line."""
    label = label or name
    cmd = [sys.executable, str(Path(script).resolve()), "--peer", name, *peer_args]
    shown = " ".join(f"{k}={env[k]}" for k in show_env) if env else ""
    print(f"[bench] running {label}{f' ({shown})' if shown else ''} ...", file=sys.stderr, flush=True)
    if contention:
        busy_before, own_before = machine_busy_seconds(), children_cpu_seconds() + cpu_seconds()
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(HERE.parent),
                              env=None if env is None else dict(env))
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        stdout = _text(e.stdout)
        stderr = _text(e.stderr) + f"\n[timeout after {timeout}s]"
        rc = -9
    wall = time.perf_counter() - started
    if contention:
        busy_after, own_after = machine_busy_seconds(), children_cpu_seconds() + cpu_seconds()
        other_cores = (None if busy_before is None or busy_after is None or not wall else
                       max(0.0, (busy_after - busy_before) - (own_after - own_before)) / wall)
    log_path.write_text(f"$ {shown + ' ' if shown else ''}{' '.join(cmd)}\n"
                        f"--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}")
    result: dict[str, Any] | None = None
    for line in stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            try:
                result = json.loads(line[len(RESULT_MARKER):])
            except json.JSONDecodeError:
                pass
    tail = "\n".join((stderr or "").strip().splitlines()[-25:])
    if result is None:
        result = {"peer": name, "status": "failed", "error": f"no result line (exit code {rc})"}
    if result.get("status") != "ok":
        result["stderr_tail"] = tail
    result.update({**(tag or {}), "process_wall_s": wall, "exit_code": rc})
    if load_avg:
        result["load_avg_after"] = os.getloadavg()
    if contention:
        result["other_cpu_cores"] = other_cores
    if verbose:
        print(stderr, file=sys.stderr)
    status = result.get("status")
    msg = describe(result) if status == "ok" else result.get("error", "")
    print(f"[bench] {label}: {status} in {wall:.0f}s ({msg})", file=sys.stderr, flush=True)
    if status != "ok":
        print(f"[bench] {label} stderr tail:\n{tail}", file=sys.stderr, flush=True)
    return result


def report_stamp() -> dict[str, str]:
    """The first entries of a report: when, and the command line."""
    return {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv])}


def write_report(report: dict[str, Any], output: str | Path) -> None:
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n[bench] wrote {out}", file=sys.stderr)


def fmt(value: Any, spec: str) -> str:
    """A Markdown table cell: ``value`` formatted with ``spec``, or ``n/a``."""
    return "n/a" if value is None else format(value, spec)


def failure_note(r: dict[str, Any]) -> str:
    """The notes cell of a failed row: its error, cut short and safe in a Markdown table."""
    return (r.get("error", "") or "").replace("|", "/")[:120]


def require_accelerate() -> None:
    """transformers.Trainer needs accelerate: fail early with the fix."""
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise RuntimeError("transformers.Trainer needs `accelerate>=1.1.0`: `pip install 'accelerate>=1.1.0'` "
                           "(sft's `bench` extra).") from None
