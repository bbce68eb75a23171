"""The one prepared GPU check of the kernels and the model: `make gpu-check`, or
`python -m mambaserve.kernels.gpu_check` (from a plain checkout: `bash kernels/gpu_check.sh`).

Written to run once on a lent H200 (15 minutes of device time per session, every machine start
counted) in under 8 minutes, Triton JIT compilation included. Five steps (issue 14):

1. correctness on the GPU against the float64 references (CPU, float64): selective scan prefill with
   and without initial state (contiguous, strided, odd sizes, chunked = whole bit for bit), the state
   update on a slot pool with slot indices, a pad slot and an out-of-range slot, the conv update
   likewise, the prefill conv, decode steps = scan; fp32 and bf16 inputs;
2. timings with CUDA events (warm-up, median of capped repeats, L2 flushed before each repeat) at
   serving shapes (d_inner 1536, d_state 16, batch 1-256, length 64-16 384): achieved bytes/s against
   the HBM bandwidth (bytes = each input read once, each output written once), next to the PyTorch
   path (and `torch.compile` of it: filled in by a last step of its own, `torch_compile`, so that a
   slow or stuck compilation holds nothing else up); the decode kernels also under CUDA-graph replay;
3. one decode step of 10 000 concurrent sessions through the slot pool (correlation ID -> slot, the
   kernels' slot indices, a pad row): kernel bandwidth, host lookup, the whole step, and the default
   checkpoint's decoder stepping all 10 000 sessions;
4. the default checkpoint's offline Recognizer on the GPU (kernels on) over a few hundred prepared
   clips in batches: RTFx, and agreement with the CPU path's transcripts made beforehand;
5. one JSON and one Markdown table (`--out-dir`), rewritten after every step so a killed run keeps
   what it measured; `--render RESULTS.json --publish` puts them into kernels/ and BENCHMARKS.md.

Budget: a global deadline (`--budget-s`, default 420 s) and a soft share per step; a step that
reaches its deadline skips its remaining sizes and records what it skipped and why. Each kernel is
compiled once per configuration (sizes are chosen to share Triton's integer specialisations), repeats
are capped, and every step prints its elapsed time. An error in one row or step is recorded with its
traceback and the run goes on.

The device machine has torch, triton, numpy, safetensors and sentencepiece, but no network, no
librosa/soundfile, no tritonserver, TensorRT or mamba-ssm: this file imports only those, the project's
own code, and, where librosa is absent, gives the model's feature extractor the same Slaney mel
filterbank computed in numpy (tests check it equals librosa's). Clips come from `--prepare-clips`,
run beforehand on a CPU machine with espeak-ng (the device has none): audio, texts and the CPU path's
transcripts in one small .npz that the run carries.

`--dry-run` runs every step on the CPU under the Triton interpreter with tiny shapes (timings
meaningless and labelled so) and refuses the imports the device lacks, so the device run cannot fail
on anything a CPU could have caught. What it cannot exercise: CUDA events and graphs, the autotuner,
inductor's GPU code generation, real compilation and GPU memory.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import importlib
import importlib.abc
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace

from mambaserve.contract.spec import SAMPLE_RATE

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CLIPS = ROOT / ".cache" / "gpu_check" / "clips.npz"
RESULTS_JSON = "gpu_check_results.json"
RESULTS_MD = "gpu_check_results.md"
BENCHMARKS_MD = ROOT / "kernels" / "BENCHMARKS.md"
MARK_BEGIN = "<!-- gpu-check results: begin (written by `python -m mambaserve.kernels.gpu_check --render ... --publish`) -->"
MARK_END = "<!-- gpu-check results: end -->"

# The ceiling. H200.md (the device tool's page for this kind) quotes the vendor datasheet: 141 GB of
# HBM3e at 4.8 TB/s. KINDS.md records a device-to-device copy of ~4.3 TB/s (read + write counted) on
# this workplace's H200s (2026-10-28, 2026-11-04); the run measures its own copy bandwidth too.
HBM_DATASHEET_BPS = 4.8e12
HBM_SOURCE = (
    "NVIDIA datasheet figure for the H200 (141 GB HBM3e, 4.8 TB/s), as quoted in the device docs' H200.md"
)
COPY_SEEN_BPS = 4.3e12
COPY_SEEN_SOURCE = "device-to-device torch copy on this workplace's H200s, KINDS.md (2026-10-28 gVisor, 2026-11-04 Firecracker)"

STEPS = ("correctness", "kernel_timings", "sessions", "recognizer", "torch_compile")
# Soft share of each step (seconds) and the least each later step is guaranteed (a step's deadline is
# min(its start + share, global deadline - the reserves of the steps after it)).
SHARE_S = {
    "correctness": 80.0,
    "kernel_timings": 150.0,
    "sessions": 50.0,
    "recognizer": 130.0,
    "torch_compile": 70.0,
}
RESERVE_S = {
    "correctness": 30.0,
    "kernel_timings": 60.0,
    "sessions": 20.0,
    "recognizer": 60.0,
    "torch_compile": 20.0,
}

# Python packages installed here but absent on the device machine: the dry run refuses them.
DEVICE_ABSENT = (
    "librosa",
    "soundfile",
    "soxr",
    "audioread",
    "jiwer",
    "wordfreq",
    "tritonclient",
    "pytriton",
    "mamba_ssm",
    "causal_conv1d",
    "tensorrt",
    "piper",
    "pocketsphinx",
    "locust",
    "gevent",
)


# ------------------------------------------------------------------------------------------------
# The adapter: the ONLY place that imports the slot pool, the Recognizer and checkpoint loading.
# ------------------------------------------------------------------------------------------------
def project_parts() -> SimpleNamespace:
    """SlotPool, Recognizer and load_checkpoint, each from its new home if it exists, else today's.

    They are being moved (slot pool -> mambaserve.serving, Recognizer -> mambaserve.model.recognizer,
    checkpoint loading -> mambaserve.model.checkpoint): after the move lands, fix the order here.
    Imported lazily, so steps 1-2 need none of them. A module that exists but fails to import for
    another reason raises (a missing dependency must not silently pick the old home); a module found
    outside this checkout (another checkout's editable install) does not count.
    """
    _librosa_or_numpy_filterbank()  # the model's LogMel calls librosa.filters.mel at construction

    def find(what: str, *homes: tuple[str, str]):
        for module, name in homes:
            if not _in_this_checkout(module):
                continue  # this home does not exist (yet, or any more), or only in another checkout
            mod = importlib.import_module(module)
            if hasattr(mod, name):
                return getattr(mod, name), f"{module}.{name}"
        raise ImportError(f"gpu_check: no {what} in any of {[m for m, _ in homes]} in {ROOT}")

    SlotPool, pool_at = find(
        "slot pool",
        ("mambaserve.serving.state", "SlotPool"),
        ("mambaserve.serving.slot_pool", "SlotPool"),
        ("mambaserve.serving.state_pool", "SlotPool"),
        ("mambaserve.serving", "SlotPool"),
        ("mambaserve.build.backends.slot_pool", "SlotPool"),
    )
    Recognizer, rec_at = find(
        "Recognizer",
        ("mambaserve.model.recognizer", "Recognizer"),
        ("mambaserve.training.inference", "Recognizer"),
    )
    load_checkpoint, ckpt_at = find(
        "load_checkpoint",
        ("mambaserve.model.checkpoint", "load_checkpoint"),
        ("mambaserve.training.checkpoint", "load_checkpoint"),
    )
    return SimpleNamespace(
        SlotPool=SlotPool,
        Recognizer=Recognizer,
        load_checkpoint=load_checkpoint,
        where={"SlotPool": pool_at, "Recognizer": rec_at, "load_checkpoint": ckpt_at, "librosa": _LIBROSA[0]},
    )


def _in_this_checkout(module: str) -> bool:
    """Whether `module` exists in this checkout, found level by level without importing it (so a
    package of another checkout's editable install is neither picked nor executed)."""
    import importlib.util

    parts = module.split(".")
    for i in range(2, len(parts) + 1):
        try:
            spec = importlib.util.find_spec(".".join(parts[:i]))
        except ModuleNotFoundError:
            return False
        if spec is None:
            return False
        places = [spec.origin] if spec.origin else list(spec.submodule_search_locations or [])
        if not any(p and ROOT in Path(p).resolve().parents for p in places):
            return False
    return True


# ------------------------------------------------------------------------------------------------
# What the device lacks
# ------------------------------------------------------------------------------------------------
def mel_filterbank_np(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float):
    """librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax) (Slaney scale and norm) in numpy, float32."""
    import numpy as np

    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0

    def hz_to_mel(f):
        f = np.asanyarray(f, dtype=np.float64)
        mels = f / f_sp
        log_t = f >= min_log_hz
        mels[log_t] = min_log_mel + np.log(f[log_t] / min_log_hz) / logstep
        return mels

    def mel_to_hz(m):
        freqs = f_sp * m
        log_t = m >= min_log_mel
        freqs[log_t] = min_log_hz * np.exp(logstep * (m[log_t] - min_log_mel))
        return freqs

    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    lo, hi = hz_to_mel(np.array([fmin])), hz_to_mel(np.array([fmax]))
    mel_f = mel_to_hz(np.linspace(lo[0], hi[0], n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, np.newaxis]
    return weights


_LIBROSA: list[str] = ["not needed yet"]


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _librosa_or_numpy_filterbank() -> None:
    """Where librosa is absent (the device), a module `librosa` whose filters.mel is the numpy copy."""
    if "librosa" in sys.modules or _importable("librosa"):
        _LIBROSA[0] = "librosa"
        return
    stub = ModuleType("librosa")
    stub.__doc__ = "gpu_check stand-in: filters.mel only (numpy Slaney filterbank equal to librosa's)"

    def mel(*, sr, n_fft, n_mels=128, fmin=0.0, fmax=None, **kw):
        if kw.get("htk") or kw.get("norm", "slaney") != "slaney":
            raise NotImplementedError("gpu_check's librosa stand-in has the Slaney filterbank only")
        return mel_filterbank_np(sr, n_fft, n_mels, fmin, sr / 2 if fmax is None else fmax)

    stub.filters = SimpleNamespace(mel=mel)
    sys.modules["librosa"] = stub
    _LIBROSA[0] = "numpy stand-in (librosa absent)"


class _HideAbsent(importlib.abc.MetaPathFinder):
    """Dry run: every import finder, wrapped so that the packages the device lacks are not found,
    exactly as there (find_spec gives None, `import` raises ModuleNotFoundError)."""

    def __init__(self, finder) -> None:
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in DEVICE_ABSENT:
            return None
        find = getattr(self._finder, "find_spec", None)
        return None if find is None else find(name, path, target)

    def __getattr__(self, attr):
        return getattr(self._finder, attr)


def hide_device_absent() -> None:
    sys.meta_path[:] = [f if isinstance(f, _HideAbsent) else _HideAbsent(f) for f in sys.meta_path]
    for name in [m for m in sys.modules if m.split(".")[0] in DEVICE_ABSENT]:
        del sys.modules[name]


# ------------------------------------------------------------------------------------------------
# Plans: what to run, real and dry
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    dim: int
    dstate: int
    width: int
    # correctness: (batch, dim, dstate, seqlen)
    check_scan: tuple[tuple[int, int, int, int], ...]
    check_slots: int
    check_rows: int
    check_conv_len: int
    # timings: (batch, seqlen), ordered so the first shape of each batch bucket (what the autotuner
    # tunes for: its key has no length) is the longest
    scan_shapes: tuple[tuple[int, int], ...]
    scan_extra_shape: tuple[int, int]  # fp32 and all-contiguous layout, heuristic block
    conv_shapes: tuple[tuple[int, int], ...]
    decode_batches: tuple[int, ...]
    torch_max_tokens: int  # the PyTorch scan keeps every chunk's states: batch*L*D*N*4 bytes
    compile_chunk: int
    compile_backend: str
    copy_bytes: int
    reps_cap: int
    rep_budget_s: float
    sessions: int
    pool_slots: int
    rec_batch: int
    rec_extra_batches: tuple[int, ...]
    rec_max_clips: (
        int | None
    )  # dry run: only the first clips, in batches of rec_batch (the interpreter is slow)
    clip_max_s: float | None  # dry run: clips cut to this length
    warmup_max_s: float | None  # warm-up batch cut to this length (None: the real first batch)
    budget_s: float


REAL = Plan(
    dim=1536,
    dstate=16,
    width=4,
    check_scan=((3, 1536, 16, 777), (2, 301, 7, 129)),
    check_slots=64,
    check_rows=12,
    check_conv_len=513,
    scan_shapes=(  # the goals' shapes first (64 x 16k: bandwidth; 4 x 16k: vs the PyTorch path)
        (64, 16384),
        (64, 1024),
        (4, 16384),
        (4, 4096),
        (4, 1024),
        (4, 256),
        (4, 64),
        (16, 16384),
        (16, 1024),
        (256, 4096),
        (256, 1024),
        (256, 64),
        (1, 16384),
        (1, 1024),
    ),
    scan_extra_shape=(16, 16384),
    conv_shapes=((1, 1024), (4, 16384), (64, 4096)),
    decode_batches=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    torch_max_tokens=65536,
    compile_chunk=16,
    compile_backend="inductor",
    copy_bytes=2 << 30,
    reps_cap=50,
    rep_budget_s=0.25,
    sessions=10_000,
    pool_slots=12_000,
    rec_batch=64,
    rec_extra_batches=(256,),
    rec_max_clips=None,
    clip_max_s=None,
    warmup_max_s=None,
    budget_s=420.0,
)

DRY = Plan(
    dim=20,
    dstate=16,
    width=4,
    check_scan=((2, 37, 16, 11), (2, 21, 7, 9)),
    check_slots=9,
    check_rows=5,
    check_conv_len=13,
    scan_shapes=((1, 16), (1, 8), (3, 8)),
    scan_extra_shape=(3, 8),
    conv_shapes=((2, 16),),
    decode_batches=(1, 3),
    torch_max_tokens=16,
    compile_chunk=4,
    compile_backend="eager",
    copy_bytes=1 << 20,
    reps_cap=3,
    rep_budget_s=0.02,
    sessions=12,
    pool_slots=16,
    rec_batch=2,
    rec_extra_batches=(),
    rec_max_clips=2,
    clip_max_s=0.3,
    warmup_max_s=0.1,
    budget_s=900.0,
)


# ------------------------------------------------------------------------------------------------
# Run state: clock, results, device helpers
# ------------------------------------------------------------------------------------------------
def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Deadline(Exception):
    """Raised inside a step when its deadline has passed (the step records what it skipped)."""


class Run:
    def __init__(self, plan: Plan, dry: bool, out_dir: Path, budget_s: float, steps: tuple[str, ...]):
        self.plan, self.dry, self.out_dir, self.steps = plan, dry, out_dir, steps
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + budget_s
        self.step_deadline = self.deadline
        self.step_name = ""
        self.data: dict = {
            "schema": 1,
            "dry_run": dry,
            "started": _now_iso(),
            "budget_s": budget_s,
            "command": " ".join(sys.argv),
            "plan": asdict(plan),
            "ceilings": {
                "hbm_datasheet_Bps": HBM_DATASHEET_BPS,
                "hbm_source": HBM_SOURCE,
                "copy_seen_before_Bps": COPY_SEEN_BPS,
                "copy_seen_source": COPY_SEEN_SOURCE,
                "copy_measured_Bps": None,
            },
            "steps": {},
        }

    # -- time ------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.step_deadline - time.perf_counter()

    def check(self, need_s: float = 0.0) -> None:
        if time.perf_counter() + need_s > self.step_deadline:
            raise Deadline(f"{self.step_name}: deadline ({self.elapsed():.0f} s into the run)")

    def log(self, msg: str) -> None:
        print(f"[{self.elapsed():7.1f} s] {msg}", flush=True)

    # -- results ---------------------------------------------------------------------------------
    def step(self, name: str) -> dict:
        return self.data["steps"].setdefault(name, {"status": "running", "skipped": [], "errors": []})

    def skip(self, rec: dict, what: str, why: str) -> None:
        rec["skipped"].append({"what": what, "why": why})
        self.log(f"  skipped {what}: {why}")

    def error(self, rec: dict, what: str, err: BaseException) -> None:
        rec["errors"].append(
            {"what": what, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        )
        self.log(f"  ERROR in {what}: {type(err).__name__}: {str(err)[:300]}")

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 2)
        self.data["finished"] = _now_iso()
        self.data["goals"] = goals(self.data)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, text in (
            (RESULTS_JSON, json.dumps(self.data, indent=1, default=str)),
            (RESULTS_MD, render_markdown(self.data)),
        ):
            tmp = self.out_dir / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(self.out_dir / name)


class Dev:
    """The few places where the GPU run and the CPU dry run differ."""

    def __init__(self, dry: bool):
        import torch

        self.torch = torch
        self.cuda = not dry
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.l2_bytes = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) if self.cuda else 0
        self._flush = torch.empty(256 << 20, dtype=torch.int8, device=self.device) if self.cuda else None

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def generator(self, seed: int):
        return self.torch.Generator(device=self.device).manual_seed(seed)

    def time(self, fn, run: Run, *, reps_cap: int | None = None, warmup: int = 2, flush: bool = True) -> dict:
        """Median ms per call: CUDA events around each repeat (L2 flushed first), after warm-up; short
        calls are repeated inside one event pair. CPU (dry run): perf_counter, same shape of result."""
        plan = run.plan
        cap = reps_cap or plan.reps_cap
        for _ in range(warmup if self.cuda else min(warmup, 1)):
            fn()
        self.sync()
        if not self.cuda:  # the dry run: one warm-up call and two timed ones are enough to check the code
            samples = []
            for _ in range(min(cap, 2)):
                t = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - t) * 1e3)
            return {
                "ms": statistics.median(samples),
                "reps": len(samples),
                "inner": 1,
                "min_ms": min(samples),
            }
        torch = self.torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        est = max(start.elapsed_time(end), 1e-3)
        inner = 1 if est >= 0.05 else min(100, math.ceil(0.05 / est))
        reps = max(3, min(cap, int(plan.rep_budget_s * 1e3 / (est * inner))))
        pairs = []
        for _ in range(reps):
            if flush:
                self._flush.zero_()
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(inner):
                fn()
            e.record()
            pairs.append((s, e))
        torch.cuda.synchronize()
        samples = [s.elapsed_time(e) / inner for s, e in pairs]
        return {"ms": statistics.median(samples), "reps": reps, "inner": inner, "min_ms": min(samples)}

    def graph_time(self, fn, run: Run, n_inner: int = 10) -> dict | None:
        """Median ms per call under CUDA-graph replay of n_inner calls (no launch gaps); None on CPU."""
        if not self.cuda:
            return None
        torch = self.torch
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(n_inner):
                fn()
        t = self.time(graph.replay, run, warmup=1)
        return {"ms": t["ms"] / n_inner, "reps": t["reps"]}

    def randn(self, shape, dtype, g, *, scale: float = 1.0, shift: float = 0.0):
        t = self.torch.randn(shape, dtype=dtype, device=self.device, generator=g)
        if scale != 1.0:
            t.mul_(scale)
        if shift:
            t.add_(shift)
        return t


