"""One error shape for every API failure: ``{"error": {"code": ..., "message": ..., "fields": {...}}}``.

Clients (and the device agent) branch on ``code`` and on the per-field codes, never on message text.
"""

import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from fleet.errors import ApiError


def _field_errors(detail) -> dict:
    """Flatten DRF's nested ValidationError detail into {"field": [{"code":..., "message":...}]}."""
    if isinstance(detail, dict):
        out = {}
        for key, value in detail.items():
            nested = _field_errors(value)
            if isinstance(value, dict):
                for sub_key, sub_value in nested.items():
                    out[f"{key}.{sub_key}"] = sub_value
            else:
                out[key] = nested.get("", [])
        return out
    if isinstance(detail, list):
        items = []
        nested_out = {}
        for index, value in enumerate(detail):
            if isinstance(value, dict | list) and not isinstance(value, exceptions.ErrorDetail):
                for sub_key, sub_value in _field_errors(value).items():
                    nested_out[f"{index}.{sub_key}" if sub_key else str(index)] = sub_value
            else:
                items.append({"code": getattr(value, "code", "invalid"), "message": str(value)})
        if nested_out:
            return nested_out | ({"": items} if items else {})
        return {"": items}
    return {"": [{"code": getattr(detail, "code", "invalid"), "message": str(detail)}]}


logger = logging.getLogger(__name__)


def api_exception_handler(exc, context):
    if isinstance(exc, RequestDataTooBig):
        # Raised by Django while DRF reads the body; left alone it becomes Django's HTML 400.
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        body = {"error": {"code": "request_too_large", "message": f"The request body is larger than {limit} bytes."}}
        return Response(body, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, SuspiciousOperation):  # too many fields or files in a form, a malformed multipart
        body = {"error": {"code": "malformed_request", "message": str(exc) or "The request cannot be read."}}
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, DataError):
        # A value the database refused (NUL in text, a number out of range, ...) that input validation
        # let through: the client's input, so a 400, but logged, because the validation should have
        # caught it (tests/fleet/test_input_hardening.py lists the ones found so far).
        logger.warning("database refused a request value in %s: %s", context.get("view"), exc)
        body = {"error": {"code": "invalid_value", "message": "A value in the request cannot be stored or compared."}}
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, ApiError):
        body = {"error": {"code": exc.error_code, "message": str(exc.detail)}}
        if exc.field:
            body["error"]["fields"] = {exc.field: [{"code": exc.error_code, "message": str(exc.detail)}]}
        return Response(body, status=exc.status_code)
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(detail=exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = _field_errors(exc.detail)
        non_field = fields.pop("", None) or fields.pop("non_field_errors", None)
        message = non_field[0]["message"] if non_field else "The request has invalid fields."
        body = {"error": {"code": "invalid", "message": message, "fields": fields}}
        if non_field:
            body["error"]["code"] = non_field[0]["code"]
    else:
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else "error"
        body = {"error": {"code": code, "message": str(exc.detail)}}
    if response.status_code == status.HTTP_401_UNAUTHORIZED and "WWW-Authenticate" not in response:
        response["WWW-Authenticate"] = "Token"
    response.data = body
    return response
