"""Console forms of the device registry: they check the input and shape it for the services."""

import datetime as dt
import re

from django import forms
from django.utils import timezone

from devices.models import DeviceGroup, DeviceStatus

_TAG = re.compile(r"^[-a-zA-Z0-9_]{1,64}$")


class TagsField(forms.CharField):
    """Tags typed as one line, separated by commas or spaces."""

    def to_python(self, value) -> list[str]:
        text = super().to_python(value) or ""
        names = [part for part in re.split(r"[,\s]+", text) if part]
        bad = [name for name in names if not _TAG.match(name)]
        if bad:
            raise forms.ValidationError(
                f"Tags are letters, digits, '-' and '_' (at most 64): {', '.join(bad[:3])} is not."
            )
        if len(names) > 100:
            raise forms.ValidationError("At most 100 tags.")
        return sorted(set(names))


def group_choice(*, empty_label: str) -> forms.ModelChoiceField:
    return forms.ModelChoiceField(
        queryset=DeviceGroup.objects.all(), to_field_name="name", required=False, empty_label=empty_label
    )


class EnrollmentTokenForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="What the token is for, e.g. the production batch.")
    group = group_choice(empty_label="(no group)")
    tags = TagsField(required=False, help_text="Given to every device enrolled with this token.")
    max_uses = forms.IntegerField(min_value=1, max_value=10_000_000, initial=1)
    expires_in_days = forms.IntegerField(min_value=1, max_value=3650, required=False, initial=30)
    auto_accept = forms.BooleanField(
        required=False, initial=True, help_text="Unchecked: devices wait in Approvals until an operator approves."
    )

    def expires_at(self) -> dt.datetime | None:
        days = self.cleaned_data.get("expires_in_days")
        return timezone.now() + dt.timedelta(days=days) if days else None


class DeviceEditForm(forms.Form):
    name = forms.CharField(max_length=200, required=False)
    group = group_choice(empty_label="(no group)")
    tags = TagsField(required=False)


class GroupCreateForm(forms.Form):
    name = forms.SlugField(max_length=100)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))


class GroupEditForm(forms.Form):
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))


class BulkAction:
    ADD_TAG = "add_tag"
    REMOVE_TAG = "remove_tag"
    SET_GROUP = "set_group"
    REVOKE = "revoke"
    CHOICES = [(ADD_TAG, "Add tag"), (REMOVE_TAG, "Remove tag"), (SET_GROUP, "Move to group"), (REVOKE, "Revoke")]


class DeviceBulkForm(forms.Form):
    action = forms.ChoiceField(choices=BulkAction.CHOICES)
    device_ids = forms.MultipleChoiceField(required=True)  # choices are the posted ids; the service checks them
    tag = forms.SlugField(max_length=64, required=False)
    group = group_choice(empty_label="(no group)")

    MAX_DEVICES = 500  # a bulk action acts on selected rows of the list, a page at a time

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        posted = self.data.getlist("device_ids") if hasattr(self.data, "getlist") else []
        self.fields["device_ids"].choices = [(device_id, device_id) for device_id in posted]

    def clean_device_ids(self):
        ids = self.cleaned_data["device_ids"]
        if len(ids) > self.MAX_DEVICES:
            raise forms.ValidationError(f"At most {self.MAX_DEVICES} devices at once.")
        return ids

    def clean(self):
        data = super().clean()
        action = data.get("action")
        if action in (BulkAction.ADD_TAG, BulkAction.REMOVE_TAG) and not data.get("tag"):
            self.add_error("tag", "Name the tag.")
        return data


SEEN_WINDOWS = {
    "5m": dt.timedelta(minutes=5),
    "1h": dt.timedelta(hours=1),
    "24h": dt.timedelta(hours=24),
    "7d": dt.timedelta(days=7),
}
SEEN_CHOICES = [
    ("", "any time"),
    ("5m", "in the last 5 minutes"),
    ("1h", "in the last hour"),
    ("24h", "in the last 24 hours"),
    ("7d", "in the last 7 days"),
    ("not-24h", "not in the last 24 hours"),
    ("not-7d", "not in the last 7 days"),
]
STATUS_CHOICES = [("", "any status"), *DeviceStatus.choices]


def device_filter_data(params) -> dict:
    """The console's list query as the DeviceFilterSet's data (the same FilterSet the API uses).

    The console offers "seen in the last ..." instead of raw timestamps; it becomes last_seen_after or
    last_seen_before here.
    """
    data = {key: params.get(key) for key in params if key not in ("seen", "after", "before") and params.get(key)}
    seen = params.get("seen", "")
    now = timezone.now()
    if seen in SEEN_WINDOWS:
        data["last_seen_after"] = (now - SEEN_WINDOWS[seen]).isoformat()
    elif seen.startswith("not-") and seen[4:] in SEEN_WINDOWS:
        data["last_seen_before"] = (now - SEEN_WINDOWS[seen[4:]]).isoformat()
    return data
