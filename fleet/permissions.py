"""Role checks for the REST API: viewers read, operators write, admins manage keys and accounts."""

from rest_framework.permissions import SAFE_METHODS, BasePermission

from fleet.models import Role, User


def operator_of(request) -> User | None:
    """The operator account behind a request, or None (anonymous or a device credential)."""
    user = getattr(request, "user", None)
    return user if isinstance(user, User) and user.is_active else None


class OperatorRolePermission(BasePermission):
    """Reads need the viewer role, writes the operator role; a view can ask for more.

    A view sets ``read_role`` / ``write_role`` to raise the bar (keys and accounts need admin).
    Device credentials never pass: they are not operator accounts.
    """

    message = "This action needs an operator account with a sufficient role."

    def has_permission(self, request, view) -> bool:
        user = operator_of(request)
        if user is None:
            return False
        if request.method in SAFE_METHODS:
            needed = getattr(view, "read_role", Role.VIEWER)
        else:
            needed = getattr(view, "write_role", Role.OPERATOR)
        return user.has_role(needed)


class AdminOnly(OperatorRolePermission):
    def has_permission(self, request, view) -> bool:
        user = operator_of(request)
        return user is not None and user.has_role(Role.ADMIN)
