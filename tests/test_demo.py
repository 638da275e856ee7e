"""`agentcore demo`: its agent answers on the real model, checked against its workspace files."""

import json

import pytest

from agentcore import cli


def test_read_file_offers_exactly_the_workspace_files(tmp_path):
    for name in ("b.txt", "a.txt"):
        (tmp_path / name).write_text(name, encoding="utf-8")
    (tmp_path / "folder").mkdir()
    (read_file,) = cli._file_tools(tmp_path)
    assert read_file.spec.parameters["properties"]["name"]["enum"] == ["a.txt", "b.txt"]
    assert read_file(name="b.txt") == "b.txt"


def test_every_demo_task_is_answerable_from_its_file():
    for _task, source, expected in cli.DEMO_TASKS:
        assert expected in cli.DEMO_FILES[source]


def test_an_answer_counts_only_when_the_file_says_it(tmp_path):
    (tmp_path / "release.txt").write_text("The release is on Friday.\n", encoding="utf-8")
    assert cli._answered("It is on friday.", tmp_path, "release.txt", "Friday")
    assert not cli._answered("It is on Monday.", tmp_path, "release.txt", "Friday")
    assert not cli._answered("It is on Monday.", tmp_path, "release.txt", "Monday")


def test_the_worked_example_names_a_file_the_tool_cannot_pick():
    example_call = cli._demo_example()[1].tool_calls[0]
    assert example_call.arguments["name"] not in cli.DEMO_FILES


@pytest.mark.real_model
def test_demo_answers_at_least_two_tasks_and_restarts_from_disk(smollm2_path, tmp_path, capsys):
    assert cli.main(["demo", "--json", "--device", "cpu", "--kv-dir", str(tmp_path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    summary = lines[-1]
    assert summary["correct"] >= 2, lines
    assert summary["restart_source"] == "disk"
    turns = lines[:-1]
    assert any(t["checkpoint_ms"] is not None for t in turns)
