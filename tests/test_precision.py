"""Mixed precision in the trainer: bf16 autocast on CPU trains like fp32, fp16 on CPU is a clear error."""
import pytest
import torch

from convrnn.cli import main
from convrnn.errors import ConfigError, ConvrnnError
from convrnn.tasks.classify import ClassifyTask
from convrnn.fields import check as check_fields
from convrnn.train.config import TrainConfig
from convrnn.train.trainer import Trainer

from helpers import TinyNet, toy_batches, toy_classification


def losses(precision: str, steps: int = 6) -> list[float]:
    torch.manual_seed(0)
    x, y = toy_classification()
    trainer = Trainer(TinyNet(), ClassifyTask(["a", "b", "c"]), toy_batches(x, y), None,
                      TrainConfig(epochs=1, batch_size=16, lr=1e-2, device="cpu", precision=precision))
    got = []
    trainer.callbacks.append(type("Rec", (), {"on_step": lambda self, t, info: got.append(info["loss"])})())
    trainer.fit()
    return got[:steps]


def test_bf16_autocast_on_cpu_tracks_fp32():
    fp32, bf16 = losses("32"), losses("bf16")
    assert len(fp32) == len(bf16) == 6
    # bf16 keeps 8 bits of mantissa: losses agree to ~1e-2 relative, and they are not bit-identical
    assert all(abs(a - b) <= 3e-2 * abs(a) for a, b in zip(fp32, bf16)), (fp32, bf16)
    assert fp32 != bf16


def test_fp16_on_cpu_is_a_clear_error():
    x, y = toy_classification()
    with pytest.raises(ConvrnnError, match="fp16 needs a CUDA device"):
        Trainer(TinyNet(), ClassifyTask(["a", "b", "c"]), toy_batches(x, y), None,
                TrainConfig(device="cpu", precision="fp16"))


def test_unknown_precision_is_rejected():
    with pytest.raises(ConfigError, match="train.precision: expected one of 32, bf16, fp16"):
        check_fields(TrainConfig(precision="fp8"), "train")


def test_cli_precision_flag_reaches_the_config_and_is_refused_before_any_data(tmp_path, capsys, monkeypatch):
    from convrnn.recipes import get_recipe

    recipe = type(get_recipe("fonts"))
    monkeypatch.setattr(recipe, "make_data", lambda *a, **k: pytest.fail("the data was prepared first"))
    with pytest.raises(SystemExit) as e:
        main(["train", "fonts", "--device", "cpu", "--precision", "fp16", "--samples-per-font", "4",
              "--max-steps", "1", "--run-dir", str(tmp_path / "run")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith("error: train.precision=fp16 needs a CUDA device"), err
    assert not (tmp_path / "run").exists()


def bf16_trainer(precision: str = "bf16") -> Trainer:
    x, y = toy_classification()
    return Trainer(TinyNet(), ClassifyTask(["a", "b", "c"]), toy_batches(x, y), None,
                   TrainConfig(epochs=1, batch_size=16, device="cpu", precision=precision))


@pytest.mark.parametrize("flags, warned", [
    ({"fpu", "avx2"}, True),                         # no bfloat16 instructions: emulated, slower
    ({"fpu", "avx512f", "avx512_bf16"}, False),      # AVX-512 BF16
    ({"fpu", "avx512f", "amx_bf16"}, False),         # AMX
    (set(), False),                                  # flags unreadable (no /proc/cpuinfo): no guess
])
def test_bf16_on_a_cpu_without_bfloat16_instructions_warns(monkeypatch, caplog, flags, warned):
    import convrnn.train.cpu as cpu
    monkeypatch.setattr(cpu, "cpu_flags", lambda: set(flags))
    with caplog.at_level("WARNING", logger="convrnn.train.trainer"):
        trainer = bf16_trainer()
    got = [r.getMessage() for r in caplog.records if "bfloat16 instructions" in r.getMessage()]
    assert len(got) == int(warned), got
    if warned:
        assert got[0].startswith("train.precision=bf16: this CPU has no bfloat16 instructions")
    assert " in bf16 autocast," in trainer.describe()


def test_float32_start_line_names_no_autocast():
    assert "autocast" not in bf16_trainer("32").describe()
