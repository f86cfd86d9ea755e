"""The ``lines`` recipe: text-line recognition with CTC.

Data: a folder of ``name.png`` + ``name.gt.txt``, a TSV manifest, page XML (ALTO or PAGE files, folders
of them, glob patterns), or synthetic lines (handwritten digit strings, printed text). The alphabet is
built from the training transcriptions and stored in the checkpoint; the task encodes each batch's
texts with it, so evaluating on other data works and characters the model never saw are counted
(``unseen_chars``) instead of breaking a batch. ``predict`` writes recognised texts back into page XML.
"""
# B batch, C channels (1), H height, W width, T frames, V labels (blank + alphabet)
from __future__ import annotations

import hashlib
import logging
import math
import tempfile
from dataclasses import asdict
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Callable, Optional, Sequence

import click
import numpy as np
import torch
import torch.nn.functional as F

from convrnn.data.augment import AUGMENT_SETS, LineAugment
from convrnn.data.lines import (LineSet, LinesDataConfig, build_alphabet, find_source, line_augment,
                                line_batches, line_fetcher, prepare_line, read_lines, reading_base,
                                split_lines, unseen_characters)
from convrnn.data.pages import (NotPageXml, collect_lines, is_other_xml, page_root, page_sources, read_pages,
                                 write_page_texts)
from convrnn.errors import DataError, DataNotFound
from convrnn.files import check_writable
from convrnn.fields import check
from convrnn.recipes.base import (CliOption, DataBundle, DOES_NOT_FIT, Predictions, Recipe, check_meta,
                                   missing_split, register_recipe)
from convrnn.layers.base import ModelOutput
from convrnn.train.rundir import run_files
from convrnn.tasks.ctc import BLANK, CTCTask, name_unseen

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- recipe

def _synthetic(cfg: LinesDataConfig, split: str, count: int, progress) -> LineSet:
    from convrnn.data.synthetic_lines import digit_lines, text_lines

    if cfg.synthetic == "digits":
        # held-out digits stay as drawn
        distort = {"rotate": cfg.rotate, "zoom": cfg.zoom, "elastic": cfg.elastic} if split == "train" else {}
        return digit_lines(count, split=split, max_digits=cfg.max_digits, height=cfg.height, seed=cfg.seed,
                           mnist_dir=cfg.mnist_dir or None, progress=progress, **distort)
    return text_lines(count, split=split, height=cfg.height, seed=cfg.seed, text=cfg.text or None,
                      fonts=cfg.fonts, max_chars=cfg.max_chars, base=bidi_base(cfg, say=False), progress=progress)


def bidi_base(cfg: LinesDataConfig, texts: Sequence[str] = (), *, say: bool = True) -> Optional[str]:
    """The paragraph direction the run's texts are put in display order with (``reading_base``), from
    the training ``texts``; synthetic text lines take it from their whole text file, so that every
    split is drawn and labelled with one direction. ``say``: log how right-to-left texts are read."""
    if cfg.synthetic == "text" and cfg.bidi == "auto":
        from convrnn.data.fonts import load_text_lines

        texts = load_text_lines(cfg.text or None)
    return reading_base(texts, cfg.bidi, (cfg.data or f"--synthetic {cfg.synthetic}") if say else None)


def _read_options(cfg: LinesDataConfig, progress) -> dict:
    return dict(height=cfg.height, max_width=cfg.max_width, allow_outside_root=cfg.allow_outside_root,
                strict=cfg.strict, normalize=cfg.normalize, progress=progress)


def _eval_batches(lines: LineSet, batch_size: int):
    """Validation or test lines in file order, in batches of at least 64 (no gradients to hold)."""
    return line_batches(lines, max(batch_size, 64), shuffle=False)


def _val_cut(val: LineSet) -> str:
    """The validation lines cut from --data, as their count and a hash of their sorted texts (the cut
    is by text, so the same texts are the same lines)."""
    digest = hashlib.sha256("\n".join(sorted(val.texts)).encode("utf-8")).hexdigest()[:12]
    return f"{len(val)} lines, texts {digest}"


def _warn_shared(scored_name: str, train_name: str, scored: set, train: set) -> None:
    """Warn when files scored are also training files: their scores measure memory, not reading."""
    shared = scored & train
    if shared:
        log.warning("%s and %s share %d of their files (%s): its scores measure what the model memorised, "
                    "not how it reads unseen lines", scored_name, train_name, len(shared), sorted(shared)[0].name)


