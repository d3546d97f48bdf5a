"""The ``flow8`` command against hostile input, black box: subprocesses of the installed console script.

Each run gets a scrubbed environment, its own directory and an address-space cap
(``MEMORY_CAP``), so an unbounded read fails the test instead of the machine. A refusal is
exit code 2, one paragraph on stderr starting ``error:``, no traceback, and nothing written.
"""

from __future__ import annotations

import json
import os
import pty
import resource
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.flow8_cli import FLOW8, Result, run

SCRUBBED_PREFIXES = ("FLOW8_", "MONGODB_", "KAFKA_", "SERVER_", "CHANNEL_", "WORKER_")
MEMORY_CAP = 1024 * 1024 * 1024  # address space of one flow8 process: far above what a refused input needs
DEFAULT_INPUT_LIMIT = 256 * 1024
QUICK = 10.0  # seconds: a refusal reads at most a limit's worth, so it is as quick as any start-up


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def flow8(*args: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60) -> Result:
    base = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_PREFIXES)}
    base.update(NO_COLOR="1", COLUMNS="200", **(env or {}))
    return run(*args, cwd=cwd, env=base, timeout=timeout, preexec_fn=_cap_memory)


def assert_refused(result: Result, *fragments: str) -> None:
    """Exit 2, one paragraph on stderr naming the problem, no traceback, nothing on stdout."""
    assert result.code == 2, result
    assert "Traceback" not in result.err and "Traceback" not in result.out, result
    message = result.err.strip()
    assert message.startswith("error:"), result
    assert "\n\n" not in message, result
    assert "internal error" not in message, result
    for fragment in fragments:
        assert fragment in message, (fragment, result)


def write_flow(path: Path, *flowlets: dict[str, Any], name: str = "t") -> Path:
    path.write_text(json.dumps({"name": name, "flowlets": list(flowlets)}))
    return path


@pytest.fixture
def echo_flow(tmp_path: Path) -> Path:
    return write_flow(tmp_path / "echo.json", {"name": "a", "module_ref": "echo"})


# ---------------------------------------------------------------- ids: exit 2, not 70

BAD_IDS = ["bad company!", "a/b", "-leading-dash", "x" * 201, "[/]", "tab\there"]


@pytest.mark.parametrize("value", BAD_IDS)
@pytest.mark.parametrize("option", ["--company", "--play-id"])
def test_run_refuses_a_bad_company_or_play_id_with_exit_2(
    tmp_path: Path, echo_flow: Path, option: str, value: str
) -> None:
    result = flow8("run", echo_flow, option, value, "--db", tmp_path / "flow8.db", "--json", cwd=tmp_path)

    assert_refused(result, option, "not a valid id")
    assert not (tmp_path / "flow8.db").exists()


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["plays", "show", "a/b"], "PLAY_ID"),
        (["plays", "show", "p1", "--company", "a b"], "--company"),
        (["plays", "list", "--company", "a b"], "--company"),
        (["events", "a/b"], "PLAY_ID"),
        (["kv", "get", "k", "--company", "a b"], "--company"),
        (["flows", "get", "no/such", "--company", "acme"], "NAME"),
        (["flows", "get", "f", "--company", "a b"], "--company"),
        (["produce", "--flow", "no/such", "--company", "acme"], "--flow"),
        (["produce", "--flow", "f", "--company", "a b"], "--company"),
        (["produce", "--flow", "f", "--company", "x" * 199, "--companies", "2"], "--company"),
        (["results", "tail", "--company", "a b", "--timeout", "0.1"], "--company"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(a[:12] for a in v),
)
def test_every_command_refuses_a_malformed_id_or_name_with_exit_2(tmp_path: Path, args: list[str], names: str) -> None:
    # nothing answers on these addresses: a command that got as far as connecting would not exit 2
    env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "MONGODB_URI": "mongodb://127.0.0.1:9/?timeoutMS=500"}
    (tmp_path / "flow8.db").touch()

    result = flow8(*args, cwd=tmp_path, env=env)

    assert_refused(result, names)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["plays", "list", "--bogus"], "No such option: --bogus"),
        (["plays", "list", "--limit", "many"], "'--limit'"),
        (["plays", "list", "--limit", "0"], "'--limit'"),
        (["run"], "Missing argument 'FLOW'"),
        (["channels", "status", "--timeout", "-1"], "'--timeout'"),
        (["bench", "--workers", "99"], "'--workers'"),
        (["no-such-command"], "No such command"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v),
)
def test_usage_errors_exit_2_with_one_paragraph(tmp_path: Path, args: list[str], fragment: str) -> None:
    result = flow8(*args, cwd=tmp_path)

    assert_refused(result, fragment, "-h")


