"""Scout's data: users, their alert state, the alert log, and the store that keeps them.

One interface (`Store`), two implementations in `scout/store/`: `SqliteStore` (the
embedded default) and `FirestoreStore` (production). Both processes,
the web app and the poller, use it; neither keeps alert state in memory.
"""
from __future__ import annotations

import copy
import json
import uuid
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MAX_EXTRA_CONTACTS = 5
CHANNELS = ("sms", "whatsapp")
# How a contact hears of an alert the user did not acknowledge: "call" (a phone call on the
# ladder, and the texts) or "text" (the texts only). Waking someone is the point, so a
# contact is called unless the user chose otherwise, also one stored before the choice existed.
CONTACT_MODES = ("call", "text")
DEFAULT_LOW_MGDL = 70.0
DEFAULT_HIGH_MGDL = 240.0
# Dexcom's urgent low (55 mg/dL, 3.0 mmol/L) cannot be silenced: a pause never holds a call below it.
DEFAULT_URGENT_LOW_MGDL = 55.0
# Highs have a cadence of their own (a high is rarely an emergency within minutes, and a call
# every 2 minutes for three hours teaches people to ignore Scout); each user can change it.
DEFAULT_HIGH_REPEAT_MINUTES = 30  # calls about an unacknowledged high at most this often
DEFAULT_HIGH_SNOOZE_MINUTES = 120  # after a 1 for a high, no call for this long
DEFAULT_URGENT_HIGH_MGDL = 300.0  # contacts hear of a high only above this...
DEFAULT_URGENT_HIGH_MINUTES = 60  # ...for at least this long
DEFAULT_TIME_ZONE = "UTC"
DEFAULT_NIGHT_START, DEFAULT_NIGHT_END = "22:00", "07:00"  # the user's local times


def minute_of_day(clock: str) -> int:
    """'07:30' -> 450. ValueError for anything that is not a 24-hour time."""
    hours, _, minutes = clock.partition(":")
    if not (hours.isdigit() and minutes.isdigit() and len(minutes) == 2 and len(hours) <= 2):
        raise ValueError(f"{clock!r} is not a time like 22:00")
    value = int(hours) * 60 + int(minutes)
    if int(hours) > 23 or int(minutes) > 59:
        raise ValueError(f"{clock!r} is not a time like 22:00")
    return value


def local_minute(now: float, zone_name: str) -> int:
    """The minute of the day at `now` on the clocks of `zone_name` (an IANA zone, so daylight
    saving time is followed); a zone this machine does not know counts as UTC."""
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    local = datetime.fromtimestamp(now, zone)
    return local.hour * 60 + local.minute


@dataclass(frozen=True)
class Contact:
    phone: str  # E.164
    channel: str = "sms"  # "sms" or "whatsapp"
    name: str = ""  # how the user calls them; texts greet them by it
    mode: str = "call"  # "call": called on the ladder and texted; "text": texted only

    @property
    def is_called(self) -> bool:
        return self.mode != "text"

    def as_dict(self) -> dict[str, str]:
        data = {"phone": self.phone, "channel": self.channel, "mode": self.mode}
        if self.name:
            data["name"] = self.name
        return data

    @classmethod
    def from_value(cls, value: Any) -> Contact | None:
        """Read a contact as Scout stores it, or as a bare number (the tutorial's shape)."""
        if isinstance(value, dict) and value.get("phone"):
            channel = value.get("channel", "sms")
            mode = value.get("mode", "call")
            return cls(str(value["phone"]), channel if channel in CHANNELS else "sms", str(value.get("name") or ""),
                       mode if mode in CONTACT_MODES else "call")
        if isinstance(value, str) and value.strip():
            return cls(value.strip())
        return None