def _source_files(source: str) -> set:
    """The resolved files of a lines source (a folder or manifest stands for itself)."""
    return {p.resolve() for p in find_source(source) or [Path(source)]}


def load_splits(cfg: LinesDataConfig, progress=None) -> tuple[LineSet, LineSet, Optional[LineSet]]:
    """Train, validation and (optional) test lines for ``cfg``."""
    check(cfg, "data")
    files = {}  # every path checked before any page is cut (synthetic runs: their --val/--test files)
    for flag, source in (("--data", cfg.data), ("--val", cfg.val), ("--test", cfg.test)):
        if source:
            files[flag] = _source_files(source)
    for flag in ("--val", "--test"):
        _warn_shared(flag, "--data", files.get(flag, set()), files.get("--data", set()))
    opts = _read_options(cfg, progress)
    if cfg.synthetic:  # drawn lines to train on; --val/--test files, when given, are read instead of drawn ones
        train = _synthetic(cfg, "train", cfg.num_train, progress)
        val = read_lines(cfg.val, **opts) if cfg.val else _synthetic(cfg, "val", cfg.num_val, progress)
    else:
        train = read_lines(cfg.data, **opts)
        if cfg.val:
            val = read_lines(cfg.val, **opts)
        else:
            train, val = split_lines(train, cfg.val_fraction, cfg.seed)
    test = (read_lines(cfg.test, **opts) if cfg.test
            else _synthetic(cfg, "test", cfg.num_test, progress) if cfg.synthetic and cfg.num_test else None)
    return train, val, test


# Lines read from files: real handwriting sets hold thousands of lines, not the tens of thousands drawn
# for synthetic ones, and at equal training time batches of 16 read real pages better than 32 (more
# updates, less padding; docs/decisions.md). Synthetic lines keep the recipe's 32, which their results
# were measured with.
FILE_BATCH_SIZE = 16