# ---------------------------------------------------------------- YAML and JSON: depth, numbers, text


def test_a_yaml_flow_nested_5000_deep_is_refused(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: t\nflowlets:\n- name: a\n  module_ref: echo\n  input: " + "[" * 5000 + "]" * 5000 + "\n")

    for command in ("validate", "run"):
        result = flow8(command, deep, cwd=tmp_path)
        assert_refused(result, "deep.yaml", "deeper than the limit of 64")
    assert not (tmp_path / "flow8.db").exists()


def test_json_input_deeper_than_the_limit_is_refused(tmp_path: Path, echo_flow: Path) -> None:
    at_limit = "[" * 64 + "]" * 64
    over = "[" * 65 + "]" * 65

    ok = flow8("run", echo_flow, "--input", at_limit, "--json", cwd=tmp_path)
    assert ok.code == 0, ok
    (tmp_path / "deep.json").write_text(over)
    for value in (over, "@deep.json"):
        result = flow8("run", echo_flow, "--input", value, "--db", tmp_path / "no.db", cwd=tmp_path)
        assert_refused(result, "--input", "deeper than the limit of 64")
    assert not (tmp_path / "no.db").exists()


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_a_non_finite_timeout_in_yaml_is_refused(tmp_path: Path, value: str) -> None:
    flow = tmp_path / "inf.yaml"
    flow.write_text(f"name: t\nflowlets:\n- name: a\n  module_ref: echo\n  timeout: {value}\n")

    result = flow8("validate", flow, cwd=tmp_path)

    assert_refused(result, "inf.yaml", "flowlets.0.timeout", "not a finite number")


def test_a_lone_surrogate_in_yaml_input_is_refused(tmp_path: Path, echo_flow: Path) -> None:
    (tmp_path / "input.yaml").write_text('text: "ok \\ud800 then"\n')
    flow = tmp_path / "flow.yaml"
    flow.write_text('name: t\nflowlets:\n- name: a\n  module_ref: echo\n  input: {x: "\\udfff"}\n')

    from_input = flow8("run", echo_flow, "--input", "@input.yaml", "--db", tmp_path / "a.db", cwd=tmp_path)
    from_flow = flow8("run", flow, "--db", tmp_path / "b.db", cwd=tmp_path)

    assert_refused(from_input, "input.yaml", "at text", "lone surrogate", "U+D800")
    assert_refused(from_flow, "flow.yaml", "flowlets.0.input.x", "lone surrogate", "U+DFFF")
    assert not (tmp_path / "a.db").exists() and not (tmp_path / "b.db").exists()


def test_yaml_values_that_are_not_json_are_refused(tmp_path: Path, echo_flow: Path) -> None:
    (tmp_path / "input.yaml").write_text("when: 2024-01-01\n")

    result = flow8("run", echo_flow, "--input", "@input.yaml", "--db", tmp_path / "a.db", cwd=tmp_path)

    assert_refused(result, "input.yaml at when", "date is not a JSON value")


def test_an_invalid_flow_is_described_in_one_short_paragraph(tmp_path: Path) -> None:
    flowlets = [{"name": f"{'n' * 50_000}{i}", "module_ref": "echo", "x" * 100: 1} for i in range(3)]
    flowlets += [{"name": f"f{i}", "module_ref": "echo", "timeout": "soon"} for i in range(100)]
    flow = tmp_path / "flow.json"
    flow.write_text(json.dumps({"name": "N" * 100_000, "flowlets": flowlets}))

    result = flow8("validate", flow, cwd=tmp_path)

    assert_refused(result, "flow.json' is invalid", "…", "and 87 more")
    assert len(result.err) < 4096, len(result.err)


# ---------------------------------------------------------------- read limits


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_flow_from_dev_zero_is_refused_after_reading_at_most_the_limit(tmp_path: Path, command: str) -> None:
    result = flow8(command, "/dev/zero", "--db", tmp_path / "a.db", cwd=tmp_path) if command == "run" else None
    result = result or flow8(command, "/dev/zero", cwd=tmp_path)

    assert_refused(result, "/dev/zero", "larger than the limit of 262144 bytes", "limits.max_flow_bytes")
    assert result.seconds < QUICK, result


def test_input_from_dev_zero_is_refused_after_reading_at_most_the_limit(tmp_path: Path, echo_flow: Path) -> None:
    result = flow8("run", echo_flow, "--input", "@/dev/zero", "--db", tmp_path / "a.db", cwd=tmp_path)

    assert_refused(result, "/dev/zero", "larger than the limit of 262144 bytes", "limits.max_input_bytes")
    assert result.seconds < QUICK, result
    assert not (tmp_path / "a.db").exists()


def test_produce_file_from_dev_zero_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}  # nothing answers: a send would not exit 2

    result = flow8("produce", "--file", "/dev/zero", cwd=tmp_path, env=env)

    assert_refused(result, "/dev/zero line 1", "larger than the limit of 1048576 bytes")
    assert result.seconds < QUICK, result


