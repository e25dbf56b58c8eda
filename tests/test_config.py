"""Configuration (DESIGN section 3): defaults < config file < environment < command line.

`load` is given explicit environment dicts, never os.environ; the command-line tests run the real
`python -m workqueue` in tmp_path with every WORKQUEUE_* variable removed from its environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port
from workqueue.config import Settings, load
from workqueue.errors import ConfigError


def write_config(directory: Path, text: str, name: str = "config.toml") -> str:
    path = directory / name
    path.write_text(text)
    return str(path)


# -- defaults and precedence ------------------------------------------------------------------


def test_defaults_apply_when_file_environment_and_flags_are_empty(tmp_path: Path) -> None:
    settings = load(write_config(tmp_path, ""), {}, {})
    assert settings == Settings()
    assert settings.role == "both"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.concurrency == 20
    assert settings.queues == ("default",)
    assert settings.plugin_dirs == ("plugins",)
    assert settings.log_path == "logs.txt"
    assert settings.api_token == ""
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.default_retries == 3
    assert dict(settings.plugins) == {}


def test_without_a_path_config_toml_in_the_working_directory_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load(None, {}, {}) == Settings()  # no config.toml here: built-in defaults
    write_config(tmp_path, "port = 9001\n")
    assert load(None, {}, {}).port == 9001


def test_workqueue_config_variable_names_the_file_and_an_explicit_path_beats_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, "port = 9001\n")
    other = write_config(tmp_path, "port = 9002\n", "other.toml")
    third = write_config(tmp_path, "port = 9003\n", "third.toml")
    assert load(None, {"WORKQUEUE_CONFIG": other}, {}).port == 9002
    assert load(third, {"WORKQUEUE_CONFIG": other}, {}).port == 9003


def test_file_is_overridden_by_environment_which_is_overridden_by_command_line(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        'role = "producer"\nport = 1111\nconcurrency = 5\nhost = "0.0.0.0"\n'
        'redis_url = "redis://file.example:6379/0"\nlog_path = "file.log"\n',
    )
    environ = {
        "WORKQUEUE_ROLE": "worker",
        "WORKQUEUE_PORT": "2222",
        "WORKQUEUE_REDIS_URL": "redis://env.example:6379/1",
        "UNRELATED": "ignored",
    }
    # None is what argparse gives for a flag that was not used: it must not override anything.
    overrides = {"port": 3333, "redis_url": None, "role": None, "concurrency": None}
    settings = load(path, environ, overrides)
    assert settings.port == 3333  # command line over environment over file
    assert settings.role == "worker"  # environment over file
    assert settings.redis_url == "redis://env.example:6379/1"
    assert settings.concurrency == 5  # file over default
    assert settings.host == "0.0.0.0"
    assert settings.log_path == "file.log"
    assert settings.default_retries == 3  # default


def test_every_documented_environment_variable_is_read_and_converted(tmp_path: Path) -> None:
    environ = {
        "WORKQUEUE_ROLE": "producer",
        "WORKQUEUE_REDIS_URL": "rediss://user:pw@cache.example:6380/2",
        "WORKQUEUE_HOST": "0.0.0.0",
        "WORKQUEUE_PORT": "8181",
        "WORKQUEUE_CONCURRENCY": "7",
        "WORKQUEUE_PLUGIN_DIRS": "extra",
        "WORKQUEUE_API_TOKEN": "tok",
        "WORKQUEUE_LOG_PATH": "/var/log/wq.txt",
    }
    settings = load(write_config(tmp_path, ""), environ, {})
    assert settings.role == "producer"
    assert settings.redis_url == "rediss://user:pw@cache.example:6380/2"
    assert settings.host == "0.0.0.0"
    assert settings.port == 8181
    assert settings.concurrency == 7
    assert settings.plugin_dirs == ("extra",)
    assert settings.api_token == "tok"
    assert settings.log_path == "/var/log/wq.txt"


def test_plugin_dirs_variable_is_split_on_the_path_separator(tmp_path: Path) -> None:
    value = os.pathsep.join(["plugins", str(tmp_path / "more"), "third"])
    settings = load(write_config(tmp_path, 'plugin_dirs = ["from_file"]\n'), {"WORKQUEUE_PLUGIN_DIRS": value}, {})
    assert settings.plugin_dirs == ("plugins", str(tmp_path / "more"), "third")


def test_unix_socket_and_tls_redis_urls_are_accepted(tmp_path: Path) -> None:
    for url in ("unix:///run/redis.sock", "rediss://u:p@h:6380/0", "redis://:pw@10.0.0.1:6379/3"):
        assert load(write_config(tmp_path, ""), {"WORKQUEUE_REDIS_URL": url}, {}).redis_url == url


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [("concurency = 4\n", "concurency"), ("[server]\nport = 1\n", "server"), ("redis = 'redis://x'\n", "redis")],
    ids=["typo", "unknown-table", "flag-name-not-key"],
)
def test_unknown_key_in_the_file_is_an_error_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(write_config(tmp_path, text), {}, {})
    assert repr(key) in str(e.value) or f" {key}" in str(e.value), str(e.value)


BAD_VALUES = [
    ('port = "abc"', "port"),
    ("port = 70000", "port"),
    ("port = -1", "port"),
    ("port = 80.5", "port"),
    ("concurrency = 0", "concurrency"),
    ("concurrency = true", "concurrency"),
    ("lease = -1", "lease"),
    ("lease = 0", "lease"),
    ('lease = "soon"', "lease"),
    ('role = "x"', "role"),
    ("role = 1", "role"),
    ("queues = [1]", "queues"),
    ("queues = []", "queues"),
    ('queues = ["bad queue"]', "queues"),
    ('queues = ["{default}"]', "queues"),
    ('log_level = "loud"', "log_level"),
    ("default_retries = -1", "default_retries"),
    ("max_body_bytes = 0", "max_body_bytes"),
    ("backoff_base = 0", "backoff_base"),
    ("grace_period = -1", "grace_period"),
    ('redis_url = "http://localhost:6379"', "redis_url"),
    ("api_token = 5", "api_token"),
    ("plugins = 3", "plugins"),
    ("plugins = { send_email = 3 }", "plugins"),
    ("log_max_bytes = 100", "log_max_bytes"),
    ('log_max_bytes = "big"', "log_max_bytes"),
    ("log_backups = -1", "log_backups"),
    ("log_backups = 1001", "log_backups"),
    ('tracing = "yes"', "tracing"),
]


@pytest.mark.parametrize(("line", "key"), BAD_VALUES, ids=[line for line, _ in BAD_VALUES])
def test_bad_value_in_the_file_is_an_error_naming_the_key_and_what_was_expected(
    tmp_path: Path, line: str, key: str
) -> None:
    with pytest.raises(ConfigError) as e:
        load(write_config(tmp_path, line + "\n"), {}, {})
    message = str(e.value)
    assert message.startswith(f"{key}:") or f" {key}:" in message, message
    assert "expected" in message, f"the message does not say what was expected: {message}"


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [("WORKQUEUE_PORT", "eighty", "port"), ("WORKQUEUE_CONCURRENCY", "0", "concurrency"),
     ("WORKQUEUE_ROLE", "boss", "role")],
)
def test_bad_value_in_the_environment_is_an_error_naming_the_key(
    tmp_path: Path, variable: str, value: str, key: str
) -> None:
    with pytest.raises(ConfigError) as e:
        load(write_config(tmp_path, ""), {variable: value}, {})
    assert str(e.value).startswith(f"{key}:"), str(e.value)


def test_file_that_is_not_valid_toml_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "port = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML") as e:
        load(path, {}, {})
    assert path in str(e.value)


def test_missing_explicit_config_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = str(tmp_path / "nowhere.toml")
    with pytest.raises(ConfigError) as e:
        load(path, {}, {})
    assert path in str(e.value)


def test_plugin_settings_tables_are_accepted(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        '[plugins.send_email]\nsmtp_host = "mail.example"\nsmtp_port = 2525\n\n[plugins.resize_image]\n',
    )
    settings = load(path, {}, {})
    assert dict(settings.plugins) == {
        "send_email": {"smtp_host": "mail.example", "smtp_port": 2525},
        "resize_image": {},
    }


@pytest.mark.parametrize("role", ["worker", "producer"])
def test_memory_store_with_a_lone_role_is_refused_with_a_clear_message(tmp_path: Path, role: str) -> None:
    path = write_config(tmp_path, 'redis_url = "memory://"\n')
    with pytest.raises(ConfigError) as e:
        load(path, {}, {"role": role})
    message = str(e.value)
    assert "memory://" in message and role in message and "both" in message, message
    assert load(path, {}, {"role": "both"}).redis_url == "memory://"


# -- the real command line --------------------------------------------------------------------


def run_cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WORKQUEUE_")}
    environment.update(env or {})
    try:
        return subprocess.run(
            [sys.executable, "-m", "workqueue", "--port", str(free_port()), *args],
            cwd=cwd, env=environment, capture_output=True, text=True, timeout=30,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"workqueue {args} started instead of refusing: {e.stderr!r}") from None


def test_cli_exits_2_naming_an_unknown_key_in_config_toml(tmp_path: Path) -> None:
    write_config(tmp_path, 'redis_url = "memory://"\nconcurency = 4\n')
    result = run_cli(tmp_path)
    assert result.returncode == 2, result.stderr
    assert "concurency" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_exits_2_naming_a_bad_value_from_a_flag(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--redis", "memory://", "--concurrency", "0")
    assert result.returncode == 2, result.stderr
    assert "concurrency" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_refuses_role_worker_with_the_memory_store(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--role", "worker", "--redis", "memory://")
    assert result.returncode == 2, result.stderr
    assert "memory://" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_reads_the_environment_over_the_config_file(tmp_path: Path) -> None:
    # The file says memory:// with role both (valid); the environment's role makes it invalid.
    write_config(tmp_path, 'redis_url = "memory://"\nrole = "both"\n')
    result = run_cli(tmp_path, env={"WORKQUEUE_ROLE": "producer"})
    assert result.returncode == 2, result.stderr
    assert "memory://" in result.stderr and "producer" in result.stderr


def test_cli_exits_2_naming_a_plugin_that_fails_to_import(tmp_path: Path) -> None:
    plugin = tmp_path / "plugins" / "bad"
    (plugin / "badmod").mkdir(parents=True)
    (plugin / "pyproject.toml").write_text(
        '[project]\nname = "wq-broken-plugin"\nversion = "0.1"\n\n'
        '[project.entry-points."workqueue.tasks"]\nx = "badmod:run"\n'
    )
    (plugin / "badmod" / "__init__.py").write_text('raise ImportError("badmod needs a library that is missing")\n')
    result = run_cli(tmp_path, "--redis", "memory://", "--plugins", "plugins")
    assert result.returncode == 2, result.stderr
    assert "wq-broken-plugin" in result.stderr
    assert "badmod needs a library that is missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_shipped_config_toml_loads_and_documents_every_key() -> None:
    from tests.conftest import ROOT
    from workqueue.config import FIELDS

    text = (ROOT / "config.toml").read_text()
    settings = load(str(ROOT / "config.toml"), {}, {})
    assert settings.redis_url == "memory://"  # the Quickstart runs without a Redis server
    assert [name for name in FIELDS if not any(f in text for f in (f"{name} =", f"[{name}.", f"[[{name}]]"))] == []