@register_recipe
class LinesRecipe(Recipe):
    """Text-line recognition with CTC: page XML, folders of line images, or synthetic lines (handwritten
    digit strings, printed text)."""

    name = "lines"
    default_preset = "crnn"
    data_config = LinesDataConfig
    input_meta = ("height",)
    # val_cut: which lines validate when they are cut from --data (see _val_cut); changed data moves
    # lines between training and validation, so a resume or eval on it would score trained-on lines
    # bidi: the order the labels spell texts in (display order for a paragraph direction, or as stored)
    label_meta = ("alphabet", "val_cut", "bidi")
    saved_defaults = {"data.bidi": "none"}  # runs made before right-to-left support took texts as stored
    # AdamW with decoupled decay 0.2, as the digits recipe: a crnn memorises 20,000 digit lines within a
    # few minutes, and decay is the remedy that costs no steps (docs/decisions.md)
    train_defaults = {"epochs": 50, "max_time": 600.0, "batch_size": 32, "optimizer": "adamw", "lr": 3e-3,
                      "weight_decay": 0.2, "schedule": "onecycle", "checkpoint_every": 500, "val_batches": 0}
    cli_options = (
        CliOption("--data", "data.data", "folder of name.png + name.gt.txt, a TSV manifest (path<TAB>text), or "
                  "ALTO/PAGE XML: a .xml file, a folder of them or a quoted glob pattern ('pages/*.xml')"),
        CliOption("--synthetic", "data.synthetic", "generated lines instead of --data: handwritten digit "
                  "strings or printed text", type=click.Choice(["digits", "text"])),
        CliOption("--val", "data.val", "validation lines, as --data (default: a split of --data by text)"),
        CliOption("--test", "data.test", "test lines, as --data (for `convrnn eval RUN --split test`)"),
        CliOption("--height", "data.height", "line height in pixels after scaling", type=int),
        CliOption("--bidi", "data.bidi", "right-to-left scripts: texts are learned in display order with the "
                  "paragraph direction of most training lines (auto), rtl or ltr; none takes them as they are",
                  type=click.Choice(["auto", "rtl", "ltr", "none"])),
        CliOption("--augment", "data.augment", "distortions of training lines: auto (handwriting for --data, "
                  "none for --synthetic), handwriting or none; data.slant etc. set one each",
                  type=click.Choice(["auto", *AUGMENT_SETS])),
        CliOption("--num-train", "data.num_train", "synthetic training lines", type=int),
        CliOption("--max-digits", "data.max_digits", "synthetic digits: longest string", type=int),
        CliOption("--mnist-dir", "data.mnist_dir", "synthetic digits: MNIST IDX folder"),
        CliOption("--text", "data.text", "synthetic text: UTF-8 file of lines to render"),
        CliOption("--fonts", "data.fonts", "synthetic text: font file or folder (repeatable)", multiple=True),
    )

    def settle_defaults(self, cfg, given: set[str], overridden: set[str] = frozenset()) -> None:
        """``data.augment``: ``auto`` becomes ``handwriting`` for lines read from files and ``none`` for
        synthetic lines, and the named set fills every distortion not given one by one (a set named by
        the caller replaces a saved config's distortions too: ``--augment none`` over a config file
        turns them all off). Lines read from files train in batches of ``FILE_BATCH_SIZE`` unless a
        batch size is given."""
        data = cfg.data
        if not data.synthetic and "train.batch_size" not in given:
            cfg.train.batch_size = FILE_BATCH_SIZE
        name = data.augment if data.augment != "auto" else ("none" if data.synthetic else "handwriting")
        if name not in AUGMENT_SETS:
            return  # an unknown name: the config check names it
        kept = overridden if "data.augment" in overridden else given
        for f in dataclass_fields(LineAugment):
            if f"data.{f.name}" not in kept:
                setattr(data, f.name, AUGMENT_SETS[name].get(f.name, 0.0))
        data.augment = name

    def resolve_data(self, data_cfg: LinesDataConfig) -> None:
        if data_cfg.synthetic == "digits":
            from convrnn.data.mnist import mnist_source
            data_cfg.mnist_dir = mnist_source(data_cfg.mnist_dir, what="--mnist-dir")

    def make_data(self, data_cfg: LinesDataConfig, train_cfg, *, progress=None, training: bool = True) -> DataBundle:
        """The splits; ``training=False`` (evaluating a validation cut from ``--data``) leaves out the
        log line on the training lines' distortions, which that evaluation does not apply."""
        train, val, test = load_splits(data_cfg, progress)
        base = bidi_base(data_cfg, train.texts)
        alphabet = build_alphabet(train.texts)
        name_unseen(unseen_characters(val.texts, alphabet), "validation")
        bs = train_cfg.batch_size
        log.info("lines: %d train, %d val%s lines of height %d; alphabet of %d characters", len(train), len(val),
                 f", {len(test)} test" if test is not None else "", data_cfg.height, len(alphabet))
        augment = line_augment(data_cfg)
        if augment.active and training:
            log.info("lines: training lines distorted (data.augment=%s; --augment none turns them off): %s",
                     data_cfg.augment, ", ".join(f"{k} {v:g}" for k, v in asdict(augment).items() if v > 0))
        meta = {"alphabet": alphabet, "height": data_cfg.height, "normalize": data_cfg.normalize, "bidi": base,
                "skipped": {"train": len(train.skipped), "val": len(val.skipped)}}
        if not data_cfg.val and not data_cfg.synthetic:
            meta["val_cut"] = _val_cut(val)
        return DataBundle(train=line_batches(train, bs, seed=train_cfg.seed, augment=augment),
                          val=_eval_batches(val, bs),
                          test=_eval_batches(test, bs) if test is not None else None,
                          input_shape=(1, data_cfg.height, None), num_outputs=len(alphabet) + 1, meta=meta)

    def make_split(self, data_cfg: LinesDataConfig, train_cfg, split: str, meta: dict, *, progress=None):
        """Validation or test lines read from their own files, without the training lines (which may
        not be on the machine that evaluates); a validation split cut from ``--data`` needs them. The
        texts may use characters the model's alphabet lacks: the task counts them as errors."""
        check_meta(self.input_meta, meta, {"height": data_cfg.height}, DOES_NOT_FIT)
        path = data_cfg.test if split == "test" else data_cfg.val
        if not path and (data_cfg.synthetic or split == "val"):  # drawn lines, or validation cut from --data
            bundle = self.make_data(data_cfg, train_cfg, progress=progress, training=False)
            # drawn lines and their labels follow the direction; the model's is the checkpoint's
            check_meta(("bidi",), meta, bundle.meta, DOES_NOT_FIT)
            held, now = meta.get("val_cut"), bundle.meta.get("val_cut")
            if held is not None and split == "val" and now != held:
                raise DataError(f"{data_cfg.data}: the validation lines cut from it are now {now}, where this run "
                                f"held out {held}: the data changed, and the score would count lines the model "
                                f"trained on; give validation lines with --set data.val=PATH")
            return bundle.split(split)
        if not path:
            raise missing_split("test", "train with --test, or evaluate other lines with --set data.test=PATH")
        check(data_cfg, "data")
        scored = _source_files(path)  # before any page is cut; a path that names nothing is DataNotFound
        if data_cfg.data and not data_cfg.synthetic:
            try:
                _warn_shared(f"data.{split}", "the run's training data", scored, _source_files(data_cfg.data))
            except DataError:  # the training pages are not on this machine: nothing to compare with
                pass
        lines = read_lines(path, **_read_options(data_cfg, progress))
        log.info("lines: %d %s lines of height %d", len(lines), split, data_cfg.height)
        return _eval_batches(lines, train_cfg.batch_size)

    def make_task(self, meta: dict, output_shape: tuple) -> CTCTask:
        return CTCTask(meta["alphabet"], normalize=meta.get("normalize"), bidi=meta.get("bidi"))

    def report_sections(self, ctx) -> list:
        return lines_sections(ctx)

    def commands(self) -> list:
        return [("plot", plot_ctc)]

    def predict(self, loaded, inputs: list[str], *, beam: Optional[int] = None,
                lexicon: Optional[str] = None, lm: Optional[str] = None, out: Optional[str] = None,
                progress: Optional[Callable[[int, int], None]] = None, **options) -> list[str]:
        """``path<TAB>text`` per line image, and ``page.xml:line_id<TAB>text`` per line of every page XML
        input (ALTO/PAGE files, folders of them, glob patterns); with ``out``, each page XML is instead
        written to that folder with the recognised text of its lines (``write_page_texts``; lines that
        cannot be cut are written without text) and one ``wrote ...`` line per page is returned. Greedy decoding (an ensemble's: joint beam search), or
        prefix beam search with ``beam`` (and a word list ``lexicon`` / a character 3-gram model trained
        on the text file ``lm``), over an ensemble's members jointly. ``progress(done, total)`` is called
        as the lines are read."""
        model, task = loaded.model, loaded.task
        height = int(loaded.ckpt["input_shape"][1])
        decode = task.with_decoding(beam=beam, lexicon=lexicon, lm=lm).decode
        sources = _read_once([(inp, page_sources(inp)) for inp in inputs])
        paths = [p for _, xmls in sources if xmls for p in xmls]
        images = [inp for inp, xmls in sources if xmls is None]
        for image in images:
            _refuse_page_image(image)
            _warn_page_like(image)
        if out is not None:
            if not paths:
                raise DataError(f"--out {out}: writes page XML files, and no input is one ({', '.join(inputs)[:120]}); "
                                f"leave --out out to print the line images' texts")
            destinations = _out_destinations(sources, Path(out))
            _check_out(destinations, Path(out), run_files(loaded.checkpoint))
        image_texts = recognise(model, task, [prepare_line(p, height) for p in images], decode,
                                progress=progress)[0]
        found: list[dict[int, tuple[str, str, float]]] = [{} for _ in paths]  # per page: index -> (id, text, conf)
        failed: list[str] = []  # why each page that could not be read was left out
        passed_over = 0  # other XML among several files (an export's METS file)
        if paths:
            pages = read_pages(paths, height=height)
            several = len(paths) > 1 or any(Path(inp).is_dir() for inp, xmls in sources if xmls)
            # among several files, other XML (an export's METS file) is passed over, as in training
            other = [several and isinstance(page.page_error, NotPageXml) for page in pages]
            passed_over = sum(other)
            failed = [str(page.page_error) for page, skip in zip(pages, other) if page.page_error is not None and not skip]
            got = collect_lines(pages, [str(p) for p in paths], normalize="none", require_text=False,
                                ignore_other_xml=several)  # lines without text are the normal case here
            where = [(k, j) for k, page in enumerate(pages) if page.page_error is None for j in range(len(page.ids))]
            given = ', '.join(inputs)[:200]
            if passed_over == len(paths) and not images:  # only an export's METS or metadata files
                raise DataError(f"{given}: no ALTO or PAGE XML among these {len(paths)} XML files (another kind, "
                                f"such as an export's METS file); give the pages' XML files or their folder")
            if not where and not images and failed and len(failed) == len(paths) - passed_over:
                # no page could be read: the error names the problem once, without the warning before it
                reason = next(iter(got.skipped.values()), failed[0])
                raise DataError(f"{reason}; no lines to recognise" if reason.startswith(f"{given}: ")
                                else f"{given}: no lines to recognise ({reason})")
            if got.skipped:
                log.warning("%s", got.summary())
            elif not where:  # a blank page (a cover, the back of a leaf) is no error: its copy is written as is
                log.warning("%s: no text lines on %s", given, "this page" if len(paths) == 1 else "these pages")
            texts, confs = (recognise(model, task, [pages[k].images[j] for k, j in where], decode, progress=progress)
                            if where else ([], []))
            ids = [page.line_ids() if page.page_error is None else {} for page in pages]
            for (k, j), text, conf in zip(where, texts, confs):
                found[k][pages[k].indices[j]] = (ids[k][pages[k].indices[j]], text, conf)
        result, image_no, page_no = [], 0, 0
        for inp, xmls in sources:
            if xmls is None:
                result.append(f"{inp}\t{image_texts[image_no]}")
                image_no += 1
                continue
            for path in xmls:
                lines, page_no = found[page_no], page_no + 1
                if out is None:
                    result += [f"{path}:{line_id}\t{text}" for _, (line_id, text, _) in sorted(lines.items())]
                elif pages[page_no - 1].page_error is None:
                    dst = destinations[path]
                    # a line that could not be cut is written without text: the copy's texts are all
                    # the model's, never the input's transcription passed off as a reading
                    try:
                        n = write_page_texts(path, dst, {k: (text, conf) for k, (_, text, conf) in lines.items()},
                                             others=("", 0.0))
                    except (DataError, OSError) as e:  # this file cannot be rewritten or written (a full
                        # disk, a folder in its place); the other pages still are
                        log.warning("%s", e)
                        failed.append(str(e))
                        continue
                    unread = n - len(lines)
                    result.append(f"wrote {dst} ({len(lines)} line{'s' if len(lines) != 1 else ''}" + (
                        f"; {unread} not read, written without text)" if unread else ")"))
        return Predictions(result, [f"{len(failed)} of {len(paths) - passed_over} pages could not be read"
                                    + (" or written" if out is not None else "") + f" ({failed[0]}), the others "
                                    "were; the warning above names each"] if failed else [])