@contextlib.contextmanager
def env(**values: str | None):
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _guarded(run: Run, dev: Dev, rec: dict, what: str, fn) -> None:
    """Run one row or part of a step: skipped past the deadline, its error recorded, the run goes on."""
    try:
        run.check()
    except Deadline as err:
        run.skip(rec, what, str(err))
        return
    try:
        fn()
    except Exception as err:
        run.error(rec, what, err)
        if dev.cuda:
            dev.torch.cuda.empty_cache()


def nbytes(*ts) -> int:
    import torch

    return sum(t.numel() * t.element_size() for t in ts if isinstance(t, torch.Tensor))


def _bw(row: dict, moved: int, ms: float, copy_bps: float | None) -> None:
    bps = moved / (ms * 1e-3)
    row.update(
        bytes=moved,
        ms=round(ms, 5),
        TBps=round(bps / 1e12, 4),
        pct_hbm=round(100 * bps / HBM_DATASHEET_BPS, 2),
    )
    row["pct_copy"] = round(100 * bps / copy_bps, 2) if copy_bps else None


def rel_err(a, b) -> float:
    a, b = a.detach().double(), b.detach().to(a.device).double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _cpu64(kw: dict) -> dict:
    import torch

    return {
        k: (v.detach().cpu().double() if v.is_floating_point() else v.detach().cpu())
        if isinstance(v, torch.Tensor)
        else v
        for k, v in kw.items()
    }


# ------------------------------------------------------------------------------------------------
# Step 1: correctness against the float64 references
# ------------------------------------------------------------------------------------------------
TOL = {"fp32": 1e-5, "bf16": 1e-2}
STATE_TOL = 1e-5  # fp32 states, whatever the input dtype


