"""Models of the policies app (filled in by its issue)."""
