"""Console forms of updates: shape the operator's input for ota.rollouts (which validates it again)."""

import re

from django import forms

from devices.forms import TagsField
from devices.models import DeviceGroup
from ota.models import Artifact, OnFailure

# The gates an operator can switch on from the console, with the threshold the form suggests.
GATE_FIELDS = {
    "install_failure_rate": ("Install failure rate", 0.05),
    "offline_rate": ("Offline rate above control", 0.05),
    "error_rate": ("Inference error rate above control", 0.02),
    "p95_latency_regression": ("p95 latency regression (ratio)", 0.2),
    "confidence_shift": ("Confidence shift", 0.05),
    "cloud_escalation_rate": ("Cloud escalation rate above control", 0.05),
}


class RolloutForm(forms.Form):
    name = forms.CharField(max_length=200)
    artifact = forms.ModelChoiceField(queryset=Artifact.objects.filter(revoked_at__isnull=True), label="Release")
    groups = forms.ModelMultipleChoiceField(
        queryset=DeviceGroup.objects.all(), to_field_name="name", required=False, help_text="Empty: every group."
    )
    tags = TagsField(required=False, help_text="Devices with any of these tags; empty: any.")
    hardware_classes = TagsField(required=False, help_text="Empty: every class the release supports.")
    shares = forms.CharField(
        initial="1, 10, 50, 100", help_text="Cumulative share of the targets per stage, in percent."
    )
    soak_minutes = forms.IntegerField(min_value=0, max_value=7 * 24 * 60, initial=30, help_text="Per stage.")
    min_samples = forms.IntegerField(min_value=1, max_value=10_000_000, initial=50, help_text="Per gate.")
    on_failure = forms.ChoiceField(choices=OnFailure.choices, initial=OnFailure.PAUSE)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name, (label, default) in GATE_FIELDS.items():
            self.fields[f"gate_{name}"] = forms.FloatField(
                label=label, required=False, min_value=0, initial=default, help_text="Empty: no gate."
            )

    def clean_shares(self) -> list[float]:
        parts = [p for p in re.split(r"[,\s]+", self.cleaned_data["shares"]) if p]
        try:
            shares = [float(p.rstrip("%")) / 100 for p in parts]
        except ValueError as exc:
            raise forms.ValidationError("Shares are numbers, e.g. 1, 10, 50, 100.") from exc
        if not shares:
            raise forms.ValidationError("At least one stage.")
        return shares

    def stages(self) -> list[dict]:
        data = self.cleaned_data
        gates = {
            name: {"threshold": data[f"gate_{name}"], "min_samples": data["min_samples"]}
            for name in GATE_FIELDS
            if data.get(f"gate_{name}") is not None
        }
        return [{"share": share, "soak_seconds": data["soak_minutes"] * 60, "gates": gates} for share in data["shares"]]

    def selector(self) -> dict:
        data = self.cleaned_data
        return {
            "groups": [group.name for group in data["groups"]],
            "tags": data["tags"],
            "hardware_classes": data["hardware_classes"],
        }
