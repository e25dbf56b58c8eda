"""One checker per job field (workqueue.specs), and the places that use it: a request, a
`[[schedule]]` entry, `@task` and the settings that give defaults all accept and refuse the same
values, and an app built in a test is checked against its plugins as the command line checks it.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import inline_task
from workqueue import task
from workqueue.api import create_app
from workqueue.config import build
from workqueue.errors import ConfigError, PluginError, ValidationError
from workqueue.plugins import TaskType
from workqueue.schedule import parse_schedules
from workqueue.specs import MAX_RETRIES, MAX_TIMEOUT, parse_specs
from workqueue.task import TaskOptions

# (field, a value every place refuses): the drift this module removed let schedules and @task
# accept timeouts and retries a request refused.
REFUSED = [
    ("retries", MAX_RETRIES + 1),
    ("retries", -1),
    ("retries", 1.5),
    ("timeout", MAX_TIMEOUT + 1),
    ("timeout", 0),
    ("timeout", float("inf")),
    ("priority", 10),
    ("queue", "has space"),
]


@pytest.mark.parametrize(("field", "value"), REFUSED)
def test_a_request_refuses_the_value_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=rf"^{field}: expected"):
        parse_specs({"type": "t", "payload": {}, field: value}, {"t": TaskOptions()}, 3, 300.0)


@pytest.mark.parametrize(("field", "value"), REFUSED)
def test_a_schedule_refuses_the_same_value_naming_the_entry_and_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"^schedule\[0\]\.{field}: expected"):
        parse_schedules([{"type": "t", "every": 5, field: value}])


@pytest.mark.parametrize(("field", "value"), [(f, v) for f, v in REFUSED if f in ("retries", "timeout")])
def test_task_refuses_the_same_default(field: str, value: Any) -> None:
    with pytest.raises(PluginError, match=rf"^task\({field}=.*\): expected"):
        task(**{field: value})


@pytest.mark.parametrize(("key", "value"), [("default_retries", MAX_RETRIES + 1), ("default_timeout", MAX_TIMEOUT + 1),
                                            ("default_retries", -1), ("default_timeout", 0.0)])
def test_settings_refuse_a_default_a_job_could_not_have(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}: expected"):
        build({key: value}, source="test")


def test_the_largest_values_are_accepted_everywhere() -> None:
    (spec,) = parse_specs({"type": "t", "payload": {}, "retries": MAX_RETRIES, "timeout": MAX_TIMEOUT},
                          {"t": TaskOptions()}, 3, 300.0)
    (schedule,) = parse_schedules([{"type": "t", "every": 5, "retries": MAX_RETRIES, "timeout": MAX_TIMEOUT}])
    task(retries=MAX_RETRIES, timeout=MAX_TIMEOUT)
    assert (spec.retries, spec.timeout, schedule.retries, schedule.timeout) == (MAX_RETRIES, MAX_TIMEOUT) * 2


# -- checked in create_app, so an app built by a test is refused as the command line refuses it --


async def noop(payload: dict[str, Any]) -> None:
    return None


SCHEMA = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}


@pytest.mark.parametrize(("values", "message"), [
    ({"schedule": [{"type": "nothing", "every": 5}]}, r"schedule\[0\]\.type: no loaded task type is named 'nothing'"),
    ({"plugins": {"nothing": {"a": 1}}}, r"plugins\.nothing: no loaded task type is named 'nothing'"),
])
def test_create_app_refuses_what_the_plugins_do_not_know(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_app(build({"plugin_dirs": [], **values}, source="test"), {"noop": inline_task("noop", noop)})


def test_create_app_checks_a_schedules_payload_against_its_task_schema() -> None:
    typed = task(schema=SCHEMA)(noop)
    loaded = {"typed": TaskType("typed", typed, "tests", "inline", True, False, typed.__workqueue_task__)}
    with pytest.raises(ConfigError, match=r"schedule\[0\]\.payload: .*name"):
        create_app(build({"schedule": [{"type": "typed", "every": 5, "payload": {}}]}, source="test"), loaded)
    create_app(build({"schedule": [{"type": "typed", "every": 5, "payload": {"name": "Ada"}}]}, source="test"), loaded)


def test_a_scheduled_job_takes_its_tasks_defaults_as_a_request_does() -> None:
    from workqueue.api.state import SCHEDULED

    decorated = task(retries=7, timeout=9)(noop)
    loaded = {"typed": TaskType("typed", decorated, "tests", "inline", True, False, decorated.__workqueue_task__)}
    settings = build({"schedule": [{"type": "typed", "every": 5}, {"type": "typed", "cron": "* * * * *",
                                                                    "retries": 1}]}, source="test")
    first, second = create_app(settings, loaded)[SCHEDULED]
    (request,) = parse_specs({"type": "typed", "payload": {}}, {"typed": decorated.__workqueue_task__}, 3, 300.0)
    assert (first.retries, first.timeout) == (request.retries, request.timeout) == (7, 9.0)
    assert (second.retries, second.timeout) == (1, 9.0)
