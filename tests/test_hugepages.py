"""numpy's huge-page advice is off while stimsim meshes, restored after, and left to the user who sets it."""

import pytest

from stimsim._hugepages import _switch, hugepage_advice, without_hugepage_advice


@pytest.fixture
def numpy_switch(monkeypatch):
    switch = _switch()
    if switch is None:
        pytest.skip("this numpy has no huge-page switch")
    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE", raising=False)
    before = switch(True)
    yield switch
    switch(before)


def test_off_inside_and_restored_after(numpy_switch):
    with without_hugepage_advice():
        assert numpy_switch(False) is False  # off inside (the setter returns the previous value)
    assert numpy_switch(True) is True  # on again after
    with pytest.raises(RuntimeError):
        with without_hugepage_advice():
            raise RuntimeError("a failed mesh")
    assert numpy_switch(True) is True  # restored on errors too


def test_make_head_mesh_runs_without_it(numpy_switch, monkeypatch):
    from stimsim.head.meshers import core

    seen = []
    monkeypatch.setattr(core, "resolve_method", lambda m: seen.append(numpy_switch(False)) or "lattice")
    with pytest.raises(Exception):
        core.make_head_mesh(None, progress=False)  # fails after the method is resolved: fine
    assert seen == [False] and numpy_switch(True) is True


def test_the_users_choice_is_left_alone(numpy_switch, monkeypatch):
    monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "1")
    assert hugepage_advice(False) is None
    with without_hugepage_advice():
        assert numpy_switch(True) is True  # still on