def _read_once(sources: list[tuple[str, Optional[list[Path]]]]) -> list[tuple[str, Optional[list[Path]]]]:
    """``sources`` (each input with its page XML files) with a page given again (the same file under
    another path, or matched by two patterns) left out of the later input, and named in one warning:
    read twice, its lines would be printed twice and its copy written twice."""
    seen: dict[Path, Path] = {}
    again: list[tuple[Path, Path]] = []
    kept = []
    for inp, xmls in sources:
        if xmls is not None:
            fresh = []
            for path in xmls:
                key = path.resolve()
                if key in seen:
                    again.append((path, seen[key]))
                else:
                    seen[key] = path
                    fresh.append(path)
            xmls = fresh
        kept.append((inp, xmls))
    if again:
        log.warning("%d page%s given more than once, read once: %s", len(again), "s" if len(again) > 1 else "",
                    "; ".join(str(p) + (f" (also {first})" if str(p) != str(first) else "") for p, first in again[:3])
                    + ("; ..." if len(again) > 3 else ""))
    return kept


PAGE_IMAGE_ADVICE = "give the XML file, whose lines are cut from this image, or quote a pattern such as '*.xml'"


def _refuse_page_image(image: str, advice: str = PAGE_IMAGE_ADVICE) -> None:
    """Refuse an image that is a page scan with its page XML beside it (as an export lays them out):
    read as one text line, a whole page gives an empty or meaningless text."""
    path = Path(image)
    for xml in (path.with_suffix(".xml"), path.parent / "page" / (path.stem + ".xml")):
        if xml.is_file() and path.suffix.lower() != ".xml":
            raise DataError(f"{image}: a page image, whose page XML is {xml}; {advice}")


