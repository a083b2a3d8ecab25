"""The app's model and session store: the default model stays (the API always has it), a dropped model
is loaded again when a request needs it, models and sessions share one budget in bytes (least recently
used out first), and a slow checkpoint load holds up no other request."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

import apps.store
from apps.handlers import Workbench
from apps.settings import Settings
from apps.store import Memory, nbytes
from workbench.data.demo import render_scene

from .tiny import tiny_checkpoint

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny runs side by side (about 1.7 MB of weights each) and a scene to segment."""
    folder = tmp_path_factory.mktemp("runs")
    for name in ("default", "first", "second"):
        tiny_checkpoint(folder / name)
    Image.fromarray(render_scene(np.random.default_rng(3), 96)[0]).save(folder / "scene.png")
    return folder


def workbench_on(runs, **settings) -> Workbench:
    settings = {"precision": "fp32", "allow_load": (str(runs),), **settings}
    return Workbench(Settings(**settings), str(runs / "default"))


def model_bytes(loaded) -> int:
    module = loaded.predictor.model
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def test_two_models_loaded_from_the_page_leave_the_api_its_default_model(runs):
    """A budget for two tiny models: loading two others drops the first of them, never the default,
    and the API (always the default model's key) still answers."""
    workbench = workbench_on(runs, memory_budget_mb=4)
    first = workbench.models.get(str(runs / "first"))
    workbench.models.get(str(runs / "second"))
    result = workbench.label_map(workbench.default.key, str(runs / "scene.png"))
    assert np.array(result["labels"]).shape == (96, 96)
    held = workbench.models.memory.held()
    assert workbench.default.key in held and first.key not in held


def test_a_dropped_model_is_loaded_again_when_a_request_needs_it(runs):
    workbench = workbench_on(runs, memory_budget_mb=4)
    first = workbench.models.get(str(runs / "first"))
    workbench.models.get(str(runs / "second"))
    again = workbench.models.find(first.key)
    assert again.key == first.key and again is not first  # loaded again, not kept
    assert first.key in workbench.models.memory.held()
    result = workbench.label_map(first.key, str(runs / "scene.png"))  # every endpoint finds its model
    assert np.array(result["labels"]).shape == (96, 96)
    with pytest.raises(ValueError, match="unknown model"):
        workbench.models.find("no model|at all|x")


def test_models_and_sessions_count_their_bytes_against_one_budget(runs):
    workbench = workbench_on(runs)
    memory = workbench.models.memory
    assert memory.used == model_bytes(workbench.default)  # parameters and buffers
    entry = workbench.sessions.get(workbench.default, str(runs / "scene.png"))
    session = entry.session
    cached = [t for site in session.cached.values() for t in (site.q, site.k, site.mask) if t is not None]
    at_least = entry.decoded.pixels.nbytes + session.prediction.labels.nbytes + len(cached)
    assert memory.used - model_bytes(workbench.default) == entry.nbytes() >= at_least
    assert entry.nbytes() >= nbytes(*cached) > 0


def test_the_least_recently_used_go_first_and_the_pinned_model_never():
    memory = Memory(budget=100)
    memory.put("default", "model", 60, pinned=True)
    memory.put("other", "model", 30)
    memory.put(("other", "image"), "session", 5, owner="other")
    memory.put(("default", "image"), "session", 5, owner="default")
    assert memory.get("other") == "model"  # used: now more recent than both sessions
    memory.put("third", "model", 30)  # over budget: the default's session, then the other's model
    assert set(memory.held()) == {"default", "third"} and memory.used == 90  # its session went with it
    memory.put("huge", "model", 500)  # over budget alone: it stays (it is being used), the pinned too
    assert set(memory.held()) == {"default", "huge"}
    memory.put(("gone", "image"), "session", 5, owner="gone")  # its model was dropped: not held
    assert ("gone", "image") not in memory.held()


def test_a_slow_load_holds_up_neither_lookups_nor_other_loads(runs, monkeypatch):
    """While one checkpoint loads (slowly), the default model is found at once and another checkpoint
    loads; a second request for the slow one waits for that load instead of loading it twice."""
    workbench = workbench_on(runs)
    loading, release, calls = threading.Event(), threading.Event(), []
    real = apps.store.load_predictor

    def slow(checkpoint, *args, **kwargs):
        calls.append(checkpoint)
        if checkpoint.endswith("first"):
            loading.set()
            assert release.wait(20)
        return real(checkpoint, *args, **kwargs)

    monkeypatch.setattr(apps.store, "load_predictor", slow)
    results = {}

    def load(name: str, slot: str) -> None:
        results[slot] = workbench.models.get(str(runs / name))

    threads = [threading.Thread(target=load, args=("first", slot)) for slot in ("one", "two")]
    threads[0].start()
    assert loading.wait(60)
    threads[1].start()
    start = time.perf_counter()
    assert workbench.models.find(workbench.default.key) is workbench.default
    other = workbench.models.get(str(runs / "second"))
    assert time.perf_counter() - start < 5 and other.key.split("|")[0].endswith("second")
    assert threads[0].is_alive() and threads[1].is_alive()  # both still waiting on the slow load
    release.set()
    for thread in threads:
        thread.join(60)
    assert results["one"] is results["two"] and sum(c.endswith("first") for c in calls) == 1
