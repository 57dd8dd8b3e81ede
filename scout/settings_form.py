"""Validation of the settings form: everything the user types is checked here, on the server.

`read_settings` returns the updated user, or the errors by field with nothing saved.
Error keys are the form's field names; an extra contact's key carries the position of its
row on the page (`extra_contacts-2` is the third row), so the message lands next to it.
"""
from __future__ import annotations

import math
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache

import phonenumbers
from phonenumbers import PhoneNumberType
from werkzeug.datastructures import MultiDict

from models import (
    CHANNELS,
    CONTACT_MODES,
    DEFAULT_HIGH_MGDL,
    DEFAULT_LOW_MGDL,
    DEFAULT_TIME_ZONE,
    MAX_EXTRA_CONTACTS,
    Contact,
    User,
    minute_of_day,
)
from scout.nightscout import BadNightscoutURL, check_public_host, parse_site
from scout.readings import MMOL_PER_MGDL

UNITS = ("mg/dL", "mmol/L")
# Thresholds a person can reasonably choose, in mg/dL: below 40 a CGM reports error codes,
# and a "high" above 400 is beyond what most sensors read.
LOW_BOUNDS = (40.0, 120.0)
HIGH_BOUNDS = (120.0, 400.0)
MAX_URL_LENGTH = 500
MAX_CREDENTIAL_LENGTH = 200
MIN_API_SECRET_LENGTH = 12  # Nightscout itself refuses an API_SECRET shorter than this
MAX_PHONE_LENGTH = 40
MAX_NAME_LENGTH = 60
PREDICT_MINUTES_BOUNDS = (5, 30)  # AR2 means little further ahead (docs/design.md)
FAST_DROP_RATE_BOUNDS = (1.0, 10.0)  # mg/dL a minute
FAST_DROP_MINUTES_BOUNDS = (10, 30)
# The cadence of highs, in minutes. A repeat under 5 minutes is the lows' rhythm (a call every
# WAIT_AFTER_CALL); a snooze under 15 minutes would be shorter than a low's.
HIGH_REPEAT_BOUNDS = (5, 240)
HIGH_SNOOZE_BOUNDS = (15, 480)
URGENT_HIGH_MINUTES_BOUNDS = (0, 240)  # 0: the contacts hear of the first unanswered call above it
URGENT_HIGH_CEILING = 400.0  # mg/dL: above this Dexcom reads HIGH, which is always above the line


@dataclass
class SettingsResult:
    user: User | None
    errors: dict[str, str] = field(default_factory=dict)


# Number types Scout never calls or texts: they cost the operator per minute (premium
# rate, shared cost), reach no person (voicemail-only), or cannot be told apart
# (universal access numbers, unknown types). Toll fraud starts with such a number.
REFUSED_NUMBER_TYPES = {
    PhoneNumberType.PREMIUM_RATE: "a premium-rate number",
    PhoneNumberType.SHARED_COST: "a shared-cost number",
    PhoneNumberType.UAN: "a universal access number",
    PhoneNumberType.VOICEMAIL: "a voicemail-only number",
    PhoneNumberType.UNKNOWN: "a number of a kind Scout cannot tell",
}


