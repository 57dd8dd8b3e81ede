"""Importing the tutorial's `scouts` documents (e.g. an exported JSON file) into Scout's store.

Each record is checked the way the settings page checks what a user types; a record
that fails is reported with the reason and not imported. Nothing is dropped silently.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import phonenumbers

from models import MAX_EXTRA_CONTACTS, Contact, Store, User, is_tutorial_era
from scout.nightscout import BadNightscoutURL, parse_site
from scout.settings_form import MAX_URL_LENGTH, normalize_phone

IMPORT_BATCH = 500  # users saved per write: Firestore commits at most 500 writes at once


class ImportFileError(ValueError):
    """The file is not a list or map of `scouts` documents."""


MAX_FILE_BYTES = 50 * 1024 * 1024  # far above any real export; a bigger file is refused before it is parsed
MAX_NESTING = 20  # a scouts document is a few levels deep; JSON nested deeper is not an export
# Longest values a record may carry: an email address (RFC 5321), a Google subject id
# (21 digits today; 255 is Google's documented bound), a display name, a document id.
MAX_LENGTHS = {"email": 254, "sub": 255, "username": 100, "id": 255}


def read_import_file(file: Any) -> list[tuple[str, Any]]:
    """The records of an export file, or ValueError saying in one line what is wrong with
    it: not UTF-8, not JSON, too large, nested too deep, or not scouts documents."""
    try:
        text = file.read(MAX_FILE_BYTES + 1)
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"it is not UTF-8 text (byte {exc.start} cannot be read); export it as JSON") from None
    if len(text) > MAX_FILE_BYTES:
        raise ImportFileError(f"it is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB; split it into smaller files")
    depth = _nesting(text)
    if depth > MAX_NESTING:
        raise ImportFileError(f"its JSON is nested {depth} levels deep, more than the {MAX_NESTING} an export of "
                              "scouts documents could have")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ImportFileError(f"it is not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    return records_in(data)


def _nesting(text: str) -> int:
    """The deepest nesting of brackets outside strings: measured before parsing, because
    the parser itself recurses (a deep enough file would crash it)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _text(document: dict[str, Any], name: str) -> str:
    """A text field of a record, stripped; ValueError if it is not text or too long."""
    value = document.get(name)
    if value is None:
        return ""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ValueError(f"{name}: expected text, got {type(value).__name__}")
    text = str(value).strip()
    limit = MAX_LENGTHS.get(name, MAX_URL_LENGTH)
    if len(text) > limit:
        raise ValueError(f"{name}: {len(text)} characters, at most {limit} are accepted")
    return text


@dataclass(frozen=True)
class ImportResult:
    label: str  # how the record is named in the report: its email, or its position
    user: User | None = None
    problem: str = ""  # why the record was not imported
    note: str = ""

    @property
    def imported(self) -> bool:
        return self.user is not None

    def line(self) -> str:
        if self.user is None:
            return f"NOT imported  {self.label}: {self.problem}"
        return f"imported      {self.label}" + (f" ({self.note})" if self.note else "")


def records_in(data: Any) -> list[tuple[str, dict[str, Any]]]:
    """(document id, document) pairs from a list of documents, a map of id to document,
    or either of those under a "scouts" key."""
    if isinstance(data, dict) and "scouts" in data:
        data = data["scouts"]
    if isinstance(data, list):
        return [(str(d.get("id") or d.get("__id__") or "")[:MAX_LENGTHS["id"]] if isinstance(d, dict) else "", d)
                for d in data]
    if isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()):
        return [(str(doc_id)[:MAX_LENGTHS["id"]], document) for doc_id, document in data.items()]
    raise ImportFileError("expected a JSON list of scouts documents, or an object mapping document ids to them")


def tutorial_phone(raw: Any, region: str) -> str:
    """E.164 from what the tutorial stored: digits with the country code and no '+'
    (what Vonage takes), or whatever the person typed."""
    if not isinstance(raw, (str, int)) or isinstance(raw, bool):
        raise ValueError(f"expected a phone number as text, got {type(raw).__name__}")
    text = str(raw or "").strip()
    if text.isdigit():
        try:
            return normalize_phone(f"+{text}", region)
        except ValueError:
            pass  # perhaps a national number after all: read it in the default region below
    return normalize_phone(text, region)


def _optional_phone(raw: Any, region: str, field: str) -> str:
    if not str(raw or "").strip():
        return ""
    try:
        return tutorial_phone(raw, region)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None


def _extra_contacts(raw: Any, region: str) -> tuple[Contact, ...]:
    if raw in (None, ""):
        return ()
    if not isinstance(raw, list):
        raise ValueError("extra_contacts: expected a list of phone numbers")
    values = [Contact.from_value(v) for v in raw]
    contacts = [c for c in values if c]
    if len(contacts) > MAX_EXTRA_CONTACTS:
        raise ValueError(f"extra_contacts: {len(contacts)} numbers, Scout texts at most {MAX_EXTRA_CONTACTS}")
    return tuple(Contact(_optional_phone(c.phone, region, "extra_contacts"), c.channel, c.name) for c in contacts)


