import json

import pytest

from convrnn.errors import ConfigError
from convrnn.train.config import RunConfig, TrainConfig, ModelConfig, load_config_file, parse_pairs, flatten_config_dict
from dataclasses import dataclass, field


@dataclass
class DataCfg:
    fonts: list[str] = field(default_factory=list)
    text: str | None = None
    height: int = 16
    jitter: float = 2.0
    flag: bool = False


def cfg():
    return RunConfig(recipe="toy", model=ModelConfig(preset="p"), data=DataCfg(), train=TrainConfig())


def test_overrides_are_typed():
    c = cfg().override(["train.lr=1e-3", "train.epochs=4", "data.fonts=a.ttf,b.ttf", "data.text=none",
                        "data.flag=yes", "data.jitter=3", "model.spec=cols lstm:8"])
    assert c.train.lr == 1e-3 and c.train.epochs == 4 and c.data.fonts == ["a.ttf", "b.ttf"]
    assert c.data.text is None and c.data.flag is True and c.data.jitter == 3.0 and c.model.spec == "cols lstm:8"


@pytest.mark.parametrize("pair, message", [
    ("train.lrr=1", "unknown config key train.lrr; did you mean train.lr"),
    ("train.epochs=two", "train.epochs: expected int, got 'two'"),
    ("train.epochs=2.5", "train.epochs: expected int"),
    ("data.flag=maybe", "data.flag: expected bool"),
    ("optim.lr=1", "expected section.key with section one of model, data, train"),
    ("lr", "expected section.key=value"),
])
def test_bad_overrides_name_the_key(pair, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        cfg().override(parse_pairs([pair]) if "=" in pair else [pair])


def test_saved_config_round_trip(tmp_path):
    c = cfg().override(["train.lr=0.5", "data.fonts=x.ttf"])
    c.save(tmp_path / "config.json")
    loaded = load_config_file(str(tmp_path))
    again = cfg().override(flatten_config_dict(loaded))
    assert again.to_dict() == c.to_dict()
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ConfigError, match="not a JSON config file"):
        load_config_file(str(tmp_path / "bad.json"))
    (tmp_path / "other.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(ConfigError, match="'recipe' key"):
        load_config_file(str(tmp_path / "other.json"))
