"""Settings: one way to declare a constraint (with the field) and one place that checks it."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import pytest

from defectscope.errors import ConfigError
from defectscope.methods.codegraph import CoDeGraphConfig
from defectscope.methods.config import DEFAULT_FALSE_ALARM_RATE, MethodConfig, Rule, require, setting
from defectscope.methods.musc import MuScConfig
from defectscope.methods.verdict import check_false_alarm_rate, check_review_budget


@dataclass(frozen=True)
class _Parent(MethodConfig):
    share: float = setting(0.5, at_least=0.0, below=1.0, note="a share")
    sizes: tuple[int, ...] = setting((3, 5), at_least=1, odd=True)
    mode: str = setting("a", choices=("a", "b"))
    limit: int | None = setting(None, at_least=1)
    size: int = setting(64, at_least=32, multiple_of=32)
    names: tuple[str, ...] = setting(("x",))


@dataclass(frozen=True)
class _Child(_Parent):
    share: float = 0.25  # a new default keeps the parent's rule


@pytest.mark.parametrize(
    "values, sentence",
    [
        ({"share": 1.0}, "_Parent setting share=1.0 is invalid: expected a number in [0, 1) (a share)"),
        ({"share": True}, "_Parent setting share=true is invalid: expected a number in [0, 1)"),
        ({"sizes": (3, 4)}, "_Parent setting sizes=3,4 is invalid: expected a comma-separated list of odd integers >= 1"),
        ({"sizes": ()}, "_Parent setting sizes='' is invalid"),
        ({"mode": "c"}, "_Parent setting mode=c is invalid: expected one of a, b"),
        ({"limit": 0}, "_Parent setting limit=0 is invalid: expected an integer >= 1 or none"),
        ({"limit": 2.5}, "_Parent setting limit=2.5 is invalid"),
        ({"size": 48}, "_Parent setting size=48 is invalid: expected an integer >= 32 and a multiple of 32"),
        ({"names": ()}, "_Parent setting names='' is invalid: expected a comma-separated list of names"),
    ],
)
def test_a_declared_constraint_refuses_in_one_sentence(values, sentence):
    with pytest.raises(ConfigError) as error:
        _Parent(**values)
    assert sentence in str(error.value) and "\n" not in str(error.value)


def test_every_way_of_building_a_config_is_checked():
    assert _Parent(limit=None).limit is None and _Parent(limit=3).limit == 3
    with pytest.raises(ConfigError, match="share=1.5"):
        _Parent.from_options({"share": "1.5"})
    with pytest.raises(ConfigError, match="share=-1"):
        replace(_Parent(), share=-1)
    with pytest.raises(ConfigError, match="_Child setting share=2"):
        _Child(share=2)
    assert _Child().share == 0.25 and _Child.rules()["share"] == _Parent.rules()["share"]
    assert _Parent(sizes=[1, 3]).sizes == (1, 3) and _Parent(sizes=5).sizes == (5,)


@pytest.mark.parametrize(
    "config, key, value",
    [
        (MuScConfig, "tiles", 0), (MuScConfig, "tile_overlap", 0.6), (MuScConfig, "degrees", (2,)),
        (MuScConfig, "rscin_ks", (0,)), (MuScConfig, "smoothing_sigma", -1.0), (MuScConfig, "batch_size", 0),
        (MuScConfig, "border", "wrap"), (MuScConfig, "border_depth", -1), (MuScConfig, "max_references", 0),
        (MuScConfig, "false_alarm_rate", 1.0), (MuScConfig, "rotations", 3), (MuScConfig, "self_term", "maybe"),
        (MuScConfig, "self_mix", "max"), (MuScConfig, "self_radius", -1), (MuScConfig, "self_gate", 0.0),
        (MuScConfig, "nearest_images", 0), (MuScConfig, "image_top", 1.0), (MuScConfig, "looks_gate", 1.5),
        (MuScConfig, "looks_interval", (0.0, 1.5)), (MuScConfig, "looks_groups", 0.0), (MuScConfig, "image_size", 0),
        (CoDeGraphConfig, "tiles", 2), (CoDeGraphConfig, "max_support_fraction", 0.0),
        (CoDeGraphConfig, "burnout_threshold", 0.0), (CoDeGraphConfig, "score_quantile", 1.5),
        (CoDeGraphConfig, "resolution", -1.0), (CoDeGraphConfig, "min_pair_weight", -0.5),
        (CoDeGraphConfig, "min_community_size", 1), (CoDeGraphConfig, "confirm_quantile", -0.1),
        (CoDeGraphConfig, "confirm_share", 1.1), (CoDeGraphConfig, "degrees", (4,)),
    ],
)
def test_zero_shot_settings_out_of_range_are_refused_when_built(config, key, value):
    with pytest.raises(ConfigError) as error:
        config(**{key: value})
    message = str(error.value)
    assert message.startswith(f"{config.__name__} setting {key}=") and "expected" in message and "\n" not in message


def test_rules_across_settings_and_the_defaults_fit_their_rules():
    with pytest.raises(ConfigError, match="lower=0.6, upper=0.3 are invalid"):
        MuScConfig(lower=0.6, upper=0.3)
    with pytest.raises(ConfigError, match="looks_interval=0.3,0.1 is invalid"):
        MuScConfig(looks_interval=(0.3, 0.1))
    with pytest.raises(ConfigError, match="MuSc options"):
        CoDeGraphConfig(self_term="on")
    for config in (MuScConfig(), CoDeGraphConfig()):
        assert config.false_alarm_rate == DEFAULT_FALSE_ALARM_RATE
        assert set(type(config).rules()) <= {item.name for item in fields(config)}


def test_free_values_use_the_same_rules():
    assert check_false_alarm_rate(0.1) == 0.1 and check_review_budget(0) == 0.0
    with pytest.raises(ConfigError, match=r"--false-alarm-rate=0 is invalid: expected a number in \(0, 1\)"):
        check_false_alarm_rate(0)
    with pytest.raises(ConfigError, match=r"--review-budget=1.5 is invalid: expected a number in \[0, 1\]"):
        check_review_budget(1.5)
    assert require("k", 3, Rule(at_least=1), int) == 3


def test_every_registered_config_is_checked_in_the_one_place():
    from defectscope.methods.registry import METHODS

    for entry in METHODS.values():
        assert "__post_init__" not in vars(entry.config_class), entry.name
        assert "validate" not in vars(entry.config_class), entry.name


def test_codegraph_refuses_musc_only_settings_instead_of_ignoring_them():
    from defectscope.methods.codegraph import CoDeGraphConfig

    with pytest.raises(ConfigError, match="scheduler=.*MuSc option"):
        CoDeGraphConfig.from_options({"scheduler": "local"})
    with pytest.raises(ConfigError, match="looks_gate"):
        CoDeGraphConfig(looks_gate=0.5)
