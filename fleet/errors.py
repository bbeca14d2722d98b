"""Domain errors that services raise; the API turns them into its error body (fleet.api.errors)."""

from rest_framework import exceptions


class ApiError(exceptions.APIException):
    """A domain error raised by a service, with a machine-readable code and an HTTP status."""

    def __init__(self, code: str, message: str, *, status_code: int = 400, field: str | None = None):
        super().__init__(detail=message, code=code)
        self.status_code = status_code
        self.error_code = code
        self.field = field
