from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed


class OperatorTokenAuthentication(TokenAuthentication):
    """DRF's ``Authorization: Token <key>``, refusing keys the database cannot look up (NUL bytes) with
    a 401 instead of a database error."""

    def authenticate_credentials(self, key):
        if "\x00" in key:
            raise AuthenticationFailed("Invalid token.")
        return super().authenticate_credentials(key)
