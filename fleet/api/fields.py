"""Input fields that keep values the database cannot store out of the database (a 400, not a 500)."""

import datetime as dt

import django_filters
from django.core.exceptions import ValidationError
from rest_framework import serializers


def as_storable_utc(value: dt.datetime | None) -> dt.datetime | None:
    """Convert to UTC, refusing what PostgreSQL cannot store.

    Python accepts UTC offsets up to ±23:59 and years 1-9999; PostgreSQL refuses offsets beyond ±15:59
    ("time zone displacement out of range"), and converting year 1 or 9999 to UTC can leave Python's
    range. Normalising to UTC here removes the offset problem and turns the overflow into a clean error.
    """
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    try:
        return value.astimezone(dt.UTC)
    except OverflowError as exc:
        raise ValueError("The date is out of range.") from exc


class UtcDateTimeField(serializers.DateTimeField):
    def to_internal_value(self, value):
        parsed = super().to_internal_value(value)
        try:
            return as_storable_utc(parsed)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc), code="date_out_of_range") from exc


class _UtcIsoDateTimeFormField(django_filters.fields.IsoDateTimeField):
    def clean(self, value):
        parsed = super().clean(value)
        try:
            return as_storable_utc(parsed)
        except ValueError as exc:
            raise ValidationError(str(exc), code="date_out_of_range") from exc


class UtcIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = _UtcIsoDateTimeFormField


class NameRelatedField(serializers.SlugRelatedField):
    """A related object named by a slug (``group: "plant-a"``). DRF's field passes the value straight to
    a query; PostgreSQL refuses text with NUL bytes with an error instead of "no match", so such a name
    is refused here as the unknown name it is."""

    def to_internal_value(self, data):
        if isinstance(data, str) and "\x00" in data:
            self.fail("does_not_exist", slug_name=self.slug_field, value=data.replace("\x00", "\\x00"))
        return super().to_internal_value(data)


class KeyRelatedField(serializers.PrimaryKeyRelatedField):
    """A related object named by its text primary key (``device: "cam-1"``), refusing a key with a NUL
    byte as the unknown key it is (PostgreSQL would refuse the lookup with an error)."""

    def to_internal_value(self, data):
        if isinstance(data, str) and "\x00" in data:
            self.fail("does_not_exist", pk_value=data.replace("\x00", "\\x00"))
        return super().to_internal_value(data)


def _first_unstorable(value, path: str = "") -> str | None:
    """Where in a JSON value PostgreSQL's jsonb would refuse it: a NUL character in a string or a key
    (DRF's JSON parsing already refuses NaN and Infinity). None when all of it can be stored."""
    if isinstance(value, str):
        return (path or "(value)") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return where
            found = _first_unstorable(item, where)
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _first_unstorable(item, f"{path}[{index}]")
            if found:
                return found
    return None


class StorableJSONField(serializers.JSONField):
    """A JSON value stored in a jsonb column: refused with a 400 naming the place, rather than by the
    database, when it holds a NUL character."""

    default_error_messages = {"unstorable": "Cannot be stored: a NUL character at {where}."}

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        where = _first_unstorable(value)
        if where:
            self.fail("unstorable", where=where.replace("\x00", "\\x00"))
        return value
