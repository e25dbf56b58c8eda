"""Contract tests that keep the Lua scripts and their Python wrappers honest, as the `__all__` test
keeps the public surface: each script's KEYS and ARGV match its header and its wrapper, every status
and counter a script names is one the Python side owns, every include exists, and every key a
wrapper sends lies in the queue's hash slot.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import pytest

from workqueue.job import Job, JobSpec, Outcome, Status, Tally, Verdict
from workqueue.store import scripts
from workqueue.store.connection import embedded
from workqueue.store.keys import keys_of

LUA = resources.files("workqueue.store").joinpath("lua")
SCRIPT_FILES = sorted(p.name.removesuffix(".lua") for p in LUA.iterdir() if p.name.endswith(".lua"))
INCLUDE_FILES = sorted(p.name.removesuffix(".lua") for p in LUA.joinpath("include").iterdir()
                       if p.name.endswith(".lua"))
RETENTION = scripts.Retention(60.0, 600.0, 1000, 120.0)
KEYS = keys_of("mail")
JOB = Job(id="0" * 32, delivery="1-0", type="t", queue="mail", payload={}, retries=1, attempts=1, timeout=1.0,
          due_at=0.0)
SPEC = JobSpec(type="t", payload={}, retries=1, queue="mail", timeout=1.0, key="k",
               trace="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")

# One sample call per wrapper, to pack.
SAMPLES: dict[str, Any] = {
    "enqueue": scripts.EnqueueCall(KEYS, [[("0" * 32, SPEC)]], 10),
    "fetch": scripts.FetchCall(KEYS, "w", 5, RETENTION),
    "finish": scripts.FinishCall(KEYS, [Outcome(JOB, Status.SUCCEEDED, "1")], RETENTION, 100),
    "promote": scripts.PromoteCall(KEYS, 1.0),
    "recover": scripts.RecoverCall(KEYS, "w", "orphans", held=[(9, "1-0")], idle=10.0),
    "cancel": scripts.CancelCall(KEYS, "0" * 32, RETENTION),
    "redrive": scripts.RedriveCall(KEYS, ["0" * 32]),
    "stats": scripts.StatsCall(KEYS, 600.0),
    "list": scripts.ListCall(KEYS, "queued", None, 50, None),
}


def header(name: str, kind: str) -> list[str]:
    """The names a script's header gives its KEYS or ARGV, in order; their numbers must run 1..n."""
    text = LUA.joinpath(f"{name}.lua").read_text()
    found = re.findall(rf"^-- {kind}\[(\d+)\] (\w+)", text, re.M)
    assert [int(n) for n, _ in found] == list(range(1, len(found) + 1)), f"{name}.lua: {kind} numbering {found}"
    return [word for _, word in found]


def test_every_script_file_has_exactly_one_wrapper() -> None:
    assert sorted(w.NAME for w in scripts.WRAPPERS) == SCRIPT_FILES
    assert sorted(SAMPLES) == SCRIPT_FILES


@pytest.mark.parametrize("wrapper", scripts.WRAPPERS, ids=lambda w: w.NAME)
def test_keys_and_argv_match_the_scripts_header_and_what_the_wrapper_packs(wrapper: Any) -> None:
    assert header(wrapper.NAME, "KEYS") == list(wrapper.KEYS)
    assert header(wrapper.NAME, "ARGV") == list(wrapper.ARGV)
    keys, args = wrapper(embedded()).pack(SAMPLES[wrapper.NAME])
    assert len(keys) == len(wrapper.KEYS) and len(args) == len(wrapper.ARGV)
    # Every key in the queue's hash slot: the same script runs on Redis Cluster.
    assert keys and all("{mail}" in k for k in keys), keys


@pytest.mark.parametrize("wrapper", scripts.WRAPPERS, ids=lambda w: w.NAME)
def test_scripts_read_no_keys_or_argv_beyond_their_header(wrapper: Any) -> None:
    text = LUA.joinpath(f"{wrapper.NAME}.lua").read_text()
    body = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
    for kind, declared in (("KEYS", wrapper.KEYS), ("ARGV", wrapper.ARGV)):
        used = {int(n) for n in re.findall(rf"{kind}\[(\d+)\]", body)}
        assert used <= set(range(1, len(declared) + 1)), f"{wrapper.NAME}.lua reads {kind} {sorted(used)}"


def lua_sources() -> dict[str, str]:
    out = {f"{n}.lua": LUA.joinpath(f"{n}.lua").read_text() for n in SCRIPT_FILES}
    out.update({f"include/{n}.lua": LUA.joinpath(f"include/{n}.lua").read_text() for n in INCLUDE_FILES})
    return out


def code(text: str) -> str:
    """Lua without its comments."""
    return "\n".join(line.split("--", 1)[0] for line in text.splitlines())


def test_no_script_spells_a_status_or_a_counter_itself() -> None:
    """Statuses and counters come from the preamble (STATUS.X, TALLY.X), built from the enums."""
    owned = {s.value for s in Status} | {t.value for t in Tally}
    for name, text in lua_sources().items():
        literals = set(re.findall(r"'([^']*)'", code(text))) | set(re.findall(r'"([^"]*)"', code(text)))
        assert not literals & owned, f"{name} spells {sorted(literals & owned)}: use STATUS.X or TALLY.X"


def test_every_status_verdict_and_counter_a_script_names_exists() -> None:
    tables = {"STATUS": {s.name for s in Status}, "VERDICT": {v.name for v in Verdict},
              "TALLY": {t.name for t in Tally}}
    for name, text in lua_sources().items():
        for table, member in re.findall(r"\b(STATUS|VERDICT|TALLY)\.(\w+)", code(text)):
            assert member in tables[table], f"{name}: {table}.{member} is not defined"


def test_includes_exist_and_scripts_load_with_them() -> None:
    for name in SCRIPT_FILES:
        text = LUA.joinpath(f"{name}.lua").read_text()
        for line in re.findall(r"^-- include: (.+)$", text, re.M):
            for include in (n.strip() for n in line.split(",")):
                assert include in INCLUDE_FILES, f"{name}.lua includes a missing {include}"
        source = scripts.source(name)
        shebang, _, body = text.partition("\n")
        assert source.startswith(shebang + "\n") and "local STATUS = {" in source and source.endswith(body)
        # The embedded store (fakeredis) cannot read a shebang: there it is a comment.
        assert scripts.source(name, embedded=True).startswith("-- " + shebang + "\n")


@pytest.mark.parametrize("name", SCRIPT_FILES)
def test_every_script_declares_its_flags_and_says_why(name: str) -> None:
    """Redis 7 refuses a script with flags whole when it is out of memory, unless it declares
    allow-oom; a script without flags would run half-way. Each declares them, and a script that
    runs out of memory says why in its header."""
    text = LUA.joinpath(f"{name}.lua").read_text()
    shebang = text.partition("\n")[0]
    assert shebang in ("#!lua", "#!lua flags=allow-oom", "#!lua flags=no-writes"), shebang
    assert re.search(r"^-- Flags: ", text, re.M), f"{name}.lua does not say why it has its flags"
    writes_new_work = name in ("enqueue", "redrive")
    assert ("allow-oom" in shebang) != writes_new_work or shebang == "#!lua flags=no-writes", (name, shebang)


@pytest.mark.parametrize("name", SCRIPT_FILES)
def test_every_function_a_script_calls_is_defined_once(name: str) -> None:
    """An include that defines the same local function as another would shadow it silently."""
    defined = re.findall(r"^local function (\w+)", scripts.source(name), re.M)
    assert len(defined) == len(set(defined)), defined
