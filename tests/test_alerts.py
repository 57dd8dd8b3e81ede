"""The alert rules, each checked on the pure decision with a fixed clock."""
from __future__ import annotations

import pytest

from models import AlertState, Contact
from scout.alerts import Decision, Rules, decide, record_call_outcome, record_call_placed
from scout.readings import PollFailure, Reading, Readings, SensorError
from tests.conftest import make_user

NOW = 1_800_000_000.0
RULES = Rules()
USER = make_user()


def readings(*values: int, age: float = 60, direction: str = "Flat", now: float = NOW) -> Readings:
    """Readings 5 minutes apart, the newest `age` seconds before `now`."""
    return Readings(tuple(Reading(v, now - age - 300 * i, direction) for i, v in enumerate(values)))


def kinds(decision: Decision) -> list[tuple[str, str, str]]:
    return [(a.purpose, a.kind, a.recipient) for a in decision.actions]


def call_then(outcome: str, detail: str = "", value: int = 54, at: float = NOW) -> AlertState:
    """The state after one call placed at `at` for `value`, with the given outcome."""
    d = decide(USER, readings(value), AlertState(), at, RULES)
    state = d.state
    assert state.episode and state.episode.call
    assert record_call_placed(state, state.episode.call.key, at)
    if outcome != "pending":
        assert record_call_outcome(state, state.episode.call.key, outcome, detail, at + 30)
    return state


@pytest.mark.parametrize(
    "value, expect_call",
    [(69, True), (70, False), (71, False), (239, False), (240, False), (241, True), (40, True), (400, True)],
)
def test_it_calls_only_outside_70_to_240(value: int, expect_call: bool) -> None:
    d = decide(USER, readings(value), AlertState(), NOW, RULES)
    assert [a.kind for a in d.actions] == (["call"] if expect_call else [])


def test_it_never_calls_for_a_cgm_error_code() -> None:
    errors = tuple(SensorError(code, NOW - 60 * (i + 1)) for i, code in enumerate((9, 10, 1)))
    d = decide(USER, Readings((), errors), AlertState(), NOW, RULES)
    assert d.actions == []
    assert d.state.episode is None
    assert "hourglass" in d.summary


def test_it_ignores_error_codes_and_judges_the_newest_valid_value() -> None:
    d = decide(USER, Readings((Reading(54, NOW - 60, "Flat"),), (SensorError(9, NOW - 30),)), AlertState(), NOW, RULES)
    assert [a.kind for a in d.actions] == ["call"]


@pytest.mark.parametrize("age, expect_call", [(14 * 60, True), (15 * 60, True), (15 * 60 + 1, False), (40 * 60, False)])
def test_a_reading_older_than_15_minutes_never_triggers_a_call(age: float, expect_call: bool) -> None:
    d = decide(USER, readings(54, age=age), AlertState(), NOW, RULES)
    assert ("call" in [a.kind for a in d.actions]) is expect_call


def test_the_call_speaks_value_units_trend_and_age() -> None:
    d = decide(USER, readings(54, 62, age=180, direction="SingleDown"), AlertState(), NOW, RULES)
    (call,) = d.actions
    assert call.recipient == USER.phone
    assert call.text.startswith("Ana, your blood glucose is 54 milligrams per deciliter and falling, 3 minutes ago.")
    assert "8 lower than the reading before" in call.text


def test_the_call_uses_mmol_when_the_user_chose_it() -> None:
    user = make_user(units="mmol/L")
    d = decide(user, readings(54, direction="DoubleDown"), AlertState(), NOW, RULES)
    assert "3.0 millimoles per liter and falling fast" in d.actions[0].text


@pytest.mark.parametrize("elapsed, expect_call", [(119, False), (120, True), (121, True)])
def test_no_second_call_within_wait_after_call(elapsed: float, expect_call: bool) -> None:
    state = call_then("unanswered")
    state.episode.call.escalated = True  # type: ignore[union-attr]
    d = decide(USER, readings(54), state, NOW + elapsed, RULES)
    assert ("call" in [a.kind for a in d.actions]) is expect_call