def normalize_phone(raw: str, region: str, allowed_countries: frozenset[str] = frozenset()) -> str:
    """A phone number in E.164 (+15551234567), or ValueError with a message for the user.
    Only numbers a person answers, in an allowed country (SCOUT_ALLOWED_COUNTRIES; empty:
    any), are accepted."""
    text = (raw or "").strip()
    if not text:
        raise ValueError("Enter a phone number.")
    if len(text) > MAX_PHONE_LENGTH:
        raise ValueError("That is too long for a phone number. Enter it with its country code, e.g. +1 201 555 0123.")
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        raise ValueError(f"{text!r} is not a phone number. Include the country code, e.g. +1 201 555 0123.") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError(f"{text!r} is not a valid phone number. Check the digits and the country code.")
    refused = REFUSED_NUMBER_TYPES.get(phonenumbers.number_type(number))
    if refused:
        raise ValueError(f"{text!r} is {refused}: Scout only calls and texts mobile and landline numbers. "
                         "Enter a number a person answers.")
    country = phonenumbers.region_code_for_number(number) or ""
    if allowed_countries and country not in allowed_countries:
        raise ValueError(f"{text!r} is a number in {country or 'no country'}; this Scout calls and texts numbers in "
                         f"{', '.join(sorted(allowed_countries))} only. Ask the operator if you need another country.")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def to_mgdl(value: float, units: str) -> float:
    return round(value / MMOL_PER_MGDL) if units == "mmol/L" else value


def from_mgdl(value: float, units: str) -> float:
    return round(value * MMOL_PER_MGDL, 1) if units == "mmol/L" else round(value)


def default_thresholds(units: str) -> tuple[float, float]:
    """The tutorial's 70/240 mg/dL, in `units` (3.9/13.3 mmol/L)."""
    return from_mgdl(DEFAULT_LOW_MGDL, units), from_mgdl(DEFAULT_HIGH_MGDL, units)


def credential_hint(secret: str) -> str:
    """How a saved token or secret is shown back: never in full. Only long ones show their
    last two characters, enough to recognise which one is saved."""
    if not secret:
        return ""
    return f"saved, ends in …{secret[-2:]}" if len(secret) >= 8 else "saved"


def _channel(value: str) -> str:
    return value if value in CHANNELS else "sms"


MODE_ERROR = "Choose “Call and text” or “Text only” for this contact."


def read_mode(value: str | None, errors: dict[str, str], key: str) -> str:
    """A contact's mode: "call" (called on the ladder and texted) or "text" (texted only).
    A form without the field (an older page) means "call": waking someone is the point."""
    chosen = (value or "").strip() or "call"
    if chosen not in CONTACT_MODES:
        errors.setdefault(key, MODE_ERROR)
        return "call"
    return chosen


def contact_name(raw: str | None) -> str:
    """A contact's name as texts greet them: one line, at most MAX_NAME_LENGTH characters."""
    return " ".join("".join(ch for ch in (raw or "") if ch.isprintable()).split())[:MAX_NAME_LENGTH]


def read_contacts(
    phones: Sequence[str], channels: Sequence[str], region: str, errors: dict[str, str], taken: set[str],
    allowed_countries: frozenset[str] = frozenset(),
    names: Sequence[str] = (),
    modes: Sequence[str] = (),
) -> list[Contact]:
    """The extra contacts in page order. Empty rows are skipped; an error is keyed by the
    row's position on the page. `taken` holds numbers already used elsewhere in the form."""
    rows = [(index, phone.strip(), channels[index] if index < len(channels) else "sms")
            for index, phone in enumerate(phones)]
    for index, phone, _channel_name in rows:
        if not phone and index < len(names) and names[index].strip():
            errors[f"extra_contacts-{index}"] = f"Enter {contact_name(names[index])}'s phone number, or delete the row."
    rows = [row for row in rows if row[1]]
    if len(rows) > MAX_EXTRA_CONTACTS:
        errors["extra_contacts"] = (
            f"Scout texts at most {MAX_EXTRA_CONTACTS} extra contacts; remove {len(rows) - MAX_EXTRA_CONTACTS}."
        )
        return []
    contacts = []
    for index, phone, channel in rows:
        try:
            number = normalize_phone(phone, region, allowed_countries)
        except ValueError as exc:
            errors[f"extra_contacts-{index}"] = str(exc)
            continue
        if number in taken:
            errors[f"extra_contacts-{index}"] = f"{number} is already listed above; each number is texted once."
            continue
        taken.add(number)
        mode = read_mode(modes[index] if index < len(modes) else "", errors, f"extra_contacts-{index}")
        contacts.append(Contact(number, _channel(channel), contact_name(names[index] if index < len(names) else ""),
                                mode))
    return contacts