def test_an_input_over_the_limit_is_refused_and_the_limit_is_a_setting(tmp_path: Path) -> None:
    big = {"blob": "x" * DEFAULT_INPUT_LIMIT}
    (tmp_path / "big.json").write_text(json.dumps(big))
    # a flowlet that takes a little of the input: only the input's own limit applies
    flow = write_flow(tmp_path / "flow.json", {"name": "a", "module_ref": "echo", "input": {"n": 1}})

    refused = flow8("run", flow, "--input", "@big.json", "--db", tmp_path / "a.db", cwd=tmp_path)
    allowed = flow8(
        "run", flow, "--input", "@big.json", "--db", tmp_path / "b.db", "--json",
        cwd=tmp_path, env={"FLOW8_LIMITS__MAX_INPUT_BYTES": str(2 * DEFAULT_INPUT_LIMIT)},
    )  # fmt: skip

    assert_refused(refused, "big.json", "larger than the limit of 262144 bytes", "limits.max_input_bytes")
    assert not (tmp_path / "a.db").exists()
    assert allowed.code == 0, allowed
    assert json.loads(allowed.out)["status"] == "succeeded"


def test_a_flow_file_over_the_limit_is_refused(tmp_path: Path) -> None:
    flow = write_flow(tmp_path / "big.json", {"name": "a", "module_ref": "echo", "input": {"pad": "x" * 300_000}})

    result = flow8("validate", flow, cwd=tmp_path)

    assert_refused(result, "big.json", "larger than the limit of 262144 bytes", "limits.max_flow_bytes")


