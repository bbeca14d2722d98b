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
