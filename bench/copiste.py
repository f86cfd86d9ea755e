"""Benchmarks of the lines recipe on real handwriting: Copiste d'un jour (ALTO pages from eScriptorium).

- ``lines_copiste``: ``convrnn train lines`` on ``copiste/train`` (validated on ``copiste/val``) for
  ``BUDGET`` seconds of training on 2 CPU threads, the recipe's defaults otherwise; the best checkpoint
  reads every test line with four decoders (greedy; beam 10; beam 10 restricted to the words of the
  training transcriptions; beam 10 scored by a character 3-gram model fitted on them). Value: greedy CER
  over all test lines; WER and the CER of the prose lines (without the lines that ``flags.tsv`` marks
  ``consent``, ``header`` or ``pagenum``) per decoder in ``details``, with the test characters that are
  not in the model's alphabet. The run is kept in ``RUNS/lines_copiste`` for the two below.
- ``lines_copiste_vs_kraken``: kraken 7 (``ketos train -f alto``, its default recognition model) on the
  same train/val pages for the same wall-clock time as convrnn's whole training run, stopped by SIGTERM;
  its best checkpoint (by validation character accuracy) scored by ``ketos test`` on the test pages.
  Value: kraken's test CER / convrnn's (greedy, all lines). Short probes of kraken at batch sizes 1, 4
  and 16 come first: they report each batch size's training rate and set how often the full run
  validates. Both systems' test pages are also scored by this module's own scorer (kraken's through
  ``kraken ... ocr`` on the same line segmentation).
- ``lines_copiste_presets``: the three line-model presets (``crnn``, ``puigcerver2017``, ``pham2014``)
  trained for ``PRESET_BUDGET`` seconds each on the same pages, with the recipe's other defaults; the
  test CER of each (greedy). Value: the best one's.
- ``lines_predict_speed``: lines per second of ``convrnn predict`` over the test pages (greedy and
  beam 10), as a user runs it (a fresh process, no cached line images), against ``kraken ... ocr`` on
  the same pages with the same segmentation, both on 2 threads and 2 cores. Value: convrnn greedy
  lines/s / kraken lines/s.

kraken runs from its own virtual environment (``KRAKEN_VENV``, default ``CACHE/kraken-venv``), which
this module creates with ``python3 -m venv`` and ``pip install kraken==7.1.1`` when it is missing; it
pulls a CUDA build of torch, so it never goes into the project's environment.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Optional

import torch

from bench.harness import ROOT, SHARED_DATA, cpu_model

COPISTE = SHARED_DATA / "copiste"
THREADS = 2
BUDGET = 3600.0            # seconds of convrnn training (train.max_time)
QUICK_BUDGET = 60.0
CACHE = Path(os.environ.get("CONVRNN_BENCH_CACHE", Path.home() / ".cache" / "convrnn-bench"))
RUNS = CACHE / "runs"
KRAKEN_DIR = CACHE / "kraken"                    # kraken's kept models and logs
KRAKEN_VERSION = "7.1.1"
REPEATED = {"consent", "header", "pagenum"}      # flags of the lines left out of the "prose" scores
BEAM = 10
LM_ORDER = 3                                     # the character n-gram order of CTCTask.with_decoding
PROBE_BATCHES = (1, 4, 16)                       # kraken batch sizes probed for their training rate
PROBE_SECONDS = 300.0
QUICK_PROBE_SECONDS = 15.0
# the kraken batch sizes that get a full-budget run (KRAKEN_FULL_BATCHES=1,4 to add one); the value uses
# the one that reads the test pages best
FULL_BATCHES = tuple(int(b) for b in os.environ.get("KRAKEN_FULL_BATCHES", "1").split(",") if b.strip())
# where the full run's first validation should land, as a fraction of the expected training lines: late
# enough that validations (the 645 validation lines cost kraken minutes each) do not eat the budget,
# early enough to happen when the probe overestimated the rate
FIRST_VALIDATION = 0.5
STOP_GRACE = 300.0        # seconds kraken may take after SIGTERM to write checkpoint_abort.ckpt
SPEED_FALLBACK_SECONDS = 120.0  # lines_predict_speed trains this long when no lines_copiste run exists
QUICK_PAGES = {"train": 2, "val": 1, "test": 2}  # quick runs: pages per split (kraken; convrnn's test)


def _log(msg: str) -> None:
    print(f"[copiste] {msg}", file=sys.stderr, flush=True)


def _q(args: Iterable) -> str:
    return " ".join(shlex.quote(str(a)) for a in args)


# ------------------------------------------------------------------------------------------------ data

def _require_data() -> None:
    if not (COPISTE / "train").is_dir():
        raise SystemExit(f"error: Copiste not found at {COPISTE} (set CONVRNN_SHARED_DATA)")


def _pages(split: str, quick: bool) -> list[Path]:
    """The split's page XML files, sorted; in a quick run the first few, and for the test split the first
    page plus the first with a character that no training line has (so that the smoke run goes through
    characters outside the model's alphabet)."""
    pages = sorted((COPISTE / split).glob("*.xml"))
    if not quick:
        return pages
    if split != "test":
        return pages[:QUICK_PAGES[split]]
    known = set("".join(_page_texts(sorted((COPISTE / "train").glob("*.xml"))).values()))
    unseen = [p for p in pages[1:] if set("".join(_page_texts([p]).values())) - known]
    return [pages[0], *unseen[:1]] if unseen else pages[:QUICK_PAGES["test"]]


def _key(page: str | Path, line_id: str) -> tuple[str, str]:
    """A line's key for scoring: (page file stem, line ID), as flags.tsv names lines."""
    return Path(page).stem, line_id


def _repeated_lines() -> set[tuple[str, str]]:
    """Lines flagged consent, header or pagenum in flags.tsv."""
    out = set()
    rows = (COPISTE / "flags.tsv").read_text(encoding="utf-8").splitlines()
    for row in rows[1:]:
        split, page, line_id, flags = row.split("\t")
        if REPEATED & set(flags.split(",")):
            out.add(_key(page, line_id))
    return out


def _page_texts(paths: Iterable[Path], normalize: str = "NFC", *, empty: bool = False) -> dict[tuple[str, str], str]:
    """Every transcribed line of the pages, normalised as the lines recipe reads it (Unicode form,
    whitespace runs collapsed); lines without text are left out, as in training and evaluation, unless
    ``empty`` (a recognised page, where an empty line is a line read as nothing)."""
    from convrnn.data.pages import normalize_text, parse_page

    out = {}
    for path in paths:
        for line in parse_page(path).lines:
            text = normalize_text(line.text or "", normalize)
            if text or empty:
                out[_key(path, line.id)] = text
    return out


# --------------------------------------------------------------------------------------------- scoring

def score(refs: dict, hyps: dict, prose: set) -> dict:
    """CER and WER of ``hyps`` against ``refs`` (both keyed by line), over all reference lines and over
    the prose lines; a line without a hypothesis counts as read empty."""
    from convrnn.tasks.text_metrics import error_counts

    def rates(keys: list) -> dict:
        r = [refs[k] for k in keys]
        h = [hyps.get(k, "") for k in keys]
        ce, cn = error_counts(r, h, unit="char")
        we, wn = error_counts(r, h, unit="word")
        return {"cer": ce / max(cn, 1), "wer": we / max(wn, 1), "char_edits": ce, "chars": cn,
                "word_edits": we, "words": wn, "lines": len(keys),
                "lines_missing_from_output": sum(k not in hyps for k in keys)}

    keys = sorted(refs)
    return {"all": rates(keys), "prose": rates([k for k in keys if k not in prose])}


# ---------------------------------------------------------------------------------------- convrnn run

def _train_overrides(quick: bool) -> dict:
    return {"data.data": str(COPISTE / "train" / "*.xml"), "data.val": str(COPISTE / "val"),
            "data.test": str(COPISTE / "test"), "train.max_time": QUICK_BUDGET if quick else BUDGET,
            "train.threads": THREADS}


def _run_dir(name: str, quick: bool) -> Path:
    return RUNS / (f"{name}-quick" if quick else name)


def _resolved_config(overrides: dict) -> dict:
    """The full config a run with ``overrides`` trains with (the recipe's defaults filled in), without
    its run directory: what decides whether a kept run can stand for a new one."""
    from convrnn.recipes.base import get_recipe
    cfg = get_recipe("lines").config(overrides).to_dict()
    cfg["train"].pop("run_dir", None)
    return cfg


def same_config(kept: dict, now: dict) -> bool:
    """Whether a kept run's config is ``now``'s, counting a setting the kept config lacks (added to
    convrnn after the run) as equal when ``now`` has its default: a new setting's default keeps what
    runs did before it existed."""
    defaults = _resolved_config({})
    if set(kept) != set(now):
        return False
    for section, values in now.items():
        old = kept[section]
        if not isinstance(values, dict) or not isinstance(old, dict):
            if old != values:
                return False
            continue
        if set(old) - set(values):
            return False
        for key, value in values.items():
            if (old[key] if key in old else defaults.get(section, {}).get(key)) != value:
                return False
    return True


def _git_commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"], capture_output=True,
                               text=True, timeout=30).stdout.strip()
        return head + ("+uncommitted src changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def train_convrnn(overrides: dict, run: Path) -> dict:
    """Train the lines recipe into ``run`` (a previous run there is replaced once the new one has
    finished; kept if it fails); what the run did, also written to ``run/bench.json``."""
    from convrnn.recipes.runner import train

    torch.set_num_threads(THREADS)
    previous = run.with_name(run.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    if run.exists():
        run.rename(previous)
    run.parent.mkdir(parents=True, exist_ok=True)
    _log(f"convrnn: training lines into {run} ({overrides['train.max_time']:g} s of training, {THREADS} threads)")
    # an empty line cache, as on a first run: the wall time includes cutting every line from its page
    # (and kraken, which gets the same wall time, gains by it)
    saved_cache = os.environ.get("CONVRNN_CACHE")
    with tempfile.TemporaryDirectory(prefix="convrnn-bench-cache-") as cache:
        os.environ["CONVRNN_CACHE"] = cache
        t0 = time.perf_counter()
        try:
            result = train("lines", {**overrides, "train.run_dir": str(run)})
        except BaseException:
            shutil.rmtree(run, ignore_errors=True)
            if previous.exists():
                previous.rename(run)
            raise
        finally:
            if saved_cache is None:
                os.environ.pop("CONVRNN_CACHE", None)
            else:
                os.environ["CONVRNN_CACHE"] = saved_cache
        wall = time.perf_counter() - t0
    shutil.rmtree(previous, ignore_errors=True)
    info = {"run": str(run), "config": _resolved_config(overrides), "cpu": cpu_model(), "commit": _git_commit(),
            "steps": result.step, "epochs": result.epochs, "training_seconds": round(result.train_time, 1),
            "wall_seconds_incl_data_and_validation": round(wall, 1), "line_cache": "empty at the start",
            "cores": len(os.sched_getaffinity(0)), "best_step": result.best_step,
            "best_val": dict(result.best_metrics), "last_val": dict(result.metrics),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (run / "bench.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    _log(f"convrnn: {result.step} steps in {wall:.0f} s wall; best validation {dict(result.best_metrics)}")
    return info


def kept_run(run: Path) -> Optional[dict]:
    """The record of the run kept at ``run``, if it finished."""
    info = run / "bench.json"
    if info.is_file() and (run / "checkpoints").is_dir():
        return json.loads(info.read_text())
    return None


def convrnn_run(quick: bool, *, reuse: bool) -> tuple[dict, bool]:
    """lines_copiste's run: the kept one when ``reuse`` and it was trained with the same config on this
    CPU model (``CONVRNN_BENCH_RETRAIN=1`` forces a new one), else a new one. Returns (record, reused)."""
    overrides = _train_overrides(quick)
    run = _run_dir("lines_copiste", quick)
    info = kept_run(run)
    if reuse and info and not os.environ.get("CONVRNN_BENCH_RETRAIN") \
            and same_config(info.get("config") or {}, _resolved_config(overrides)) and info.get("cpu") == cpu_model():
        _log(f"convrnn: using the kept run {run} (trained {info.get('measured_at')})")
        return info, True
    return train_convrnn(overrides, run), False


def convrnn_commands(run: Path, overrides: dict) -> dict:
    """The convrnn CLI commands that train and score the run."""
    test = COPISTE / "test"
    train = ["convrnn", "train", "lines", "--data", overrides["data.data"], "--val", overrides["data.val"],
             "--test", overrides["data.test"], "--max-time", f"{overrides['train.max_time']:g}",
             "--threads", THREADS, "--run-dir", run]
    ev = ["convrnn", "eval", run, "--split", "test"]
    return {"train": _q(train), "eval_greedy": _q(ev), "eval_beam": _q([*ev, "--beam", BEAM]),
            "eval_beam_lexicon": _q([*ev, "--beam", BEAM, "--lexicon", "train-words.txt"]),
            "eval_beam_lm": _q([*ev, "--beam", BEAM, "--lm", "train-text.txt"]),
            "predict_pages": _q(["convrnn", "predict", run, f"{test}/*.xml", "--out", "recognised/"])}


def _data_settings(cfg: dict) -> dict:
    """The data settings of a run's saved config that shape what it trains on (lines and distortions)."""
    from dataclasses import fields
    from convrnn.data.augment import LineAugment
    keys = ("height", "max_width", "normalize", "augment", *(f.name for f in fields(LineAugment)))
    return {k: cfg["data"][k] for k in keys if k in cfg["data"]}


class Reader:
    """A run's best checkpoint, reading test lines: the model, its task, the line height and the text
    normal form it was trained with."""

    def __init__(self, run: Path):
        from convrnn.infer.run import load_run
        self.loaded = load_run(run)
        self.model, self.task = self.loaded.model, self.loaded.task
        self.height = int(self.loaded.ckpt["input_shape"][1])
        self.normalize = self.loaded.ckpt["config"]["data"].get("normalize", "NFC")

    def lines(self, pages: list[Path]):
        """Every transcribed line of ``pages`` (all in one folder; names ``page.xml:line_id``), at any width."""
        from convrnn.data.lines import LineSet, read_lines
        folder = pages[0].parent
        whole = sorted(folder.glob("*.xml")) == sorted(pages)
        sources = [str(folder)] if whole else [str(p) for p in pages]  # a folder's pages are cut in parallel
        parts = [read_lines(s, height=self.height, normalize=self.normalize, max_width=0) for s in sources]
        out = LineSet([im for s in parts for im in s.images], [t for s in parts for t in s.texts],
                      [n for s in parts for n in s.names])
        out.skipped = {k: v for s in parts for k, v in s.skipped.items()}
        return out

    def read(self, lines, decoding: dict) -> tuple[dict, float, float]:
        """Texts of ``lines`` keyed by line, the seconds taken to set the decoder up (a language model is
        fitted there) and to read them (model and decoder)."""
        from convrnn.recipes.lines import recognise
        t0 = time.perf_counter()
        decode = self.task.with_decoding(**decoding).decode if decoding else self.task.decode
        t1 = time.perf_counter()
        texts, _ = recognise(self.model, self.task, lines.images, decode)
        t2 = time.perf_counter()
        keys = [_key(*name.rsplit(":", 1)) for name in lines.names]
        return dict(zip(keys, texts)), t1 - t0, t2 - t1


# ------------------------------------------------------------------------------------------ lines_copiste

def read_test(run: Path, quick: bool = False) -> tuple[dict, Reader, dict]:
    """A run's best checkpoint reading every Copiste test line with the four decoders: the scores per
    decoder, the reader, and what the decoders and test lines were (for ``details``)."""
    reader = Reader(run)
    test_pages = _pages("test", quick)
    lines = reader.lines(test_pages)
    refs = _page_texts(test_pages, reader.normalize)
    prose = _repeated_lines()
    from convrnn.data.lines import unseen_characters
    unseen = unseen_characters(refs.values(), reader.task.alphabet)
    train_texts = list(_page_texts(_pages("train", False), reader.normalize).values())

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        words = Path(tmp) / "train-words.txt"
        words.write_text("\n".join(sorted({w for t in train_texts for w in t.split()})) + "\n", encoding="utf-8")
        text = Path(tmp) / "train-text.txt"
        text.write_text("\n".join(train_texts) + "\n", encoding="utf-8")
        decoders = {"greedy": {}, f"beam{BEAM}": {"beam": BEAM},
                    f"beam{BEAM}_lexicon": {"beam": BEAM, "lexicon": str(words)},
                    f"beam{BEAM}_lm{LM_ORDER}": {"beam": BEAM, "lm": str(text), "lm_order": LM_ORDER}}
        reader.read(lines.subset(range(min(32, len(lines)))), {})  # warm-up: the first decoder timed is not the first run
        for name, decoding in decoders.items():
            hyps, setup, seconds = reader.read(lines, decoding)
            s = score(refs, hyps, prose)
            results[name] = {**s, "setup_seconds": round(setup, 2), "read_seconds": round(seconds, 2),
                             "lines_per_second": round(len(lines) / max(seconds, 1e-9), 2),
                             "options": {k: (Path(v).name if k in ("lexicon", "lm") else v)
                                         for k, v in decoding.items()}}
            _log(f"{name}: CER {s['all']['cer']:.4f} (prose {s['prose']['cer']:.4f}), WER {s['all']['wer']:.4f}, "
                 f"{seconds:.1f} s for {len(lines)} lines")
        n_words = len(words.read_text(encoding="utf-8").split())
    about = {"test_chars_not_in_alphabet": unseen,
             "test_lines": len(refs), "test_lines_read": len(lines), "test_lines_skipped": lines.skipped,
             "test_pages": len(test_pages), "prose_note": "prose = test lines not flagged consent, header or "
             "pagenum in copiste/flags.tsv",
             "lexicon_words": n_words, "lm_text_lines": len(train_texts),
             "decoder_resources": "word list: the distinct whitespace-separated words of the training "
                                  "transcriptions; language model: a character 3-gram fitted on the training "
                                  "transcriptions (one line each)"}
    return results, reader, about


def _summary(results: dict) -> dict:
    """Per decoder of ``read_test``: CER and WER over all lines and the prose lines, and the reading time."""
    return {name: {"cer": r["all"]["cer"], "wer": r["all"]["wer"], "prose_cer": r["prose"]["cer"],
                   "prose_wer": r["prose"]["wer"], "read_seconds": r["read_seconds"]} for name, r in results.items()}


def lines_copiste(quick: bool = False) -> dict:
    _require_data()
    _pin_cores()
    torch.set_num_threads(THREADS)
    overrides = _train_overrides(quick)
    info = train_convrnn(overrides, _run_dir("lines_copiste", quick))
    run = Path(info["run"])
    results, reader, about = read_test(run, quick)
    value = results["greedy"]["all"]["cer"]
    cfg = reader.loaded.ckpt["config"]
    return {
        "metric": f"Copiste test CER, greedy decoding, all test lines; convrnn train lines (recipe defaults) "
                  f"{overrides['train.max_time']:g} s of training on {THREADS} CPU threads, best checkpoint",
        "value": value, "unit": "fraction", "target": 0.08,
        "target_text": "<= 0.08 (PyLaia's published IAM model, 7.7% with a GPU)", "met": value <= 0.08,
        "baseline": None,
        "details": {
            "decoders": results,
            "summary": _summary(results),
            **about,
            "run": info, "model": {"spec": reader.model.spec, "height": reader.height,
                                   "alphabet_size": len(reader.task.alphabet),
                                   "parameters": sum(p.numel() for p in reader.model.parameters())},
            "train_config": cfg["train"], "data_config": _data_settings(cfg),
            "commands": convrnn_commands(run, overrides), "convrnn_commit": info.get("commit"),
            "torch": torch.__version__, "budget_training_seconds": overrides["train.max_time"], "quick": quick,
        },
    }


# ---------------------------------------------------------------------------------- lines_copiste_presets

PRESETS = ("crnn", "puigcerver2017", "pham2014")  # the fast default, the large CNN+BLSTM, the MDLSTM model
PRESET_BUDGET = 600.0  # seconds of training each: the three share half an hour


def lines_copiste_presets(quick: bool = False) -> dict:
    """The three line-model presets on Copiste at one wall-clock budget each (the recipe's other
    defaults), test CER of each best checkpoint with greedy decoding, over all and prose lines."""
    _require_data()
    _pin_cores()
    torch.set_num_threads(THREADS)
    budget = QUICK_BUDGET if quick else PRESET_BUDGET
    test_pages = _pages("test", quick)
    prose = _repeated_lines()
    rows = {}
    for preset in PRESETS:
        overrides = {**_train_overrides(quick), "train.max_time": budget, "model.preset": preset}
        info = train_convrnn(overrides, _run_dir(f"lines_copiste_{preset}", quick))
        reader = Reader(Path(info["run"]))
        lines = reader.lines(test_pages)
        hyps, _, seconds = reader.read(lines, {})
        s = score(_page_texts(test_pages, reader.normalize), hyps, prose)
        rows[preset] = {"cer": s["all"]["cer"], "wer": s["all"]["wer"], "prose_cer": s["prose"]["cer"],
                        "steps": info["steps"], "training_seconds": info["training_seconds"],
                        "wall_seconds_incl_data_and_validation": info["wall_seconds_incl_data_and_validation"],
                        "best_val_cer": info["best_val"].get("cer"), "spec": reader.model.spec,
                        "data_config": _data_settings(reader.loaded.ckpt["config"]),
                        "parameters": sum(p.numel() for p in reader.model.parameters()),
                        "read_seconds": round(seconds, 1), "run": info["run"]}
        _log(f"{preset}: test CER {s['all']['cer']:.4f} after {info['steps']} steps")
    best = min(rows, key=lambda name: rows[name]["cer"])
    return {"metric": f"Copiste test CER (greedy, all lines) of the best of {', '.join(PRESETS)}, each trained "
                      f"{budget:g} s on {THREADS} CPU threads with the lines recipe's other defaults",
            "value": rows[best]["cer"], "unit": "fraction", "target": None, "target_text": "a comparison",
            "met": None, "baseline": None,
            "details": {"best": best, "presets": rows, "budget_training_seconds": budget, "quick": quick,
                        "commands": {p: _q(["convrnn", "train", "lines", "--data", COPISTE / "train" / "*.xml",
                                            "--val", COPISTE / "val", "--test", COPISTE / "test", "--preset", p,
                                            "--max-time", f"{budget:g}", "--threads", THREADS, "--run-dir", "RUN"])
                                     for p in PRESETS}}}


# ------------------------------------------------------------------------------------------------ kraken

def kraken_venv() -> Path:
    return Path(os.environ.get("KRAKEN_VENV", CACHE / "kraken-venv"))


def ensure_kraken() -> dict:
    """kraken in its own virtual environment, created when missing; its versions and the commands that
    made it."""
    venv = kraken_venv()
    make = [["python3", "-m", "venv", str(venv)], [str(venv / "bin" / "pip"), "install", f"kraken=={KRAKEN_VERSION}"]]
    installed = None
    if not (venv / "bin" / "ketos").exists():
        _log(f"kraken: installing kraken {KRAKEN_VERSION} into {venv} (several GB: it pulls a CUDA torch)")
        t0 = time.perf_counter()
        for cmd in make:
            subprocess.run(cmd, check=True)
        installed = round(time.perf_counter() - t0, 1)
    probe = ("import importlib.metadata as m, torch; print(m.version('kraken'), torch.__version__, "
             "m.version('lightning'))")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, check=True)
    kraken_v, torch_v, lightning_v = out.stdout.split()
    if kraken_v != KRAKEN_VERSION:
        _log(f"kraken: warning: {venv} holds kraken {kraken_v}, not {KRAKEN_VERSION}")
    return {"venv": str(venv), "kraken": kraken_v, "torch": torch_v, "lightning": lightning_v,
            "install_commands": [_q(c) for c in make], "installed_now_seconds": installed}


def _bin(name: str) -> str:
    return str(kraken_venv() / "bin" / name)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}


def _pin_cores():
    """This process (and what it starts) runs on ``THREADS`` cores of those it may use, so that both
    tools, their data preparation included, get the same CPUs on a larger machine; on a 2-core
    machine this changes nothing."""
    cores = sorted(os.sched_getaffinity(0))[:THREADS]
    os.sched_setaffinity(0, cores)


def _manifest(path: Path, pages: list[Path]) -> Path:
    path.write_text("".join(f"{p}\n" for p in pages))
    return path


def _ketos(*args) -> list[str]:
    return [_bin("ketos"), "-d", "cpu", "--threads", str(THREADS), "--workers", "1", *map(str, args)]


def _ckpt_state(ckpt: Path) -> dict:
    """Lightning's step and epoch counters in a kraken checkpoint."""
    code = ("import sys, torch; c = torch.load(sys.argv[1], map_location='cpu', weights_only=False); "
            "print(c.get('global_step', -1), c.get('epoch', -1))")
    out = subprocess.run([_bin("python"), "-c", code, str(ckpt)], capture_output=True, text=True, timeout=600)
    try:
        step, epoch = out.stdout.split()[-2:]
        return {"global_step": int(step), "epoch": int(epoch)}
    except ValueError:
        return {"error": (out.stderr or out.stdout)[-300:]}


PROGRESS = re.compile(r"stage (\d+)/\d+ [^\d]*?(\d+)/(\d+) (\d+):(\d\d):(\d\d)")


def _last_progress(log: str) -> Optional[dict]:
    """The last training progress bar in a ketos log: epoch, batches done of the epoch's, its elapsed seconds."""
    hits = PROGRESS.findall(log.replace("\r", "\n"))
    if not hits:
        return None
    epoch, done, total, h, m, s = map(int, hits[-1])
    return {"epoch": epoch, "batches": done, "of": total, "elapsed_seconds": h * 3600 + m * 60 + s}


def _val_score(ckpt: Path) -> Optional[float]:
    """The validation character accuracy in a ketos checkpoint's name (checkpoint_EE-ACC.ckpt)."""
    m = re.search(r"checkpoint_\d+-([0-9.]+?)(?:-v\d+)?\.ckpt$", ckpt.name)  # -vN: Lightning's suffix for a repeated name
    return float(m.group(1)) if m else None


def ketos_train(out: Path, train: Path, val: Path, *, batch: int, freq: float, budget: float) -> dict:
    """``ketos train`` for ``budget`` wall seconds from its start, then SIGTERM (kraken then writes
    ``checkpoint_abort.ckpt``, the last state); what it did."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = _ketos("train", "-f", "alto", "-u", "NFC", "-t", train, "-e", val, "-q", "fixed", "-N", 1000,
                 "-B", batch, "-F", f"{freq:.4g}", "-o", out / "model")
    _log(f"kraken: {_q(cmd)} for {budget:.0f} s")
    log_path = out / "ketos_train.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(), start_new_session=True,
                                preexec_fn=_pin_cores)
        stopped = False
        try:
            proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            stopped = True
            proc.send_signal(signal.SIGTERM)
        t_stop = time.perf_counter() - t0
        killed = False
        try:
            proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            killed = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    wall = time.perf_counter() - t0
    text = log_path.read_text(errors="replace")
    model = out / "model"
    abort = model / "checkpoint_abort.ckpt"
    validated = sorted(model.glob("checkpoint_*-*.ckpt"), key=lambda p: (_val_score(p) or -1.0))
    state = _ckpt_state(abort) if abort.exists() else (_ckpt_state(validated[-1]) if validated else {})
    steps = state.get("global_step", -1)
    progress = _last_progress(text)
    bar_rate = None
    if progress and progress["elapsed_seconds"] > 0 and progress["epoch"] == 0:
        bar_rate = round(progress["batches"] * batch / progress["elapsed_seconds"], 3)
    return {"command": _q(cmd), "batch_size": batch, "val_every_epochs": freq, "budget_seconds": round(budget, 1),
            "stopped_by_sigterm": stopped, "seconds_to_stop": round(t_stop, 1),
            "seconds_incl_shutdown": round(wall, 1), "killed_after_grace": killed, "returncode": proc.returncode,
            "steps": steps, "lines_trained": steps * batch if steps >= 0 else None,
            "lines_per_second": round(steps * batch / t_stop, 3) if steps >= 0 else None,
            "lines_per_second_progress_bar": bar_rate, "epochs_completed": state.get("epoch"),
            "last_progress_bar": progress,
            "note": None if steps >= 0 else "no checkpoint: stopped before its first training step",
            "validations": {p.name: _val_score(p) for p in validated},
            "validation_finished": bool(validated), "abort_checkpoint": abort.exists(),
            "best_validated": str(validated[-1]) if validated else None,
            "log_tail": text.replace("\r", "\n")[-1200:]}


def _parse_ketos_test(text: str) -> dict:
    """The figures of a ``ketos test`` report."""
    def grab(pattern: str) -> Optional[float]:
        m = re.search(pattern, text, re.M)
        return float(m.group(1)) if m else None
    chars = grab(r"^\s*(\d+)\s+Characters\s*$")
    errors = grab(r"^\s*(\d+)\s+Errors\s*$")
    acc = grab(r"^\s*([\d.]+)%\s+Character Accuracy\s*$")
    word = grab(r"^\s*([\d.]+)%\s+Word Accuracy\s*$")
    out = {"characters": chars, "errors": errors, "character_accuracy_percent": acc,
           "word_accuracy_percent": word}
    if chars and errors is not None:
        out["cer"] = errors / chars
    if word is not None:
        out["wer"] = 1 - word / 100
    return out


def ketos_test(model: Path, manifest: Path) -> dict:
    cmd = _ketos("test", "-f", "alto", "-u", "NFC", "-m", model, "-e", manifest)
    _log(f"kraken: {_q(cmd)}")
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), preexec_fn=_pin_cores)
    seconds = time.perf_counter() - t0
    out = {"command": _q(cmd), "seconds": round(seconds, 1), "returncode": res.returncode,
           **_parse_ketos_test(res.stdout)}
    if "cer" not in out:
        out["error"] = (res.stderr or res.stdout)[-800:]
    return out


def ketos_convert(ckpt: Path, dst: Path) -> dict:
    cmd = [_bin("ketos"), "convert", "-o", str(dst), str(ckpt)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    return {"command": _q(cmd), "returncode": res.returncode, "ok": res.returncode == 0 and dst.exists(),
            "error": None if res.returncode == 0 else (res.stderr or res.stdout)[-500:]}


def kraken_ocr(model: Path, pages: list[Path], out_dir: Path) -> tuple[dict, list[Path]]:
    """``kraken ... ocr`` on the pages' own line segmentation, each output ALTO into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs, outs = [], []
    for p in pages:
        outs.append(out_dir / p.name)
        pairs += ["-i", str(p), str(outs[-1])]
    cmd = [_bin("kraken"), "-a", "-f", "alto", "-d", "cpu", "--threads", str(THREADS), *pairs,
           "ocr", "-m", str(model), "--num-line-workers", "0"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), preexec_fn=_pin_cores)
    seconds = time.perf_counter() - t0
    shown = [f"OMP_NUM_THREADS={THREADS}", "taskset", "-c", f"0-{THREADS - 1}",
             *(a if not a.startswith(str(out_dir)) else "kraken-out/" + Path(a).name for a in cmd)]
    return {"command": _q(shown), "seconds": round(seconds, 2), "returncode": res.returncode,
            "error": None if res.returncode == 0 else (res.stderr or res.stdout)[-800:]}, outs


def _choose_kraken_model(run: dict, work: Path, val_manifest: Path) -> dict:
    """The run's model with the best validation character accuracy, of its best validated checkpoint and
    its abort checkpoint (the last state), both measured by ``ketos test`` on the validation pages after
    the budget: kraken's accuracy during training leaves out the characters that no training line has,
    so the number in a checkpoint's name and ``ketos test``'s are not on one scale."""
    candidates = {}
    # the abort checkpoint first: on a tie, the later state wins
    for ckpt in (str(Path(work) / "model" / "checkpoint_abort.ckpt"), run["best_validated"]):
        if ckpt and Path(ckpt).exists():
            t = ketos_test(Path(ckpt), val_manifest)
            candidates[ckpt] = {"val_accuracy": None if t.get("cer") is None else 1 - t["cer"],
                                "val_accuracy_in_name": _val_score(Path(ckpt)), "val_test": t}
    usable = {k: v for k, v in candidates.items() if v["val_accuracy"] is not None}
    best = max(usable, key=lambda k: usable[k]["val_accuracy"]) if usable else None
    return {"candidates": candidates, "chosen": best}


def _kraken_rate_to_freq(rate: Optional[float], budget: float, train_lines: int) -> float:
    """``ketos train -F``: the fraction of an epoch after which kraken validates, so that the first
    validation comes after ``FIRST_VALIDATION`` of the lines it is expected to train in ``budget``."""
    if not rate:
        return 1.0
    return float(min(1.0, max(1.0 / train_lines, FIRST_VALIDATION * rate * budget / train_lines)))


def _save_kraken_model(model: Path, quick: bool) -> Path:
    """Keep kraken's chosen model where lines_predict_speed looks for it."""
    KRAKEN_DIR.mkdir(parents=True, exist_ok=True)
    dst = KRAKEN_DIR / ("lines_copiste_quick.safetensors" if quick else "lines_copiste.safetensors")
    shutil.copy2(model, dst)
    return dst


# --------------------------------------------------------------------------------- lines_copiste_vs_kraken

def lines_copiste_vs_kraken(quick: bool = False) -> dict:
    _require_data()
    _pin_cores()
    torch.set_num_threads(THREADS)
    info, reused = convrnn_run(quick, reuse=True)
    run = Path(info["run"])
    overrides = _train_overrides(quick)
    test_pages = _pages("test", quick)
    prose = _repeated_lines()
    reader = Reader(run)
    refs = _page_texts(test_pages, reader.normalize)
    ours, _, ours_seconds = reader.read(reader.lines(test_pages), {})
    ours_score = score(refs, ours, prose)
    _log(f"convrnn: test CER {ours_score['all']['cer']:.4f} (greedy, {len(refs)} lines)")

    kraken = ensure_kraken()
    budget = float(info["wall_seconds_incl_data_and_validation"])
    train_pages, val_pages = _pages("train", quick), _pages("val", quick)
    train_lines = len(_page_texts(train_pages))
    KRAKEN_DIR.mkdir(parents=True, exist_ok=True)
    work_root = KRAKEN_DIR / ("vs_quick" if quick else "vs")
    shutil.rmtree(work_root, ignore_errors=True)
    work_root.mkdir(parents=True)
    train_m = _manifest(work_root / "train.lst", train_pages)
    val_m = _manifest(work_root / "val.lst", val_pages)
    test_m = _manifest(work_root / "test.lst", test_pages)

    probe_seconds = QUICK_PROBE_SECONDS if quick else PROBE_SECONDS
    probes = {}
    for b in PROBE_BATCHES:
        p = ketos_train(work_root / f"probe_B{b}", train_m, val_m, batch=b, freq=1.0, budget=probe_seconds)
        shutil.rmtree(work_root / f"probe_B{b}" / "model", ignore_errors=True)
        probes[f"B{b}"] = p
        _log(f"kraken probe B={b}: {p['lines_trained']} lines in {p['seconds_to_stop']} s "
             f"({p['lines_per_second']} lines/s), validation finished: {p['validation_finished']}")

    full = {}
    for b in FULL_BATCHES:
        probe = probes.get(f"B{b}") or {}
        rate = probe.get("lines_per_second_progress_bar") or probe.get("lines_per_second")
        freq = _kraken_rate_to_freq(rate, budget, train_lines)
        work = work_root / f"full_B{b}"
        r = ketos_train(work, train_m, val_m, batch=b, freq=freq, budget=budget)
        r["freq_from_probe_rate"] = rate
        choice = _choose_kraken_model(r, work, val_m)
        r["model_choice"] = choice
        if choice["chosen"]:
            weights = work / "chosen.safetensors"
            r["convert"] = ketos_convert(Path(choice["chosen"]), weights)
            if r["convert"]["ok"]:
                r["test"] = ketos_test(weights, test_m)
                r["weights"] = str(weights)
        full[f"B{b}"] = r
        _log(f"kraken full B={b}: {r['lines_trained']} lines, validations {r['validations']}, "
             f"test {r.get('test', {}).get('cer')}")

    scored = {k: r for k, r in full.items() if r.get("test", {}).get("cer") is not None}
    best_key = min(scored, key=lambda k: scored[k]["test"]["cer"]) if scored else None
    kraken_cer = scored[best_key]["test"]["cer"] if best_key else None
    ocr, theirs_score, kept_model = None, None, None
    if best_key:
        weights = Path(scored[best_key]["weights"])
        kept_model = _save_kraken_model(weights, quick)
        ocr, outs = kraken_ocr(weights, test_pages, work_root / "ocr")
        if ocr["returncode"] == 0:
            hyps = {}
            for p in outs:
                hyps.update(_page_texts([p], reader.normalize, empty=True) if p.exists() else {})
            theirs_score = score(refs, hyps, prose)
    # the full runs' checkpoints are large: keep the logs, the chosen weights and the OCR output
    for b in FULL_BATCHES:
        shutil.rmtree(work_root / f"full_B{b}" / "model", ignore_errors=True)

    our_cer = ours_score["all"]["cer"]
    value = kraken_cer / max(our_cer, 1e-4) if kraken_cer is not None else None
    one_scorer = (theirs_score["all"]["cer"] / max(our_cer, 1e-4)) if theirs_score else None
    return {
        "metric": "Copiste test CER of kraken 7.1.1 (ketos train -f alto, default model, stopped at convrnn's "
                  "wall time; ketos test) / convrnn's (greedy, all lines), same train/val/test pages, "
                  f"{THREADS} CPU threads",
        "value": value, "unit": "ratio", "target": 2.0, "target_text": ">= 2 (kraken's CER at least twice convrnn's)",
        "met": None if value is None else value >= 2.0, "baseline": kraken_cer,
        "baseline_note": "kraken's test CER (ketos test, micro-averaged over characters)",
        "details": {
            "convrnn": {"test_cer": our_cer, "test_wer": ours_score["all"]["wer"],
                        "prose_cer": ours_score["prose"]["cer"], "score": ours_score,
                        "read_seconds": round(ours_seconds, 2), "run": info, "reused_kept_run": reused,
                        "commands": convrnn_commands(run, overrides)},
            "kraken": {"test_cer_ketos_test": kraken_cer, "best_full_run": best_key,
                       "score_by_bench_scorer": theirs_score, "ocr": ocr, "kept_model": str(kept_model) if
                       kept_model else None, "full_runs": full, "probes": probes, "probe_seconds": probe_seconds,
                       "budget_wall_seconds": budget, "train_lines": train_lines, "versions": kraken,
                       "setup": "ketos train -f alto -u NFC (the default VGSL model, height 120, AdamW 1e-3), "
                                "-q fixed -N 1000 so only the wall-clock stop ends it, -F from the probe's rate "
                                f"so that the first validation comes after {FIRST_VALIDATION:g} of the expected "
                                "lines, SIGTERM at convrnn's wall time (data, training and validation); the "
                                "model with the best validation character accuracy among the validated "
                                "checkpoints and the abort checkpoint (validated after the budget), converted "
                                "with ketos convert"},
            "ratio_same_scorer": one_scorer,
            "ratio_note": "value: kraken's ketos test CER / convrnn's CER by this module's scorer; "
                          "ratio_same_scorer uses this module's scorer for both (kraken's text read from "
                          "kraken ocr's ALTO output); convrnn's CER floored at 1e-4",
            "test_pages": len(test_pages), "test_lines": len(refs), "quick": quick,
        },
    }


# ------------------------------------------------------------------------------------- lines_predict_speed

def _speed_run(quick: bool) -> tuple[Path, str]:
    """The convrnn run to time: lines_copiste's (a quick one too in a quick run), else a short new one."""
    for q in ((False, True) if quick else (False,)):
        info = kept_run(_run_dir("lines_copiste", q))
        if info:
            return Path(info["run"]), f"lines_copiste{'-quick' if q else ''}"
    overrides = {**_train_overrides(quick), "train.max_time": 30.0 if quick else SPEED_FALLBACK_SECONDS}
    info = train_convrnn(overrides, _run_dir("lines_predict_speed", quick))
    return Path(info["run"]), f"trained here for {overrides['train.max_time']:g} s"


def _speed_kraken_model(quick: bool) -> tuple[Path, str]:
    """kraken's model to time: the one lines_copiste_vs_kraken kept, else a tiny one trained here (one
    page, one epoch): the time to read a line does not depend on the weights."""
    for name in (("lines_copiste.safetensors", "lines_copiste_quick.safetensors") if quick
                 else ("lines_copiste.safetensors",)):
        if (KRAKEN_DIR / name).is_file():
            return KRAKEN_DIR / name, f"kept by lines_copiste_vs_kraken ({name})"
    work = KRAKEN_DIR / "tiny"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    train_m = _manifest(work / "train.lst", _pages("train", True)[:1])
    val_m = _manifest(work / "val.lst", _pages("val", True)[:1])
    cmd = _ketos("train", "-f", "alto", "-u", "NFC", "-t", train_m, "-e", val_m, "-q", "fixed", "-N", 1,
                 "-o", work / "model")
    _log(f"kraken: no kept model; {_q(cmd)}")
    subprocess.run(cmd, capture_output=True, text=True, env=_env(), preexec_fn=_pin_cores)
    found = sorted((work / "model").glob("best_*.safetensors"))
    if not found:
        raise SystemExit(f"error: ketos train left no model in {work / 'model'}")
    dst = KRAKEN_DIR / "tiny.safetensors"
    shutil.copy2(found[-1], dst)
    shutil.rmtree(work / "model", ignore_errors=True)
    return dst, f"trained here: {_q(cmd)}"


def _timed(cmd: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=_pin_cores)
    return time.perf_counter() - t0, res


def _convrnn_predict(run: Path, pages: list[Path], out: Path, beam: Optional[int]) -> dict:
    """``convrnn predict RUN PAGES --out DIR`` in a fresh process with an empty line cache (so it cuts
    every line from its page, as kraken does); seconds and lines read."""
    shutil.rmtree(out, ignore_errors=True)
    args = ["predict", str(run), *map(str, pages), *(["--beam", str(BEAM)] if beam else []), "--out"]
    with tempfile.TemporaryDirectory() as cache:
        seconds, res = _timed([sys.executable, "-m", "convrnn", *args, str(out)], {**_env(), "CONVRNN_CACHE": cache})
    lines = sum(int(m) for m in re.findall(r"^wrote .* \((\d+) lines\)$", res.stdout, re.M))
    shown = ["convrnn", *args, "recognised/"]
    command = f"OMP_NUM_THREADS={THREADS} CONVRNN_CACHE=$(mktemp -d) taskset -c 0-{THREADS - 1} {_q(shown)}"
    return {"command": command, "seconds": round(seconds, 2), "lines": lines,
            "returncode": res.returncode, "error": None if res.returncode == 0 else res.stderr[-800:]}


def _count_lines(paths: list[Path]) -> int:
    from convrnn.data.pages import parse_page
    return sum(len(parse_page(p).lines) for p in paths if p.exists())


def _startup(one: dict, all_: dict) -> dict:
    """Start-up seconds and lines/s after it, from a one-page run and an all-pages run (the line through
    the two points: seconds = start-up + lines / rate)."""
    dl, dt = all_["lines"] - one["lines"], all_["seconds"] - one["seconds"]
    if dl <= 0 or dt <= 0:
        return {"startup_seconds": None, "lines_per_second_after_startup": None}
    rate = dl / dt
    return {"startup_seconds": round(one["seconds"] - one["lines"] / rate, 2),
            "lines_per_second_after_startup": round(rate, 3)}


def lines_predict_speed(quick: bool = False) -> dict:
    _require_data()
    _pin_cores()
    run, run_source = _speed_run(quick)
    kraken = ensure_kraken()
    model, model_source = _speed_kraken_model(quick)
    pages = _pages("test", quick)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _log(f"timing convrnn predict on {len(pages)} pages (greedy, then beam {BEAM}) and on 1 page")
        greedy = _convrnn_predict(run, pages, tmp / "convrnn", None)
        beam = _convrnn_predict(run, pages, tmp / "convrnn_beam", BEAM)
        greedy_one = _convrnn_predict(run, pages[:1], tmp / "convrnn_one", None)
        _log(f"timing kraken ocr on {len(pages)} pages and on 1 page")
        k_all, outs = kraken_ocr(model, pages, tmp / "kraken")
        k_all["lines"] = _count_lines(outs)
        k_one, outs_one = kraken_ocr(model, pages[:1], tmp / "kraken_one")
        k_one["lines"] = _count_lines(outs_one)
    failed = [r for r in (greedy, beam, greedy_one, k_all, k_one) if r["returncode"] != 0]
    for r in (greedy, beam, k_all):
        r["lines_per_second"] = round(r["lines"] / r["seconds"], 3) if r["seconds"] > 0 and r["lines"] else None
    value = None
    if not failed and greedy["lines_per_second"] and k_all["lines_per_second"]:
        value = greedy["lines_per_second"] / k_all["lines_per_second"]
    _log(f"convrnn greedy {greedy['lines_per_second']} lines/s, beam {beam['lines_per_second']}, "
         f"kraken {k_all['lines_per_second']} lines/s")
    return {
        "metric": "lines/s reading the Copiste test pages with their own segmentation, start-up included: "
                  f"convrnn predict (greedy) / kraken ocr, {THREADS} threads on {THREADS} cores, output ALTO",
        "value": value, "unit": "ratio", "target": 1.0, "target_text": ">= 1 (convrnn at least as fast)",
        "met": None if value is None else value >= 1.0, "baseline": k_all["lines_per_second"],
        "baseline_note": "kraken ocr lines/s",
        "details": {
            "convrnn_greedy": {**greedy, **_startup(greedy_one, greedy)}, "convrnn_one_page": greedy_one,
            f"convrnn_beam{BEAM}": beam,
            "beam_ratio": (beam["lines_per_second"] / k_all["lines_per_second"])
            if beam.get("lines_per_second") and k_all.get("lines_per_second") else None,
            "kraken": {**k_all, **_startup(k_one, k_all)}, "kraken_one_page": k_one,
            "convrnn_run": str(run), "convrnn_run_source": run_source, "kraken_model": str(model),
            "kraken_model_source": model_source, "kraken_versions": kraken, "torch": torch.__version__,
            "pages": len(pages), "failed": [r["command"] for r in failed],
            "setup": "each tool in a fresh process over the same pages, each output ALTO into a temporary "
                     "folder; convrnn with an empty CONVRNN_CACHE, so it cuts every line from its page as kraken "
                     "does; OMP_NUM_THREADS=2 and both processes pinned to 2 cores; kraken --threads 2 "
                     "--num-line-workers 0 (line extraction in-process: less CPU on 2 cores); start-up from the "
                     "one-page runs (seconds = start-up + lines / rate through both points)",
            "quick": quick,
        },
    }


def _score_main(argv: list[str]) -> int:
    """``python -m bench.copiste RUN [RUN ...]``: read the Copiste test pages with each run's best
    checkpoint as ``lines_copiste`` does (the four decoders, all lines and prose) and print the scores as
    JSON, for runs trained by hand with other settings than the benchmark's."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m bench.copiste RUN [RUN ...]   (scores each run on copiste/test, prints JSON)")
        return 0 if argv else 2
    _require_data()
    torch.set_num_threads(THREADS)
    out = {}
    for arg in argv:
        results, reader, about = read_test(Path(arg))
        out[arg] = {"summary": _summary(results),
                    "model": {"spec": reader.model.spec, "height": reader.height,
                              "parameters": sum(p.numel() for p in reader.model.parameters())},
                    "cpu": cpu_model(), "torch": torch.__version__, **about}
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(_score_main(sys.argv[1:]))