def test_wait_after_call_is_configurable() -> None:
    state = call_then("unanswered")
    d = decide(USER, readings(54), state, NOW + 200, Rules(wait_after_call=300))
    assert "alert" not in [a.purpose for a in d.actions]


def test_an_unanswered_call_texts_every_contact_by_their_channel_with_the_fresh_value() -> None:
    state = call_then("unanswered", "no-answer")
    d = decide(USER, readings(51, direction="SingleDown"), state, NOW + 60, RULES)
    assert kinds(d) == [
        ("contacts", "sms", "+14155552672"),
        ("contacts", "whatsapp", "+14155552673"),
        ("contacts", "sms", "+14155552674"),
        ("ladder", "call", "+14155552672"),  # and the ladder's first call, to the emergency contact
    ]
    assert "Ana did not answer" in d.actions[0].text
    assert "51 mg/dL and falling" in d.actions[0].text
    assert d.state.episode.call.escalated  # type: ignore[union-attr]


@pytest.mark.parametrize("outcome", ["acknowledged", "pending"])
def test_contacts_are_not_texted_while_the_call_is_acknowledged_or_pending(outcome: str) -> None:
    state = call_then(outcome)
    d = decide(USER, readings(54), state, NOW + 60, RULES)
    assert [a for a in d.actions if a.purpose == "contacts"] == []


def test_a_call_with_no_final_status_after_5_minutes_counts_as_unanswered() -> None:
    state = call_then("pending")
    before = decide(USER, readings(54), state, NOW + 299, RULES)
    assert [a.purpose for a in before.actions] == []
    after = decide(USER, readings(54), state, NOW + 300, RULES)
    assert [a.purpose for a in after.actions] == ["contacts"] * 3 + ["ladder", "alert"]  # the ladder and the next call
    assert "no final call status arrived" in after.line


def test_after_an_acknowledgement_the_next_call_waits_15_minutes() -> None:
    # 60 mg/dL: a low, not an urgent low (below 55 the wait is 5 minutes: tests/test_early_and_high.py)
    state = call_then("acknowledged", value=60)
    early, due = NOW + 30 + 899, NOW + 30 + 900
    assert "call" not in [a.kind for a in decide(USER, readings(60, now=early), state, early, RULES).actions]
    assert "call" in [a.kind for a in decide(USER, readings(60, now=due), state, due, RULES).actions]


def test_repeat_texts_to_contacts_within_an_episode_are_rate_limited() -> None:
    first_round = decide(USER, readings(54), call_then("unanswered"), NOW + 60, RULES)
    assert [a.purpose for a in first_round.actions].count("contacts") == 3
    second_call = decide(USER, readings(54), first_round.state, NOW + 120, RULES)
    assert [a.kind for a in second_call.actions] == ["call"]
    state = second_call.state
    call_key = state.episode.call.key  # type: ignore[union-attr]
    assert record_call_outcome(state, call_key, "unanswered", "busy", NOW + 150)
    soon = decide(USER, readings(54), state, NOW + 200, RULES)
    assert [a for a in soon.actions if a.purpose == "contacts"] == []
    assert soon.state.episode.call.escalated  # type: ignore[union-attr]
    # 15 minutes after the first round, the next unanswered call texts them again
    later = soon.state
    later.episode.call.escalated = False  # type: ignore[union-attr]
    again = decide(USER, readings(54, now=NOW + 960), later, NOW + 60 + 900, RULES)
    assert [a.purpose for a in again.actions].count("contacts") == 3
    assert all(":contacts:2:" in a.key for a in again.actions if a.purpose == "contacts")


