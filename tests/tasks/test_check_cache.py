"""Remembered passes of config checks (`tasks.check_cache`): reused only while inputs, files, code and environment
are unchanged; failures never recorded."""

from __future__ import annotations

import warnings

import pytest

from tasks import check_cache
from tasks.config import stages


@pytest.fixture(autouse=True)
def _records(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_CHECK_CACHE", str(tmp_path / "checks.json"))
    monkeypatch.setattr(check_cache, "_reused", [])


def _counting(value, files=()):
    calls = []

    def check():
        calls.append(1)
        return value, files

    return check, calls


def test_a_pass_is_reused_until_a_file_it_read_changes(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("a\n")
    check, calls = _counting({"rows": 1}, [data])
    assert check_cache.checked("rows", {"path": str(data)}, check) == {"rows": 1}
    assert check_cache.checked("rows", {"path": str(data)}, check) == {"rows": 1}
    assert len(calls) == 1 and check_cache.reused() == ["rows"]
    check_cache.checked("rows", {"path": "other"}, check)  # other inputs: checked
    assert len(calls) == 2
    data.write_text("a\nb\n")  # the file it read changed: checked again
    check_cache.checked("rows", {"path": str(data)}, check)
    assert len(calls) == 3
    data.unlink()  # gone: checked again (and here the check itself would fail)
    check_cache.checked("rows", {"path": str(data)}, check)
    assert len(calls) == 4


def test_failures_unpinned_files_and_off_are_not_recorded(monkeypatch):
    calls = []

    def failing():
        calls.append(1)
        raise ValueError("bad")

    for _ in range(2):
        with pytest.raises(ValueError, match="bad"):
            check_cache.checked("bad", {"x": 1}, failing)
    assert len(calls) == 2
    unpinned, unpinned_calls = _counting(True, None)  # read something it cannot name: not recorded
    check_cache.checked("hub", {"x": 1}, unpinned)
    check_cache.checked("hub", {"x": 1}, unpinned)
    assert len(unpinned_calls) == 2
    monkeypatch.setenv("RLHF_CHECK_CACHE", "off")
    check, off_calls = _counting(True)
    check_cache.checked("off", {"x": 1}, check)
    check_cache.checked("off", {"x": 1}, check)
    assert len(off_calls) == 2 and check_cache.reused() == []


def test_an_environment_change_the_checks_read_makes_the_record_stale(monkeypatch):
    check, calls = _counting(True)
    check_cache.checked("args", {"x": 1}, check)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    check_cache.checked("args", {"x": 1}, check)
    monkeypatch.setenv("UNRELATED_SETTING", "1")
    check_cache.checked("args", {"x": 1}, check)
    assert len(calls) == 2


def test_a_source_change_makes_the_record_stale(tmp_path, monkeypatch):
    root = tmp_path / "checkout"
    source = root / "rlhf_core" / "config.py"
    source.parent.mkdir(parents=True)
    (root / "tasks").mkdir()
    source.write_text("A = 1\n")
    monkeypatch.setattr(check_cache, "_ROOT", root)
    check_cache._code_fingerprint.cache_clear()
    check, calls = _counting(True)
    check_cache.checked("args", {"x": 1}, check)
    source.write_text("A = 22\n")
    check_cache._code_fingerprint.cache_clear()  # a new process sees the edited source
    check_cache.checked("args", {"x": 1}, check)
    check_cache._code_fingerprint.cache_clear()
    assert len(calls) == 2


def test_warnings_of_the_check_are_shown_again_on_reuse():
    def check():
        warnings.warn("bf16 falls back to fp32", UserWarning, stacklevel=1)
        return True, ()

    for _ in range(2):
        with pytest.warns(UserWarning, match="bf16 falls back to fp32"):
            check_cache.checked("warns", {"x": 1}, check)
    assert check_cache.reused() == ["warns"]


def test_trainer_args_that_passed_are_not_built_again(monkeypatch):
    assert stages.check_trainer_args("sft", {"max_steps": "3"}) == {"max_steps": 3}

    def no_build(*args, **kwargs):
        raise AssertionError("built again")

    monkeypatch.setattr(stages, "build_trainer_config", no_build)
    assert stages.check_trainer_args("sft", {"max_steps": "3"}) == {"max_steps": 3}
    assert check_cache.reused() == ["sft args"]
    with pytest.raises(AssertionError, match="built again"):  # other args are checked for real
        stages.check_trainer_args("sft", {"max_steps": 4})
    with pytest.raises(stages.TrainerArgError, match="did you mean 'max_steps'"):
        stages.check_trainer_args("sft", {"max_step": 3})