def _laughs(levels: int, fan: int) -> str:
    """The billion-laughs document: each level refers to the one below ``fan`` times."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * fan) + "]")
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_flow_is_refused_fast_with_bounded_memory(tmp_path: Path) -> None:
    flow = tmp_path / "laughs.yaml"
    # under the alias limit (8 x 9 = 72 of 100), 9^9 "lol"s once expanded: the expanded size refuses it
    flow.write_text(
        "name: t\nflowlets:\n- name: a\n  module_ref: echo\n  input:\n"
        + "".join(f"    {line}\n" for line in _laughs(9, 9).splitlines())
    )
    assert len(flow.read_bytes()) < 1024

    result = flow8("run", flow, "--db", tmp_path / "a.db", cwd=tmp_path)

    assert_refused(result, "laughs.yaml", "larger than the limit of 262144 bytes once its aliases are expanded")
    assert result.seconds < QUICK, result
    assert not (tmp_path / "a.db").exists()


def test_yaml_input_with_more_aliases_than_the_limit_is_refused(tmp_path: Path, echo_flow: Path) -> None:
    (tmp_path / "input.yaml").write_text("a: &a 1\nb: [" + ", ".join(["*a"] * 101) + "]\n")
    (tmp_path / "ok.yaml").write_text("a: &a 1\nb: [" + ", ".join(["*a"] * 100) + "]\n")

    refused = flow8("run", echo_flow, "--input", "@input.yaml", "--db", tmp_path / "a.db", cwd=tmp_path)
    allowed = flow8("run", echo_flow, "--input", "@ok.yaml", "--db", tmp_path / "b.db", "--json", cwd=tmp_path)

    assert_refused(refused, "input.yaml", "more YAML aliases", "limit of 100")
    assert allowed.code == 0, allowed
    assert json.loads(allowed.out)["output"]["a"]["input"]["b"] == [1] * 100


# ---------------------------------------------------------------- stored text is printed, never interpreted

MARKUP = "bad [/] and [bold]x[/bold] :thumbs_up:"


def test_stored_text_with_markup_prints_literally(tmp_path: Path) -> None:
    modules = tmp_path / "mods.py"
    modules.write_text(
        "from flow8_streams.errors import ModuleFailed\n\n\n"
        "def boom(ctx):\n"
        f"    raise ModuleFailed({MARKUP!r}, retryable=False)\n\n\n"
        'MODULES = {"[red]boom[/]": boom}\n'
    )
    flow = write_flow(tmp_path / "flow.json", {"name": "a", "module_ref": "[red]boom[/]"})
    db = tmp_path / "flow8.db"

    summary = flow8("run", flow, "--modules", modules, "--db", db, "--play-id", "p1", cwd=tmp_path)
    events = flow8("events", "p1", "--db", db, cwd=tmp_path)
    verified = flow8("events", "p1", "--db", db, "--verify", cwd=tmp_path)
    listed = flow8("plays", "list", "--db", db, cwd=tmp_path)

    assert summary.code == 1 and "Traceback" not in summary.err, summary
    assert "[red]boom[/]" in summary.out, summary  # the module column of the summary table
    assert MARKUP in " ".join(summary.out.split()), summary
    for result in (events, verified):
        assert result.code == 0 and "Traceback" not in result.err, result
        assert "[/]" in result.out and "[bold]x[/bold]" in result.out and ":thumbs_up:" in result.out, result
    assert "chain from genesis" in verified.err
    assert listed.code == 0 and "p1" in listed.out, listed


def test_the_live_view_on_a_terminal_prints_module_names_literally(tmp_path: Path) -> None:
    modules = tmp_path / "mods.py"
    modules.write_text(
        "import asyncio\n\n\n"
        "async def slow(ctx):\n"
        "    await asyncio.sleep(0.5)\n"
        "    return {}\n\n\n"
        'MODULES = {"[/]slow[bold]": slow}\n'
    )
    flow = write_flow(tmp_path / "flow.json", {"name": "a", "module_ref": "[/]slow[bold]"})
    controller, terminal = pty.openpty()  # a terminal on stdout: run shows its live view
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_PREFIXES)}
    env.update(TERM="xterm", COLUMNS="120", LINES="40")
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [FLOW8, "run", flow, "--modules", modules, "--db", tmp_path / "flow8.db"],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=terminal, stderr=subprocess.PIPE,
        preexec_fn=_cap_memory,
    )  # fmt: skip
    os.close(terminal)
    shown = b""
    try:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the process closed the terminal (exited)
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
        err = proc.communicate(timeout=60)[1].decode("utf-8", "replace")

    assert proc.returncode == 0 and "Traceback" not in err, (proc.returncode, err)
    text = shown.decode("utf-8", "replace")
    assert "running" in text, text  # the live view was drawn
    assert text.count("[/]slow[bold]") >= 2, text  # in a live frame and in the summary


def test_control_characters_in_stored_text_reach_the_terminal_escaped(tmp_path: Path) -> None:
    hostile = "red \x1b[31mALERT\x1b[0m title \x1b]0;owned\x07 end\rover"
    modules = tmp_path / "mods.py"
    modules.write_text(
        "from flow8_streams.errors import ModuleFailed\n\n\n"
        "def boom(ctx):\n"
        f"    raise ModuleFailed({hostile!r}, retryable=False)\n\n\n"
        'MODULES = {"boom": boom}\n'
    )
    flow = write_flow(tmp_path / "flow.json", {"name": "a", "module_ref": "boom"})
    db = tmp_path / "flow8.db"

    summary = flow8("run", flow, "--modules", modules, "--db", db, "--play-id", "p1", cwd=tmp_path)
    events = flow8("events", "p1", "--db", db, cwd=tmp_path)

    for result in (summary, events):
        assert "Traceback" not in result.err, result
        shown = result.out + result.err
        assert "\x1b" not in shown and "\x07" not in shown and "\r" not in shown, result
        assert "\\x1b[31mALERT" in " ".join(shown.split()), result


def test_an_error_quoting_markup_prints_literally(tmp_path: Path) -> None:
    flow = write_flow(tmp_path / "flow.json", {"name": "a", "module_ref": "[/]:thumbs_up:"})

    result = flow8("validate", flow, cwd=tmp_path)

    assert_refused(result, "'[/]:thumbs_up:'")


# ---------------------------------------------------------------- secrets


def test_the_mongodb_uri_is_not_a_command_line_option(tmp_path: Path) -> None:
    uri = "mongodb://bob:s3cretpw@127.0.0.1:9/"
    for args in (
        ["plays", "list"],
        ["plays", "show", "p1"],
        ["kv", "get", "k"],
        ["flows", "get", "f"],
        ["flows", "put", "flow.json"],
        ["worker"],
    ):
        result = flow8(*args, "--mongodb-uri", uri, cwd=tmp_path, timeout=30)
        assert result.code == 2, (args, result)
        assert "--mongodb-uri" in result.err, (args, result)
        assert "s3cretpw" not in result.out + result.err, (args, result)


@pytest.mark.parametrize(
    "uri",
    [
        "mongodb://bob:s3cretpw/x",  # no "@": the password reads as a port
        "mongodb://bob:s3cretpw/with/slash@127.0.0.1/",  # "/" unescaped in the password
        "mongodb://bob:s3cretpw@with@127.0.0.1:99999/",  # "@" unescaped, and a bad port
        "mongodb://bob:s3cretpw@127.0.0.1:port/",
        "mongo://bob:s3cretpw@127.0.0.1/",
        "mongodb://bob:s3cretpw@/",
    ],
)
def test_an_unparsable_uri_never_shows_its_password(tmp_path: Path, uri: str) -> None:
    for args in (["kv", "get", "k", "--company", "c"], ["plays", "list"], ["flows", "get", "f"]):
        result = flow8(*args, cwd=tmp_path, env={"MONGODB_URI": uri}, timeout=30)

        assert_refused(result, "MongoDB URI")
        assert "s3cretpw" not in result.out + result.err, (args, result)
        assert "bob:***" in result.err, (args, result)


def test_kafka_servers_with_a_credential_are_refused_on_the_command_line(tmp_path: Path) -> None:
    for args in (["produce", "--flow", "f"], ["results", "tail", "--timeout", "1"], ["worker"]):
        result = flow8(*args, "--kafka", "SASL_SSL://bob:s3cretpw@127.0.0.1:9", cwd=tmp_path, timeout=30)

        assert_refused(result, "--kafka takes host:port", "never from the command line")
        assert "s3cretpw" not in result.out + result.err, (args, result)


def test_an_unreachable_kafka_is_named_without_its_credential(tmp_path: Path) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "SASL_SSL://bob:s3cretpw@127.0.0.1:9"}

    result = flow8("produce", "--flow", "f", cwd=tmp_path, env=env, timeout=60)

    assert result.code == 1 and "Traceback" not in result.err, result
    assert "cannot reach Kafka at SASL_SSL://bob:***@127.0.0.1:9" in result.err, result
    assert "s3cretpw" not in result.out + result.err, result