@dataclass(frozen=True)
class User:
    """A person Scout watches. `id` is the Google subject id (`sub`)."""

    id: str
    email: str
    name: str = ""
    nightscout_url: str = ""
    nightscout_token: str = ""  # access token, sent as ?token=
    nightscout_api_secret: str = ""  # API secret, sent as the SHA-1 `api-secret` header
    phone: str = ""
    emergency_contact: Contact | None = None
    extra_contacts: tuple[Contact, ...] = ()
    units: str = "mg/dL"
    low_mgdl: float = DEFAULT_LOW_MGDL
    high_mgdl: float = DEFAULT_HIGH_MGDL
    urgent_low_mgdl: float = DEFAULT_URGENT_LOW_MGDL  # still calls while paused; never above low_mgdl
    paused_until: float = 0.0  # alerts paused until then (seconds since the epoch); 0 = not paused
    nightscout_notes: bool = False  # note calls, escalations, acknowledgements and all-clears as treatments
    predict_low_minutes: int = 0  # call when a low is predicted within this many minutes (0: off)
    fast_drop: bool = False  # call on a fast drop
    fast_drop_rate_mgdl: float = 3.0  # ... of at least this many mg/dL a minute
    fast_drop_minutes: int = 15  # ... on average over this many minutes
    # The cadence of highs (see the defaults above)
    high_repeat_minutes: int = DEFAULT_HIGH_REPEAT_MINUTES
    high_snooze_minutes: int = DEFAULT_HIGH_SNOOZE_MINUTES
    urgent_high_mgdl: float = DEFAULT_URGENT_HIGH_MGDL
    urgent_high_minutes: int = DEFAULT_URGENT_HIGH_MINUTES
    # Night thresholds: between night_start and night_end on the user's own clocks (a window
    # may wrap midnight), night_low_mgdl and night_high_mgdl replace low_mgdl and high_mgdl.
    time_zone: str = DEFAULT_TIME_ZONE  # an IANA zone name, e.g. "America/New_York"
    night_thresholds: bool = False
    night_start: str = DEFAULT_NIGHT_START
    night_end: str = DEFAULT_NIGHT_END
    night_low_mgdl: float = DEFAULT_LOW_MGDL
    night_high_mgdl: float = DEFAULT_HIGH_MGDL

    def is_night(self, now: float) -> bool:
        """Whether `now` falls in the user's night window, on their own clocks."""
        if not self.night_thresholds:
            return False
        try:
            start, end = minute_of_day(self.night_start), minute_of_day(self.night_end)
        except ValueError:
            return False
        minute = local_minute(now, self.time_zone)
        if start <= end:
            return start <= minute < end
        return minute >= start or minute < end  # the window wraps midnight

    def in_force(self, now: float) -> User:
        """The user as the rules apply at `now`: at night, the night thresholds are the low
        and the high (the urgent low stays, never above the low in force)."""
        if not self.is_night(now):
            return self
        return replace(self, low_mgdl=self.night_low_mgdl, high_mgdl=self.night_high_mgdl)

    @property
    def urgent_low(self) -> float:
        """The urgent-low line as Scout applies it: never above the low threshold."""
        return min(self.urgent_low_mgdl, self.low_mgdl)

    def is_paused(self, now: float) -> bool:
        return self.paused_until > now

    @property
    def display_name(self) -> str:
        return self.name or self.email.split("@")[0]

    @property
    def contacts(self) -> tuple[Contact, ...]:
        """Everyone to text when a call goes unanswered: the emergency contact first."""
        first = (self.emergency_contact,) if self.emergency_contact else ()
        return first + tuple(self.extra_contacts)

    @property
    def ladder(self) -> tuple[Contact, ...]:
        """Whom Scout calls, one after the other, when the user does not acknowledge a call:
        the contacts in their order, except those who asked for texts only."""
        return tuple(c for c in self.contacts if c.is_called)

    @property
    def is_watchable(self) -> bool:
        return bool(self.nightscout_url and self.phone)

    def as_dict(self) -> dict[str, Any]:
        data = plain_data(self)
        data["emergency_contact"] = self.emergency_contact.as_dict() if self.emergency_contact else None
        data["extra_contacts"] = [c.as_dict() for c in self.extra_contacts]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> User:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["emergency_contact"] = Contact.from_value(data.get("emergency_contact"))
        extra = [Contact.from_value(c) for c in data.get("extra_contacts") or []]
        values["extra_contacts"] = tuple(c for c in extra if c)
        return cls(**values)


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_PLAIN_TYPES = (str, int, float, bool, type(None))


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def plain_data(value: Any) -> Any:
    """What dataclasses.asdict makes of a dataclass (and of what it holds), without its
    deep copy of every number and string: those cannot change, so they are shared, while
    every list, tuple, dict and dataclass is new. Anything else is deep-copied, as asdict
    does. A field added to a dataclass later is included without a change here."""
    kind = type(value)
    if kind in _PLAIN_TYPES:
        return value
    if kind is list:
        return [plain_data(item) for item in value]
    if kind is tuple:
        return tuple(plain_data(item) for item in value)
    if hasattr(kind, "__dataclass_fields__"):
        return {name: plain_data(getattr(value, name)) for name in _field_names(kind)}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple, as asdict does
        return kind(*[plain_data(item) for item in value])
    if isinstance(value, dict):
        return kind((plain_data(key), plain_data(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return kind(plain_data(item) for item in value)
    return copy.deepcopy(value)


@dataclass
class CallRecord:
    """The latest alert call of an episode and what became of it."""

    key: str  # the alert log key of the call, which holds the provider's call id
    placed_at: float
    outcome: str = "pending"  # pending | acknowledged | unanswered
    detail: str = ""  # the provider's final status, e.g. "no-answer"
    escalated: bool = False  # contacts were told about this unanswered call
    # Recorded but not placed yet (waiting its turn in the send queue). Only a placed call
    # can go unanswered: one that cannot be placed is "unplaced", and contacts are told so.
    queued: bool = False
    to: str = ""  # a contact's call on the ladder: the contact's number ("" for the user's own call)


@dataclass
class Episode:
    """One stretch out of range, from the first fresh out-of-range reading to the all-clear."""

    id: str
    kind: str  # "low" or "high"
    started_at: float
    calls: int = 0
    last_call_at: float | None = None
    call: CallRecord | None = None
    acknowledged_at: float | None = None
    contact_rounds: int = 0
    last_contacts_at: float | None = None
    alerted: list[list[str]] = field(default_factory=list)  # [phone, channel] pairs
    why: str = ""  # an early warning that opened it before the value crossed ("falling fast")
    urgent_high_since: float | None = None  # start of the current run above the urgent high
    urgent: bool = False  # a low below the user's urgent low at the last fresh reading
    # The ladder: after the user's call goes unacknowledged, the contacts are called one at a
    # time in the user's order (User.ladder). `ladder_round` counts the rounds of this episode
    # (for the calls' keys), `ladder_step` how many contacts this round has reached,
    # `ladder_called` their numbers (so a contact removed, set to text only or moved mid-round
    # neither skips anyone nor is called twice), and `ladder_call` is the current (or last)
    # contact's call. `ladder_active` is False once everyone was tried, or someone pressed 1.
    ladder_round: int = 0
    ladder_step: int = 0
    ladder_called: list[str] = field(default_factory=list)
    ladder_active: bool = False
    ladder_call: CallRecord | None = None
    acks: int = 0  # acknowledgements in this episode (each tells the others once)
    acknowledged_by: str = ""  # who gave the latest one: "Ana", "Ben", "the contact at +1..."


@dataclass
class AlertState:
    """Everything Scout must remember about one user between polls."""

    episode: Episode | None = None
    failed_polls: int = 0
    failing_since: float | None = None  # when the current run of failed polls began
    outage_notified: bool = False
    last_failure: str = ""
    gap_notified_for: float | None = None  # reading time the no-data text was sent for
    no_valid_since: float | None = None  # first poll that had only CGM error codes
    pause_resumed_for: float = 0.0  # the `paused_until` whose "alerts are back on" text was sent
    # What the poller saw last time, so the next cycle can order users by risk (see
    # scout.poller.order_by_risk). Written only when it changes, like everything here.
    site: str = ""  # how the Nightscout site answered: "slow", "failing"; "" fast (or never polled)
    watch: bool = False  # the last value was out of range, near a threshold, or falling fast
    # Freshness by arrival: the Nightscout entries Scout has seen, each as
    # [key, uploader's date, value, first seen at, seen arrive (1) or found at first poll (0)].
    seen: list[list[Any]] = field(default_factory=list)
    last_arrival_at: float | None = None  # when the newest valid reading first reached Scout
    watching_since: float | None = None  # Scout's first poll of this user: entries new after it arrived since
    clock_skew_told: bool = False  # the user was told their uploader's clock is off (this skew episode)
    last_call_at: float | None = None  # the last alert call of any episode: WAIT_AFTER_CALL is per user

    def as_dict(self) -> dict[str, Any]:
        """The same as dataclasses.asdict, five times faster: the poller writes the states
        of every user with a new reading each minute (see plain_data)."""
        return plain_data(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> AlertState:
        if not data:
            return cls()
        data = dict(data)
        episode = data.pop("episode", None)
        known = _field_names(cls)
        state = cls(**{k: v for k, v in data.items() if k in known})
        if episode:
            episode = dict(episode)
            call = episode.pop("call", None)
            ladder_call = episode.pop("ladder_call", None)
            state.episode = Episode(**episode, call=CallRecord(**call) if call else None,
                                    ladder_call=CallRecord(**ladder_call) if ladder_call else None)
        return state

    def copy(self) -> AlertState:
        """A deep copy. Written out rather than through as_dict: the poller copies every
        user's state every minute, and this is ten times faster."""
        ep = self.episode
        if ep is None:
            return replace(self, seen=list(self.seen))
        call = replace(ep.call) if ep.call is not None else None
        ladder_call = replace(ep.ladder_call) if ep.ladder_call is not None else None
        return replace(self, episode=replace(ep, call=call, ladder_call=ladder_call,
                                             ladder_called=list(ep.ladder_called),
                                             alerted=[list(pair) for pair in ep.alerted]),
                       seen=list(self.seen))


@dataclass(frozen=True, slots=True)
class StoredState:
    """A user's alert state as the store holds it (JSON), with its version, parsed when it
    is needed, and what the poller orders the users by. The poller holds every user's
    state for a whole cycle: parsed, one takes about 5 KB (the readings seen), as
    stored about 1.4 KB; at 25,000 users a process that is 90 MB."""

    data: str
    version: int
    in_episode: bool
    watch: bool
    site: str

    @classmethod
    def of(cls, data: str, version: int) -> StoredState:
        plain = json.loads(data)
        return cls(data, version, plain.get("episode") is not None, bool(plain.get("watch")),
                   str(plain.get("site") or ""))

    def state(self) -> AlertState:
        return AlertState.from_dict(json.loads(self.data))


UNSENT_STATUSES = ("pending", "queued", "failed", "sending")  # a log entry not yet sent, nor given up


@dataclass(frozen=True)
class LogEntry:
    """One call or message, recorded before it is sent and updated after.

    `key` is unique per action, so the same alert is never recorded, or sent, twice.
    `status`: pending (recorded, not yet sent), queued (recorded for a Cloud Tasks send
    queue, which sends it through /tasks/send), sending (claimed by a sender), sent, failed
    (will be retried), permanent (the provider refused it for good), expired (too old to retry).
    """

    key: str
    user_id: str
    kind: str  # call | sms | whatsapp
    purpose: str  # alert | ladder (a contact's call) | contacts | on_it | outage | no_data | all_clear | recovered | test
    recipient: str
    body: str
    created_at: float
    status: str = "pending"
    provider: str = ""
    provider_id: str = ""
    outcome: str = ""
    error: str = ""
    attempts: int = 0
    updated_at: float = 0.0
    claimed_until: float = 0.0
    id: str = ""
    urgency: float = 5000.0  # the send queue's order: lower goes first (see scout.alerts.urgency)

    @property
    def claimable(self) -> bool:
        return self.status in UNSENT_STATUSES

    def as_dict(self) -> dict[str, Any]:
        return plain_data(self)


@dataclass(frozen=True)
class CycleRecord:
    finished_at: float
    summary: dict[str, Any]


class StoreUnavailable(Exception):
    """The store could not be read or written right now; the caller should try again later."""


class UserFeed(Protocol):
    def users(self) -> list[User]: ...

    def close(self) -> None: ...


class Store(Protocol):
    """What the web app and the poller need from storage. SQLite and Firestore both provide it."""

    # users
    def get_user(self, user_id: str) -> User | None: ...
    def find_user_by_email(self, email: str) -> User | None: ...
    # everyone whose own number or a contact's is `phone` (any spelling: compared by digits)
    def find_users_by_phone(self, phone: str) -> list[User]: ...
    def save_user(self, user: User) -> None: ...
    def save_users(self, users: list[User]) -> None: ...  # as save_user for each, in as few writes as it can
    def delete_user(self, user_id: str) -> None: ...
    def list_users(self) -> list[User]: ...
    def user_feed(self) -> UserFeed: ...

    # alert state, written with compare-and-set on `version`
    def get_state(self, user_id: str) -> tuple[AlertState, int]: ...
    def commit(self, user_id: str, state: AlertState | None, version: int, entries: list[LogEntry]) -> bool: ...

    # alert log
    def update_log(self, key: str, **changes: Any) -> None: ...
    def claim_log(self, key: str, now: float, hold: float) -> LogEntry | None: ...
    def get_log(self, key: str) -> LogEntry | None: ...
    def find_log_by_provider_id(self, provider_id: str) -> LogEntry | None: ...
    # newest first; `since`: only entries created then or later
    def user_log(self, user_id: str, limit: int = 50, since: float = 0.0) -> list[LogEntry]: ...
    def unsent_log(self) -> list[LogEntry]: ...
    def delete_log_before(self, cutoff: float) -> int: ...

    # the poller lease and cycle records
    def acquire_lease(self, name: str, holder: str, ttl: float, now: float) -> bool: ...
    def release_lease(self, name: str, holder: str) -> None: ...
    def record_cycle(self, record: CycleRecord) -> None: ...
    def last_cycle(self) -> CycleRecord | None: ...

    # Abuse limits and sessions: kept apart from the user's data, so that they survive
    # restarts, other instances and the deletion of that data.
    def take_allowance(self, key: str, now: float, window: float, limit: int) -> float: ...
    def session_generation(self, user_id: str) -> int: ...
    def end_sessions(self, user_id: str) -> int: ...

    def close(self) -> None: ...


def allowance_after(record: tuple[float, int] | None, now: float, window: float, limit: int
                    ) -> tuple[tuple[float, int] | None, float]:
    """The rule every store applies to one abuse counter, (window start, count): the new
    record to write (None: nothing to write) and the seconds to wait (0: allowed and
    counted). A window opens at the first use and lasts `window` seconds."""
    if record is None or now >= record[0] + window or now < record[0] - window:  # unused, over, or a clock far off
        return (now, 1), 0.0
    start, count = record
    if count < limit:
        return (start, count + 1), 0.0
    return None, max(0.001, start + window - now)


def phone_digits(phone: str) -> str:
    """A number's digits, the form every store looks numbers up by: 'whatsapp:+1 415-555-2671',
    '+14155552671' and the tutorial's '14155552671' are one number."""
    return "".join(ch for ch in phone.removeprefix("whatsapp:") if ch.isdigit())


def numbers_of(user: User) -> list[str]:
    """The digits of every number a user's record holds: their own and their contacts'."""
    found = [phone_digits(p) for p in (user.phone, *(c.phone for c in user.contacts))]
    return sorted({d for d in found if d})


def is_tutorial_era(user: User) -> bool:
    """A user imported from the tutorial's data has no Google subject id yet: until they
    sign in (and are adopted under their `sub`), every store knows them by their email."""
    return user.id == user.email


def new_log_id() -> str:
    return uuid.uuid4().hex