def _warn_page_like(image: str) -> None:
    """Warn about an image taller than wide: read as one text line, left to right, a page scan (whose
    XML is not beside it) or an unturned vertical line gives a meaningless text."""
    from PIL import Image

    try:
        with Image.open(image) as im:
            width, height = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientation turns it a quarter: read as shown
                width, height = height, width
    except (OSError, ValueError, SyntaxError):
        return  # not readable: reading it names the problem
    if height > width:
        log.warning("%s: taller than wide (%dx%d pixels), read as one text line from left to right; for a "
                    "page scan, give its page XML; turn a vertical line first", image, width, height)


def _out_destinations(sources: list[tuple[str, Optional[list[Path]]]], out: Path) -> dict[Path, Path]:
    """Where ``--out`` writes each page XML: at its path below its input's folder (a folder given, a
    file's folder, a pattern's folders before the first wildcard), so ``'export/**/*.xml'`` keeps an
    export's documents apart. An export's other XML (METS, metadata), which is never written, has none."""
    destinations = {}
    for inp, xmls in sources:
        root = page_root(inp)
        for path in xmls or []:
            if is_other_xml(path):
                continue
            try:
                destinations[path] = out / path.relative_to(root)
            except ValueError:
                destinations[path] = out / path.name
    return destinations


