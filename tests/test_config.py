"""Config: defaults, YAML, --set overrides, unknown keys with suggestions, validation."""

from pathlib import Path

import pytest
import yaml

from edgedistill.config import build_config, load_yaml, parse_override, save_config, to_dict
from edgedistill.errors import EdgeDistillError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_and_overrides_are_typed():
    cfg = build_config(None, ["distill.epochs=3", "teacher.arch=vit_small_patch16_224", "data.crop_scale=0.3,1.0",
                              "distill.w_attn=0", "distill.compile=true"])
    assert cfg.distill.epochs == 3 and isinstance(cfg.distill.epochs, int)
    assert cfg.teacher.arch == "vit_small_patch16_224"
    assert cfg.data.crop_scale == (0.3, 1.0)
    assert cfg.distill.w_attn == 0.0 and isinstance(cfg.distill.w_attn, float)
    assert cfg.distill.compile is True


def test_unknown_key_is_rejected_with_a_suggestion():
    with pytest.raises(EdgeDistillError, match=r"unknown config key 'distill.epohcs'; did you mean 'distill.epochs'\?"):
        build_config(None, ["distill.epohcs=3"])
    with pytest.raises(EdgeDistillError, match="unknown config key 'studnet'; did you mean 'student'"):
        build_config(None, ["studnet.arch=x"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.img_size=abc", "must be an integer"),
        ("data.img_size=4", "at least 8"),
        ("distill.epochs=0", "distill.epochs must be >= 1"),
        ("student.patch_size=5", "does not divide"),
        ("distill.amp=fp8", "distill.amp must be"),
        ("data.crop_scale=0.9,0.2", "crop_scale"),
        ("export.opset=13", "opset must be >= 17"),
        ("distill.compile=maybe", "true or false"),
        ("data.img_size", "key=value"),
        ("pretrain.log_every=0", "pretrain.log_every must be >= 1"),
        ("distill.knn_every=-1", "distill.knn_every must be >= 0"),
        ("pretrain.teacher_temp=0", "teacher_temp"),
        ("pretrain.center_momentum=1", "center_momentum must be in"),
        ("pretrain.out_dim=0", "out_dim must be >= 1"),
    ],
)
def test_impossible_values_name_the_key(override, message):
    with pytest.raises(EdgeDistillError, match=message):
        build_config(None, [override])


def test_yaml_then_extra_then_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  img_size: 48\ndistill:\n  epochs: 7\n  w_attn: 0.2\n")
    cfg = build_config(path, ["distill.epochs=9"], {"data": {"path": "somewhere"}})
    assert (cfg.data.img_size, cfg.distill.epochs, cfg.distill.w_attn, cfg.data.path) == (48, 9, 0.2, "somewhere")


def test_bad_yaml_files(tmp_path):
    with pytest.raises(EdgeDistillError, match="config file not found"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(EdgeDistillError, match="not valid YAML"):
        load_yaml(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(EdgeDistillError, match="mapping"):
        load_yaml(scalar)


def test_saved_config_round_trips(tmp_path):
    cfg = build_config(None, ["distill.epochs=5", "data.mean=0.5,0.5,0.5"])
    save_config(cfg, tmp_path / "config.yaml")
    again = build_config(tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(cfg)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["distill"]["epochs"] == 5


def test_parse_override_values():
    assert parse_override("a.b=3") == {"a": {"b": "3"}}
    assert build_config(None, ["distill.amp=off"]).distill.amp == "off"
    assert build_config(None, ["eval.k=[5, 10]"]).eval.k == (5, 10)
    assert parse_override("a.b=x=y") == {"a": {"b": "x=y"}}


def _same(resolved, written) -> bool:
    """A resolved config value against what the YAML file wrote (YAML 1.1 reads ``1.5e-4`` as
    text, and lists are tuples in the config)."""
    if isinstance(written, (list, tuple)):
        return isinstance(resolved, list) and len(resolved) == len(written) and all(map(_same, resolved, written))
    if isinstance(resolved, float) and not isinstance(written, bool):
        return resolved == pytest.approx(float(written))
    return resolved == written


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_are_valid_and_mean_what_they_say(name, tmp_path):
    """Every key a shipped config sets reaches the config with that value (none is dropped,
    renamed or coerced into something else), and the config round-trips through config.yaml."""
    written = load_yaml(CONFIGS / name)
    cfg = build_config(CONFIGS / name)
    resolved = to_dict(cfg)
    assert written, f"{name} sets nothing"
    for section, values in written.items():
        for key, value in values.items():
            assert _same(resolved[section][key], value), (f"{section}.{key}", resolved[section][key], value)
    save_config(cfg, tmp_path / "config.yaml")
    assert to_dict(build_config(tmp_path / "config.yaml")) == resolved


@pytest.mark.parametrize("override, message", [
    ("distill.blr=nan", "must be a finite number"),
    ("distill.w_attn=inf", "must be a finite number"),
    ("data.crop_scale=0.2,0.5,1", "needs 2 values, got 3"),
    ("data.mean=x,y,z", "must be a number"),
    ("distill.epochs=2.5", "must be an integer"),
])
def test_values_are_converted_to_the_declared_type_or_refused(override, message):
    with pytest.raises(EdgeDistillError, match=message):
        build_config(None, [override])
    assert build_config(None, ["distill.epochs=4.0", "distill.compile=yes"]).distill.epochs == 4
