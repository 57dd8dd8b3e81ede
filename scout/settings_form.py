"""Validation of the settings form: everything the user types is checked here, on the server.

`read_settings` returns the updated user, or the errors by field with nothing saved.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import phonenumbers
from werkzeug.datastructures import MultiDict

from models import CHANNELS, MAX_EXTRA_CONTACTS, Contact, User
from scout.nightscout import BadNightscoutURL, check_public_host, parse_site
from scout.readings import MMOL_PER_MGDL

UNITS = ("mg/dL", "mmol/L")
# Thresholds a person can reasonably choose, in mg/dL
LOW_BOUNDS = (40.0, 120.0)
HIGH_BOUNDS = (120.0, 400.0)


@dataclass
class SettingsResult:
    user: User | None
    errors: dict[str, str] = field(default_factory=dict)


def normalize_phone(raw: str, region: str) -> str:
    """A phone number in E.164 (+15551234567), or ValueError with a message for the user."""
    text = (raw or "").strip()
    if not text:
        raise ValueError("Enter a phone number.")
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        raise ValueError(f"{text!r} is not a phone number. Include the country code, e.g. +1 555 123 4567.") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError(f"{text!r} is not a valid phone number. Check the digits and the country code.")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def to_mgdl(value: float, units: str) -> float:
    return round(value / MMOL_PER_MGDL) if units == "mmol/L" else value


def from_mgdl(value: float, units: str) -> float:
    return round(value * MMOL_PER_MGDL, 1) if units == "mmol/L" else round(value)


def _channel(value: str) -> str:
    return value if value in CHANNELS else "sms"


def read_contacts(phones: Sequence[str], channels: Sequence[str], region: str, errors: dict[str, str]) -> list[Contact]:
    rows = [(p.strip(), channels[i] if i < len(channels) else "sms") for i, p in enumerate(phones)]
    rows = [(p, c) for p, c in rows if p]
    if len(rows) > MAX_EXTRA_CONTACTS:
        errors["extra_contacts"] = f"Scout texts at most {MAX_EXTRA_CONTACTS} extra contacts; remove {len(rows) - MAX_EXTRA_CONTACTS}."
        return []
    contacts = []
    for index, (phone, channel) in enumerate(rows):
        try:
            contacts.append(Contact(normalize_phone(phone, region), _channel(channel)))
        except ValueError as exc:
            errors[f"extra_contacts-{index}"] = str(exc)
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
        mgdl = to_mgdl(value, units)
        if not bounds[0] <= mgdl <= bounds[1]:
            lo, hi = from_mgdl(bounds[0], units), from_mgdl(bounds[1], units)
            errors[name] = f"The {name} threshold must be between {lo:g} and {hi:g} {units}."
            continue
        values[name] = mgdl
    if "low" in values and "high" in values and values["low"] >= values["high"]:
        errors["high"] = "The high threshold must be above the low threshold."
    return values.get("low", 0.0), values.get("high", 0.0)


def read_nightscout(form: Mapping[str, str], allow_private: bool, errors: dict[str, str]) -> str:
    url = (form.get("nightscout_url") or "").strip()
    try:
        site = parse_site(url)
        if not allow_private:
            check_public_host(site.host)
    except BadNightscoutURL as exc:
        errors["nightscout_url"] = str(exc)
    return url


def read_settings(form: MultiDict[str, str], user: User, region: str, allow_private: bool) -> SettingsResult:
    """Check every field; return the updated user, or the errors and no user."""
    errors: dict[str, str] = {}
    units = form.get("units") or "mg/dL"
    if units not in UNITS:
        errors["units"] = "Choose mg/dL or mmol/L."
        units = "mg/dL"
    url = read_nightscout(form, allow_private, errors)
    phone = emergency = ""
    for name in ("phone", "emergency_contact"):
        try:
            value = normalize_phone(form.get(name, ""), region)
        except ValueError as exc:
            errors[name] = str(exc)
            continue
        phone, emergency = (value, emergency) if name == "phone" else (phone, value)
    extra = read_contacts(form.getlist("extra_contacts"), form.getlist("extra_channels"), region, errors)
    low, high = read_thresholds(form, units, errors)
    if errors:
        return SettingsResult(None, errors)
    token = (form.get("nightscout_token") or "").strip()
    secret = (form.get("nightscout_api_secret") or "").strip()
    return SettingsResult(
        replace(
            user,
            nightscout_url=url,
            nightscout_token=token or user.nightscout_token,
            nightscout_api_secret=secret or user.nightscout_api_secret,
            phone=phone,
            emergency_contact=Contact(emergency, _channel(form.get("emergency_channel", "sms"))),
            extra_contacts=tuple(extra),
            units=units,
            low_mgdl=low,
            high_mgdl=high,
        )
    )
