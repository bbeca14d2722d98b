import logging

from celery import shared_task
from django.conf import settings

from fleet.broker import BrokerCaMismatch, write_crl

log = logging.getLogger(__name__)


@shared_task(name="devices.crl_refresh", autoretry_for=(OSError,), retry_backoff=True, max_retries=5)
def crl_refresh() -> None:
    """Rewrite the broker's revocation list: after each revocation, and periodically so that it never
    reaches its nextUpdate (Mosquitto refuses every client once the CRL has expired). The broker re-reads
    it on SIGHUP (runplatform sends one when the file changes; the compose stack every 5 minutes)."""
    if not settings.MQTT_TLS_DIR.is_dir():
        return
    try:
        write_crl(settings.MQTT_TLS_DIR)
    except BrokerCaMismatch as exc:
        # Retrying cannot help; an operator must re-run broker_setup. Say so loudly.
        log.error("broker CRL not refreshed: %s", exc)
