"""Models of the ota app (filled in by its issue)."""
