"""The package's layering (docs/architecture.md): dependencies point down, and a new recipe is one
module that the rest of convrnn drives without naming it."""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import run_cli

SRC = Path(__file__).resolve().parents[1] / "src"

# Lower ranks are lower layers: a module may import only from modules of its rank or below.
RANKS = [
    ("convrnn.errors", 0), ("convrnn.fields", 0), ("convrnn.files", 0), ("convrnn", 0),
    ("convrnn.layers", 1), ("convrnn.spec", 2), ("convrnn.data", 3), ("convrnn.tasks", 4),
    ("convrnn.infer.evaluate", 5), ("convrnn.infer.views", 5), ("convrnn.infer.sampling", 5),
    ("convrnn.train", 6), ("convrnn.recipes.base", 7), ("convrnn.recipes", 7),
    ("convrnn.infer", 8), ("convrnn.viz", 9), ("convrnn.recipes.runner", 10), ("convrnn.recipes.", 10),
    ("convrnn.cli", 11), ("convrnn.__main__", 11),
]
# The one import that points up on purpose: the recipe registry loads the recipes it ships with.
ALLOWED_UP = {("convrnn.recipes.base", "convrnn.recipes")}


def rank(module: str) -> int:
    """The rank of the longest prefix of ``module`` in RANKS (``convrnn.recipes.`` names a recipe module)."""
    best = max((p for p, _ in RANKS if module == p or module.startswith(p if p.endswith(".") else p + ".")),
               key=len)
    return dict(RANKS)[best]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, int]]:
    """The convrnn modules ``path`` imports (at any depth of the file), with their lines."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("convrnn"):
            names = [f"{node.module}.{a.name}" for a in node.names]
            out += [(n if _is_module(n) else node.module, node.lineno) for n in names]
        elif isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("convrnn")]
    return out


def _is_module(name: str) -> bool:
    base = SRC / Path(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def test_every_import_points_down_the_layers():
    wrong = []
    for path in sorted((SRC / "convrnn").rglob("*.py")):
        source = module_name(path)
        for target, line in imports(path):
            if rank(target) > rank(source) and (source, target.rsplit(".", 1)[0]) not in ALLOWED_UP \
                    and (source, target) not in ALLOWED_UP:
                wrong.append(f"{path.relative_to(SRC)}:{line} {source} (rank {rank(source)}) imports {target} "
                             f"(rank {rank(target)})")
    assert not wrong, "\n".join(wrong)


def test_no_module_outside_the_recipes_imports_a_recipe():
    """Recipes are found through the registry; only the recipe package names its modules."""
    recipes = {f"convrnn.recipes.{p.stem}" for p in (SRC / "convrnn" / "recipes").glob("*.py")} - {
        "convrnn.recipes.__init__", "convrnn.recipes.base", "convrnn.recipes.runner"}
    wrong = [f"{path.relative_to(SRC)}:{line} imports {target}"
             for path in sorted((SRC / "convrnn").rglob("*.py")) if "recipes" not in path.parts
             for target, line in imports(path) if target in recipes]
    assert not wrong, "\n".join(wrong)


# --------------------------------------------------------------- a recipe that lives only in this test

@dataclass
class ToyDataConfig:
    """Bright stripes on the left (class 0) or the right (class 1) of small images."""

    num: int = 64
    seed: int = 0


@pytest.fixture()
def toy_recipe():
    """A recipe registered here, in the test: nothing in convrnn knows its name."""
    from convrnn.data.batching import IndexedBatches, array_fetcher
    from convrnn.recipes import base
    from convrnn.tasks.classify import ClassifyTask

    class ToyRecipe(base.Recipe):
        name = "toystripes"
        description = "which half of a small image holds a stripe"
        default_preset = "fwtk"
        preset_tasks = ("classify",)
        data_config = ToyDataConfig
        train_defaults = {"epochs": 2, "batch_size": 16, "lr": 1e-2, "checkpoint_every": 4}
        cli_options = (base.CliOption("--num", "data.num", "images per split", type=int),)

        def make_data(self, data_cfg, train_cfg, *, progress=None):
            def split(seed):
                rng = np.random.default_rng((data_cfg.seed, seed))
                labels = rng.integers(0, 2, size=data_cfg.num).astype(np.uint8)
                images = rng.integers(0, 40, size=(data_cfg.num, 16, 64)).astype(np.uint8)
                for i, y in enumerate(labels):
                    images[i, 4:12, 8 + 32 * int(y): 24 + 32 * int(y)] = 255
                return images, labels
            (ti, tl), (vi, vl) = split(1), split(2)
            return base.DataBundle(
                train=IndexedBatches(range(len(tl)), train_cfg.batch_size, fetch=array_fetcher(ti, tl),
                                     seed=train_cfg.seed),
                val=IndexedBatches(range(len(vl)), 32, fetch=array_fetcher(vi, vl), shuffle=False),
                input_shape=(1, 16, 64), num_outputs=2, meta={"classes": ["left", "right"]})

        def make_task(self, meta, output_shape):
            return ClassifyTask(meta["classes"])

        def predict(self, loaded, inputs, **options):
            from convrnn.data.images import load_gray, to_ink
            x = torch.from_numpy(np.stack([to_ink(load_gray(p)) for p in inputs])).unsqueeze(1)  # (B, 1, H, W)
            with torch.inference_mode():
                return [f"{p}\t{n}\t{q:.3f}" for p, (n, q) in zip(inputs, loaded.task.predict(loaded.model(x)))]

    base.register_recipe(ToyRecipe)
    import convrnn.cli
    convrnn.cli.cli.commands.clear()  # the CLI is built again, with the toy recipe in it
    yield ToyRecipe
    del base._RECIPES["toystripes"]
    convrnn.cli.cli.commands.clear()


def test_a_recipe_defined_outside_convrnn_trains_evaluates_predicts_reports_and_exports(toy_recipe, tmp_path,
                                                                                         capsys):
    from PIL import Image
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "-q", "train", "toystripes", "--num", "48", "--run-dir", str(run))
    assert code == 0, err
    assert "final:" in out and (run / "checkpoints" / "best.pt").is_file()
    code, out, err = run_cli(capsys, "-q", "train", "toystripes", "--resume", str(run), "--epochs", "3")
    assert code == 0, err
    code, out, err = run_cli(capsys, "eval", str(run))
    assert code == 0 and "accuracy:" in out and "errors:" in out, err
    image = np.zeros((16, 64), dtype=np.uint8)
    image[4:12, 40:56] = 255
    Image.fromarray(image).save(tmp_path / "right.png")
    code, out, err = run_cli(capsys, "predict", str(run), str(tmp_path / "right.png"))
    assert code == 0 and out.split("\t")[1] in ("left", "right"), err
    code, out, err = run_cli(capsys, "report", str(run))
    assert code == 0 and (run / "report.html").stat().st_size > 10_000, err
    code, out, err = run_cli(capsys, "export", str(run))
    assert code == 0 and (run / "model.onnx").is_file(), err
    code, out, err = run_cli(capsys, "models")
    assert code == 0 and "fonts,mnist,toystripes" in out.split("fwtk", 1)[1].split("\n")[0]
