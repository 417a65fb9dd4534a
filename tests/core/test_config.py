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


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"nats.enviroment": "prod"}, "did you mean 'nats.environment'?"),
        ({"nats": {"enviroment": "prod"}}, "did you mean 'nats.environment'?"),
        ({"nast.servers": ["nats://x:4222"]}, "did you mean 'nats.servers'?"),
        ({"enviroment": "prod"}, "did you mean 'environment'?"),  # the guide's file puts environment at the top
        ({"cache": {"enabeld": False}}, "did you mean 'cache.enabled'?"),
        ({"agent.frobnicate": 1}, "the agent settings are agent.heartbeat_interval"),
    ],
)
def test_unknown_keys_are_errors_with_a_suggestion(values: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match="unknown configuration key") as info:
        AgentConfig(values, environ={})
    assert fragment in str(info.value)


def test_unknown_keys_in_yaml_files_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nats_config.yaml"
    path.write_text("nats:\n  servers: [nats://localhost:4222]\n  enviroment: prod\n")
    with pytest.raises(ConfigError) as info:
        AgentConfig.from_yaml(path, environ={})
    assert str(info.value) == f"{path}: unknown configuration key 'nats.enviroment' (did you mean 'nats.environment'?)"


def test_the_applications_own_sections_are_kept() -> None:
    config = AgentConfig({"llm": {"model": "small", "temperature": 0.2}, "nats.environment": "prod"}, environ={})
    assert config["llm.model"] == "small" and config.get("llm.temperature") == 0.2
    config.set("llm.model", "large")
    with pytest.raises(ConfigError, match="did you mean 'nats.environment'"):
        config.set("nats.enviroment", "x")


def test_nats_options_suggest_the_option_meant() -> None:
    with pytest.raises(ConfigError, match="'dont_randomise' \\(did you mean 'dont_randomize'\\?\\)"):
        AgentConfig({"nats.options": {"dont_randomise": True}}, environ={})


def test_subject_prefix_duplicate_id_and_instance_are_checked() -> None:
    config = AgentConfig({"nats.subject_prefix": "acme.agents", "agent.duplicate_id": "error", "agent.instance": "pod-7"},
                         environ={})
    assert config["nats.subject_prefix"] == "acme.agents" and config["agent.instance"] == "pod-7"
    defaults = AgentConfig(environ={})
    assert defaults["nats.subject_prefix"] == "agents" and defaults["agent.duplicate_id"] == "warn"
    assert defaults["agent.instance"] is None
    for key, value, fragment in (("nats.subject_prefix", "agents.*", "wildcard"), ("nats.subject_prefix", "a..b", "subject"),
                                 ("agent.duplicate_id", "sometimes", "warn, error, allow"), ("agent.instance", "a.b", "token")):
        with pytest.raises(ConfigError, match=fragment):
            AgentConfig({key: value}, environ={})
