"""The job summary table (scripts.summary) and GitHub log groups (scripts.log)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

from scripts import log, summary  # noqa: E402
from scripts.settings import load_settings  # noqa: E402

HEADER_LINE = summary.HEADER.splitlines()[0]


@pytest.fixture
def target(tmp_path):
    path = tmp_path / "step_summary.md"
    return path, {"GITHUB_STEP_SUMMARY": str(path)}


def rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]


def test_without_the_variable_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.chdir(tmp_path)
    unset = load_settings(environ={})
    assert summary.record_image("img", result="verified", settings=unset) is False
    assert summary.record_image("img", result="verified", settings=load_settings()) is False
    assert list(tmp_path.iterdir()) == []


def test_empty_variable_counts_as_unset():
    empty = load_settings(environ={"GITHUB_STEP_SUMMARY": ""})
    assert summary.record_image("img", result="verified", settings=empty) is False


def test_header_once_then_rows_appended(target):
    path, environ = target
    assert summary.record_image(
        "ghcr.io/dask/dask-gateway-ci-base:latest",
        tags=["latest"],
        size=1_234_567_890,
        verify_seconds=12.4,
        result="verified",
        settings=load_settings(environ=environ),
    )
    assert summary.record_image(
        "ghcr.io/dask/dask-gateway-ci-base:latest",
        tags=["latest", "2025-01-31"],
        digest="sha256:abc",
        result="pushed",
        settings=load_settings(environ=environ),
    )
    text = path.read_text()
    assert text.count(HEADER_LINE) == 1
    assert text.startswith("\n" + summary.HEADER)
    assert rows(text) == [
        "| ghcr.io/dask/dask-gateway-ci-base:latest | latest |  | 1.2 GB | 12 s | verified |",
        "| ghcr.io/dask/dask-gateway-ci-base:latest | latest, 2025-01-31 | sha256:abc |  |  "
        "| pushed |",
    ]


def test_header_added_after_other_text_of_the_step(target):
    path, environ = target
    path.write_text("## Images\n")
    summary.record_image("img", result="verified", settings=load_settings(environ=environ))
    text = path.read_text()
    assert text.startswith("## Images\n\n" + summary.HEADER)
    assert text.count(HEADER_LINE) == 1


def test_the_run_settings_take_it_from_the_process_environment(target, monkeypatch):
    path, environ = target
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", environ["GITHUB_STEP_SUMMARY"])
    assert summary.record_image("img", result="verified", settings=load_settings()) is True
    assert rows(path.read_text()) == ["| img |  |  |  |  | verified |"]


def test_pipes_and_newlines_are_escaped(target):
    path, environ = target
    summary.record_image(
        "a|b",
        tags=["x|y"],
        result="verify failed\nat step 2",
        settings=load_settings(environ=environ),
    )
    (row,) = rows(path.read_text())
    assert row == "| a\\|b | x\\|y |  |  |  | verify failed at step 2 |"
    # Still six cells: escaped pipes do not split a cell.
    assert len([c for c in row.replace("\\|", "").split("|")[1:-1]]) == 6


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (None, ""),
        (0, "0 B"),
        (999, "999 B"),
        (1_000, "1.0 KB"),
        (1_500_000, "1.5 MB"),
        (734_003_200, "734.0 MB"),
        (2_000_000_000, "2.0 GB"),
        (5_000_000_000_000, "5000.0 GB"),
    ],
)
def test_sizes_are_human_readable(size, shown):
    assert summary.human_size(size) == shown


# -- log groups ------------------------------------------------------------------


@pytest.fixture
def no_secrets(monkeypatch):
    monkeypatch.setattr(log, "_secrets", set())


def test_group_in_github_actions(monkeypatch, capsys, no_secrets):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    with log.group("build ghcr.io/dask/dask-gateway-ci-base:latest"):
        print("step 1/9")
    out, err = capsys.readouterr()
    assert out == (
        "::group::build ghcr.io/dask/dask-gateway-ci-base:latest\nstep 1/9\n::endgroup::\n"
    )
    assert err == ""


def test_group_is_closed_when_the_phase_fails(monkeypatch, capsys, no_secrets):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    with pytest.raises(RuntimeError), log.group("verify"):
        raise RuntimeError("boom")
    assert capsys.readouterr().out == "::group::verify\n::endgroup::\n"


def test_group_title_is_censored(monkeypatch, capsys, no_secrets):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    log.add_secret("s3cret")
    with log.group("push with s3cret"):
        pass
    assert capsys.readouterr().out == f"::group::push with {log.CENSORED}\n::endgroup::\n"


@pytest.mark.parametrize("value", [None, "false", "1"])
def test_group_outside_github_actions_is_a_heading(monkeypatch, capsys, no_secrets, value):
    if value is None:
        monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    else:
        monkeypatch.setenv("GITHUB_ACTIONS", value)
    with log.group("build base"):
        print("step 1/9")
    out, err = capsys.readouterr()
    assert out == "step 1/9\n"
    assert err == "==> build base\n"
    assert "::" not in out + err
