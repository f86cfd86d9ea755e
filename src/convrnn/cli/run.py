"""``convrnn eval RUN`` and ``convrnn predict RUN INPUT...``: use a trained run."""
from __future__ import annotations

import sys
from typing import Optional

import click

from convrnn.cli.paths import UserPath

BEAM_HELP = "text-line runs: prefix beam search of this width (instead of the best path)"
LEXICON_HELP = "text-line runs: a word list (a text file): the beam keeps texts made of its words"
LM_HELP = "text-line runs: a UTF-8 text file to fit a character 3-gram model on, which scores the beam"
THREADS_HELP = ("CPU threads for torch; 0 = the cores the machine's load leaves idle  "
                "[default: torch's own, or OMP_NUM_THREADS]")
VIEWS_HELP = ("read every input N times and combine the readings: a text line moved right by 0..N-1 pixels, "
              "the views decoded jointly; other images as drawn and moved one pixel right, left, down, up, "
              "then diagonally (N <= 9), the views' distributions multiplied (values averaged)")


@click.command(name="eval")
@click.argument("run", type=UserPath())
@click.option("--split", type=click.Choice(["val", "test"]),
              help="the split to score  [default: test when only data.test is set, else val]")
@click.option("--set", "sets", multiple=True, metavar="data.KEY=VALUE",
              help="override the run's data config (and train.batch_size); the model and training are the checkpoint's")
@click.option("--shifts", type=click.IntRange(min=1), default=1, show_default=True, help=VIEWS_HELP)
@click.option("--beam", type=click.IntRange(min=1), help=BEAM_HELP)
@click.option("--lexicon", type=UserPath(), help=LEXICON_HELP)
@click.option("--lm", type=UserPath(), help=LM_HELP)
@click.option("--threads", type=click.IntRange(min=0), help=THREADS_HELP)
@click.pass_context
def eval_cmd(ctx: click.Context, run: str, split: Optional[str], sets, shifts: int, beam: Optional[int],
             lexicon: Optional[str], lm: Optional[str], threads: Optional[int]) -> None:
    """Metrics of a run's best checkpoint (or of the checkpoint file given) on its validation data (--split test: its test data)."""
    from convrnn.cli.progress import CountProgress
    from convrnn.infer.run import evaluate_run
    from convrnn.train.config import parse_pairs
    from convrnn.train.threads import apply_threads

    _check_files(lexicon=lexicon, lm=lm)
    if threads is not None:
        apply_threads(threads)

    quiet = ctx.find_root().obj["quiet"]
    result = evaluate_run(run, split=split, overrides=parse_pairs(list(sets)), shifts=shifts,
                          progress=CountProgress("preparing data", quiet=quiet),
                          # a bar in a terminal while the model reads (a beam search over many lines takes
                          # minutes); no lines in a log, whose output scripts compare
                          eval_progress=CountProgress("evaluating", quiet=quiet, unit="batches")
                          if sys.stderr.isatty() and not quiet else None,
                          beam=beam, lexicon=lexicon, lm=lm)
    click.echo(f"checkpoint: {result.checkpoint} (step {result.step:,})")
    click.echo(f"split: {result.split}")
    search = getattr(result.task, "search", None)
    if search:  # scores of another decoding than greedy say which
        click.echo("decoding: " + ", ".join([f"beam {search['beam_width']}"] + [f"lexicon {lexicon}"] * bool(lexicon)
                                            + [f"lm {lm}"] * bool(lm)))
    for line in result.task.metric_lines(result.metrics):
        click.echo(line)


@click.command()
@click.argument("run", type=UserPath())
@click.argument("inputs", nargs=-1, required=True, type=UserPath())
@click.option("--beam", type=click.IntRange(min=1), help=BEAM_HELP)
@click.option("--lexicon", type=UserPath(), help=LEXICON_HELP)
@click.option("--lm", type=UserPath(), help=LM_HELP)
@click.option("--shifts", type=click.IntRange(min=1), default=1, show_default=True, help=VIEWS_HELP)
@click.option("--out", type=UserPath(file_okay=False), help="text-line runs: write each ALTO/PAGE XML input "
              "into this folder with the recognised text of its lines")
@click.option("--threads", type=click.IntRange(min=0), help=THREADS_HELP)
@click.pass_context
def predict(ctx: click.Context, run: str, inputs: tuple[str, ...], beam: Optional[int], lexicon: Optional[str],
            lm: Optional[str], shifts: int, out: Optional[str], threads: Optional[int]) -> None:
    """Predict with a trained run: one line per input (per text line of a page XML input); a digits run
    reads its inputs, in order, as one sequence and prints its value (or one line per digit)."""
    from convrnn.cli.progress import CountProgress
    from convrnn.infer.run import predict as run_predict
    from convrnn.train.threads import apply_threads

    _check_files(lexicon=lexicon, lm=lm)
    if threads is not None:
        apply_threads(threads)
    options = {k: v for k, v in (("beam", beam), ("lexicon", lexicon), ("lm", lm), ("out", out)) if v is not None}
    progress = CountProgress("reading lines", quiet=ctx.find_root().obj["quiet"], unit="lines")
    lines = run_predict(run, list(inputs), shifts=shifts, progress=progress, **options)
    for line in lines:
        click.echo(line)
    if getattr(lines, "unread", None):  # the readable inputs are out; a script must still see the failure
        from convrnn.errors import DataError
        raise DataError(lines.unread[0])


def register(cli: click.Group) -> None:
    cli.add_command(eval_cmd)
    cli.add_command(predict)


# how the image files a decoding option could be given by mistake begin (PNG, JPEG, TIFF, GIF): bytes
# no text file starts with
IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"GIF87a", b"GIF89a")


def _check_files(**files: Optional[str]) -> None:
    """A decoding file (``--lexicon``, ``--lm``) that is missing or a folder: one line naming the option,
    before the run is loaded."""
    from pathlib import Path

    from convrnn.errors import DataError

    for name, value in files.items():
        if value is None:
            continue
        if Path(value).is_dir():
            raise DataError(f"--{name} {value}: a folder; give a text file")
        if not Path(value).exists():  # anything else may be read: a file, a pipe (<(...))
            raise DataError(f"--{name} {value}: no such file")
        if Path(value).is_file():
            with open(value, "rb") as f:
                head = f.read(8)
            if head.startswith(IMAGE_MAGIC):  # read as text it would fail on its bytes, not say what it is
                raise DataError(f"--{name} {value}: an image, where a text file is expected")