def read_thresholds(form: Mapping[str, str], units: str, errors: dict[str, str]) -> tuple[float, float]:
    values = {}
    for name, bounds in (("low", LOW_BOUNDS), ("high", HIGH_BOUNDS)):
        raw = (form.get(name) or "").strip().replace(",", ".")
        try:
            value = float(raw)
        except ValueError:
            errors[name] = f"Enter the {name} threshold as a number in {units}."
            continue
        mgdl = to_mgdl(value, units) if math.isfinite(value) else math.nan
        if not bounds[0] <= mgdl <= bounds[1]:  # NaN fails this too
            lo, hi = from_mgdl(bounds[0], units), from_mgdl(bounds[1], units)
            errors[name] = f"The {name} threshold must be between {lo:g} and {hi:g} {units}."
            continue
        values[name] = mgdl
    if "low" in values and "high" in values and values["low"] >= values["high"]:
        errors["high"] = "The high threshold must be above the low threshold."
    return values.get("low", 0.0), values.get("high", 0.0)


def read_urgent_low(form: Mapping[str, str], units: str, low: float, saved: float, errors: dict[str, str],
                    low_name: str = "your low threshold") -> float:
    """The urgent low (still calls during a pause): at least 40 mg/dL, never above the low
    threshold. An empty field keeps the saved value; so does the saved value shown back
    unchanged (3.1 mmol/L is 55 mg/dL shown, and must not come back as 56)."""
    raw = (form.get("urgent_low") or "").strip().replace(",", ".")
    if not raw:
        value = saved
    else:
        try:
            typed = float(raw)
        except ValueError:
            errors["urgent_low"] = f"Enter the urgent low as a number in {units}."
            return saved
        unchanged = math.isfinite(typed) and typed == from_mgdl(saved, units)
        value = saved if unchanged else (to_mgdl(typed, units) if math.isfinite(typed) else math.nan)
    top = low or LOW_BOUNDS[1]
    if not LOW_BOUNDS[0] <= value <= top:
        errors["urgent_low"] = (f"The urgent low must be between {from_mgdl(LOW_BOUNDS[0], units):g} {units} and "
                                f"{low_name}, {from_mgdl(top, units):g} {units}.")
    return value


def read_value(form: Mapping[str, str], name: str, what: str, units: str, bounds: tuple[float, float],
               errors: dict[str, str]) -> float:
    """A glucose value typed in the user's units, in mg/dL, within `bounds` (mg/dL); NaN and
    an error by the field otherwise."""
    raw = (form.get(name) or "").strip().replace(",", ".")
    try:
        value = float(raw)
    except ValueError:
        errors[name] = f"Enter {what} as a number in {units}."
        return math.nan
    mgdl = to_mgdl(value, units) if math.isfinite(value) else math.nan
    if not bounds[0] <= mgdl <= bounds[1]:  # NaN fails this too
        lo, hi = from_mgdl(bounds[0], units), from_mgdl(bounds[1], units)
        errors[name] = f"{what[0].upper()}{what[1:]} must be between {lo:g} and {hi:g} {units}."
        return math.nan
    return mgdl


def read_clock(form: Mapping[str, str], name: str, what: str, errors: dict[str, str]) -> str:
    """A local time of day as 'HH:MM' (24-hour)."""
    raw = (form.get(name) or "").strip()
    try:
        minute = minute_of_day(raw)
    except ValueError:
        errors[name] = f"Enter {what} as a 24-hour time, e.g. 22:00 or 07:00."
        return ""
    return f"{minute // 60:02d}:{minute % 60:02d}"


@cache
def time_zones() -> tuple[str, ...]:
    """The named IANA zones a user can choose, sorted (Scout ships them in the tzdata package)."""
    return tuple(sorted(zoneinfo.available_timezones()))


