from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from fleet.broker import broker_setup


class Command(BaseCommand):
    help = "Write the MQTT broker's certificates, CRL and platform client certificates, and render mosquitto.conf."

    def add_arguments(self, parser):
        parser.add_argument("--dir", type=Path, default=None, help="State folder (default: MQTT_TLS_DIR).")
        parser.add_argument("--server-name", action="append", default=None, help="Broker host name(s) or IPs.")
        parser.add_argument("--device-port", type=int, default=8883)
        parser.add_argument("--platform-port", type=int, default=8884)
        parser.add_argument("--bind", default="0.0.0.0")  # noqa: S104 - devices must reach the broker
        parser.add_argument("--platform-bind", default="127.0.0.1")
        parser.add_argument("--log-dest", default="stderr")

    def handle(self, *args, **opts):
        conf = broker_setup(
            state_dir=(opts["dir"] or settings.MQTT_TLS_DIR).resolve(),
            server_names=opts["server_name"] or ["localhost", "127.0.0.1"],
            device_port=opts["device_port"],
            platform_port=opts["platform_port"],
            bind_address=opts["bind"],
            platform_bind_address=opts["platform_bind"],
            log_dest=opts["log_dest"],
        )
        self.stdout.write(str(conf))