def step_correctness(run: Run, dev: Dev) -> None:
    import torch

    from . import inputs
    from . import reference as ref
    from .causal_conv1d_triton import causal_conv1d_fn_triton, causal_conv1d_update_triton
    from .selective_scan_triton import selective_scan_triton
    from .selective_state_update_triton import selective_state_update_triton

    rec = run.step("correctness")
    rows = rec.setdefault("rows", [])
    d = dev.device
    plan = run.plan
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}

    def add(
        check: str, dname: str, shape: str, err: float | None, tol: float | None, ok: bool, note: str = ""
    ):
        row = dict(check=check, dtype=dname, shape=shape, rel_err=err, tol=tol, ok=bool(ok), note=note)
        rows.append(row)
        e = "-" if err is None else f"{err:.2e}"
        run.log(f"  {'ok  ' if ok else 'FAIL'} {check:38} {dname:5} {shape:26} err {e} {note}")

    def nan(shape, dtype):
        return torch.full(shape, float("nan"), dtype=dtype, device=d)

    seed = [100]

    def next_seed() -> int:  # fresh random inputs for every check
        seed[0] += 1
        return seed[0]

    def scan_checks(dname, dtype, b, dim, n, length, strided):
        shape = f"B{b} D{dim} N{n} L{length}{' strided' if strided else ''}"
        for initial in (False, True):
            kw = inputs.scan_inputs(
                b, dim, n, length, dtype=dtype, strided=strided, seed=next_seed(), device=d
            )
            if not initial:
                kw.pop("initial_state")
            out, last = nan((b, dim, length), dtype), nan((b, dim, n), torch.float32)
            selective_scan_triton(**kw, return_last_state=True, out=out, last_state_out=last)
            dev.sync()
            r, r_last = ref.selective_scan_ref(**_cpu64(kw), return_last_state=True)
            written = not (out.isnan().any() or last.isnan().any())
            e, e_last = rel_err(out, r), rel_err(last, r_last)
            name = f"selective_scan {'with' if initial else 'no'} initial_state"
            add(name, dname, shape, e, TOL[dname], written and e < TOL[dname], f"all written: {written}")
            add(name + ": last_state", dname, shape, e_last, STATE_TOL, written and e_last < STATE_TOL)
        # chunked prefill (state carried in fp32) is the one-pass scan bit for bit
        kw = inputs.scan_inputs(b, dim, n, length, dtype=dtype, strided=strided, seed=next_seed(), device=d)
        full, h_full = selective_scan_triton(**kw, return_last_state=True)
        cut = length // 2 + 1
        part = lambda t, s: t[..., s]  # noqa: E731
        seq_keys = ("u", "delta", "z", "B", "C")
        first = {k: part(v, slice(0, cut)) if k in seq_keys else v for k, v in kw.items()}
        out1, h1 = selective_scan_triton(**first, return_last_state=True)
        second = {k: part(v, slice(cut, None)) if k in seq_keys else v for k, v in kw.items()} | {
            "initial_state": h1
        }
        out2, h2 = selective_scan_triton(**second, return_last_state=True)
        dev.sync()
        same = torch.equal(torch.cat([out1, out2], -1), full) and torch.equal(h2, h_full)
        add("selective_scan chunked == one pass", dname, shape, None, None, same, "bitwise")

    def state_update_checks(dname, dtype, state_dtype, strided):
        b, dim, n, slots = plan.check_rows, plan.check_scan[0][1], plan.dstate, plan.check_slots
        sname = "bf16" if state_dtype == torch.bfloat16 else "fp32"
        shape = f"rows{b} slots{slots} D{dim} N{n} state {sname}{' strided' if strided else ''}"
        kw = inputs.state_update_inputs(
            b,
            dim,
            n,
            n_slots=slots,
            dtype=dtype,
            state_dtype=state_dtype,
            strided=strided,
            seed=next_seed(),
            device=d,
        )
        g = torch.Generator().manual_seed(next_seed())
        idx = torch.randperm(slots, generator=g)[:b].to(torch.int32)
        pad_row = b // 2
        idx[pad_row] = -1
        before = kw["state"].clone()
        cpu_kw = _cpu64(kw)
        cpu_state = kw["state"].detach().cpu().clone()
        cpu_kw["state"] = cpu_state
        out = nan((b, dim), dtype)
        selective_state_update_triton(**kw, state_batch_indices=idx.to(d), pad_slot_id=-1, out=out)
        dev.sync()
        r = ref.selective_state_update_ref(**cpu_kw, state_batch_indices=idx, pad_slot_id=-1)
        real = [i for i in range(b) if i != pad_row]
        e = rel_err(out[real], r[real])
        used = idx[real].long()
        e_state = rel_err(kw["state"][used.to(d)], cpu_state[used])
        unused = sorted(set(range(slots)) - set(used.tolist()))
        untouched = torch.equal(kw["state"][unused], before[unused])
        pad_zero = bool((out[pad_row] == 0).all())
        stol = STATE_TOL if state_dtype == torch.float32 else TOL["bf16"]
        add(
            "state_update slots + pad: out",
            dname,
            shape,
            e,
            TOL[dname],
            e < TOL[dname] and pad_zero,
            f"pad row zeros: {pad_zero}",
        )
        add(
            "state_update slots + pad: state",
            dname,
            shape,
            e_state,
            stol,
            e_state < stol and untouched,
            f"other slots bit-unchanged: {untouched}",
        )
        # An index outside the pool: on a GPU the kernel guards (NaN row, no slot touched); indices on
        # the CPU are validated before launch instead (ValueError), which is what the dry run sees.
        bad = idx.clone()
        bad[0] = slots + 5
        before = kw["state"].clone()
        out = nan((b, dim), dtype)
        try:
            selective_state_update_triton(**kw, state_batch_indices=bad.to(d), pad_slot_id=-1, out=out)
        except ValueError as err:
            if dev.cuda:
                raise
            add(
                "state_update out-of-range slot",
                dname,
                shape,
                None,
                None,
                "must be in" in str(err),
                "CPU indices: ValueError before launch (the GPU guard needs a GPU)",
            )
            return
        dev.sync()
        rows_ok = bool(out[0].isnan().all()) and not out[1:].isnan().any()
        others = [i for i in range(slots) if i not in set(bad[1:].tolist())]
        spared = torch.equal(kw["state"][others], before[others])
        add(
            "state_update out-of-range slot",
            dname,
            shape,
            None,
            None,
            rows_ok and spared,
            f"NaN row only: {rows_ok}; no other slot touched: {spared}",
        )

    def conv_checks(dname, dtype, strided):
        b, dim, w, slots = plan.check_rows, plan.check_scan[0][1], plan.width, plan.check_slots
        shape = f"rows{b} slots{slots} D{dim} W{w}{' strided' if strided else ''}"
        kw = inputs.conv_inputs(
            b,
            dim,
            w,
            n_slots=slots,
            dtype=dtype,
            state_dtype=torch.float32,
            strided=strided,
            seed=next_seed(),
            device=d,
        )
        g = torch.Generator().manual_seed(next_seed())
        idx = torch.randperm(slots, generator=g)[:b].to(torch.int32)
        pad_row = 1
        idx[pad_row] = -1
        before = kw["conv_state"].clone()
        cpu_kw = _cpu64(kw)
        cpu_state = kw["conv_state"].detach().cpu().double().clone()
        cpu_kw["conv_state"] = cpu_state
        out = nan((b, dim), dtype)
        causal_conv1d_update_triton(**kw, conv_state_indices=idx.to(d), pad_slot_id=-1, out=out)
        dev.sync()
        r = ref.causal_conv1d_update_ref(**cpu_kw, conv_state_indices=idx, pad_slot_id=-1)
        real = [i for i in range(b) if i != pad_row]
        used = idx[real].long()
        e = rel_err(out[real], r[real])
        e_state = rel_err(kw["conv_state"][used.to(d)], cpu_state[used])
        unused = sorted(set(range(slots)) - set(used.tolist()))
        untouched = torch.equal(kw["conv_state"][unused], before[unused])
        pad_zero = bool((out[pad_row] == 0).all())
        add(
            "conv_update slots + pad: out",
            dname,
            shape,
            e,
            TOL[dname],
            e < TOL[dname] and pad_zero,
            f"pad row zeros: {pad_zero}",
        )
        add(
            "conv_update slots + pad: state",
            dname,
            shape,
            e_state,
            STATE_TOL,
            e_state < STATE_TOL and untouched,
            f"other slots bit-unchanged: {untouched}",
        )

    def conv_fn_checks(dname, dtype, strided):
        b, dim, w, length = 2, plan.check_scan[0][1], plan.width, plan.check_conv_len
        shape = f"B{b} D{dim} W{w} L{length}{' strided' if strided else ''}"
        for initial in (False, True):
            kw = inputs.conv_inputs(
                b, dim, w, length, dtype=dtype, strided=strided, seed=next_seed(), device=d
            )
            if not initial:
                kw.pop("initial_states")
            out = nan((b, dim, length), dtype)
            _, final = causal_conv1d_fn_triton(**kw, return_final_states=True, out=out)
            dev.sync()
            r, r_final = ref.causal_conv1d_ref(**_cpu64(kw), return_final_states=True)
            written = not out.isnan().any()
            e, e_final = rel_err(out, r), rel_err(final, r_final)
            ok = written and e < TOL[dname] and e_final < TOL[dname]
            add(
                f"causal_conv1d_fn {'with' if initial else 'no'} initial_states",
                dname,
                shape,
                e,
                TOL[dname],
                ok,
                f"final states err {e_final:.1e}; all written: {written}",
            )

    def decode_equals_scan(dname, dtype):
        b, dim, n, length = 2, plan.check_scan[1][1], plan.dstate, 12
        kw = inputs.scan_inputs(b, dim, n, length, dtype=dtype, seed=next_seed(), device=d)
        kw.pop("initial_state")
        y, h = selective_scan_triton(**kw, return_last_state=True)
        pool = torch.zeros(5, dim, n, device=d)
        slots = torch.tensor([3, 1], dtype=torch.int32, device=d)
        steps = []
        for t in range(length):
            steps.append(
                selective_state_update_triton(
                    pool,
                    kw["u"][..., t],
                    kw["delta"][..., t],
                    kw["A"],
                    kw["B"][..., t],
                    kw["C"][..., t],
                    kw["D"],
                    kw["z"][..., t],
                    dt_bias=kw["delta_bias"],
                    dt_softplus=True,
                    state_batch_indices=slots,
                )
            )
        dev.sync()
        e = rel_err(torch.stack(steps, -1).float(), y.float())
        e_h = rel_err(pool[slots.long()], h)
        tol = 1e-5 if dname == "fp32" else TOL[dname]
        add(
            f"{length} decode steps on slots == scan",
            dname,
            f"B{b} D{dim} N{n}",
            max(e, e_h),
            tol,
            max(e, e_h) < tol,
        )

    with env(MAMBASERVE_KERNELS_AUTOTUNE="0"):  # the heuristic blocks: one compile per variant
        for dname, dtype in dtypes.items():
            checks = []
            for i, (b, dim, n, length) in enumerate(plan.check_scan):
                for strided in (True, False) if i == 0 else (False,):
                    checks.append(
                        (
                            f"scan {dname} {b}x{dim}x{n}x{length}{' strided' if strided else ''}",
                            lambda a=(dname, dtype, b, dim, n, length, strided): scan_checks(*a),
                        )
                    )
            checks.append(
                (
                    f"state update {dname}",
                    lambda a=(dname, dtype, torch.float32, True): state_update_checks(*a),
                )
            )
            checks.append((f"conv update {dname}", lambda a=(dname, dtype, True): conv_checks(*a)))
            checks.append((f"conv fn {dname}", lambda a=(dname, dtype, True): conv_fn_checks(*a)))
            checks.append((f"decode = scan {dname}", lambda a=(dname, dtype): decode_equals_scan(*a)))
            if dname == "bf16":
                checks.append(
                    (
                        "state update bf16 state",
                        lambda: state_update_checks("bf16", torch.bfloat16, torch.bfloat16, False),
                    )
                )
            for what, fn in checks:
                try:
                    run.check()
                except Deadline as err:
                    run.skip(rec, what, str(err))
                    continue
                try:
                    fn()
                except Exception as err:  # one failing check must not hide the others
                    run.error(rec, what, err)
    rec["passed"] = sum(r["ok"] for r in rows)
    rec["failed"] = sum(not r["ok"] for r in rows)


# ------------------------------------------------------------------------------------------------
# Step 2: timings against the HBM bandwidth, next to PyTorch and torch.compile
# ------------------------------------------------------------------------------------------------
def make_scan(
    dev: Dev, b: int, dim: int, n: int, length: int, dtype, seed: int, layout: str = "model"
) -> dict:
    """Scan inputs generated on the device, scaled like a trained Mamba (kernels/inputs.py). layout
    "model": what MambaBlock hands over (u contiguous [b, D, L]; delta, z, B, C transposed views of
    [b, L, .] projections); "contiguous": every sequence tensor contiguous [b, ., L]."""
    torch = dev.torch
    g = dev.generator(seed)

    def seq(rows: int, **kw):
        if layout == "model":
            return dev.randn((b, length, rows), dtype, g, **kw).transpose(1, 2)
        return dev.randn((b, rows, length), dtype, g, **kw)

    u = dev.randn((b, dim, length), dtype, g)
    delta = seq(dim, scale=0.5, shift=-1.5)
    z = seq(dim)
    B, C = seq(n), seq(n)
    A = -torch.exp(torch.rand((dim, n), device=dev.device, generator=g) * 2.5 - 1.2)
    D = dev.randn((dim,), torch.float32, g)
    bias = dev.randn((dim,), torch.float32, g, scale=0.5)
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=bias, delta_softplus=True)


