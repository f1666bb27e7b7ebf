import pytest

from forewarn.config import ConfigError, Settings


def test_defaults_environment_and_overrides_layer_in_order():
    env = {"FOREWARN_BUCKET": "from-env", "FOREWARN_GRAIN_SECONDS": "600"}
    s = Settings.load({"grain_seconds": 900}, environ=env)
    assert s.bucket == "from-env"
    assert s.grain_seconds == 900
    assert s.lookback_hours == 2


def test_variable_json_overrides_environment():
    s = Settings.from_json('{"bucket": "from-variable"}', {"lookback_hours": 3})
    assert s.bucket == "from-variable"
    assert s.lookback_hours == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"grain_seconds": 7}, "does not divide an hour"),
        ({"grain_seconds": "five"}, "whole number"),
        ({"engine": "spark"}, "'athena' or 'duckdb'"),
        ({"lookback_hours": 0}, "between 1 and 48"),
        ({"raw_prefix": "raw"}, "ending in '/'"),
        ({"bucket_name": "x"}, "unknown setting 'bucket_name'"),
        ({"train_wait_minutes": 10}, "read only from the environment variable FOREWARN_TRAIN_WAIT_MINUTES"),
        ({"grain_seconds": 900, "compare_minutes": 45}, "must divide an hour"),  # */45 fires at :00 and :45: overlapping
        ({"compare_minutes": 90}, "must divide an hour"),
        ({"compare_minutes": 0}, "must divide an hour"),
    ],
)
def test_bad_settings_say_what_to_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        Settings.load(overrides, environ={})


def test_variable_must_be_an_object():
    with pytest.raises(ConfigError, match="JSON object"):
        Settings.from_json("[1, 2]")


def test_every_setting_is_documented_in_the_readme():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [f"FOREWARN_{name.upper()}" for name in Settings.__dataclass_fields__ if f"FOREWARN_{name.upper()}" not in readme]
    assert not missing, f"README's configuration table lacks {missing}"
    from forewarn.config import ENVIRONMENT_ONLY

    missing = [f"FOREWARN_{name.upper()}" for name in ENVIRONMENT_ONLY if f"| `FOREWARN_{name.upper()}` |" not in readme]
    assert not missing, f"README's configuration table lacks the environment-only {missing}"