def read_time_zone(form: Mapping[str, str], saved: str, errors: dict[str, str]) -> str:
    """The user's IANA time zone; absent from the form keeps the saved one."""
    if "time_zone" not in form:
        return saved
    name = (form.get("time_zone") or "").strip()
    if name not in time_zones():
        known = f"Scout knows no time zone called {name[:60]}. " if name else ""
        errors["time_zone"] = (f"{known}Choose your time zone from the list, by the city whose clocks you keep, "
                               "e.g. America/New_York.")
        return saved
    return name


@dataclass(frozen=True)
class NightSettings:
    on: bool
    start: str
    end: str
    low: float
    high: float


def read_night(form: Mapping[str, str], units: str, user: User, errors: dict[str, str]) -> NightSettings:
    """The optional night thresholds. Left off, the saved window and values are kept."""
    saved = NightSettings(False, user.night_start, user.night_end, user.night_low_mgdl, user.night_high_mgdl)
    if form.get("night_thresholds") != "1":
        return saved
    start = read_clock(form, "night_start", "when your night starts", errors)
    end = read_clock(form, "night_end", "when your night ends", errors)
    if start and start == end:
        errors["night_end"] = "The night must end at another time than it starts, e.g. 22:00 to 07:00."
    low = read_value(form, "night_low", "the night low threshold", units, LOW_BOUNDS, errors)
    high = read_value(form, "night_high", "the night high threshold", units, HIGH_BOUNDS, errors)
    if low >= high:  # False if either is NaN (already refused)
        errors["night_high"] = "The night high threshold must be above the night low threshold."
    return NightSettings(True, start, end, low, high)


@dataclass(frozen=True)
class HighCadence:
    repeat_minutes: int
    snooze_minutes: int
    urgent_high: float
    urgent_minutes: int


def _minutes_in(form: Mapping[str, str], name: str, saved: int, bounds: tuple[int, int], what: str,
                errors: dict[str, str]) -> int:
    """Whole minutes within `bounds`; a field absent from the form keeps the saved value."""
    if name not in form:
        return saved
    raw = (form.get(name) or "").strip()
    if not raw.isdigit() or not bounds[0] <= int(raw) <= bounds[1]:
        errors[name] = f"Enter {what} as whole minutes between {bounds[0]} and {bounds[1]}."
        return saved
    return int(raw)


def read_high_cadence(form: Mapping[str, str], units: str, user: User, highs: Sequence[float],
                      errors: dict[str, str]) -> HighCadence:
    """How often Scout calls about a high, and when the contacts hear of one. `highs` are the
    high thresholds in use (day, and night if on): the urgent high must be above them."""
    repeat = _minutes_in(form, "high_repeat_minutes", user.high_repeat_minutes, HIGH_REPEAT_BOUNDS,
                         "how often Scout calls about a high", errors)
    snooze = _minutes_in(form, "high_snooze_minutes", user.high_snooze_minutes, HIGH_SNOOZE_BOUNDS,
                         "how long a 1 silences a high", errors)
    minutes = _minutes_in(form, "urgent_high_minutes", user.urgent_high_minutes, URGENT_HIGH_MINUTES_BOUNDS,
                          "how long above the urgent high before your contacts hear", errors)
    urgent = user.urgent_high_mgdl
    if "urgent_high" in form:
        typed = read_value(form, "urgent_high", "the urgent high", units, (HIGH_BOUNDS[0], URGENT_HIGH_CEILING),
                           errors)
        unchanged = (form.get("urgent_high") or "").strip() == f"{from_mgdl(urgent, units):g}"
        urgent = urgent if unchanged else typed  # 16.7 mmol/L shown for 300 must not come back as 301
    top = max((h for h in highs if math.isfinite(h) and h), default=0.0)
    if "urgent_high" not in errors and math.isfinite(urgent) and urgent <= top:
        errors["urgent_high"] = (f"The urgent high must be above your high threshold "
                                 f"({from_mgdl(top, units):g} {units}): it is the line where a high becomes "
                                 "urgent enough to tell your contacts.")
    return HighCadence(repeat, snooze, urgent, minutes)


