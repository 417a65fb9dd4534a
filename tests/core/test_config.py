"""AgentConfig: dotted keys, the guide's YAML file, NATS_URL and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentcore import AgentConfig, ConfigError


def test_dotted_keys_and_defaults() -> None:
    config = AgentConfig({"nats.servers": ["nats://localhost:4222"], "nats.environment": "prod"}, environ={})
    assert config["nats.servers"] == ["nats://localhost:4222"]
    assert config["nats.environment"] == "prod"
    assert config["nats.batch_size"] == 10
    assert config.get("missing.key", 3) == 3
    assert "nats.servers" in config


def test_guide_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "nats_config.yaml"
    path.write_text(
        "messaging:\n  provider: nats\n\nnats:\n  servers:\n    - nats://localhost:4222\n"
        "  environment: prod\n  batch_size: 10\n  batch_timeout: 1.0\n"
    )
    config = AgentConfig.from_yaml(path, environ={})
    assert config["messaging.provider"] == "nats"
    assert config["nats.servers"] == ["nats://localhost:4222"]
    assert config["nats.environment"] == "prod"
    assert config["nats.batch_timeout"] == 1.0


def test_top_level_yaml_aliases(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("environment: staging\nbatch_size: 4\n")
    config = AgentConfig.from_yaml(path, environ={})
    assert config["nats.environment"] == "staging" and config["nats.batch_size"] == 4


def test_nats_url_overrides_servers() -> None:
    config = AgentConfig({"nats.servers": ["nats://a:4222"]}, environ={"NATS_URL": "nats://n1:4222, nats://n2:4222"})
    assert config["nats.servers"] == ["nats://n1:4222", "nats://n2:4222"]


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("nats.servers", [], "non-empty list"),
        ("nats.servers", ["localhost:4222"], "scheme"),
        ("nats.environment", "pro d", "token"),
        ("nats.environment", "a.b", "token"),
        ("nats.batch_size", 0, ">= 1"),
        ("nats.batch_size", True, "integer"),
        ("nats.batch_timeout", -1, "> 0"),
        ("messaging.provider", "kafka", "nats"),
        ("nats.allow_reconnect", "maybe", "boolean"),
        ("agent.reply_subjects", ["a..b"], "empty token"),
        ("agent.reply_subjects", [3], "non-empty strings"),
        ("control.allow", ["ops.1"], "token"),
        ("control.allow", {"ops": 1}, "list"),
        ("control.open", ["dance"], "unknown control commands"),
    ],
)
def test_bad_values_raise_config_error(key: str, value: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        AgentConfig({key: value}, environ={})
    assert key in str(info.value)
    assert fragment in str(info.value)


def test_trust_keys(tmp_path: Path) -> None:
    defaults = AgentConfig(environ={})
    assert defaults["agent.reply_subjects"] == [] and defaults["control.allow"] == []
    assert defaults["control.open"] == ["ping", "status"]
    path = tmp_path / "c.yaml"
    path.write_text("control:\n  allow: [ops, deployer]\n  open: []\nagent:\n  reply_subjects: ['results.>', '_INBOX_alice.>']\n")
    config = AgentConfig.from_yaml(path, environ={})
    assert config["control.allow"] == ["ops", "deployer"] and config["control.open"] == []
    assert config["agent.reply_subjects"] == ["results.>", "_INBOX_alice.>"]
    assert AgentConfig({"control.allow": "ops, deployer"}, environ={})["control.allow"] == ["ops", "deployer"]


def test_bad_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        AgentConfig.from_yaml(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("nats: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        AgentConfig.from_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        AgentConfig.from_yaml(listy)


def test_repr_hides_secrets() -> None:
    assert "hunter2" not in repr(AgentConfig({"nats.password": "hunter2"}, environ={}))
