"""The ``charlm`` recipe: a character (or byte) language model of any text, with carried state.

Data: one text file or a folder (default: a text shipped with the package, so it runs offline),
split contiguously (the last ``val_fraction`` validates), cut into ``B`` contiguous streams walked
``T`` steps at a time; the trainer carries the hidden state from one batch to the next (truncated
BPTT) and resets it at each epoch start. ``--random-windows`` trains on independent windows instead.
The vocabulary (256 bytes, or the characters of the training text) is stored in checkpoint meta.

Shape:
    batch ``x``, ``y``: ``(B, T)`` int64 token ids; model output ``(B, T, V)`` next-token logits.
    B batch (streams), T time steps (``seq_len``), V vocabulary size.
"""
# B batch, T time steps, V vocabulary
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path


from convrnn.data.text import RandomWindows, StreamBatches, Vocab, read_corpus, split_corpus
from convrnn.errors import ConfigError, DataError
from convrnn.recipes.base import (CliOption, DataBundle, DOES_NOT_FIT, Recipe, check_meta, missing_split,
                                   register_recipe)
from convrnn.tasks.lm import LanguageModelTask
from convrnn.fields import checked, one_of, path_field

log = logging.getLogger(__name__)

DEFAULT_CORPUS = Path(__file__).resolve().parent.parent / "data" / "corpus_default.txt"
VAL_BATCH_SIZE = 16     # validation streams: few, long stripes, so carried state warms up once per stripe
VAL_SEQ_LEN = 256


@dataclass
class CharLMDataConfig:
    """Where the text comes from and how it is cut into training batches."""

    path: str = path_field()     # text file or folder; empty = the embedded default corpus
    unit: str = one_of("char", "byte")  # char: vocabulary of the training text; byte: 256 symbols, any file
    seq_len: int = checked(64, lambda v: v >= 1, "at least 1")  # T: steps per batch (truncated BPTT length)
    stateful: bool = True        # contiguous streams with carried state; False = random windows
    val_fraction: float = checked(0.1, lambda v: 0.0 < v < 1.0, "a fraction in (0, 1)")  # the last part validates
    random_offset: bool = True   # stateful: each epoch starts its stripes at a different offset


def check_length(symbols: int, cfg: CharLMDataConfig, batch_size: int) -> None:
    """A text too short to train on (plus a few symbols to validate on) is a DataError that says how
    long it must be and what to lower: stateful training needs one window of ``seq_len`` per stream
    (``batch_size`` streams side by side), random windows need one window, which they draw
    ``batch_size`` times."""
    per_stream = cfg.seq_len + 1
    # stateful: a window per stream, and room to shift it; random windows may overlap
    train_needed = batch_size * cfg.seq_len + per_stream if cfg.stateful else per_stream
    needed = max(math.ceil(train_needed / (1 - cfg.val_fraction)), math.ceil(3 / cfg.val_fraction))
    if symbols < needed:
        unit = "bytes" if cfg.unit == "byte" else "characters"
        given = f"--batch-size {batch_size} and --seq-len {cfg.seq_len}" if cfg.stateful else \
            f"--random-windows and --seq-len {cfg.seq_len}"
        lower = "--batch-size or --seq-len" if cfg.stateful else "--seq-len"
        raise DataError(f"{cfg.path or DEFAULT_CORPUS}: {symbols:,} {unit} are too few: with {given}, training on "
                        f"{1 - cfg.val_fraction:.0%} of the text needs at least {needed:,} {unit}; lower {lower}, or "
                        f"give a longer text")


