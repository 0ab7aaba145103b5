"""LEDs and buzzer on gpiozero's MockFactory: pin states, pre-emption, everything off."""

from __future__ import annotations

import asyncio

import pytest
from gpiozero.pins.mock import MockFactory

from core.rules import Reason
from device.config import GpioConfig
from device.indicators.mirror import read_pins
from device.indicators.patterns import PATTERNS, Step
from device.indicators.signals import IndicatorError, Indicators, make_pin_factory
from device.override import press_mock_pin

GREEN, RED, BUZZER = 17, 27, 22


@pytest.fixture
def indicators():
    ind = Indicators.from_config(GpioConfig("mock", GREEN, RED, BUZZER))
    yield ind
    ind.close()


def pin(ind: Indicators, device: str):
    return getattr(ind, device).pin


def levels(ind: Indicators) -> tuple[bool, bool, bool]:
    return (ind.green.is_lit, ind.red.is_lit, ind.buzzer.is_active)


def played(ind: Indicators, device: str) -> list[bool]:
    """The sequence of levels a pin went through (drops repeats and the initial low)."""
    states = [s.state for s in pin(ind, device).states]
    out: list[bool] = []
    for s in states:
        if not out or out[-1] != s:
            out.append(bool(s))
    return out


def test_every_outcome_has_a_pattern_and_outcomes_are_told_apart() -> None:
    assert set(PATTERNS) == set(Reason)
    door_staff_outcomes = [Reason.REGISTERED, Reason.REENTRY, Reason.NOT_REGISTERED,
                           Reason.UNKNOWN_CODE, Reason.NOT_READY, Reason.ALREADY_ADMITTED,
                           Reason.FULL, Reason.OVERRIDE]
    assert len({PATTERNS[r] for r in door_staff_outcomes}) == len(door_staff_outcomes)


@pytest.mark.parametrize("reason", list(Reason))
def test_buzzer_sounds_on_every_rejection_and_never_on_an_admission(reason: Reason) -> None:
    buzzes = any(step.buzzer for step in PATTERNS[reason])
    assert buzzes == (reason.decision == "rejected")
    lit = {("green" if s.green else "") + ("red" if s.red else "") for s in PATTERNS[reason]}
    if reason.decision == "admitted":
        assert lit <= {"green", ""}
    elif reason is not Reason.NOT_READY:
        assert lit <= {"red", ""}


async def test_admitted_lights_green_at_once_then_turns_off(indicators: Indicators) -> None:
    assert levels(indicators) == (False, False, False)
    indicators.show(Reason.REGISTERED)
    assert levels(indicators) == (True, False, False)  # before any await: no loop delay
    await indicators.idle()
    assert levels(indicators) == (False, False, False)
    assert played(indicators, "green") == [False, True, False]
    assert played(indicators, "red") == [False]
    assert played(indicators, "buzzer") == [False]


async def test_not_registered_lights_red_and_buzzes(indicators: Indicators) -> None:
    indicators.show(Reason.NOT_REGISTERED)
    assert levels(indicators) == (False, True, True)
    await indicators.idle()
    assert played(indicators, "red") == [False, True, False]
    assert played(indicators, "buzzer") == [False, True, False]


async def test_reentry_blinks_green_three_times(indicators: Indicators) -> None:
    indicators.show(Reason.REENTRY)
    await indicators.idle()
    assert played(indicators, "green") == [False, True, False, True, False, True, False]


async def test_unknown_code_beeps_three_times(indicators: Indicators) -> None:
    indicators.show(Reason.UNKNOWN_CODE)
    await indicators.idle()
    assert played(indicators, "buzzer").count(True) == 3