def _check_out(destinations: dict[Path, Path], out: Path, keep: list) -> None:
    """Refuse, before any page is recognised, an ``--out`` folder that would overwrite an input or a
    run's file, write two inputs to one file, or cannot be written in."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: --out must be a folder, and this is a file")
    read: dict[tuple[int, int], Path] = {}  # (device, inode) of every file this command reads, stat'ed once:
    for path in [*destinations, *keep]:     # a re-run into the same --out checks each page in constant time
        try:
            st = path.stat()
        except OSError:
            continue
        read.setdefault((st.st_dev, st.st_ino), path)
    seen: dict[Path, Path] = {}
    for page, dst in destinations.items():
        try:
            st = dst.stat()
        except OSError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) in read:
            what = read[(st.st_dev, st.st_ino)]
            what = "an input page" if what in destinations else f"a file the run reads ({what})"
            raise DataError(f"{dst}: {what}; refusing to overwrite the input file, choose another --out folder")
        if dst in seen and seen[dst].resolve() != page.resolve():
            raise DataError(f"{page} and {seen[dst]} would both be written to {dst}; "
                            f"predict them into different --out folders")
        seen[dst] = page
        check_writable(dst)  # a folder in its place, a read-only folder: before any line is read


def line_confidence(task: CTCTask, logits: torch.Tensor, length: int, text: str) -> float:
    """How sure the model is of ``text`` (in display order, ``task.visual``): its CTC probability
    (summed over all alignments, an ensemble's members' geometric mean) per character,
    ``P(text | line) ** (1 / max(1, len(text)))``, in 0..1; 0 for a text with characters outside the
    alphabet. ``logits`` ``(T, V)`` or ``(K, T, V)``."""
    if any(ch not in task.index for ch in text):
        return 0.0
    log_probs = F.log_softmax(logits.float(), dim=-1)
    if log_probs.dim() == 2:
        log_probs = log_probs.unsqueeze(0)  # (1, T, V)
    k = log_probs.shape[0]
    targets = torch.tensor([task.index[ch] for ch in text] * k, dtype=torch.long)
    nll = F.ctc_loss(log_probs[:, :length].transpose(0, 1), targets, torch.full((k,), length, dtype=torch.long),
                     torch.full((k,), len(text), dtype=torch.long), blank=BLANK, reduction="none",
                     zero_infinity=False)  # (K,)
    return float(math.exp(-float(nll.mean()) / max(1, len(text))))


def recognise(model, task: CTCTask, images: list[np.ndarray], decode, batch_size: int = 32,
              progress: Optional[Callable[[int, int], None]] = None) -> tuple[list[str], list[float]]:
    """Texts and confidences (``line_confidence``) of ink-bright line images ``(H, W_i)``, in batches of
    similar width; ``progress(done, total)`` after each batch."""
    texts: list[str] = [""] * len(images)
    confs: list[float] = [0.0] * len(images)
    order = np.argsort([im.shape[1] for im in images], kind="stable")
    for start in range(0, len(images), batch_size):
        idx = order[start: start + batch_size]
        out = run_images(model, [images[i] for i in idx])
        for j, (i, text) in enumerate(zip(idx, decode(out))):
            n = int(out.lengths[j])
            logits = out.y[j] if out.members is None else out.members[:, j]  # ([K,] T, V)
            texts[i], confs[i] = text, line_confidence(task, logits, n, task.visual(text))
        if progress is not None and images:
            progress(min(start + batch_size, len(images)), len(images))
    return texts, confs


def run_images(model, images: list[np.ndarray]) -> ModelOutput:
    """The model's output for ink-bright line images ``(H, W_i)`` of the model's height: logits
    ``(B, T, V)`` (an ensemble's members in ``members``) and valid frames ``(B,)``."""
    lines = LineSet(images, [""] * len(images), [str(k) for k in range(len(images))])
    batch = line_fetcher(lines)(np.arange(len(images)))
    model.eval()
    with torch.inference_mode():
        out = model.run(batch["x"], batch["lengths"], need_state=False)
    frames = out.lengths if out.lengths is not None else torch.full((len(images),), out.y.shape[1])
    return out._replace(lengths=frames)


def run_lines(model, ckpt: dict, inputs: list[str]) -> ModelOutput:
    """The model's output for line image files, scaled to the model's height: logits ``(B, T, V)``
    (an ensemble's members in ``members``) and valid frames ``(B,)``."""
    height = int(ckpt["input_shape"][1])
    return run_images(model, [prepare_line(p, height) for p in inputs])


def _page_line_argument(given: str) -> Optional[tuple[Path, str]]:
    """``(page XML, line id)`` of ``page.xml:LINE_ID`` (as ``predict`` prints a page's lines), else None."""
    at = given.lower().rfind(".xml:")
    if at < 0 or Path(given).exists():
        return None
    return Path(given[:at + 4]), given[at + 5:]


def _page_line(xml: Path, line_id: str, height: int) -> np.ndarray:
    """The line ``line_id`` of the page ``xml``, cut and scaled as training and predict cut it."""
    if not xml.is_file():
        raise DataNotFound(f"{xml}: no such page XML file")
    page = read_pages([xml], height=height)[0]
    if page.page_error is not None:
        raise DataError(str(page.page_error))
    ids = page.line_ids()  # position in the file -> id, unique within the page
    position = next((k for k, i in ids.items() if i == line_id), None)
    if position is None:
        shown = ", ".join(list(ids.values())[:5]) + (", ..." if len(ids) > 5 else "")
        raise DataError(f"{xml}: no line {line_id!r} on this page; its lines: {shown or 'none'}")
    if position not in page.indices:
        bad = next(b for b in page.bad if b.index == position)
        raise DataError(bad.message(str(xml)))
    return page.images[page.indices.index(position)]


@click.command(name="ctc")
@click.argument("run", type=click.Path())
@click.argument("image", type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), default="ctc.png", show_default=True, help="PNG to write")
def plot_ctc(run: str, image: str, out: str) -> None:
    """Draw a lines run's per-frame character probabilities for IMAGE (a line image, or PAGE.xml:LINE_ID
    for a line of a page, as predict names them), aligned under the line."""
    import os

    from convrnn.files import check_writable
    from convrnn.infer.run import load_run
    from convrnn.train.rundir import run_files
    from convrnn.viz.ctc_plot import plot_ctc as draw

    run, image, out = os.path.expanduser(run), os.path.expanduser(image), os.path.expanduser(out)
    if not image.strip():  # an unset shell variable: as a path, the working folder
        raise DataError(f"{image!r}: an empty path for the line image (an unset shell variable?)")
    page_line = _page_line_argument(image)
    if page_line is None and image.lower().endswith(".xml"):
        raise DataError(f"{image}: a page; plot ctc draws one of its lines: give {image}:LINE_ID (`convrnn predict "
                        f"RUN {image}` prints each line's)")
    if page_line is None:
        _refuse_page_image(image, "plot ctc draws one line: give PAGE.xml:LINE_ID (predict prints them) or a "
                                  "line image")  # its XML names the lines
    read = str(page_line[0]) if page_line else image
    check_writable(out, keep=[read, *run_files(run)], png=True)  # never over its input or the run's files
    loaded = load_run(run, expect_recipe="lines")
    alphabet = loaded.ckpt["meta"]["alphabet"]
    height = int(loaded.ckpt["input_shape"][1])
    pixels = _page_line(page_line[0], page_line[1], height) if page_line else prepare_line(image, height)
    output = run_images(loaded.model, [pixels])  # an ensemble's y: its members' mean frame probabilities
    n = int(output.lengths[0])
    probs = torch.softmax(output.y[0, :n].float(), dim=-1).numpy()  # (T, V)
    text = loaded.task.decode(output)[0]
    path = draw(pixels, probs, alphabet, out, text=loaded.task.visual(text))  # drawn left to right, as the line
    how = "joint beam search of its members" if output.members is not None else "greedy"
    click.echo(f"wrote {path} ({n} frames, text {text!r}, {how})")