def user_from_record(document: dict[str, Any], region: str) -> User:
    """The user a tutorial-shaped document describes, or ValueError naming the bad field."""
    email = _text(document, "email")
    if "@" not in email:
        raise ValueError("email: missing or not an email address")
    url = _text(document, "nightscout_api")
    if url:
        try:
            parse_site(url)
        except BadNightscoutURL as exc:
            raise ValueError(f"nightscout_api: {exc}") from None
    emergency = _optional_phone(document.get("emerg_contact"), region, "emerg_contact")
    return User(
        id=_text(document, "sub") or email,  # no sub: known by email until sign-in
        email=email,
        name=_text(document, "username"),
        nightscout_url=url,
        phone=_optional_phone(document.get("phone"), region, "phone"),
        emergency_contact=Contact(emergency) if emergency else None,
        extra_contacts=_extra_contacts(document.get("extra_contacts"), region),
    )


def _check_record(index: int, doc_id: str, document: Any, region: str, seen: dict[str, str]) -> ImportResult:
    label = f"record {index}" + (f" (id {doc_id})" if doc_id else "")
    if not isinstance(document, dict):
        return ImportResult(label, problem="not a JSON object")
    try:
        user = user_from_record(document, region)
    except ValueError as exc:
        return ImportResult(label, problem=str(exc))
    label = f"{user.email} ({label})"
    if user.email in seen:
        return ImportResult(label, problem=f"the same email as {seen[user.email]}; merge the two by hand")
    seen[user.email] = label
    notes = []
    if is_tutorial_era(user):
        notes.append("known by email until they sign in with Google")
    if not user.is_watchable:
        notes.append("not watched until a phone number and Nightscout address are set")
    return ImportResult(label, user=user, note="; ".join(notes))


def outside_countries(user: User, allowed_countries: frozenset[str]) -> str:
    """Why `user` has a number outside SCOUT_ALLOWED_COUNTRIES, if one is ("" when none, or
    when every country is allowed)."""
    if not allowed_countries:
        return ""
    for field, number in [("phone", user.phone)] + [("contact", c.phone) for c in user.contacts]:
        country = phonenumbers.region_code_for_number(phonenumbers.parse(number)) if number else ""
        if number and country not in allowed_countries:
            return (f"{field}: a number in {country or 'no country'}; this Scout calls and texts numbers in "
                    f"{', '.join(sorted(allowed_countries))} only")
    return ""


def import_users(store: Store, records: Sequence[tuple[str, Any]], region: str, dry_run: bool = False,
                 allowed_countries: frozenset[str] = frozenset(), progress: Callable[[int], None] | None = None,
                 batch_size: int = IMPORT_BATCH) -> list[ImportResult]:
    """Check every record and save the valid ones (unless `dry_run`), `batch_size` users per
    write (Store.save_users); `progress(n)` is told how many records are done. Running it
    twice is safe: a record already imported is saved again with the same values. If the
    store fails part way, the batches before are saved and the error is raised."""
    by_email, by_id = _stored_users(store)  # one read of the store, not two queries per record
    results, seen, pending = [], {}, []  # type: list[ImportResult], dict[str, str], list[User]
    for index, (doc_id, document) in enumerate(records, start=1):
        result = _check_record(index, doc_id, document, region, seen)
        user = result.user
        elsewhere = outside_countries(user, allowed_countries) if user is not None else ""
        if elsewhere:
            result = ImportResult(result.label, problem=elsewhere)
        elif user is not None:
            current = by_email.get(user.email)
            owner = by_id.get(user.id)
            if owner is not None and owner.email.lower() != user.email.lower():
                result = ImportResult(result.label, problem=f"its sub {user.id} belongs to user {owner.id}, who has "
                                                            "another email; their settings are kept")
            elif current is not None and current.id != user.id and not is_tutorial_era(current):
                result = ImportResult(result.label, problem=f"already signed in with Google as user {current.id}; "
                                                            "their current settings are kept")
            else:
                _remember(user, by_email, by_id)  # a later record of this file sees it, as it would in the store
                if not dry_run:
                    pending.append(user)
        results.append(result)
        if len(pending) >= batch_size:
            store.save_users(pending)
            pending = []
        if progress is not None and index < len(records):
            progress(index)
    if pending:
        store.save_users(pending)
    if progress is not None:
        progress(len(results))  # the last batch is saved too
    return results


def _stored_users(store: Store) -> tuple[dict[str, User], dict[str, User]]:
    """Every stored user by email and by id; where two share an email, the one who signed in
    with Google (as Store.find_user_by_email prefers)."""
    by_email: dict[str, User] = {}
    by_id: dict[str, User] = {}
    for user in store.list_users():
        _remember(user, by_email, by_id)
    return by_email, by_id


def _remember(user: User, by_email: dict[str, User], by_id: dict[str, User]) -> None:
    by_id[user.id] = user
    if user.email not in by_email or is_tutorial_era(by_email[user.email]):
        by_email[user.email] = user