async def test_a_new_decision_preempts_the_old_pattern(indicators: Indicators) -> None:
    indicators.show(Reason.NOT_REGISTERED)
    await asyncio.sleep(0.05)
    indicators.show(Reason.REGISTERED)
    assert levels(indicators) == (True, False, False)
    await asyncio.sleep(0.7)  # past the old pattern's buzzer step: it must not come back
    assert levels(indicators) == (True, False, False)
    await indicators.idle()
    assert played(indicators, "buzzer") == [False, True, False]


async def test_close_turns_everything_off_mid_pattern() -> None:
    factory_indicators = Indicators.from_config(GpioConfig("mock", GREEN, RED, BUZZER))
    factory_indicators.show(Reason.NOT_READY)
    buzzer_pin = factory_indicators.buzzer.pin
    red_pin = factory_indicators.red.pin
    factory_indicators.close()
    assert buzzer_pin.state == 0 and red_pin.state == 0


async def test_active_low_wiring_inverts_the_pins() -> None:
    ind = Indicators.from_config(GpioConfig("mock", GREEN, RED, BUZZER, active_high=False))
    try:
        ind.show_pattern((Step(True, False, False, 0.01),))
        assert ind.green.pin.state == 0 and ind.red.pin.state == 1
        await ind.idle()
        assert ind.green.pin.state == 1
    finally:
        ind.close()


def test_the_mock_factory_is_gpiozeros_own() -> None:
    assert isinstance(make_pin_factory("mock"), MockFactory)


def test_an_unusable_pin_factory_is_a_clear_error() -> None:
    with pytest.raises(IndicatorError, match="lgpio"):
        make_pin_factory("lgpio")
    with pytest.raises(IndicatorError, match="unknown pin factory"):
        make_pin_factory("pigpio")


async def test_mirrored_mock_pins_publish_their_levels_for_another_process(tmp_path) -> None:
    mirror = tmp_path / "pins"
    indicators = Indicators.from_config(
        GpioConfig("mock", green=17, red=27, buzzer=22, mirror_file=mirror))
    assert not any(read_pins(mirror).values())
    indicators.show(Reason.NOT_REGISTERED)
    pins = read_pins(mirror)
    assert (pins[17], pins[27], pins[22]) == (False, True, True)
    assert indicators.red.pin.state  # the mock pin itself agrees
    indicators.close()
    assert not any(read_pins(mirror).values())


def test_a_mirror_file_that_cannot_be_made_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(IndicatorError, match="cannot open pin mirror file"):
        make_pin_factory("mock", mirror_file=tmp_path / "missing" / "pins")


def test_the_override_button_is_an_input_pressed_low() -> None:
    ind = Indicators.from_config(GpioConfig("mock", GREEN, RED, BUZZER, override_button=5))
    try:
        assert ind.button is not None and not ind.button.is_pressed
        presses: list[int] = []
        ind.button.when_pressed = lambda: presses.append(1)
        press_mock_pin(ind.button.pin)
        assert presses == [1] and not ind.button.is_pressed  # released again
    finally:
        ind.close()
    assert ind.button.closed


def test_an_override_button_on_a_pin_in_use_is_a_clear_error() -> None:
    # the config refuses this; the adapter still says what went wrong, never a traceback
    with pytest.raises(IndicatorError, match="cannot set up the override button on pin 17"):
        Indicators.from_config(GpioConfig("mock", GREEN, RED, BUZZER, override_button=GREEN))


async def test_a_decision_lit_from_another_thread_holds_the_pins_until_shown(
        indicators: Indicators) -> None:
    indicators.show(Reason.NOT_REGISTERED)  # red and buzzer, then red alone after 0.6 s
    await asyncio.to_thread(indicators.light, Reason.REGISTERED)  # the store's thread
    assert levels(indicators) == (True, False, False)
    await asyncio.sleep(0.7)  # the old pattern's next step came due: it left the pins alone
    assert levels(indicators) == (True, False, False)
    indicators.show(Reason.REGISTERED)  # the loop takes over and plays it to its end
    await indicators.idle()
    assert levels(indicators) == (False, False, False)