def test_back_in_range_closes_the_episode_and_sends_the_all_clear_to_everyone_alerted() -> None:
    state = decide(USER, readings(54), call_then("unanswered"), NOW + 60, RULES).state
    d = decide(USER, readings(95), state, NOW + 600, RULES)
    assert d.state.episode is None
    assert sorted(kinds(d)) == sorted([
        ("all_clear", "sms", USER.phone),
        ("all_clear", "sms", "+14155552672"),
        ("all_clear", "whatsapp", "+14155552673"),
        ("all_clear", "sms", "+14155552674"),
    ])
    assert "back in range, 95 mg/dL" in d.actions[0].text


def test_the_all_clear_after_an_acknowledged_call_goes_only_to_the_user() -> None:
    d = decide(USER, readings(100), call_then("acknowledged"), NOW + 600, RULES)
    assert kinds(d) == [("all_clear", "sms", USER.phone)]


def test_a_stale_in_range_reading_does_not_close_the_episode() -> None:
    state = call_then("acknowledged")
    d = decide(USER, readings(100, age=20 * 60), state, NOW + 60, RULES)
    assert d.state.episode is not None and d.actions == []


@pytest.mark.parametrize("failures, expect_text", [(59, False), (60, True), (61, False)])
def test_nightscout_down_for_60_polls_texts_the_user_once(failures: int, expect_text: bool) -> None:
    state = AlertState()
    sent = []
    for i in range(failures):
        d = decide(USER, PollFailure("timeout"), state, NOW + 60 * i, RULES)
        sent.append(kinds(d))
        state = d.state
    assert (sent[-1] == [("outage", "sms", USER.phone)]) is expect_text
    assert sum(1 for s in sent if s) == (1 if failures >= 60 else 0)
    assert state.failed_polls == failures


def test_the_outage_count_is_configurable_and_resets_when_nightscout_answers() -> None:
    rules = Rules(failed_ping_limit=3)
    state = AlertState()
    for i in range(3):
        state = decide(USER, PollFailure("http_status", "HTTP 500"), state, NOW + 60 * i, rules).state
    assert state.outage_notified
    back = decide(USER, readings(110), state, NOW + 200, rules)
    assert kinds(back) == [("recovered", "sms", USER.phone)]
    assert back.state.failed_polls == 0 and not back.state.outage_notified
    # a new outage is a new text
    state = back.state
    texts = []
    for i in range(3):
        d = decide(USER, PollFailure("timeout"), state, NOW + 300 + 60 * i, rules)
        texts += d.actions
        state = d.state
    assert [a.purpose for a in texts] == ["outage"]
    again = decide(USER, readings(110), state, NOW + 600, rules)
    assert [a.purpose for a in again.actions] == ["recovered"]
    assert again.actions[0].key != back.actions[0].key  # a new outage's notice is not taken for the old one


@pytest.mark.parametrize("age_minutes, expect_text", [(29, False), (30, True)])
def test_no_new_reading_for_30_minutes_texts_the_user(age_minutes: int, expect_text: bool) -> None:
    d = decide(USER, readings(110, age=age_minutes * 60), AlertState(), NOW, RULES)
    assert (kinds(d) == [("no_data", "sms", USER.phone)]) is expect_text


def test_the_no_data_text_is_sent_once_per_gap() -> None:
    old = readings(110, age=31 * 60)
    state = decide(USER, old, AlertState(), NOW, RULES).state
    assert decide(USER, old, state, NOW + 60, RULES).actions == []
    # a new reading ends the gap; the next gap gets its own text
    fresh = decide(USER, Readings((Reading(112, NOW + 600, "Flat"),)), state, NOW + 660, RULES)
    assert fresh.actions == []
    # the gap counts from when the reading arrived (NOW + 660), not from its date
    early = decide(USER, Readings((Reading(112, NOW + 600, "Flat"),)), fresh.state, NOW + 600 + 1800, RULES)
    assert early.actions == []
    later = decide(USER, Readings((Reading(112, NOW + 600, "Flat"),)), fresh.state, NOW + 660 + 1800, RULES)
    assert kinds(later) == [("no_data", "sms", USER.phone)]