def read_nightscout(form: Mapping[str, str], allow_private: bool, errors: dict[str, str]) -> str:
    url = (form.get("nightscout_url") or "").strip()
    if len(url) > MAX_URL_LENGTH:
        errors["nightscout_url"] = f"That address is longer than {MAX_URL_LENGTH} characters; enter your site's address."
        return url
    try:
        site = parse_site(url)
        if not allow_private:
            check_public_host(site.host)
    except BadNightscoutURL as exc:
        errors["nightscout_url"] = str(exc)
    return url


def _number_in(form: Mapping[str, str], name: str, bounds: tuple[float, float], what: str,
               errors: dict[str, str], scale: float = 1.0, unit: str = "") -> float:
    """A number typed in `form[name]` (in the user's units: value * scale is canonical), within
    `bounds` (canonical); else an error by the field that names the allowed range."""
    lo, hi = bounds[0] / scale, bounds[1] / scale
    allowed = f"between {lo:.2g} and {hi:.2g}{unit}" if scale != 1.0 else f"between {lo:g} and {hi:g}{unit}"
    try:
        value = float((form.get(name) or "").strip().replace(",", "."))
    except ValueError:
        errors[name] = f"Enter {what} as a number {allowed}."
        return 0.0
    if not math.isfinite(value) or not bounds[0] <= value * scale <= bounds[1]:
        errors[name] = f"{what[0].upper()}{what[1:]} must be {allowed}."
        return 0.0
    return value * scale


def read_forecast_options(form: Mapping[str, str], units: str, user: User,
                          errors: dict[str, str]) -> tuple[int, bool, float, int]:
    """The opt-in early calls: (minutes ahead for a predicted low or 0, fast drop on, its rate
    in mg/dL a minute, its minutes). An option left off keeps its saved numbers."""
    minutes = 0
    if form.get("predict_low") == "1":
        minutes = round(_number_in(form, "predict_low_minutes", PREDICT_MINUTES_BOUNDS,
                                   "how many minutes ahead", errors, unit=" minutes"))
    fast = form.get("fast_drop") == "1"
    rate, window = user.fast_drop_rate_mgdl, user.fast_drop_minutes
    if fast:
        scale = 1 / MMOL_PER_MGDL if units == "mmol/L" else 1.0
        rate = round(_number_in(form, "fast_drop_rate", FAST_DROP_RATE_BOUNDS, "the rate of the drop", errors,
                                scale, f" {units} a minute"), 1)
        window = round(_number_in(form, "fast_drop_minutes", FAST_DROP_MINUTES_BOUNDS, "the minutes the drop lasts",
                                  errors, unit=" minutes"))
    return minutes, fast, rate, window


def read_credential(form: Mapping[str, str], name: str, saved: str, errors: dict[str, str]) -> str:
    """A Nightscout access token or API secret: a new one replaces the saved one, an empty
    field keeps it, and the `clear_<name>` box removes it."""
    if form.get(f"clear_{name}"):
        return ""
    value = (form.get(name) or "").strip()
    if not value:
        return saved
    if len(value) > MAX_CREDENTIAL_LENGTH or any(ch.isspace() for ch in value):
        errors[name] = "That does not look like a Nightscout credential: no spaces, at most 200 characters."
    elif name == "nightscout_api_secret" and len(value) < MIN_API_SECRET_LENGTH:
        errors[name] = f"A Nightscout API secret has at least {MIN_API_SECRET_LENGTH} characters; check it."
    return value