def scan_bytes(kw: dict, out, last) -> int:
    return nbytes(
        *(kw[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")),
        kw.get("initial_state"),
        out,
        last,
    )


def compiled_scan_reference(chunk: int, backend: str):
    """torch.compile of the reference recurrence, `chunk` steps unrolled per compiled call (dynamic
    batch), driven over the sequence by a Python loop. Compiling the dispatcher's PyTorch scan
    (scan_cpu) itself is not an option: dynamo would unroll its per-step loop over all L steps."""
    import torch
    import torch.nn.functional as F

    def chunk_fn(h, u, delta, A, B, C, D, z, bias):
        dt = F.softplus(delta.float() + bias[:, None])
        uf = u.float()
        ys = []
        for t in range(chunk):
            h = (
                torch.exp(dt[..., t, None] * A) * h
                + (dt[..., t] * uf[..., t])[..., None] * B[:, None, :, t].float()
            )
            ys.append((h * C[:, None, :, t].float()).sum(-1))
        y = (torch.stack(ys, -1) + D[:, None] * uf) * F.silu(z.float())
        return y.to(u.dtype), h

    compiled = torch.compile(chunk_fn, dynamic=True, backend=backend)

    def scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, return_last_state=True):
        b, dim, length = u.shape
        if length % chunk:
            raise ValueError(f"compiled reference: L={length} is not a multiple of the chunk {chunk}")
        h = torch.zeros(b, dim, A.shape[1], device=u.device, dtype=torch.float32)
        out = torch.empty(b, dim, length, device=u.device, dtype=u.dtype)
        for s in range(0, length, chunk):
            sl = slice(s, s + chunk)
            out[..., sl], h = compiled(
                h, u[..., sl], delta[..., sl], A, B[..., sl], C[..., sl], D, z[..., sl], delta_bias
            )
        return out, h

    return scan


def _scan_config(kernel_cache: dict, tuned: bool, b: int, dim: int, block_n: int, device) -> dict:
    from ._triton_common import block_d_for, interpreting, warps_for

    if tuned:
        at = kernel_cache.get((False, True))
        cfg = getattr(at, "best_config", None)
        info = {"config": str(cfg) if cfg is not None else "?", "autotuned": True}
        if getattr(at, "bench_time", None) is not None:
            info["autotune_bench_s"] = round(float(at.bench_time), 3)
        return info
    import triton

    bd = block_d_for(lambda x: triton.cdiv(dim, x), b, dim, block_n, device)
    mode = "interpreter" if interpreting() else "heuristic"
    return {"config": f"{mode} BLOCK_D={bd} num_warps={warps_for(bd * block_n)}", "autotuned": False}


def step_kernel_timings(run: Run, dev: Dev) -> None:
    import torch

    from . import inputs
    from .causal_conv1d_triton import causal_conv1d_fn_triton, causal_conv1d_update_triton
    from .scan_cpu import selective_scan_cpu
    from .selective_scan_triton import SCAN_KERNEL, selective_scan_triton
    from .selective_state_update_triton import selective_state_update_triton
    from .torch_ops import causal_conv1d_fn_torch, causal_conv1d_update_torch, selective_state_update_torch

    rec = run.step("kernel_timings")
    plan, d = run.plan, dev.device
    dim, n, w = plan.dim, plan.dstate, plan.width
    bf16, f32 = torch.bfloat16, torch.float32

    # -- the ceiling, measured: a device-to-device copy, bytes read + written ---------------------
    src = torch.empty(plan.copy_bytes // 4, dtype=f32, device=d).uniform_()
    dst = torch.empty_like(src)
    t = dev.time(lambda: dst.copy_(src), run)
    copy_bps = 2 * plan.copy_bytes / (t["ms"] * 1e-3)
    rec["copy"] = {"bytes_moved": 2 * plan.copy_bytes, "ms": t["ms"], "TBps": round(copy_bps / 1e12, 4)}
    run.data["ceilings"]["copy_measured_Bps"] = copy_bps
    run.log(f"  copy {plan.copy_bytes >> 20} MiB: {copy_bps / 1e12:.3f} TB/s (read + write)")
    src = dst = None  # free the copy buffers for what follows

    def guarded(what: str, fn) -> None:
        _guarded(run, dev, rec, what, fn)

    # -- selective scan sweep (bf16, model layout, autotuned as served) ---------------------------
    scan_rows = rec.setdefault("scan", [])
    block_n = 16 if n <= 16 else 1 << (n - 1).bit_length()

    def scan_row(b: int, length: int, dtype, layout: str, tuned: bool) -> None:
        dname = "bf16" if dtype == bf16 else "fp32"
        kw = make_scan(dev, b, dim, n, length, dtype, seed=b * 100_003 + length, layout=layout)
        out = torch.empty(b, dim, length, dtype=dtype, device=d)
        last = torch.empty(b, dim, n, dtype=f32, device=d)
        row = dict(
            kernel="selective_scan", dtype=dname, batch=b, L=length, D=dim, N=n, layout=layout, sweep=tuned
        )
        with env(MAMBASERVE_KERNELS_AUTOTUNE=None if tuned else "0"):
            call = lambda: selective_scan_triton(**kw, return_last_state=True, out=out, last_state_out=last)  # noqa: E731
            t0 = time.perf_counter()
            call()
            dev.sync()
            row["first_call_s"] = round(time.perf_counter() - t0, 3)  # compile + autotune included
            row.update(_scan_config(SCAN_KERNEL._cache, tuned and dev.cuda, b, dim, block_n, d))
            t = dev.time(call, run)
        _bw(row, scan_bytes(kw, out, last), t["ms"], copy_bps)
        row["reps"], row["l2_resident"] = t["reps"], row["bytes"] < dev.l2_bytes
        if b * length <= plan.torch_max_tokens:
            ref_call = lambda: selective_scan_cpu(**kw, return_last_state=True)  # noqa: E731
            y_ref, h_ref = ref_call()
            row["torch_rel_err"] = rel_err(out, y_ref)
            tt = dev.time(ref_call, run, reps_cap=3, warmup=1)
            row["torch_ms"], row["x_torch"] = round(tt["ms"], 4), round(tt["ms"] / row["ms"], 2)
            del y_ref, h_ref
        else:
            row["torch_ms"] = None
            row["torch_note"] = (
                f"skipped: batch*L > {plan.torch_max_tokens} (the PyTorch scan keeps every chunk's states)"
            )
        scan_rows.append(row)
        run.log(
            f"  scan {dname} B{b:<4d} L{length:<6d} {layout:10} {row['ms']:9.3f} ms {row['TBps']:7.3f} TB/s "
            f"{row['pct_hbm']:6.1f}% HBM  torch {row.get('torch_ms')}  [{row['config']}]"
        )

    for b, length in plan.scan_shapes:
        guarded(
            f"selective_scan bf16 B{b} L{length}",
            lambda b=b, length=length: scan_row(b, length, bf16, "model", True),
        )

    # -- decode kernels at batch 1..256: eager, CUDA graph, PyTorch --------------------------------
    decode_rows = rec.setdefault("decode", [])

    def decode_rows_for(batch: int) -> None:
        g = torch.Generator().manual_seed(batch)
        idx = torch.randperm(batch, generator=g).to(device=d, dtype=torch.int32)
        st = inputs.state_update_inputs(batch, dim, n, dtype=bf16, state_dtype=f32, device=d, seed=batch)
        out = torch.empty(batch, dim, dtype=bf16, device=d)
        call = lambda: selective_state_update_triton(**st, state_batch_indices=idx, out=out)  # noqa: E731
        moved = 2 * nbytes(st["state"]) + nbytes(
            *(st[k] for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")), idx, out
        )
        row = dict(kernel="selective_state_update", dtype="bf16 in, fp32 state", batch=batch, D=dim, N=n)
        t = dev.time(call, run)
        _bw(row, moved, t["ms"], copy_bps)
        gt = dev.graph_time(call, run)
        row["graph_ms"] = None if gt is None else round(gt["ms"], 5)
        row["graph_TBps"] = None if gt is None else round(moved / (gt["ms"] * 1e-3) / 1e12, 4)
        row["l2_resident"] = moved < dev.l2_bytes
        tt = dev.time(lambda: selective_state_update_torch(**st, state_batch_indices=idx), run)
        row["torch_ms"], row["x_torch"] = round(tt["ms"], 5), round(tt["ms"] / row["ms"], 2)
        decode_rows.append(row)
        cu = inputs.conv_inputs(batch, dim, w, dtype=bf16, state_dtype=f32, device=d, seed=batch + 1)
        cout = torch.empty(batch, dim, dtype=bf16, device=d)
        ccall = lambda: causal_conv1d_update_triton(**cu, conv_state_indices=idx, out=cout)  # noqa: E731
        cmoved = 2 * nbytes(cu["conv_state"]) + nbytes(cu["x"], cu["weight"], cu["bias"], idx, cout)
        crow = dict(kernel="causal_conv1d_update", dtype="bf16 in, fp32 state", batch=batch, D=dim, W=w)
        t = dev.time(ccall, run)
        _bw(crow, cmoved, t["ms"], copy_bps)
        gt = dev.graph_time(ccall, run)
        crow["graph_ms"] = None if gt is None else round(gt["ms"], 5)
        crow["graph_TBps"] = None if gt is None else round(cmoved / (gt["ms"] * 1e-3) / 1e12, 4)
        crow["l2_resident"] = cmoved < dev.l2_bytes
        tt = dev.time(lambda: causal_conv1d_update_torch(**cu, conv_state_indices=idx), run)
        crow["torch_ms"], crow["x_torch"] = round(tt["ms"], 5), round(tt["ms"] / crow["ms"], 2)
        decode_rows.append(crow)
        run.log(
            f"  decode B{batch:<4d} state_update {row['ms'] * 1e3:8.1f} us (graph {row['graph_ms']}) "
            f"torch {row['torch_ms'] * 1e3:8.1f} us | conv_update {crow['ms'] * 1e3:8.1f} us"
        )

    for batch in plan.decode_batches:
        guarded(f"decode kernels B{batch}", lambda batch=batch: decode_rows_for(batch))

    # -- prefill conv ------------------------------------------------------------------------------
    conv_rows = rec.setdefault("conv_fn", [])

    def conv_row(b: int, length: int) -> None:
        g = dev.generator(b + length)
        x = dev.randn((b, length, dim), bf16, g).transpose(1, 2)  # the model's layout
        weight = dev.randn((dim, w), bf16, g, scale=0.5)
        bias = dev.randn((dim,), bf16, g)
        out = torch.empty(b, dim, length, dtype=bf16, device=d)
        call = lambda: causal_conv1d_fn_triton(x, weight, bias, activation="silu", out=out)  # noqa: E731
        row = dict(kernel="causal_conv1d_fn", dtype="bf16", batch=b, L=length, D=dim, W=w)
        t0 = time.perf_counter()
        call()
        dev.sync()
        row["first_call_s"] = round(time.perf_counter() - t0, 3)
        t = dev.time(call, run)
        _bw(row, nbytes(x, weight, bias, out), t["ms"], copy_bps)
        row["l2_resident"] = row["bytes"] < dev.l2_bytes
        ref_out = causal_conv1d_fn_torch(x, weight, bias, activation="silu")
        row["torch_rel_err"] = rel_err(out, ref_out)
        tt = dev.time(lambda: causal_conv1d_fn_torch(x, weight, bias, activation="silu"), run, reps_cap=10)
        row["torch_ms"], row["x_torch"] = round(tt["ms"], 4), round(tt["ms"] / row["ms"], 2)
        conv_rows.append(row)
        run.log(
            f"  conv_fn B{b} L{length}: {row['ms']:.3f} ms {row['TBps']:.3f} TB/s, torch {row['torch_ms']} ms"
        )

    for b, length in plan.conv_shapes:
        guarded(f"causal_conv1d_fn B{b} L{length}", lambda b=b, length=length: conv_row(b, length))

    # -- the same long scan with the heuristic block instead of autotuning, all-contiguous, fp32 --
    eb, el = plan.scan_extra_shape
    guarded(f"selective_scan bf16 B{eb} L{el} heuristic", lambda: scan_row(eb, el, bf16, "model", False))
    guarded(
        f"selective_scan bf16 B{eb} L{el} contiguous", lambda: scan_row(eb, el, bf16, "contiguous", False)
    )
    guarded(f"selective_scan fp32 B{eb} L{el} heuristic", lambda: scan_row(eb, el, f32, "model", False))


# ------------------------------------------------------------------------------------------------
# Step 5 (run last): torch.compile of the PyTorch paths
# ------------------------------------------------------------------------------------------------
def step_torch_compile(run: Run, dev: Dev) -> None:
    """torch.compile of the PyTorch paths, timed at step 2's shapes into step 2's rows. A step of its
    own, and the last one: compiling is the slowest and least certain part (inductor's worker pool),
    so nothing else waits on it."""
    import torch

    from . import inputs
    from .selective_scan_triton import selective_scan_triton
    from .torch_ops import causal_conv1d_fn_torch, causal_conv1d_update_torch, selective_state_update_torch

    rec = run.step("torch_compile")
    timings = run.data["steps"].get("kernel_timings", {})
    scan_rows, decode_rows, conv_rows = (timings.get(k, []) for k in ("scan", "decode", "conv_fn"))
    if not (scan_rows or decode_rows or conv_rows):
        run.skip(rec, "torch.compile", "no kernel timings to compare with (step 2 did not run)")
        return
    plan, d = run.plan, dev.device
    dim, n, w = plan.dim, plan.dstate, plan.width
    bf16, f32 = torch.bfloat16, torch.float32

    def guarded(what: str, fn) -> None:
        _guarded(run, dev, rec, what, fn)

    backend = plan.compile_backend
    rec["backend"] = timings["compile_backend"] = backend

    def compile_scan_rows() -> None:
        scan = compiled_scan_reference(plan.compile_chunk, backend)
        for row in [r for r in scan_rows if r["sweep"]]:
            b, length = row["batch"], row["L"]
            try:
                run.check(need_s=5.0)
            except Deadline as err:
                row["compile_note"] = f"skipped: {err}"
                run.skip(rec, f"torch.compile scan B{b} L{length}", str(err))
                continue
            kw = make_scan(dev, b, dim, n, length, bf16, seed=b * 100_003 + length)
            t0 = time.perf_counter()
            y, _h = scan(**kw)
            dev.sync()
            row["compile_first_call_s"] = round(time.perf_counter() - t0, 3)
            ours = selective_scan_triton(**kw, return_last_state=True)[0]
            row["compile_rel_err"] = rel_err(y, ours)
            tt = dev.time(lambda kw=kw: scan(**kw), run, reps_cap=5, warmup=1)
            row["compile_ms"], row["x_compile"] = round(tt["ms"], 4), round(tt["ms"] / row["ms"], 2)
            run.log(
                f"  torch.compile scan B{b} L{length}: {row['compile_ms']} ms (first call {row['compile_first_call_s']} s)"
            )
            del kw, y, ours

    def compile_decode_rows() -> None:
        su = torch.compile(selective_state_update_torch, dynamic=True, backend=backend)
        cu_fn = torch.compile(causal_conv1d_update_torch, dynamic=True, backend=backend)
        for row in decode_rows:
            batch = row["batch"]
            try:
                run.check(need_s=3.0)
            except Deadline as err:
                row["compile_note"] = f"skipped: {err}"
                run.skip(rec, f"torch.compile {row['kernel']} B{batch}", str(err))
                continue
            g = torch.Generator().manual_seed(batch)
            idx = torch.randperm(batch, generator=g).to(device=d, dtype=torch.int32)
            if row["kernel"] == "selective_state_update":
                st = inputs.state_update_inputs(
                    batch, dim, n, dtype=bf16, state_dtype=f32, device=d, seed=batch
                )
                fn = lambda st=st, idx=idx: su(**st, state_batch_indices=idx)  # noqa: E731
            else:
                cu = inputs.conv_inputs(batch, dim, w, dtype=bf16, state_dtype=f32, device=d, seed=batch + 1)
                fn = lambda cu=cu, idx=idx: cu_fn(**cu, conv_state_indices=idx)  # noqa: E731
            t0 = time.perf_counter()
            fn()
            dev.sync()
            row["compile_first_call_s"] = round(time.perf_counter() - t0, 3)
            tt = dev.time(fn, run)
            row["compile_ms"], row["x_compile"] = round(tt["ms"], 5), round(tt["ms"] / row["ms"], 2)
        run.log(
            f"  torch.compile decode: {[(r['kernel'][:5], r['batch'], r.get('compile_ms')) for r in decode_rows]}"
        )

    def compile_conv_rows() -> None:
        fn_c = torch.compile(causal_conv1d_fn_torch, dynamic=True, backend=backend)
        for row in conv_rows:
            run.check(need_s=3.0)
            b, length = row["batch"], row["L"]
            g = dev.generator(b + length)
            x = dev.randn((b, length, dim), bf16, g).transpose(1, 2)
            weight = dev.randn((dim, w), bf16, g, scale=0.5)
            bias = dev.randn((dim,), bf16, g)
            t0 = time.perf_counter()
            fn_c(x, weight, bias, activation="silu")
            dev.sync()
            row["compile_first_call_s"] = round(time.perf_counter() - t0, 3)
            tt = dev.time(
                lambda x=x, weight=weight, bias=bias: fn_c(x, weight, bias, activation="silu"),
                run,
                reps_cap=10,
            )
            row["compile_ms"], row["x_compile"] = round(tt["ms"], 4), round(tt["ms"] / row["ms"], 2)

    guarded("torch.compile: selective scan", compile_scan_rows)
    guarded("torch.compile: decode steps", compile_decode_rows)
    guarded("torch.compile: prefill conv", compile_conv_rows)


# ------------------------------------------------------------------------------------------------
# Step 3: 10 000 concurrent sessions through the slot pool
# ------------------------------------------------------------------------------------------------
PAD_SLOT = -1


def step_sessions(run: Run, dev: Dev, parts: SimpleNamespace) -> None:
    import torch

    from .causal_conv1d_triton import causal_conv1d_update_triton
    from .selective_state_update_triton import selective_state_update_triton
    from .torch_ops import causal_conv1d_update_torch, selective_state_update_torch

    rec = run.step("sessions")
    plan, d = run.plan, dev.device
    dim, n, w = plan.dim, plan.dstate, plan.width
    sessions, capacity = plan.sessions, plan.pool_slots
    bf16, f32 = torch.bfloat16, torch.float32
    copy_bps = run.data["ceilings"]["copy_measured_Bps"]

    # A pool with churn: sessions start, a fifth end, as many new ones start, so live slots are scattered.
    pool = parts.SlotPool(capacity, idle_timeout_s=3600.0, what="session")
    t0 = time.perf_counter()
    for i in range(sessions):
        pool.start(f"s{i}")
    for i in range(0, sessions, 5):
        pool.end(f"s{i}")
    for i in range(sessions, sessions + len(range(0, sessions, 5))):
        pool.start(f"s{i}")
    keys = list(pool.live())
    rec["pool"] = {
        "capacity": capacity,
        "live": len(keys),
        "setup_ms": round((time.perf_counter() - t0) * 1e3, 2),
        "class": parts.where["SlotPool"],
    }

    def lookup():
        with pool.lease(keys):
            slots = [pool.get(k) for k in keys]
        host = torch.tensor([*slots, PAD_SLOT], dtype=torch.int32)  # the last row is a pad
        if dev.cuda:
            host = host.pin_memory()
        return host.to(d, non_blocking=True)

    samples = []
    for _ in range(5):
        t = time.perf_counter()
        idx = lookup()
        samples.append((time.perf_counter() - t) * 1e3)
    dev.sync()
    rows_n = sessions + 1
    rec["host_lookup_ms"] = round(statistics.median(samples), 3)
    run.log(
        f"  slot pool: {len(keys)} live of {capacity}; lookup + index upload {rec['host_lookup_ms']} ms (host)"
    )

    g = dev.generator(7)
    state = dev.randn((capacity, dim, n), f32, g)
    conv_state = dev.randn((capacity, dim, w - 1), f32, g)
    x, dt, z = (
        dev.randn((rows_n, dim), bf16, g),
        dev.randn((rows_n, dim), bf16, g, scale=0.5, shift=-1.5),
        dev.randn((rows_n, dim), bf16, g),
    )
    B, C = dev.randn((rows_n, n), bf16, g), dev.randn((rows_n, n), bf16, g)
    A = -torch.exp(torch.rand((dim, n), device=d, generator=g) * 2.5 - 1.2)
    D, dt_bias = dev.randn((dim,), f32, g), dev.randn((dim,), f32, g, scale=0.5)
    weight, cbias = dev.randn((dim, w), bf16, g, scale=0.5), dev.randn((dim,), bf16, g)
    out = torch.empty(rows_n, dim, dtype=bf16, device=d)
    cout = torch.empty(rows_n, dim, dtype=bf16, device=d)
    su_kw = dict(
        x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, dt_softplus=True, state_batch_indices=idx
    )

    # correctness at full size: the kernel against the PyTorch path on copies of the pool
    mine, theirs = state.clone(), state.clone()
    got = selective_state_update_triton(mine, **su_kw)
    want = selective_state_update_torch(theirs, **su_kw)
    live_slots = idx[:-1].long()
    free = torch.ones(capacity, dtype=torch.bool, device=d)
    free[live_slots] = False
    check = {
        "out_rel_err_vs_torch": rel_err(got[:-1], want[:-1]),
        "state_rel_err_vs_torch": rel_err(mine[live_slots], theirs[live_slots]),
        "pad_row_zero": bool((got[-1] == 0).all()),
        "free_slots_bit_unchanged": bool(torch.equal(mine[free], state[free])),
    }
    check["ok"] = (
        check["out_rel_err_vs_torch"] < TOL["bf16"]
        and check["state_rel_err_vs_torch"] < STATE_TOL
        and check["pad_row_zero"]
        and check["free_slots_bit_unchanged"]
    )
    rec["check"] = check
    run.log(f"  {sessions} sessions, kernel vs PyTorch path: {check}")
    del mine, theirs, got, want

    rows = rec.setdefault("rows", [])
    moved = 2 * sessions * dim * n * 4 + nbytes(x, dt, z, B, C, A, D, dt_bias, idx, out)
    row = dict(what="selective_state_update", sessions=sessions, D=dim, N=n, state="fp32", acts="bf16")
    t = dev.time(lambda: selective_state_update_triton(state, **su_kw, out=out), run)
    _bw(row, moved, t["ms"], copy_bps)
    tt = dev.time(lambda: selective_state_update_torch(state, **su_kw), run, reps_cap=10)
    row["torch_ms"], row["x_torch"] = round(tt["ms"], 4), round(tt["ms"] / row["ms"], 2)
    rows.append(row)
    run.log(
        f"  state update x{sessions}: {row['ms']:.3f} ms, {row['TBps']:.3f} TB/s = {row['pct_hbm']:.1f}% of HBM"
    )

    cmoved = 2 * sessions * dim * (w - 1) * 4 + nbytes(x, weight, cbias, idx, cout)
    crow = dict(what="causal_conv1d_update", sessions=sessions, D=dim, W=w, state="fp32", acts="bf16")
    t = dev.time(
        lambda: causal_conv1d_update_triton(x, conv_state, weight, cbias, "silu", idx, out=cout), run
    )
    _bw(crow, cmoved, t["ms"], copy_bps)
    tt = dev.time(
        lambda: causal_conv1d_update_torch(x, conv_state, weight, cbias, "silu", idx), run, reps_cap=10
    )
    crow["torch_ms"], crow["x_torch"] = round(tt["ms"], 4), round(tt["ms"] / crow["ms"], 2)
    rows.append(crow)

    def whole_step():
        i = lookup()
        xc = causal_conv1d_update_triton(x, conv_state, weight, cbias, "silu", i, out=cout)
        selective_state_update_triton(state, xc, dt, A, B, C, D, z, dt_bias, True, i, out=out)
        dev.sync()

    for _ in range(2):
        whole_step()
    samples = []
    for _ in range(10 if dev.cuda else 2):
        t = time.perf_counter()
        whole_step()
        samples.append((time.perf_counter() - t) * 1e3)
    rec["whole_step_ms"] = round(statistics.median(samples), 3)
    run.log(
        f"  whole layer step (pool lookup + upload + conv + state update, synced): {rec['whole_step_ms']} ms"
    )
    state = conv_state = None  # free the pools for the decoder's

    # the default checkpoint's decoder stepping every session, its pool in fp32 like serving's
    run.check(need_s=5.0)
    ckpt = parts.load_checkpoint(ROOT / "checkpoints" / "default", d)
    dec = ckpt.model.decoder.eval()
    mc = dec.config.mamba
    from types import SimpleNamespace as _State  # MambaState-like: .conv and .ssm are all step() reads

    pool_state = _State(
        conv=torch.zeros(mc.n_layers, capacity, mc.d_inner, mc.d_conv - 1, device=d),
        ssm=torch.zeros(mc.n_layers, capacity, mc.d_inner, mc.d_state, device=d),
    )
    tokens = torch.randint(4, ckpt.config.vocab_size, (rows_n,), device=d, generator=dev.generator(3))

    @torch.no_grad()
    def decoder_step():
        return dec.head(dec.mamba.step(dec.embed(tokens), pool_state, slots=idx))

    logits = decoder_step()
    dev.sync()
    finite = bool(torch.isfinite(logits[:-1]).all())
    t = dev.time(decoder_step, run, reps_cap=20, flush=False)
    rec["decoder"] = {
        "layers": mc.n_layers,
        "d_inner": mc.d_inner,
        "sessions": sessions,
        "ms": round(t["ms"], 4),
        "tokens_per_s": round(sessions / (t["ms"] * 1e-3)),
        "logits_finite": finite,
        "note": "embedding + 3 Mamba layers (projections, conv update, state update on the pool) + head; no search",
    }
    run.log(
        f"  checkpoint decoder step x{sessions}: {t['ms']:.3f} ms = {rec['decoder']['tokens_per_s']} tokens/s"
    )


# ------------------------------------------------------------------------------------------------
# Step 4: the offline Recognizer on the GPU against the CPU path
# ------------------------------------------------------------------------------------------------
def checkpoint_digest(path: Path) -> str:
    h = hashlib.sha256()
    for name in ("model.safetensors", "config.json", "tokenizer.model"):
        h.update((path / name).read_bytes())
    return h.hexdigest()[:16]


def length_batches(lengths, batch_size: int) -> list[list[int]]:
    """Clips sorted by length, in consecutive batches: the same batches on the CPU and the GPU."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def edit_distance(a, b) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def error_rate(hyps, refs, words: bool) -> float:
    num = den = 0
    for h, r in zip(hyps, refs):
        hs, rs = (h.split(), r.split()) if words else (h, r)
        num += edit_distance(hs, rs)
        den += len(rs)
    return num / max(den, 1)


def transcribe_timed(rec_obj, dev: Dev, audio: list) -> tuple[list[str], dict]:
    """Recognizer.transcribe, its three stages timed apart (synchronised)."""
    t0 = time.perf_counter()
    feats, lengths = rec_obj.features(audio)
    dev.sync()
    t1 = time.perf_counter()
    enc = rec_obj.encode(feats, lengths)
    dev.sync()
    t2 = time.perf_counter()
    texts = rec_obj.decode(enc)
    dev.sync()
    t3 = time.perf_counter()
    return texts, {"features_s": t1 - t0, "encode_s": t2 - t1, "decode_s": t3 - t2, "total_s": t3 - t0}


def load_clips(path: Path, sample_rate: int = SAMPLE_RATE) -> dict:
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        audio16, offsets = z["audio"], z["offsets"]
        meta = json.loads(str(z["meta"]))
        texts, cpu = [str(t) for t in z["texts"]], [str(t) for t in z["cpu_transcripts"]]
    audio = [
        audio16[offsets[i] : offsets[i + 1]].astype(np.float32) / 32768.0 for i in range(len(offsets) - 1)
    ]
    return {
        "audio": audio,
        "texts": texts,
        "cpu": cpu,
        "meta": meta,
        "source": str(path),
        "seconds": sum(len(a) for a in audio) / sample_rate,
    }


def sample_clips() -> dict:
    """Fallback when no prepared clips were carried: the repository's sample WAVs (stdlib wave)."""
    import wave

    import numpy as np

    folder = ROOT / "clients" / "samples"
    items = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines() if line.strip()]
    audio = []
    for it in items:
        with wave.open(str(folder / it["audio"])) as wf:
            audio.append(
                np.frombuffer(wf.readframes(wf.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
            )
    return {
        "audio": audio,
        "texts": [it["text"] for it in items],
        "cpu": None,
        "meta": {},
        "seconds": sum(len(a) for a in audio) / SAMPLE_RATE,
        "source": f"{folder} (fallback: no prepared clips)",
    }


def _gpu_kernels(dev: Dev):
    """On a GPU the dispatcher picks the Triton kernels by itself; on the dry run's CPU tensors it is
    told to (the interpreter runs them)."""
    return env(MAMBASERVE_KERNELS_BACKEND=None) if dev.cuda else env(MAMBASERVE_KERNELS_BACKEND="triton")


def step_recognizer(run: Run, dev: Dev, parts: SimpleNamespace, clips_path: Path) -> None:
    import torch

    rec = run.step("recognizer")
    plan = run.plan
    ckpt_dir = ROOT / "checkpoints" / "default"
    digest = checkpoint_digest(ckpt_dir)
    clips = load_clips(clips_path) if clips_path.exists() else sample_clips()
    meta = clips["meta"]
    batch_size = int(meta.get("batch_size", plan.rec_batch))
    if plan.clip_max_s:  # dry run: a few short clips, and the CPU path's transcripts of those made here
        clips["audio"] = [
            a[: int(plan.clip_max_s * SAMPLE_RATE)] for a in clips["audio"][: plan.rec_max_clips]
        ]
        clips["texts"] = clips["texts"][: plan.rec_max_clips]
        batch_size = plan.rec_batch
        clips["seconds"] = sum(len(a) for a in clips["audio"]) / SAMPLE_RATE
        clips["cpu"] = None
        rec["clips_cut_to_s"] = plan.clip_max_s
    cpu_recognizer: list = []  # made once, when needed

    def on_cpu():
        if not cpu_recognizer:
            cpu_recognizer.append(parts.Recognizer(ckpt_dir, device="cpu"))
        return cpu_recognizer[0]

    if clips["cpu"] is None:
        with env(MAMBASERVE_KERNELS_BACKEND="torch"):
            rec_cpu = on_cpu()
            clips["cpu"] = [""] * len(clips["audio"])
            for batch in length_batches([len(a) for a in clips["audio"]], batch_size):
                for i, text in zip(batch, rec_cpu.transcribe([clips["audio"][i] for i in batch])):
                    clips["cpu"][i] = text
        meta = meta | {
            "made": f"{_now_iso()}, in this run",
            "torch": torch.__version__,
            "host": platform.node(),
            "threads": torch.get_num_threads(),
        }
    cpu_ref = clips["cpu"]
    rec.update(
        clips=clips["source"],
        n_clips=len(clips["audio"]),
        audio_s=round(clips["seconds"], 2),
        batch_size=batch_size,
        checkpoint_digest=digest,
        recognizer=parts.where["Recognizer"],
    )
    if meta.get("checkpoint_digest") not in (None, digest):
        rec["warning"] = (
            f"the clips' CPU transcripts were made with checkpoint {meta.get('checkpoint_digest')}, "
            f"this run has {digest}: agreement is not meaningful"
        )
        run.log("  WARNING: " + rec["warning"])
    rec["cpu_reference"] = (
        {k: meta.get(k) for k in ("made", "torch", "host", "threads", "cpu_rtfx")} if cpu_ref else None
    )
    rec["settings"] = {
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "decoding": None,
    }
    batches = length_batches([len(a) for a in clips["audio"]], batch_size)

    with _gpu_kernels(dev):
        rec_gpu = parts.Recognizer(ckpt_dir, device=dev.device)
        rec["settings"]["decoding"] = asdict(rec_gpu.config.decoding)
        # Warm-up: every batch once, untimed (each new length can be a new Triton specialisation, so
        # compiles would otherwise land in the timed pass), while it takes under 40 % of the step's time.
        t0 = time.perf_counter()
        cut = int(plan.warmup_max_s * SAMPLE_RATE) if plan.warmup_max_s else None
        first_pass: dict[int, str] = {}
        warmed = 0
        for batch in batches:
            if warmed and time.perf_counter() - t0 > 0.4 * (run.step_deadline - t0):
                break
            texts, _ = transcribe_timed(rec_gpu, dev, [clips["audio"][i][:cut] for i in batch])
            warmed += 1
            if cut is None:
                first_pass.update(zip(batch, texts))
        rec["warmup"] = {"batches": warmed, "of": len(batches), "s": round(time.perf_counter() - t0, 2)}
        run.log(f"  warm-up: {rec['warmup']['batches']} of {len(batches)} batches in {rec['warmup']['s']} s")
        gpu = [""] * len(clips["audio"])
        totals = {"features_s": 0.0, "encode_s": 0.0, "decode_s": 0.0, "total_s": 0.0}
        done = 0
        for bi, batch in enumerate(batches):
            try:
                run.check()
            except Deadline as err:
                run.skip(rec, f"recognizer batches {bi}..{len(batches) - 1}", str(err))
                break
            texts, times = transcribe_timed(rec_gpu, dev, [clips["audio"][i] for i in batch])
            for i, text in zip(batch, texts):
                gpu[i] = text
            for k in totals:
                totals[k] += times[k]
            done += len(batch)
        scored = [i for b in batches[: len(batches)] for i in b][:done]
        audio_s = sum(len(clips["audio"][i]) for i in scored) / SAMPLE_RATE
        rec["timed"] = {
            "clips": done,
            "audio_s": round(audio_s, 2),
            **{k: round(v, 3) for k, v in totals.items()},
            "rtfx": round(audio_s / totals["total_s"], 1) if totals["total_s"] else None,
        }
        run.log(
            f"  GPU recognizer: {done} clips, {audio_s:.1f} s of audio in {totals['total_s']:.2f} s: "
            f"RTFx {rec['timed']['rtfx']} (features {totals['features_s']:.2f} s, encode {totals['encode_s']:.2f} s, "
            f"decode {totals['decode_s']:.2f} s)"
        )
        # agreement
        refs = [clips["texts"][i] for i in scored]
        gpu_s = [gpu[i] for i in scored]
        agree = {
            "gpu_wer_vs_text": round(error_rate(gpu_s, refs, True), 4),
            "gpu_cer_vs_text": round(error_rate(gpu_s, refs, False), 4),
        }
        if cpu_ref:
            cpu_s = [cpu_ref[i] for i in scored]
            same = [g == c for g, c in zip(gpu_s, cpu_s)]
            agree.update(
                equal=sum(same),
                of=len(same),
                equal_fraction=round(sum(same) / max(len(same), 1), 4),
                cer_gpu_vs_cpu=round(error_rate(gpu_s, cpu_s, False), 5),
                cpu_wer_vs_text=round(error_rate(cpu_s, refs, True), 4),
                differing=[
                    {"clip": i, "text": clips["texts"][i], "cpu": cpu_ref[i], "gpu": gpu[i]}
                    for i, s in zip(scored, same)
                    if not s
                ][:8],
            )
            run.log(
                f"  transcripts equal to the CPU path: {agree['equal']}/{agree['of']} (CER between them {agree['cer_gpu_vs_cpu']})"
            )
        if first_pass:  # the same batches twice on the GPU: the same transcripts?
            again = [i for i in scored if i in first_pass]
            agree["repeat_equal"] = f"{sum(first_pass[i] == gpu[i] for i in again)}/{len(again)}"
        rec["agreement"] = agree
        # more RTFx points with other batch sizes, if time remains
        extra = rec.setdefault("rtfx_by_batch", [{"batch_size": batch_size, "rtfx": rec["timed"]["rtfx"]}])
        for bs in plan.rec_extra_batches:
            try:
                run.check(need_s=rec["timed"]["total_s"] * 2.5 + 5)
            except Deadline as err:
                run.skip(rec, f"RTFx at batch size {bs}", str(err))
                continue
            big = length_batches([len(a) for a in clips["audio"]], bs)
            transcribe_timed(rec_gpu, dev, [clips["audio"][i] for i in big[0]])  # a new autotuning bucket
            tot = sum(
                transcribe_timed(rec_gpu, dev, [clips["audio"][i] for i in b])[1]["total_s"] for b in big
            )
            extra.append(
                {
                    "batch_size": bs,
                    "rtfx": round(clips["seconds"] / tot, 1),
                    "note": "after its first batch as warm-up",
                }
            )
            run.log(f"  RTFx at batch size {bs}: {extra[-1]['rtfx']}")
        del rec_gpu

    # The CPU path on this machine for the first batch: tells a GPU difference from a torch-version one.
    try:
        run.check(need_s=10.0)
    except Deadline as err:
        run.skip(rec, "CPU path on this machine (first batch)", str(err))
        return
    with env(MAMBASERVE_KERNELS_BACKEND="torch"):
        rec_cpu = on_cpu()
        first = batches[0]
        texts, times = transcribe_timed(
            rec_cpu, SimpleNamespace(sync=lambda: None), [clips["audio"][i] for i in first]
        )
    here = {"clips": len(first), "s": round(times["total_s"], 2), "threads": torch.get_num_threads()}
    if cpu_ref:
        here["equal_to_carried_cpu"] = sum(t == cpu_ref[i] for t, i in zip(texts, first))
    here["equal_to_gpu"] = sum(t == gpu[i] for t, i in zip(texts, first))
    rec["cpu_here_first_batch"] = here
    run.log(f"  CPU path here, first batch: {here}")


# ------------------------------------------------------------------------------------------------
# Goals and the Markdown table
# ------------------------------------------------------------------------------------------------
def goals(data: dict) -> list[dict]:
    steps = data.get("steps", {})
    dry = data.get("dry_run")
    out = []

    def goal(measure, target, value, met):
        out.append(
            {"measure": measure, "goal": target, "value": value, "met": None if dry or value is None else met}
        )

    sweep = [r for r in steps.get("kernel_timings", {}).get("scan", []) if r.get("sweep")]
    scans = [r for r in sweep if r["L"] == max(x["L"] for x in sweep)]
    best = max(scans, key=lambda r: r["pct_hbm"], default=None)
    goal(
        "selective scan prefill, long sequences: share of HBM bandwidth",
        ">= 80 %",
        None if best is None else f"{best['pct_hbm']} % (B{best['batch']} L{best['L']})",
        best is not None and best["pct_hbm"] >= 80,
    )
    vs = [r for r in scans if r.get("x_torch")]
    top = max(vs, key=lambda r: r["batch"], default=None)
    goal(
        "selective scan prefill, long sequences: faster than the PyTorch path",
        ">= 20x",
        None if top is None else f"{top['x_torch']}x (B{top['batch']} L{top['L']})",
        top is not None and top["x_torch"] >= 20,
    )
    srow = next(
        (r for r in steps.get("sessions", {}).get("rows", []) if r["what"] == "selective_state_update"), None
    )
    goal(
        f"state update, {srow['sessions'] if srow else 10_000} sessions: share of HBM bandwidth",
        ">= 70 %",
        None if srow is None else f"{srow['pct_hbm']} %",
        srow is not None and srow["pct_hbm"] >= 70,
    )
    r4 = steps.get("recognizer", {})
    rtfx = r4.get("timed", {}).get("rtfx")
    goal(
        "offline Recognizer on the GPU: real-time factor",
        ">= 2000x",
        None if rtfx is None else f"{rtfx}x",
        rtfx is not None and rtfx >= 2000,
    )
    ag = r4.get("agreement", {})
    goal(
        "offline Recognizer on the GPU: transcripts equal to the CPU path",
        "all",
        f"{ag['equal']}/{ag['of']}" if "equal" in ag else None,
        "equal" in ag and ag["equal"] == ag["of"],
    )
    return out


def _f(x, fmt="{:.3f}", none="-") -> str:
    if x is None:
        return none
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, float)):
        return fmt.format(x)
    return str(x)


def render_markdown(data: dict) -> str:
    env_ = data.get("environment", {})
    steps = data.get("steps", {})
    ceil = data.get("ceilings", {})
    lines: list[str] = []
    add = lines.append
    add("# GPU check results (`python -m mambaserve.kernels.gpu_check`)")
    add("")
    if data.get("dry_run"):
        add(
            "**DRY RUN on a CPU under the Triton interpreter, tiny shapes: every number below is meaningless; "
            "it only shows that the script runs end to end. Nothing here was measured on a GPU.**"
        )
        add("")
    add(
        f"Run {data.get('started')} on {env_.get('device', '?')} ({env_.get('sm_count', '?')} SMs, "
        f"L2 {_f(env_.get('l2_mb'), '{:.0f}')} MB, {_f(env_.get('memory_gb'), '{:.0f}')} GB); torch {env_.get('torch')}, "
        f"triton {env_.get('triton')}, driver {env_.get('driver', '?')}; {data.get('elapsed_s')} s of a "
        f"{data.get('budget_s')} s budget."
    )
    copy = ceil.get("copy_measured_Bps")
    add(
        f"Bandwidth ceiling: **{ceil.get('hbm_datasheet_Bps', 0) / 1e12:.1f} TB/s** ({ceil.get('hbm_source')}); "
        f"this run's device-to-device copy: {_f(copy and copy / 1e12)} TB/s (read + write; "
        f"{ceil.get('copy_seen_before_Bps', 0) / 1e12:.1f} TB/s seen before: {ceil.get('copy_seen_source')}). "
        "`% HBM` is achieved bytes/s over the datasheet figure, `% copy` over this run's copy. Bytes are the "
        "fewest a kernel must move (each input read once, each output written once); rows marked L2 fit in "
        "the L2 cache, so they measure more than HBM."
    )
    add("")
    add("## Goals (issue 14)")
    add("")
    add("| measure | goal | result | met |")
    add("|---|---|---|---|")
    for g in data.get("goals", []):
        met = {True: "yes", False: "**no**", None: "not measured"}[g["met"]]
        add(f"| {g['measure']} | {g['goal']} | {_f(g['value'], none='not measured')} | {met} |")
    add("")

    c = steps.get("correctness")
    if c:
        add(
            f"## 1. Correctness vs float64 references: {c.get('passed', 0)} passed, {c.get('failed', 0)} failed ({c.get('elapsed_s')} s)"
        )
        add("")
        add("| check | dtype | shape | rel. error | tolerance | ok | note |")
        add("|---|---|---|---:|---:|---|---|")
        for r in c.get("rows", []):
            add(
                f"| {r['check']} | {r['dtype']} | {r['shape']} | {_f(r['rel_err'], '{:.1e}')} | {_f(r['tol'], '{:.0e}')} | "
                f"{'yes' if r['ok'] else '**NO**'} | {r['note']} |"
            )
        add("")

    k = steps.get("kernel_timings")
    if k:
        add(
            f"## 2. Kernel timings ({k.get('elapsed_s')} s; CUDA events, median of repeats after warm-up, L2 flushed; "
            f"torch.compile backend {k.get('compile_backend')})"
        )
        add("")
        add(
            "d_inner 1536, d_state 16 at the real run's sizes; bf16 activations, fp32 states. `x torch` / `x compile`: "
            "the PyTorch path's / torch.compile's time over the kernel's."
        )
        add("")
        add(
            "| kernel | dtype | batch | L | layout | config | ms | TB/s | % HBM | % copy | first call s | torch ms | x torch | compile ms | x compile | rel. err vs torch / compile |"
        )
        add("|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in k.get("scan", []) + k.get("conv_fn", []):
            l2 = " (L2)" if r.get("l2_resident") else ""
            add(
                f"| {r['kernel']} | {r['dtype']} | {r['batch']} | {r['L']} | {r.get('layout', 'model')} | {r.get('config', '-')} | "
                f"{_f(r['ms'])}{l2} | {_f(r['TBps'])} | {_f(r['pct_hbm'], '{:.1f}')} | {_f(r.get('pct_copy'), '{:.1f}')} | "
                f"{_f(r.get('first_call_s'), '{:.2f}')} | {_f(r.get('torch_ms'))} | {_f(r.get('x_torch'), '{:.1f}')} | "
                f"{_f(r.get('compile_ms'))} | {_f(r.get('x_compile'), '{:.1f}')} | "
                f"{_f(r.get('torch_rel_err'), '{:.1e}')} / {_f(r.get('compile_rel_err'), '{:.1e}')} |"
            )
        add("")
        add(
            "Decode kernels (slot indices, a random permutation of the pool), µs per call: eager (Python wrapper and "
            "launch included) and under CUDA-graph replay (kernel only)."
        )
        add("")
        add(
            "| kernel | batch | eager µs | TB/s | % HBM | graph µs | graph TB/s | torch µs | x torch | compile µs | x compile |"
        )
        add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in k.get("decode", []):
            us = lambda v: None if v is None else v * 1e3  # noqa: E731
            l2 = " (L2)" if r.get("l2_resident") else ""
            add(
                f"| {r['kernel']} | {r['batch']} | {_f(us(r['ms']), '{:.1f}')}{l2} | {_f(r['TBps'])} | {_f(r['pct_hbm'], '{:.1f}')} | "
                f"{_f(us(r.get('graph_ms')), '{:.1f}')} | {_f(r.get('graph_TBps'))} | {_f(us(r.get('torch_ms')), '{:.1f}')} | "
                f"{_f(r.get('x_torch'), '{:.1f}')} | {_f(us(r.get('compile_ms')), '{:.1f}')} | {_f(r.get('x_compile'), '{:.1f}')} |"
            )
        add("")

    s = steps.get("sessions")
    if s:
        add(
            f"## 3. One decode step of {run_sessions(s)} sessions through the slot pool ({s.get('elapsed_s')} s)"
        )
        add("")
        pool = s.get("pool", {})
        add(
            f"Pool `{pool.get('class')}`: {pool.get('live')} live sessions of {pool.get('capacity')} slots (after churn), "
            f"plus one pad row. Host lookup + index upload: {_f(s.get('host_lookup_ms'))} ms; a whole layer step "
            f"(lookup, upload, conv update, state update, synchronised): {_f(s.get('whole_step_ms'))} ms. "
            f"Kernel vs PyTorch path at this size: {s.get('check')}."
        )
        add("")
        add("| kernel | sessions | ms | TB/s | % HBM | % copy | torch ms | x torch |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in s.get("rows", []):
            add(
                f"| {r['what']} | {r['sessions']} | {_f(r['ms'])} | {_f(r['TBps'])} | {_f(r['pct_hbm'], '{:.1f}')} | "
                f"{_f(r.get('pct_copy'), '{:.1f}')} | {_f(r.get('torch_ms'))} | {_f(r.get('x_torch'), '{:.1f}')} |"
            )
        dec = s.get("decoder")
        if dec:
            add("")
            add(
                f"The default checkpoint's decoder ({dec['layers']} layers, d_inner {dec['d_inner']}) stepping all "
                f"{dec['sessions']} sessions on its pool: {_f(dec['ms'])} ms per step = {dec['tokens_per_s']} tokens/s "
                f"({dec['note']}; logits finite: {_f(dec['logits_finite'])})."
            )
        add("")

    r = steps.get("recognizer")
    if r:
        add(f"## 4. Offline Recognizer on the GPU, kernels on ({r.get('elapsed_s')} s)")
        add("")
        t = r.get("timed", {})
        ag = r.get("agreement", {})
        add(
            f"{r.get('n_clips')} clips ({r.get('audio_s')} s of audio) from `{r.get('clips')}`, batches of "
            f"{r.get('batch_size')} sorted by length, checkpoint {r.get('checkpoint_digest')}, decoding "
            f"{(r.get('settings') or {}).get('decoding')}. Warm-up (compiles, autotuning; untimed): {r.get('warmup')}; "
            f"the same batches again on the GPU gave equal transcripts: {ag.get('repeat_equal', '-')}."
        )
        add("")
        add(
            "| clips | audio s | features s | encode s | decode s | total s | RTFx | equal to CPU | CER GPU vs CPU | WER GPU / CPU vs text |"
        )
        add("|---:|---:|---:|---:|---:|---:|---:|---|---:|---|")
        add(
            f"| {t.get('clips')} | {t.get('audio_s')} | {t.get('features_s')} | {t.get('encode_s')} | {t.get('decode_s')} | "
            f"{t.get('total_s')} | {t.get('rtfx')} | {ag.get('equal', '-')}/{ag.get('of', '-')} | {_f(ag.get('cer_gpu_vs_cpu'), '{:.4f}')} | "
            f"{_f(ag.get('gpu_wer_vs_text'), '{:.3f}')} / {_f(ag.get('cpu_wer_vs_text'), '{:.3f}')} |"
        )
        add("")
        if r.get("rtfx_by_batch"):
            add(
                "RTFx by batch size: "
                + ", ".join(f"{x['batch_size']}: {x['rtfx']}" for x in r["rtfx_by_batch"])
                + "."
            )
        if r.get("cpu_here_first_batch"):
            add(f"The CPU path on the same machine, first batch: {r['cpu_here_first_batch']}.")
        for dd in ag.get("differing", []):
            add(f"- clip {dd['clip']}: text “{dd['text']}”, CPU “{dd['cpu']}”, GPU “{dd['gpu']}”")
        if r.get("warning"):
            add(f"**Warning:** {r['warning']}")
        add("")

    add("## Steps, skips and errors")
    add("")
    add("| step | status | elapsed s | skipped | errors |")
    add("|---|---|---:|---:|---:|")
    for name, st in steps.items():
        add(
            f"| {name} | {st.get('status')} | {st.get('elapsed_s')} | {len(st.get('skipped', []))} | {len(st.get('errors', []))} |"
        )
    for name, st in steps.items():
        for sk in st.get("skipped", []):
            add(f"- {name}: skipped {sk['what']}: {sk['why']}")
        for er in st.get("errors", []):
            add(f"- {name}: **error** in {er['what']}: `{er['error'][:300]}`")
    add("")
    return "\n".join(lines)


def run_sessions(s: dict) -> str:
    rows = s.get("rows") or [{}]
    return str(rows[0].get("sessions", s.get("pool", {}).get("live", "?")))


# ------------------------------------------------------------------------------------------------
# --render: results JSON -> kernels/gpu_check_results.{json,md} and the section of BENCHMARKS.md
# ------------------------------------------------------------------------------------------------
def splice(doc: str, section: str) -> str:
    """Replace what lies between the markers of `doc` with `section`."""
    begin, end = doc.find(MARK_BEGIN), doc.find(MARK_END)
    if begin < 0 or end < begin:
        raise ValueError("BENCHMARKS.md has no gpu-check markers")
    return doc[: begin + len(MARK_BEGIN)] + "\n" + section.strip() + "\n" + doc[end:]


def publish(
    results_path: Path, kernels_dir: Path = ROOT / "kernels", benchmarks: Path = BENCHMARKS_MD
) -> None:
    data = json.loads(results_path.read_text())
    if data.get("dry_run"):
        raise SystemExit(
            f"{results_path} is a dry run (CPU, interpreter): it is never published as GPU results"
        )
    data["goals"] = goals(data)
    md = render_markdown(data)
    (kernels_dir / RESULTS_JSON).write_text(json.dumps(data, indent=1, default=str))
    (kernels_dir / RESULTS_MD).write_text(md)
    summary = [
        f"Measured {data.get('started')} on {data.get('environment', {}).get('device')} "
        f"(full tables: [gpu_check_results.md](gpu_check_results.md), raw: `gpu_check_results.json`).",
        "",
        "| measure | goal | result | met |",
        "|---|---|---|---|",
    ]
    for g in data["goals"]:
        summary.append(
            f"| {g['measure']} | {g['goal']} | {g['value']} | {({True: 'yes', False: 'no', None: '-'})[g['met']]} |"
        )
    benchmarks.write_text(splice(benchmarks.read_text(), "\n".join(summary)))
    print(
        f"wrote {kernels_dir / RESULTS_JSON}, {kernels_dir / RESULTS_MD} and the results section of {benchmarks}"
    )


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------
def environment(dev: Dev) -> dict:
    import subprocess

    import numpy
    import torch
    import triton

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "numpy": numpy.__version__,
        "cuda_runtime": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
    }
    if dev.cuda:
        p = torch.cuda.get_device_properties(0)
        out.update(
            device=p.name,
            capability=f"{p.major}.{p.minor}",
            sm_count=p.multi_processor_count,
            l2_mb=p.L2_cache_size / 2**20,
            memory_gb=p.total_memory / 1e9,
        )
        with contextlib.suppress(Exception):  # read-only query; never changes a setting
            q = subprocess.run(
                [
                    "nvidia-smi",
                    "--query-gpu=driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit",
                    "--format=csv,noheader",
                ],
                capture_output=True,
                text=True,
                timeout=20,
            )
            out["driver"], out["nvidia_smi"] = q.stdout.split(",")[0].strip(), q.stdout.strip()
    else:
        out.update(device="CPU (dry run, Triton interpreter)", sm_count=None, l2_mb=None, memory_gb=None)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU, Triton interpreter, tiny shapes: checks the script"
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help=f"where {RESULTS_JSON} and {RESULTS_MD} go (default: $OUT when set, else ./gpu_check_out)",
    )
    parser.add_argument(
        "--clips", type=Path, default=DEFAULT_CLIPS, help="prepared clips (.npz, --prepare-clips)"
    )
    parser.add_argument(
        "--budget-s", type=float, default=None, help="global deadline in seconds (default 420; dry run 900)"
    )
    parser.add_argument(
        "--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)} (or 1-5)"
    )
    parser.add_argument(
        "--prepare-clips", action="store_true", help="make --clips on a CPU machine with espeak-ng"
    )
    parser.add_argument("--n-clips", type=int, default=256)
    parser.add_argument("--max-words", type=int, default=10)
    parser.add_argument(
        "--batch-size", type=int, default=REAL.rec_batch, help="--prepare-clips: batches of the CPU path"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--render", type=Path, default=None, help="print the Markdown of a results JSON")
    parser.add_argument(
        "--publish",
        action="store_true",
        help="with --render: write kernels/gpu_check_results.* and BENCHMARKS.md",
    )
    args = parser.parse_args(argv)

    if args.render:
        if args.publish:
            publish(args.render)
        else:
            data = json.loads(args.render.read_text())
            data["goals"] = goals(data)
            print(render_markdown(data))
        return 0
    if args.prepare_clips:  # synthesis lives in the training layer; run it there, not imported from here
        import subprocess

        cmd = [
            sys.executable,
            "-m",
            "mambaserve.training.gpu_clips",
            "--clips",
            str(args.clips),
            "--n-clips",
            str(args.n_clips),
            "--max-words",
            str(args.max_words),
            "--batch-size",
            str(args.batch_size),
            "--workers",
            str(args.workers),
        ]
        return subprocess.run(cmd, check=False).returncode
        return 0

    names = []
    for s in args.steps.split(","):
        s = s.strip()
        names.append(STEPS[int(s) - 1] if s.isdigit() else s)
    unknown = [s for s in names if s not in STEPS]
    if unknown:
        parser.error(f"unknown steps {unknown}; choose from {STEPS}")

    if args.dry_run:
        # Before anything imports triton.language: the interpreter must be on from the start.
        if os.environ.get("TRITON_INTERPRET") != "1" and "triton" in sys.modules:
            parser.error("--dry-run: set TRITON_INTERPRET=1 before triton is imported")
        os.environ["TRITON_INTERPRET"] = "1"
        hide_device_absent()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(
            "mambaserve.kernels.gpu_check needs a CUDA GPU (none is visible): nothing was measured.\n"
            "`--dry-run` checks the script on a CPU under the Triton interpreter."
        )
        return 2
    plan = DRY if args.dry_run else REAL
    out_dir = args.out_dir or Path(os.environ.get("OUT") or "gpu_check_out")
    budget = args.budget_s if args.budget_s is not None else plan.budget_s
    run = Run(plan, args.dry_run, out_dir, budget, tuple(names))
    dev = Dev(args.dry_run)
    run.data["environment"] = environment(dev)
    run.log(
        f"gpu_check {'DRY RUN (CPU, Triton interpreter; timings meaningless)' if args.dry_run else 'on ' + run.data['environment']['device']}"
        f": steps {', '.join(names)}; budget {budget:.0f} s; results -> {out_dir}"
    )
    run.save()

    parts = None
    later = list(names)
    for name in names:
        later.remove(name)
        rec = run.step(name)
        start = time.perf_counter()
        scale = 3 if args.dry_run else 1  # the interpreter is slow
        reserve = sum(RESERVE_S[x] for x in later) * scale
        run.step_name = name
        run.step_deadline = min(start + SHARE_S[name] * scale, run.deadline - reserve)
        left, least = run.deadline - start, 0.25 * RESERVE_S[name] * scale
        if left < least:
            rec["status"] = "skipped"
            run.skip(
                rec, name, f"global deadline: {max(left, 0):.0f} s left, a step needs {least:.0f} s to start"
            )
            run.save()
            continue
        run.log(f"step {STEPS.index(name) + 1} {name}: up to {run.step_deadline - start:.0f} s")
        try:
            if name in ("sessions", "recognizer") and parts is None:
                parts = project_parts()
                run.data["parts"] = parts.where
            if name == "correctness":
                step_correctness(run, dev)
            elif name == "kernel_timings":
                step_kernel_timings(run, dev)
            elif name == "sessions":
                step_sessions(run, dev, parts)
            elif name == "recognizer":
                step_recognizer(run, dev, parts, args.clips)
            else:
                step_torch_compile(run, dev)
            rec["status"] = "partial" if rec["skipped"] or rec["errors"] else "ok"
        except Deadline as err:
            rec["status"] = "partial"
            run.skip(rec, f"the rest of {name}", str(err))
        except Exception as err:
            rec["status"] = "error"
            run.error(rec, name, err)
        finally:
            if dev.cuda:
                with contextlib.suppress(Exception):
                    torch.cuda.synchronize()
                    rec["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
                    torch.cuda.reset_peak_memory_stats()
                    torch.cuda.empty_cache()
        rec["elapsed_s"] = round(time.perf_counter() - start, 2)
        run.log(f"step {name}: {rec['status']} in {rec['elapsed_s']} s")
        run.save()

    run.save()
    print()
    print("| step | status | s | skipped | errors |")
    for name, st in run.data["steps"].items():
        print(
            f"| {name} | {st['status']} | {st.get('elapsed_s')} | {len(st['skipped'])} | {len(st['errors'])} |"
        )
    for g in run.data["goals"]:
        print(f"goal: {g['measure']}: {g['value']} (goal {g['goal']}; met: {g['met']})")
    print(f"total {run.elapsed():.1f} s; wrote {out_dir / RESULTS_JSON} and {out_dir / RESULTS_MD}")
    bad = any(st["status"] == "error" or st["errors"] for st in run.data["steps"].values())
    failed = run.data["steps"].get("correctness", {}).get("failed", 0)
    return 1 if bad or failed else 0


if __name__ == "__main__":
    sys.exit(main())