def test_an_in_range_user_with_nothing_new_changes_no_state() -> None:
    state = decide(USER, readings(110), AlertState(), NOW, RULES).state  # the first poll notes the readings seen
    d = decide(USER, readings(110), state, NOW + 60, RULES)
    assert d.state == state and d.actions == []


def test_the_clock_stepping_back_neither_refires_nor_fires_early() -> None:
    state = call_then("unanswered", at=NOW)
    state.episode.call.escalated = True  # type: ignore[union-attr]
    # the clock steps back an hour: no call now, and none before 120 s of the new clock pass
    back = NOW - 3600
    d1 = decide(USER, readings(54, age=-3600 + 60), state, back, RULES)
    assert "call" not in [a.kind for a in d1.actions]
    d2 = decide(USER, readings(54, age=-3600 + 60), d1.state, back + 119, RULES)
    assert "call" not in [a.kind for a in d2.actions]
    d3 = decide(USER, readings(54, age=-3600 + 60), d2.state, back + 120, RULES)
    assert "call" in [a.kind for a in d3.actions]


def test_action_keys_are_unique_so_a_replayed_decision_sends_nothing_new() -> None:
    state = call_then("unanswered")
    first = decide(USER, readings(54), state, NOW + 60, RULES)
    second = decide(USER, readings(54), state, NOW + 60, RULES)
    assert [a.key for a in first.actions] == [a.key for a in second.actions]
    assert len({a.key for a in first.actions}) == len(first.actions)


def test_an_unanswered_call_is_escalated_even_while_nightscout_fails() -> None:
    state = call_then("unanswered")
    d = decide(USER, PollFailure("timeout"), state, NOW + 60, RULES)
    texts = [a for a in d.actions if a.purpose == "contacts"]
    assert len(texts) == 3
    assert "cannot read their Nightscout right now" in texts[0].text


def test_a_user_without_contacts_is_still_called() -> None:
    user = make_user(emergency_contact=None, extra_contacts=())
    state = call_then("unanswered")
    d = decide(user, readings(54), state, NOW + 120, RULES)
    assert [a.kind for a in d.actions] == ["call"]


# --- the ladder ---------------------------------------------------------------------------


def ladder_calls(decision: Decision) -> list[str]:
    return [a.recipient for a in decision.actions if a.purpose == "ladder"]


def test_the_ladder_calls_one_contact_at_a_time_in_order_and_restarts_at_the_next_repeat() -> None:
    from scout.alerts import settle_call

    state = call_then("unanswered", "no-answer")
    d = decide(USER, readings(54), state, NOW + 40, RULES)
    assert ladder_calls(d) == ["+14155552672"]  # the emergency contact first
    state = d.state
    assert decide(USER, readings(54), state, NOW + 60, RULES).actions == []  # Bo's call still rings
    for at, nxt in ((NOW + 70, "+14155552673"), (NOW + 100, "+14155552674")):
        ladder = state.episode.ladder_call  # type: ignore[union-attr]
        assert ladder is not None and record_call_placed(state, ladder.key, at - 5)
        assert settle_call(USER, state, ladder.key, "unanswered", "busy", at) == (True, [])
        d = decide(USER, readings(54), state, at, RULES)
        assert ladder_calls(d) == [nxt]
        state = d.state
    ladder = state.episode.ladder_call  # type: ignore[union-attr]
    assert ladder is not None and record_call_outcome(state, ladder.key, "unanswered", "busy", NOW + 119)
    d = decide(USER, readings(54), state, NOW + 119, RULES)
    assert ladder_calls(d) == [] and not d.state.episode.ladder_active  # type: ignore[union-attr]
    d = decide(USER, readings(54), d.state, NOW + 120, RULES)  # WAIT_AFTER_CALL: Ana's next call
    assert [a.purpose for a in d.actions] == ["alert"]
    state = d.state
    assert record_call_outcome(state, state.episode.call.key, "unanswered", "busy", NOW + 150)  # type: ignore[union-attr]
    d = decide(USER, readings(54), state, NOW + 150, RULES)
    assert ladder_calls(d) == ["+14155552672"]  # a new round, from the emergency contact
    assert d.actions[-1].key.endswith(":ladder:2:1")


