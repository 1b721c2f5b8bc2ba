"""ray_config.yaml loads into typed config; bad files fail with the key and the file named."""

from __future__ import annotations

import pytest
import yaml

from cluster.config import DEFAULT_CONFIG_PATH, ConfigError, MELConfig, load_config


def test_repository_config_loads_with_every_section():
    cfg = load_config()
    assert isinstance(cfg, MELConfig)
    assert cfg.ray.address == "local" and cfg.ray.num_cpus == 2
    assert cfg.milvus.metric == "IP"
    assert cfg.mmoe.top_k == 3 and cfg.mmoe.dim == 96
    # every key in the file is a declared field: the file and the dataclasses agree
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    assert set(raw) == set("ray storage kb encoder milvus mmoe train eval dme serve batch".split())


def test_overrides_parse_yaml_values():
    cfg = load_config(
        overrides=["train.epochs=7", "milvus.index_params={nlist: 16}", "serve.nil_threshold=0.5"]
    )
    assert cfg.train.epochs == 7
    assert cfg.milvus.index_params == {"nlist": 16}
    assert cfg.serve.nil_threshold == 0.5


def test_int_is_accepted_for_float():
    assert load_config(overrides=["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.epochz=3", "unknown key 'train.epochz'"),
        ("trian.epochs=3", "unknown key 'trian'"),
        ("train.epochs=three", "'train.epochs' must be int"),
        ("train.use_gpu=7", "'train.use_gpu' must be bool"),
        ("eval.ks=[1, x]", "'eval.ks[1]' must be int"),
        ("encoder.tiny.hidden_size=true", "'encoder.tiny.hidden_size' must be int"),
        ("train=5", "'train' must be a mapping"),
    ],
)
def test_bad_keys_and_types_name_the_key_and_file(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert needle in str(err.value)
    assert "ray_config.yaml" in str(err.value)


def test_bad_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("serve:\n  port: 'eighty'\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'serve\.port' must be int"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("serve: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_partial_file_keeps_defaults(tmp_path):
    small = tmp_path / "small.yaml"
    small.write_text("train:\n  epochs: 9\n")
    cfg = load_config(small)
    assert cfg.train.epochs == 9 and cfg.train.batch_size == 32 and cfg.serve.port == 8000


def test_dataclass_defaults_equal_the_default_file_and_build_a_model():
    """`MELConfig()` is the same config as ray_config.yaml, so library callers and `mel` agree, and it is
    valid: the tiny model it names builds (text length = vision token count)."""
    from mmoe.pretrained import build_tiny_model

    defaults = MELConfig()
    assert defaults == load_config()
    model, processor = build_tiny_model(defaults.encoder.tiny, defaults.mmoe, ["alpha bravo"], seed=0)
    assert processor.text_max_tokens == defaults.mmoe.text_max_tokens