def read_phones(form: Mapping[str, str], region: str, errors: dict[str, str],
                allowed_countries: frozenset[str] = frozenset()) -> tuple[str, str]:
    """The user's own phone and the emergency contact, in E.164; they must differ, because
    the emergency contact is texted exactly when the user does not answer."""
    numbers = {}
    for name in ("phone", "emergency_contact"):
        try:
            numbers[name] = normalize_phone(form.get(name, ""), region, allowed_countries)
        except ValueError as exc:
            errors[name] = str(exc)
    phone, emergency = numbers.get("phone", ""), numbers.get("emergency_contact", "")
    if phone and phone == emergency:
        errors["emergency_contact"] = (
            "Enter someone else's number: Scout texts the emergency contact when you do not answer."
        )
    return phone, emergency


def read_settings(form: MultiDict[str, str], user: User, region: str, allow_private: bool,
                  allowed_countries: frozenset[str] = frozenset()) -> SettingsResult:
    """Check every field; return the updated user, or the errors and no user."""
    errors: dict[str, str] = {}
    units = form.get("units") or "mg/dL"
    if units not in UNITS:
        errors["units"] = "Choose mg/dL or mmol/L."
        units = "mg/dL"
    url = read_nightscout(form, allow_private, errors)
    token = read_credential(form, "nightscout_token", user.nightscout_token, errors)
    secret = read_credential(form, "nightscout_api_secret", user.nightscout_api_secret, errors)
    phone, emergency = read_phones(form, region, errors, allowed_countries)
    taken = {number for number in (phone, emergency) if number}
    extra = read_contacts(form.getlist("extra_contacts"), form.getlist("extra_channels"), region, errors, taken,
                          allowed_countries, form.getlist("extra_names"), form.getlist("extra_modes"))
    emergency_mode = read_mode(form.get("emergency_mode"), errors, "emergency_mode")
    low, high = read_thresholds(form, units, errors)
    night = read_night(form, units, user, errors)
    lowest_low = min(low, night.low) if night.on and math.isfinite(night.low) else low
    urgent_low = read_urgent_low(form, units, lowest_low, user.urgent_low_mgdl, errors,
                                 "your night low threshold" if lowest_low < low else "your low threshold")
    cadence = read_high_cadence(form, units, user, (high, night.high if night.on else 0.0), errors)
    time_zone = read_time_zone(form, user.time_zone or DEFAULT_TIME_ZONE, errors)
    predict_minutes, fast, fast_rate, fast_minutes = read_forecast_options(form, units, user, errors)
    notes = form.get("nightscout_notes") == "1"
    if notes and not (token or secret):
        errors["nightscout_notes"] = ("Notes need an access token whose role allows treatments (careportal), "
                                      "or your API secret. Add one above, or turn notes off.")
    if errors:
        return SettingsResult(None, errors)
    return SettingsResult(
        replace(
            user,
            nightscout_url=url,
            nightscout_token=token,
            nightscout_api_secret=secret,
            phone=phone,
            emergency_contact=Contact(emergency, _channel(form.get("emergency_channel", "sms")),
                                      contact_name(form.get("emergency_name")), emergency_mode),
            extra_contacts=tuple(extra),
            units=units,
            low_mgdl=low,
            high_mgdl=high,
            urgent_low_mgdl=urgent_low,
            nightscout_notes=notes,
            predict_low_minutes=predict_minutes,
            fast_drop=fast,
            fast_drop_rate_mgdl=fast_rate,
            fast_drop_minutes=fast_minutes,
            high_repeat_minutes=cadence.repeat_minutes,
            high_snooze_minutes=cadence.snooze_minutes,
            urgent_high_mgdl=cadence.urgent_high,
            urgent_high_minutes=cadence.urgent_minutes,
            time_zone=time_zone,
            night_thresholds=night.on,
            night_start=night.start,
            night_end=night.end,
            night_low_mgdl=night.low,
            night_high_mgdl=night.high,
        )
    )