def test_a_1_from_a_contact_stops_the_ladder_and_tells_everyone_else_once() -> None:
    from scout.alerts import settle_call

    state = decide(USER, readings(54), call_then("unanswered", "no-answer"), NOW + 40, RULES).state
    ladder = state.episode.ladder_call  # type: ignore[union-attr]
    assert ladder is not None
    changed, told = settle_call(USER, state, ladder.key, "acknowledged", "pressed 1", NOW + 60)
    assert changed
    text = "Scout: the contact at +14155552672 pressed 1 and is on it (Ana's low alert)."
    assert [(a.purpose, a.kind, a.recipient, a.text) for a in told] == [
        ("on_it", "sms", "+14155552671", text), ("on_it", "whatsapp", "+14155552673", text),
        ("on_it", "sms", "+14155552674", text)]
    assert settle_call(USER, state, ladder.key, "acknowledged", "pressed 1", NOW + 61) == (False, [])  # replayed
    # an urgent low (54): nobody is called for 5 minutes, then Ana first
    quiet = decide(USER, readings(54, now=NOW + 359), state, NOW + 359, RULES)
    assert [a for a in quiet.actions if a.kind == "call"] == []
    due = decide(USER, readings(54, now=NOW + 360), state, NOW + 360, RULES)
    assert [(a.purpose, a.recipient) for a in due.actions if a.kind == "call"] == [("alert", "+14155552671")]


def test_a_contact_call_never_placed_is_could_not_reach_for_the_next_one() -> None:
    user = make_user(emergency_contact=Contact("+14155552672", "sms", "Bo"),
                     extra_contacts=(Contact("+14155552673", "sms", "Ben", mode="text"),
                                     Contact("+14155552674", "sms", "Cy")))
    state = decide(user, readings(54), AlertState(), NOW, RULES).state
    assert record_call_outcome(state, state.episode.call.key, "unplaced", "refused", NOW + 1)  # type: ignore[union-attr]
    state = decide(user, readings(54), state, NOW + 2, RULES).state
    ladder = state.episode.ladder_call  # type: ignore[union-attr]
    assert ladder is not None and ladder.to == "+14155552672"
    # nobody placed Bo's call: after the backstop it is "unplaced", and Cy (Ben is text only) is next
    d = decide(user, readings(54, now=NOW + 2 + 300), state, NOW + 2 + 300, RULES)
    (cy,) = [a for a in d.actions if a.purpose == "ladder"]
    assert cy.recipient == "+14155552674"
    assert "Scout could not reach Ana by phone. Scout could not reach Bo by phone either." in cy.text
    assert "did not answer" not in cy.text and cy.text.endswith("Press 1 if you will check on Ana.")


def test_an_unnamed_contact_is_named_by_number_and_the_sentence_still_starts_with_a_capital() -> None:
    state = call_then("unanswered", "no-answer")
    state = decide(USER, readings(54), state, NOW + 40, RULES).state  # the emergency contact (unnamed) is called
    ladder = state.episode.ladder_call  # type: ignore[union-attr]
    assert ladder is not None and record_call_outcome(state, ladder.key, "unanswered", "no-answer", NOW + 80)
    (next_call,) = [a for a in decide(USER, readings(54), state, NOW + 80, RULES).actions if a.purpose == "ladder"]
    assert next_call.text.startswith("Hello. This is Scout, calling about Ana.")
    assert "The contact at +14155552672 did not answer either." in next_call.text
