"""The device-side agent of the edge-AI fleet platform (no Django: it runs on the device)."""

__version__ = "0.1.0"
