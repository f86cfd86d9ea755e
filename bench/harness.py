"""One harness for every benchmark: machine facts, the JSON result, the README table.

A benchmark is a function ``run(quick: bool) -> dict`` returning at least ``metric``, ``value``,
``unit``, ``target`` and ``baseline`` (the reference measured in the same run, or None), plus any
``details``. The harness adds ``name``, ``command``, ``machine`` and ``measured_at``, writes
``bench/results/NAME.json`` and regenerates the table in ``bench/README.md``.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import importlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from convrnn.train.cpu import cpu_isa, cpu_model, cpuinfo_field, native_bf16  # noqa: F401 (the benches import them from here)

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
ROOT = BENCH_DIR.parent
SHARED_DATA = Path(os.environ.get("CONVRNN_SHARED_DATA", ROOT.parent / "shared" / "data"))

# name -> "module:function" (modules under bench/)
REGISTRY = {
    "fonts_accuracy": "bench.fonts:fonts_accuracy",
    "fwtk_throughput": "bench.fonts:fwtk_throughput",
    "mdlstm_speedup": "bench.mdlstm_speed:run",
    "charlm_val_5min": "bench.charlm:charlm_val_5min",
    "charlm_acc_5min": "bench.charlm:charlm_acc_5min",
    "charlm_val_105s": "bench.charlm:charlm_val_105s",
    "charlm_throughput": "bench.charlm:charlm_throughput",
    "charlm_sample_speed": "bench.charlm:charlm_sample_speed",
    "charlm_long": "bench.charlm:charlm_long",
    "digits_sum": "bench.digits:digits_sum",
    "digits_product": "bench.digits:digits_product",
    "digits_vs_keras": "bench.digits:digits_vs_keras",
    "digits_vs_torch": "bench.digits:digits_vs_torch",
    "lines_digits_cer": "bench.lines:lines_digits_cer",
    "lines_text_cer": "bench.lines:lines_text_cer",
    "lines_copiste": "bench.copiste:lines_copiste",
    "lines_copiste_vs_kraken": "bench.copiste:lines_copiste_vs_kraken",
    "lines_copiste_presets": "bench.copiste:lines_copiste_presets",
    "lines_predict_speed": "bench.copiste:lines_predict_speed",
    "gpu_precision": "bench.gpu_precision:run",
}


def machine() -> dict:
    import torch
    dev = "cpu"
    if torch.cuda.is_available():
        dev = f"cuda ({torch.cuda.get_device_name(0)})"
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None,)
    return {"cpu": cpu_model(), "cpu_isa": cpu_isa(), "cpu_family_model": f"{cpuinfo_field('cpu family')}/"
            f"{cpuinfo_field('model')}", "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_avg_1min_at_end": load[0],
            "torch": torch.__version__, "python": platform.python_version(), "device": dev,
            "platform": platform.platform()}


def paired_ratio(ours: list[float], theirs: list[float]) -> dict:
    """A speed ratio from interleaved rounds (``ours[r]`` and ``theirs[r]`` ran back to back): the median
    over rounds of ``ours[r] / theirs[r]``. Both sides of a round see the same machine conditions, and the
    median leaves out a round that one side ran through a burst or a stall of the machine; the ratio of
    each side's best round, given beside it, follows whichever side had the luckiest round."""
    rounds = [a / b for a, b in zip(ours, theirs)]
    return {"value": statistics.median(rounds), "round_ratios": [round(r, 3) for r in rounds],
            "best_over_best": max(ours) / max(theirs)}


def result_record(name: str, result: dict, command: str) -> dict:
    """A benchmark's result with its name, command, machine and time: what bench/results/NAME.json holds."""
    out = {"name": name, **result, "command": command, "machine": machine(),
           "measured_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    for key in ("metric", "value", "unit", "target", "baseline"):
        out.setdefault(key, None)
    return out


def write_result(name: str, result: dict, command: str) -> Path:
    out = result_record(name, result, command)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    update_readme()
    return path


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def update_readme() -> None:
    """Regenerate the results table between the markers in bench/README.md."""
    readme = BENCH_DIR / "README.md"
    rows = ["| name | metric | value | unit | target | baseline | met | measured at | machine |",
            "|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(RESULTS.glob("*.json")):
        r = json.loads(p.read_text())
        m = r.get("machine", {})
        met = r.get("met")
        rows.append(f"| {r['name']} | {r.get('metric', '')} | {_fmt(r.get('value'))} | {r.get('unit', '')} | "
                    f"{r.get('target_text', _fmt(r.get('target')))} | {_fmt(r.get('baseline'))} | "
                    f"{'yes' if met else ('no' if met is not None else '-')} | {r.get('measured_at', '')} | "
                    f"{m.get('cpu', '')}{' (' + m['cpu_isa'] + ')' if m.get('cpu_isa') else ''}, "
                    f"{m.get('torch_threads', '')} threads, {m.get('device', '')} |")
    table = "\n".join(rows)
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    text = readme.read_text() if readme.exists() else f"# Benchmarks\n\n{start}\n{end}\n"
    if start not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{table}\n{end}{tail}")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "list"):
        print("usage: python -m bench NAME [--quick]\n\nbenchmarks:\n  " + "\n  ".join(sorted(REGISTRY)))
        return 0 if argv else 2
    name, quick = argv[0], "--quick" in argv[1:]
    if name not in REGISTRY:
        print(f"error: unknown benchmark {name!r}; known: {', '.join(sorted(REGISTRY))}", file=sys.stderr)
        return 2
    module, func = REGISTRY[name].split(":")
    result = getattr(importlib.import_module(module), func)(quick=quick)
    command = "python -m bench " + " ".join(argv)
    if quick:  # a smoke run of the code path: its numbers must not replace a measured result
        print(json.dumps(result_record(name, result, command), indent=2, default=str))
        print(f"bench {name} --quick: a smoke run, not written to {RESULTS}", file=sys.stderr)
        return 0
    path = write_result(name, result, command)
    print(json.dumps(json.loads(path.read_text()), indent=2))
    return 0


@contextlib.contextmanager
def trained(recipe: str, settings: dict, *, checkpoint: str = "best"):
    """Train ``recipe`` with ``settings`` (config overrides) into a temporary run directory, as
    ``convrnn train`` does; yields ``(result, loaded, bundle, wall_seconds)``: the TrainResult, the run's
    ``checkpoint`` (best or last) loaded, and the run's data rebuilt. The directory is removed after."""
    from convrnn.infer.run import load_run, run_config
    from convrnn.recipes.runner import train

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = train(recipe, {**settings, "train.run_dir": f"{tmp}/run"})
        wall = time.perf_counter() - t0
        loaded = load_run(result.run / "checkpoints" / f"{checkpoint}.pt")
        cfg = run_config(loaded)
        yield result, loaded, loaded.recipe.make_data(cfg.data, cfg.train), wall
