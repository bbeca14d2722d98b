"""Wire contracts shared by the agent and the platform, so both sides agree by construction.

See docs/protocol.md for the prose version of everything here.
"""

import re

# A device id is the certificate's CN, the MQTT client id and username, and the key of every record.
DEVICE_ID_PATTERN = r"[a-z0-9][a-z0-9-]{2,62}"
DEVICE_ID_RE = re.compile(rf"^{DEVICE_ID_PATTERN}$")

# Schema version of every MQTT message body.
PROTOCOL_VERSION = 1


def is_valid_device_id(value: str) -> bool:
    return isinstance(value, str) and DEVICE_ID_RE.fullmatch(value) is not None


def device_topic(device_id: str, leaf: str) -> str:
    """`devices/{id}/{leaf}`, e.g. device_topic("cam-1", "telemetry")."""
    return f"devices/{device_id}/{leaf}"