def _val_batches(val_ids) -> StreamBatches:
    return StreamBatches(val_ids, max(1, min(VAL_BATCH_SIZE, (len(val_ids) - 1) // 2)), VAL_SEQ_LEN)


def encode_val(vocab: Vocab, val_text, cfg: CharLMDataConfig):
    """The validation text's ids, with a warning naming the characters the vocabulary lacks; a DataError
    naming the text instead when fewer than two ids are left (a symbol and the one after it)."""
    ids = vocab.encode(val_text, warn=False)
    if len(ids) < 2:
        unit = "bytes" if cfg.unit == "byte" else "characters"
        unknown = sum(vocab.last_unknown.values())
        raise DataError(f"{cfg.path or DEFAULT_CORPUS}: its validation part (the last {cfg.val_fraction:.0%}) has "
                        f"{len(val_text):,} {unit}, {unknown:,} of them not in the vocabulary, which leaves "
                        f"{len(ids)} to score; at least 2 are needed: give a longer text, or a text whose end "
                        f"uses the characters of the rest")
    if vocab.last_unknown:  # said in the data's terms: the note alone reads as a fault of the text
        listing = ", ".join(f"{c!r} x{n}" for c, n in list(vocab.last_unknown.items())[:10])
        log.warning("%s: %s character(s) of its validation part (the last %.0f%%) never occur in the training "
                    "part, so the model has no symbol for them; they are left out of the validation score: %s%s",
                    "the embedded text" if not cfg.path else cfg.path, f"{sum(vocab.last_unknown.values()):,}",
                    100 * cfg.val_fraction, listing, ", ..." if len(vocab.last_unknown) > 10 else "")
    return ids


def load_text(cfg: CharLMDataConfig, *, scoring: bool = False):
    """The corpus as ``str`` (char) or ``bytes`` (byte); a non-UTF-8 file in char mode suggests --unit
    byte for training, and says what the run reads when ``scoring`` (its unit is the run's own)."""
    if scoring:
        return read_corpus(cfg.path or DEFAULT_CORPUS, cfg.unit,
                           advice="; this run models characters, so the text it scores must be UTF-8")
    return read_corpus(cfg.path or DEFAULT_CORPUS, cfg.unit)


@register_recipe
class CharLMRecipe(Recipe):
    """A character or byte language model of any text (state carried between batches); `convrnn sample`
    generates text."""

    name = "charlm"
    default_preset = "charlm"
    data_config = CharLMDataConfig
    ensemble_refusal = "its task carries recurrent state from batch to batch, which an average of members cannot"
    input_meta = ("unit",)
    label_meta = ("vocab",)
    train_defaults = {"epochs": 50, "max_time": 300.0, "batch_size": 32, "lr": 6e-3, "schedule": "cosine",
                      "clip_grad_norm": 1.0, "checkpoint_every": 200, "log_every": 20}
    cli_options = (
        CliOption("--data", "data.path", "text file or folder (default: a text embedded in the package)",
                  aliases=("--text",)),
        CliOption("--unit", "data.unit", "char: vocabulary of the training text (UTF-8); byte: 256 symbols, any file"),
        CliOption("--seq-len", "data.seq_len", "time steps per batch (truncated BPTT length T)", type=int),
        CliOption("--stateful/--random-windows", "data.stateful",
                  "contiguous streams with carried state (default), or independent random windows", is_flag=True),
        CliOption("--val-fraction", "data.val_fraction", "last fraction of the text used for validation", type=float),
    )

    def make_data(self, data_cfg: CharLMDataConfig, train_cfg, *, progress=None) -> DataBundle:
        text = load_text(data_cfg)
        check_length(len(text), data_cfg, train_cfg.batch_size)
        train_text, val_text = split_corpus(text, data_cfg.val_fraction)
        vocab = Vocab.from_text(train_text)
        if len(set(train_text)) < 2:  # every next symbol is known: the loss goes to 0 and nothing is learned
            log.warning("%s: the training text has only one distinct %s (%r): there is nothing to predict",
                        data_cfg.path or "the embedded text", "byte" if vocab.is_bytes else "character",
                        train_text[:1])
        train_ids, val_ids = vocab.encode(train_text), encode_val(vocab, val_text, data_cfg)
        bs, seq_len = train_cfg.batch_size, data_cfg.seq_len
        if data_cfg.stateful:
            train = StreamBatches(train_ids, bs, seq_len, random_offset=data_cfg.random_offset, seed=train_cfg.seed)
        else:
            train = RandomWindows(train_ids, bs, seq_len, seed=train_cfg.seed)
        val = _val_batches(val_ids)
        source = data_cfg.path or "the text embedded in the package (no --data given)"
        log.info("%s corpus from %s: %d train and %d validation %s, vocabulary of %d", data_cfg.unit, source,
                 len(train_ids), len(val_ids), "bytes" if vocab.is_bytes else "characters", len(vocab))
        meta = {"vocab": vocab.to_dict(), "unit": data_cfg.unit, "train_symbols": len(train_ids),
                "val_symbols": len(val_ids)}
        return DataBundle(train=train, val=val, input_shape=(None,), num_outputs=len(vocab), meta=meta)

    def make_split(self, data_cfg: CharLMDataConfig, train_cfg, split: str, meta: dict, *, progress=None):
        """The validation text (the last ``val_fraction``) encoded with the checkpoint's vocabulary, so that
        any text (another file, or the training file since edited) is scored by what the model's outputs
        mean; characters the vocabulary lacks are left out and named in a warning. Only scoring is asked
        of the text, so it may be shorter than training needs."""
        check_meta(self.input_meta, meta, {"unit": data_cfg.unit}, DOES_NOT_FIT)
        if split != "val":
            raise missing_split(split)
        text = load_text(data_cfg, scoring=True)
        val_text = split_corpus(text, data_cfg.val_fraction)[1]
        return _val_batches(encode_val(Vocab.from_dict(meta["vocab"]), val_text, data_cfg))

    def make_task(self, meta: dict, output_shape: tuple) -> LanguageModelTask:
        return LanguageModelTask(Vocab.from_dict(meta["vocab"]))

    def callbacks(self) -> list:
        return [TensorBoardSamples()]

    def report_sections(self, ctx) -> list:
        return samples_section(ctx)

    def predict(self, loaded, inputs: list[str], **options) -> list[str]:
        """A language model generates text rather than reading inputs: ``convrnn sample`` does that."""
        raise ConfigError(f"a charlm run generates text instead of reading files: use `convrnn sample RUN "
                          f"--prime TEXT` (got {len(inputs)} input{'s' if len(inputs) != 1 else ''} to predict)")


SAMPLE_TEMPERATURES = (0.5, 0.8, 1.0)  # the report's samples
SAMPLE_LENGTH = 300


class TensorBoardSamples:
    """Trainer callback: a few generated samples as text in TensorBoard at each validation, drawn with
    their own seeded generator (the step), so training results do not change."""

    def __init__(self, *, temperatures: tuple = (0.5, 1.0), length: int = 200):
        self.temperatures, self.length = temperatures, length

    def on_validation(self, trainer, metrics: dict) -> None:
        from convrnn.infer.sampling import safe_text, sample
        from convrnn.train.tensorboard import markdown_block

        writer = trainer.run_dir.tensorboard() if trainer.run_dir is not None else None
        if writer is None or self.length <= 0:
            return
        vocab = trainer.task.vocab
        for t in self.temperatures:
            text = sample(trainer.model, vocab, length=self.length, temperature=t, seed=trainer.pos.step,
                          device=trainer.device)[0]
            writer.add_text(f"samples/temperature_{t:g}", markdown_block(safe_text(text) if isinstance(text, bytes)
                                                                        else text), trainer.pos.step)
        writer.flush()


def samples_section(ctx) -> list:
    """Samples at a few temperatures from the best checkpoint (fixed seed)."""
    from convrnn.infer.sampling import safe_text, sample
    from convrnn.viz.html import Section, esc, note

    parts = []
    for t in SAMPLE_TEMPERATURES:
        text = sample(ctx.model, ctx.task.vocab, length=SAMPLE_LENGTH, temperature=t, seed=0)[0]
        text = safe_text(text) if isinstance(text, bytes) else text
        parts.append(f"<h3>temperature {t:g}</h3><pre class=\"sample\">{esc(text)}</pre>")
    return [Section("Generated samples", "".join(parts) + note(
        f"{SAMPLE_LENGTH} symbols per sample from the best checkpoint, seed 0, starting after a newline."),
        "samples")]
