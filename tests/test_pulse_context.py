"""Pulse: patch checks, exact state restore, nesting, re-entry, selectors, schedule, windows."""

import sys
import types
import warnings

import mlx.core as mx
import numpy as np
import pytest
from test_pulse_support import PROMPT, Recorder, generate

from pulse_plugin import tiny
from pulse_plugin.chain import SiteChain
from pulse_plugin.pulse import Pulse, PulseError
from pulse_plugin.schedule import Window, planned_schedule
from pulse_plugin.selectors import describe, list_blocks, resolve


def state(hooks):
    return (hooks.enabled, dict(hooks.processors), list(hooks.observers), hooks.step)


def test_unpatched_pipeline_is_a_clear_error(plain_sd):
    plain = tiny.build_pipeline(plain_sd, tiny.TinyConfig())
    with pytest.raises(PulseError, match="not patched.*tools/patchset.py apply"):
        Pulse(plain)


def test_other_hooks_version_is_a_clear_error(tmp_path):
    src = tmp_path / "other_hooks_mod.py"
    src.write_text("class Hooks:\n    pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import other_hooks_mod

        fake = types.SimpleNamespace(
            unet=types.SimpleNamespace(hooks=other_hooks_mod.Hooks())
        )
        with pytest.raises(PulseError, match="not the version.*patchset.py apply"):
            Pulse(fake)
    finally:
        sys.path.remove(str(tmp_path))


def test_exit_restores_exact_state_also_on_exceptions(pipe):
    hooks = pipe.unet.hooks
    sentinel = lambda attn, x, memory, mask, meta: attn(
        x, memory, memory, mask
    )  # noqa: E731
    observer = lambda step: None  # noqa: E731
    hooks.register("mid.0.0", "self", sentinel)
    hooks.observers.append(observer)
    try:
        before = state(hooks)
        with Pulse(pipe) as pulse:
            pulse.inject("mid", "a dog")
            assert hooks.enabled
            generate(pipe)
        after = state(hooks)
        assert after[0] == before[0] and after[2] == before[2] and after[3] == before[3]
        assert after[1] == before[1] and after[1][("mid.0.0", "self")] is sentinel
        with pytest.raises(RuntimeError, match="boom"):
            with Pulse(pipe) as pulse:
                pulse.inject("all", "a dog")
                raise RuntimeError("boom")
        assert state(hooks)[1] == before[1] and not hooks.enabled
    finally:
        hooks.clear()


def test_nothing_leaks_into_the_next_generation(pipe):
    base = generate(pipe)
    with Pulse(pipe) as pulse:
        pulse.inject("all", "a green house", weight=1.0)
        changed = generate(pipe)
    assert not np.array_equal(base, changed)
    assert np.array_equal(generate(pipe), base)


def test_reentry_and_nesting(pipe):
    hooks = pipe.unet.hooks
    pulse = Pulse(pipe)
    pulse.inject("mid", "a dog", weight=0.5)
    with pulse:
        first = generate(pipe)
    with pulse:
        assert np.array_equal(generate(pipe), first)
        with pytest.raises(PulseError, match="already active"):
            pulse.__enter__()
    outer, inner = Pulse(pipe), Pulse(pipe)
    rec_outer, rec_inner, order = Recorder(), Recorder(), []
    outer.add_link("mid", "cross", lambda c, n: (order.append("outer"), n(c))[1])
    inner.add_link("mid", "cross", lambda c, n: (order.append("inner"), n(c))[1])
    with outer:
        chain_outer = hooks.processors[("mid.0.0", "cross")]
        with inner:
            generate(pipe, steps=1)
            assert order[:2] == ["inner", "outer"]
        assert hooks.processors[("mid.0.0", "cross")] is chain_outer
        assert isinstance(chain_outer, SiteChain) and hooks.enabled
    assert hooks.processors == {} and not hooks.enabled
    del rec_outer, rec_inner


def test_out_of_order_exit_restores_exactly(pipe):
    """a in, b in, a out, b out: b alone in between, the original state after."""
    hooks = pipe.unet.hooks
    base = generate(pipe)
    before, attrs = state(hooks), dict(vars(pipe))
    a, b = Pulse(pipe), Pulse(pipe)
    a.inject("all", "a green house", weight=1.0)
    b.inject("mid", "a blue square", weight=1.0)
    with b:
        only_b = generate(pipe)
    assert state(hooks) == before
    a.__enter__()
    b.__enter__()
    a.__exit__(None, None, None)
    assert not a.active and b.active and hooks.enabled
    assert len(hooks.observers) == len(before[2]) + 1
    assert all(len(c.links) == 1 for c in hooks.processors.values())
    assert np.array_equal(generate(pipe), only_b)
    b.__exit__(None, None, None)
    assert state(hooks) == before and vars(pipe) == attrs
    with pytest.raises(PulseError, match="not active"):
        b.__exit__(None, None, None)
    assert np.array_equal(generate(pipe), base)


def test_three_pulses_exit_in_every_order_leave_nothing(pipe):
    hooks = pipe.unet.hooks
    base, before = generate(pipe), state(hooks)
    for order in ([0, 1, 2], [1, 0, 2], [2, 0, 1], [0, 2, 1]):
        pulses = [Pulse(pipe) for _ in range(3)]
        for i, p in enumerate(pulses):
            p.inject("all", ["a dog", "a cat", "a tree"][i], weight=0.5)
            p.__enter__()
        for i in order:
            pulses[i].__exit__(None, None, None)
            live = [p for p in pulses if p.active]
            assert hooks.enabled == bool(live)
            assert all(len(c.links) == len(live) for c in hooks.processors.values())
        assert state(hooks) == before
    assert np.array_equal(generate(pipe), base)


def test_a_generator_consumed_after_its_pulse_exited_is_refused(pipe):
    with Pulse(pipe) as pulse:
        pulse.inject("all", "a green house", weight=1.0)
        late = pipe.generate_latents(PROMPT, num_steps=2, latent_size=(8, 8))
        half = pipe.generate_latents(PROMPT, num_steps=2, latent_size=(8, 8))
        again = pipe.generate_latents(PROMPT, num_steps=2, latent_size=(8, 8))
        mx.eval(next(half))
    with pytest.raises(PulseError, match=r"created inside .*step 0.*exited"):
        next(late)
    with pytest.raises(PulseError, match=r"step 1.*without the techniques"):
        next(half)
    with pulse:  # re-entering does not revive a generator of the earlier block
        with pytest.raises(PulseError, match="exited"):
            next(again)
        inside = pipe.generate_latents(PROMPT, num_steps=2, latent_size=(8, 8))
        assert len(list(inside)) == 2
    assert "generate_latents" not in vars(pipe)
    assert (
        len(list(pipe.generate_latents(PROMPT, num_steps=2, latent_size=(8, 8)))) == 2
    )


def test_selectors_sd_and_sdxl(pipe, xl):
    sites = describe(pipe.unet)
    assert list_blocks(pipe) == pipe.unet.hooks.sites
    assert resolve("middle:0", sites) == ["mid.0.0"]
    assert resolve("input:0", sites) == ["down.0.0.0"]
    assert resolve("input_blocks.1", sites) == ["down.0.0.0"]
    assert resolve("middle_block", sites) == ["mid.0.0"]
    assert resolve("detail", sites) == ["down.0.0.0", "up.2.0.0", "up.2.1.0"]
    assert resolve("mid-level", sites) == ["down.1.0.0", "up.1.0.0", "up.1.1.0"]
    assert resolve("structure", sites) == [
        "down.2.0.0",
        "mid.0.0",
        "up.0.0.0",
        "up.0.1.0",
    ]
    assert resolve(["up.0", "mid"], sites) == ["mid.0.0", "up.0.0.0", "up.0.1.0"]
    assert len(resolve("all", sites)) == len(sites)
    with pytest.raises(ValueError, match="valid names.*'input:0'"):
        resolve("input:99", sites)
    with pytest.raises(ValueError, match="valid names"):
        resolve("down.7", sites)
    xs = describe(xl.unet)
    # SDXL: no attention in down 0 / the last up block. CorePulse's names are
    # diffusers' block indices (every attention of the block); SGM's count resnets.
    assert resolve("input:1", xs) == [
        "down.1.0.0",
        "down.1.0.1",
        "down.1.1.0",
        "down.1.1.1",
    ]
    assert resolve("input_blocks.4", xs) == ["down.1.0.0", "down.1.0.1"]
    assert resolve("input_blocks.7", xs) == ["down.2.0.0", "down.2.0.1"]
    assert resolve("output_blocks.0", xs) == ["up.0.0.0", "up.0.0.1"]
    assert resolve("output_blocks.5", xs) == ["up.1.2.0", "up.1.2.1"]
    assert resolve("output:1", xs) == [
        f"up.1.{a}.{t}" for a in range(3) for t in (0, 1)
    ]
    for refused in ("input:0", "output:2", "input_blocks.1"):
        with pytest.raises(ValueError, match="matches no attention site"):
            resolve(refused, xs)
    with pytest.raises(ValueError, match="only 2 resolution levels"):
        resolve("mid-level", xs)


def test_planned_schedule_is_what_the_loop_visits(pipe, xl):
    for p in (pipe, xl):
        visited = []
        with Pulse(p) as pulse:
            pulse.hooks.observers.append(visited.append)
            generate(p, steps=3)
        planned = planned_schedule(p, 3)
        assert [(s.step_idx, s.timestep, s.sigma) for s in planned] == [
            (s.step_idx, s.timestep, s.sigma) for s in visited
        ]
    img = mx.zeros((16, 16, 3))
    visited = []
    with Pulse(pipe) as pulse:
        pulse.hooks.observers.append(visited.append)
        for x in pipe.generate_latents_from_image(
            img, PROMPT, strength=0.5, num_steps=4, seed=1
        ):
            mx.eval(x)
    planned = planned_schedule(pipe, 4, strength=0.5)
    assert [s.sigma for s in planned] == [s.sigma for s in visited]
    assert [s.step_idx for s in planned] == [0, 1]  # index within the run


def test_window_bounds_and_warnings(pipe):
    w = Window(sigma_start=5.0, sigma_end=1.0)
    assert w.contains(0, 5.0) and w.contains(0, 1.0) and not w.contains(0, 5.01)
    assert not w.contains(None, None) and Window().contains(None, None)
    assert Window(step_start=1, step_end=2).contains(1, 9.0)
    assert not Window(step_start=1, step_end=2).contains(2, 9.0)
    with pytest.raises(ValueError, match="sigma_start .* must be >= sigma_end"):
        Window(sigma_start=0.0, sigma_end=1.0)  # CorePulse's default order
    pulse = Pulse(pipe)
    pulse.inject("mid", "a dog", sigma_start=100.0, sigma_end=50.0)
    with pytest.warns(UserWarning, match=r"matches no step.*visits sigmas \[14.6"):
        pulse.check_windows(2)
    with pytest.warns(UserWarning, match="this generation"):
        with pulse:
            generate(pipe, steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Pulse(pipe).inject("mid", "a dog", sigma_start=15.0, sigma_end=0.0)


def test_one_warning_per_missed_window_and_schedule(pipe):
    pulse = Pulse(pipe, num_steps=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pulse.inject("mid", "a dog", sigma_start=100.0, sigma_end=50.0)
        for _ in range(2):
            with pulse:
                generate(pipe, steps=2)  # the planned schedule again: no new warning
    assert [str(w.message).count("matches no step") for w in caught] == [1]
    with pytest.warns(UserWarning, match="this generation") as other:
        with pulse:
            generate(pipe, steps=3)  # another schedule: a new problem
    assert len(other) == 1


def test_warning_at_add_time_with_a_planned_schedule(pipe):
    pulse = Pulse(pipe, num_steps=4)
    with pytest.warns(UserWarning, match="planned schedule.*visits sigmas"):
        pulse.inject("mid", "a dog", steps=(5, None))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pulse.inject("mid", "a dog", sigma_start=5.0, sigma_end=1.0)


def test_a_foreign_processor_registered_before_runs_after_the_links(pipe):
    hooks = pipe.unet.hooks
    seen = []

    def foreign(attn, x, memory, mask, meta):
        seen.append(memory.shape[1])
        return attn(x, memory, memory, mask)

    hooks.register("mid.0.0", "cross", foreign)
    try:
        base = generate(pipe, steps=1)  # switch off: foreign not called
        assert seen == []
        with Pulse(pipe) as pulse:
            pulse.inject("mid", "a large green castle with two dogs", weight=0.0)
            assert np.array_equal(generate(pipe, steps=1), base)
        assert len(seen) == 2 and seen[0] != seen[1]  # base and injected branches
        assert hooks.processors[("mid.0.0", "cross")] is foreign
    finally:
        hooks.clear()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e309, -1.0, "2", True])
@pytest.mark.parametrize(
    "call, field",
    [
        (lambda p, v: p.inject("all", "a dog", weight=v), "weight"),
        (lambda p, v: p.regional("a dog", "left", weight=v), "weight"),
        (lambda p, v: p.reweight("red", v), "scale"),
        (lambda p, v: p.self_attention("left", "right", v), "scale"),
        (lambda p, v: p.inject("all", "a dog", sigma_start=v), "sigma_start"),
        (lambda p, v: p.inject("all", "a dog", sigma_end=v), "sigma_end"),
    ],
)
def test_api_numbers_are_checked_where_they_enter(pipe, call, field, bad):
    pulse = Pulse(pipe, prompt=PROMPT)
    with pytest.raises(ValueError, match=f"^{field}: expected"):
        call(pulse, bad)
    assert pulse.techniques == [] and pulse.links == {}