# ----------------------------------------------------------------------------------------- report

def lines_sections(ctx, *, worst: int = 8, plots: int = 3) -> list:
    """Worst-read lines (the line image above its reference and greedy prediction) and the CTC
    alignments of the worst few, from the one evaluation pass of the report."""
    from convrnn.tasks.text_metrics import edit_distance
    from convrnn.viz.ctc_plot import plot_ctc
    from convrnn.viz.html import Section, captioned, esc, evaluate_metrics, img, missing, note, sample_id, thumbnail

    alphabet = ctx.ckpt["meta"]["alphabet"]
    scored = []  # (cer, index in its batch, reference, prediction, batch, logits (B, T, V), frames (B,))

    def keep_worst(out, batch) -> None:
        nonlocal scored
        frames = out.lengths if out.lengths is not None else torch.full((out.y.shape[0],), out.y.shape[1])
        hyps = ctx.task.decode(out._replace(lengths=frames))  # an ensemble's members decoded jointly, as eval does
        for k, (ref, hyp) in enumerate(zip(batch["texts"], hyps)):
            cer = edit_distance(ref, hyp) / max(len(ref), 1)
            scored.append((cer, k, ref, hyp, batch, out.y, frames))
        scored.sort(key=lambda s: -s[0])
        scored = scored[:worst]  # keep only the worst lines (and their batches) while evaluating

    evaluate_metrics(ctx, keep_worst)
    if not scored:
        return [missing("Worst-read lines", f"the {ctx.split} split has no lines")]
    items = []
    for cer, k, ref, hyp, b, _, _ in scored:
        ink = b["x"][k, 0, :, :int(b["lengths"][k])].numpy()  # (1, H, W) padded -> (H, width)
        line_id = sample_id(b, k)
        picture = thumbnail(ink, f"line {line_id}")  # low lines enlarged to about THUMB_HEIGHT
        items.append(captioned("line", picture,
                               f'<span class="id">{esc(line_id)}</span> CER <span class="cer">{cer:.3f}</span>'
                               f'<br>reference <code class="ref">{esc(ref)}</code>'
                               f'<br>prediction <code class="hyp">{esc(hyp)}</code>'
                               + (' <span class="p">(nothing read)</span>' if not hyp else "")))
    sections = [Section("Worst-read lines", "".join(items)
                        + note(f"Greedy decoding of the best checkpoint (an ensemble's members decoded jointly, "
                               f"as eval reads them); the {len(items)} lines with the highest "
                               f"character error rate among at most {ctx.max_batches} {ctx.split} batches, worst "
                               "first: the line image above its reference and the prediction."),
                        "worst-lines")]
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (cer, k, ref, hyp, b, logits, frames) in enumerate(scored[:plots]):
            n, width = int(frames[k]), int(b["lengths"][k])
            image = (b["x"][k, 0, :, :width] * 255).round().to(torch.uint8).numpy()  # (1, H, W) -> (H, W)
            probs = torch.softmax(logits[k, :n].float(), dim=-1).numpy()  # (T, V)
            png = Path(plot_ctc(image, probs, alphabet, Path(tmp) / f"ctc{i}.png",
                                # matplotlib draws glyphs left to right: texts in display order, as the line
                                title=f"reference {ctx.task.visual(ref)!r}\ngreedy    {ctx.task.visual(hyp)!r}  "
                                      f"(CER {cer:.2f})")).read_bytes()
            figures.append(img(png, f"CTC alignment of {b['ids'][k]}", css_class="wide"))
    sections.append(Section("CTC alignments", "".join(figures) + note(
        "Per-frame label probabilities under the line image (dashed: blank); a peak sits under the "
        "glyph it reads."), "ctc"))
    return sections
