"""The ``flow8`` command as a package: one error tree mapped to exit codes in one table, shell
completion that works in a real bash, ``python -m flow8_streams.cli``, and the embedded runtime
opened through its public factory. No services needed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import flow8_streams
from flow8_streams.cli.errors import EXIT_CODES, exit_code, report
from flow8_streams.errors import (
    BadMessage,
    CompanyMismatch,
    EngineError,
    Flow8Error,
    InvalidInput,
    LimitExceeded,
    NotFound,
    StoreUnavailable,
    TemplateError,
)
from tests.flow8_cli import FLOW8, run

REPO = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOW8_", "MONGODB_", "KAFKA_", "_FLOW8"))}
    return {**env, "HOME": str(tmp_path), "NO_COLOR": "1", "COLUMNS": "100", **extra}


# ------------------------------------------------------------ one error tree, one table


@pytest.mark.parametrize("kind", [BadMessage, TemplateError, EngineError])
def test_the_errors_once_outside_the_tree_are_flow8_errors_and_still_value_errors(kind: type[Exception]) -> None:
    assert issubclass(kind, Flow8Error)
    assert issubclass(kind, ValueError)  # what callers caught before keeps catching them
    assert kind.__name__ in flow8_streams.__all__


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInput("x"), 2),
        (LimitExceeded("x"), 2),
        (CompanyMismatch("x"), 2),
        (BadMessage("not_json", "x"), 2),
        (TemplateError("x"), 2),
        (NotFound("x"), 1),
        (StoreUnavailable("x"), 1),
        (EngineError("x"), 1),
        (Flow8Error("x"), 1),
        (KeyboardInterrupt(), 130),
        (RuntimeError("x"), 70),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_each_error_has_one_exit_code(error: BaseException, code: int) -> None:
    assert exit_code(error) == code


def test_the_table_puts_a_subclass_before_its_base() -> None:
    """The first match wins: a base listed before its subclass would shadow it."""
    kinds = [kind for kind, _ in EXIT_CODES]
    for i, kind in enumerate(kinds):
        for later in kinds[i + 1 :]:
            assert not issubclass(later, kind), f"{later.__name__} is shadowed by {kind.__name__}"


def test_a_bug_is_one_line_without_a_traceback_and_without_a_secret(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MONGODB_URI", "mongodb://app:s3cret-pw@db.internal:27017")
    code = report(RuntimeError("cannot reach mongodb://app:s3cret-pw@db.internal:27017"))
    err = capsys.readouterr().err
    assert code == 70
    assert err.startswith("internal error: RuntimeError: cannot reach")
    assert "(please report this)" in err
    assert "s3cret-pw" not in err
    assert "Traceback" not in err


def test_an_engine_error_reaching_the_cli_is_a_message_not_a_bug(capsys: pytest.CaptureFixture[str]) -> None:
    code = report(EngineError("play p: event seq 7 after seq 5"))
    assert code == 1
    assert capsys.readouterr().err.strip() == "error: play p: event seq 7 after seq 5"


# ------------------------------------------------------------ shell completion


def test_completion_script_completes_commands_in_a_real_bash(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    assert bash, "bash is needed to test shell completion"
    script = run("--show-completion", "bash", cwd=tmp_path, env=_env(tmp_path))
    assert script.code == 0, script.err
    assert "complete" in script.out and "_flow8_completion" in script.out
    completion = tmp_path / "flow8.bash"
    completion.write_text(script.out)
    probe = (
        f"source {completion}\n"
        'COMP_WORDS=(flow8 pl); COMP_CWORD=1; _flow8_completion flow8; echo "top: ${COMPREPLY[*]}"\n'
        "COMP_WORDS=(flow8 plays ''); COMP_CWORD=2; _flow8_completion flow8; echo \"plays: ${COMPREPLY[*]}\"\n"
        'COMP_WORDS=(flow8 run --js); COMP_CWORD=2; _flow8_completion flow8; echo "run: ${COMPREPLY[*]}"\n'
    )
    env = _env(tmp_path, PATH=f"{Path(FLOW8).parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(
        [bash, "--norc", "--noprofile", "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert lines["top"].split() == ["plays"]
    assert set(lines["plays"].split()) == {"list", "show", "cancel", "resume"}
    assert lines["run"].split() == ["--json"]


def test_install_completion_writes_the_script_and_sources_it_from_bashrc(tmp_path: Path) -> None:
    result = run("--install-completion", "bash", cwd=tmp_path, env=_env(tmp_path, SHELL="/bin/bash"))
    assert result.code == 0, result.err
    installed = tmp_path / ".bash_completions" / "flow8.sh"
    assert "_flow8_completion" in installed.read_text()
    assert (
        str(installed) in (tmp_path / ".bashrc").read_text()
        or ".bash_completions/flow8.sh" in (tmp_path / ".bashrc").read_text()
    )


def test_python_dash_m_runs_the_same_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flow8_streams.cli", "--version"],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"flow8 {flow8_streams.__version__}"


# ------------------------------------------------------------ the embedded runtime's public factory


def test_local_runtime_open_runs_a_play_and_keeps_it_in_the_file(tmp_path: Path) -> None:
    from flow8_streams import FlowDefinition, LocalRuntime

    flow = FlowDefinition.model_validate(
        {"name": "hello", "flowlets": [{"name": "say", "module_ref": "echo", "input": {"to": "${input.name}"}}]}
    )
    db = tmp_path / "nested" / "flow8.db"

    async def twice() -> tuple[object, object, int]:
        async with LocalRuntime.open(db, modules=[str(REPO / "examples" / "modules.py")]) as runtime:
            first = await runtime.run(flow, {"name": "ada"}, company_id="acme", play_id="hello-1")
        async with LocalRuntime.open(db) as runtime:  # a new process would see the same
            again = await runtime.run(flow, {"name": "bob"}, company_id="acme", play_id="hello-1")
            events = len(await runtime.store.log.read("hello-1"))
        return first, again, events

    first, again, events = asyncio.run(twice())
    assert first.output == {"say": {"to": "ada"}}  # type: ignore[attr-defined]
    assert again == first  # recorded: not run again with the second input
    assert events >= 3
    shown = run("plays", "show", "hello-1", "--db", db, cwd=tmp_path, env=_env(tmp_path))
    assert shown.code == 0, shown.err
    assert shown.json()["output"] == {"say": {"to": "ada"}}


def _open_files(path: Path) -> list[str]:
    """This process's descriptors open on ``path`` (or its -wal/-shm)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(path)):
                found.append(target)
    return found


def test_local_runtime_open_closes_its_store_when_the_block_raises(tmp_path: Path) -> None:
    from flow8_streams import LocalRuntime

    db = tmp_path / "flow8.db"
    held: list[list[str]] = []

    async def fail() -> None:
        async with LocalRuntime.open(db):
            held.append(_open_files(db))
            raise NotFound("stop here")

    with pytest.raises(NotFound):
        asyncio.run(fail())
    assert held[0], "the store had the file open inside the block"
    assert _open_files(db) == []
