"""Console pages of telemetry: ingest counters and dead letters. Reads only (telemetry.selectors)."""

import datetime as dt

from django.shortcuts import get_object_or_404
from django.utils import timezone
from django.views.decorators.http import require_GET

from fleet.console import keyset_page, render_page, viewer_required
from telemetry import selectors
from telemetry.models import DeadLetter, Heartbeat

INGEST_POLL_SECONDS = 5
PAYLOAD_SHOWN_BYTES = 16 * 1024


def dead_letter_reasons(counters: dict[str, float]) -> list[tuple[str, int]]:
    """Dead letters per reason, from the worker's counters (``dead_letters{reason="..."}``): no scan of the
    dead-letter table."""
    reasons = []
    for name, value in counters.items():
        if name.startswith("dead_letters{") and '"' in name:
            reasons.append((name.split('"')[1], int(value)))
    return sorted(reasons, key=lambda item: (-item[1], item[0]))


@viewer_required
@require_GET
def ingest(request):
    """Ingest counters (live: htmx polls the counters card) and the dead letters, newest first."""
    counters = selectors.ingest_counters()
    context = {
        "counters": sorted(counters.items()),
        "messages_in": int(counters.get("messages_in", 0)),
        "reasons": dead_letter_reasons(counters),
        "unwritten": selectors.acknowledged_unwritten(counters),
        "poll_seconds": INGEST_POLL_SECONDS,
    }
    if request.GET.get("part") != "counters":
        letters = selectors.dead_letters(
            reason=request.GET.get("reason") or None, device_id=request.GET.get("device") or None
        )
        context |= {"page": keyset_page(letters, request.GET, size=50, descending=True), "params": request.GET}
        return render_page(request, "telemetry/ingest.html", "telemetry/_dead_letters.html", context)
    return render_page(request, "telemetry/ingest.html", "telemetry/_ingest_counters.html", context)


@viewer_required
@require_GET
def dead_letter(request, letter_id: int):
    letter = get_object_or_404(DeadLetter, pk=letter_id)
    payload = bytes(letter.payload)
    context = {
        "letter": letter,
        "payload_text": payload[:PAYLOAD_SHOWN_BYTES].decode("utf-8", errors="replace"),
        "payload_size": len(payload),
        "payload_cut": len(payload) > PAYLOAD_SHOWN_BYTES,
    }
    return render_page(request, "telemetry/dead_letter.html", None, context)


def ingest_summary(*, now: dt.datetime | None = None) -> dict:
    """The dashboard's ingest card: totals from the workers' counters, and dead letters of the last hour
    (a range on the received_at index, so bounded by the last hour's dead letters, not the table)."""
    now = now or timezone.now()
    counters = selectors.ingest_counters()
    return {
        "messages_in": int(counters.get("messages_in", 0)),
        "dead_letters": sum(n for _reason, n in dead_letter_reasons(counters)),
        "dead_letters_last_hour": DeadLetter.objects.filter(received_at__gte=now - dt.timedelta(hours=1)).count(),
        "unwritten": selectors.acknowledged_unwritten(counters),
    }


def heartbeat_series(*, device_id: str, start: dt.datetime, end: dt.datetime, step: dt.timedelta) -> dict:
    """The device's heartbeats over [start, end): the newest one, and per-step series for the charts
    (mean cpu/mem/disk/temperature, highest buffer depth, dropped messages). One range read on the
    (device_id, ts) index; steps are made in Python so the same code runs on SQLite and PostgreSQL."""
    latest = Heartbeat.objects.filter(device_id=device_id).order_by("-ts").first()
    rows = (
        Heartbeat.objects.filter(device_id=device_id, ts__gte=start, ts__lt=end)
        .order_by()
        .values_list("ts", "cpu_pct", "mem_pct", "disk_pct", "temp_c", "buffer_depth", "dropped")
    )
    step_s = int(step.total_seconds())
    first = int(start.timestamp()) // step_s * step_s
    slots: dict[int, list] = {}
    for ts, cpu, mem, disk, temp, depth, dropped in rows:
        acc = slots.setdefault(int(ts.timestamp()) // step_s * step_s, [0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0])
        acc[0] += 1
        acc[1] += cpu
        acc[2] += mem
        acc[3] += disk
        if temp is not None:
            acc[4] += temp
            acc[7] += 1
        acc[5] = max(acc[5], depth)
        acc[6] = max(acc[6], dropped)
    series = {name: [] for name in ("t", "cpu", "mem", "disk", "temp", "buffer_depth", "dropped")}
    for slot in range(first, int(end.timestamp()), step_s):
        acc = slots.get(slot)
        series["t"].append(slot)
        if acc is None:
            for name in ("cpu", "mem", "disk", "temp", "buffer_depth", "dropped"):
                series[name].append(None)
            continue
        n = acc[0]
        series["cpu"].append(round(acc[1] / n, 1))
        series["mem"].append(round(acc[2] / n, 1))
        series["disk"].append(round(acc[3] / n, 1))
        series["temp"].append(round(acc[4] / acc[7], 1) if acc[7] else None)
        series["buffer_depth"].append(acc[5])
        series["dropped"].append(acc[6])
    return {"latest": latest, "series": series, "count": sum(acc[0] for acc in slots.values())}
