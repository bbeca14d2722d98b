import django_filters
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from fleet import services
from fleet.models import AuditEvent, Role, User
from fleet.permissions import operator_of


class AuditEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = ["id", "created_at", "actor", "action", "object_type", "object_id", "before", "after"]
        read_only_fields = fields


class AuditEventFilterSet(django_filters.FilterSet):
    class Meta:
        model = AuditEvent
        fields = ["action", "object_type", "object_id", "actor"]


class AuditEventViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    # Cursor pagination on pk gives newest-last; the audit log is read newest-first.
    ordering = "-pk"
    queryset = AuditEvent.objects.all()
    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilterSet


class MeSerializer(serializers.Serializer):
    username = serializers.CharField()
    role = serializers.CharField()


class MeView(APIView):
    serializer_class = MeSerializer

    def get(self, request):
        user = operator_of(request)
        return Response(MeSerializer({"username": user.username, "role": user.role}).data)


# --- operator accounts (admin only) ----------------------------------------------------------------

USERNAME_PATTERN = r"[\w.@+-]{1,150}"


class OperatorSerializer(serializers.ModelSerializer):
    class Meta:
        model = User
        fields = ["id", "username", "email", "role", "is_active", "date_joined", "last_login"]
        read_only_fields = fields


class OperatorCreateSerializer(serializers.Serializer):
    username = serializers.RegexField(rf"^{USERNAME_PATTERN}$", max_length=150)
    email = serializers.EmailField(required=False, allow_blank=True, default="")
    role = serializers.ChoiceField(choices=Role.choices)
    password = serializers.CharField(
        required=False,
        allow_blank=True,
        write_only=True,
        max_length=128,
        style={"input_type": "password"},
        help_text="Optional: without one the account can only use its API token.",
    )


class OperatorCreatedSerializer(OperatorSerializer):
    api_token = serializers.CharField(help_text="The account's API token, shown this once only.")

    class Meta(OperatorSerializer.Meta):
        fields = [*OperatorSerializer.Meta.fields, "api_token"]
        read_only_fields = fields


class OperatorRoleSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


class OperatorFilterSet(django_filters.FilterSet):
    class Meta:
        model = User
        fields = ["role", "is_active"]


class OperatorViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Operator accounts: list, create (returns the API token once), change role, deactivate. Admins only."""

    read_role = Role.ADMIN
    write_role = Role.ADMIN
    queryset = User.objects.all()
    serializer_class = OperatorSerializer
    filterset_class = OperatorFilterSet
    lookup_field = "username"
    lookup_value_regex = USERNAME_PATTERN
    http_method_names = ["get", "post", "patch", "head", "options"]

    def _actor(self) -> services.Actor:
        return services.Actor.of_user(self.request.user)

    @extend_schema(request=OperatorCreateSerializer, responses={201: OperatorCreatedSerializer})
    def create(self, request):
        payload = OperatorCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        creds = services.operator_create(
            actor=self._actor(),
            username=data["username"],
            role=data["role"],
            email=data["email"],
            password=data.get("password") or None,
        )
        body = OperatorSerializer(creds.user).data | {"api_token": creds.api_token}
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=OperatorRoleSerializer, responses=OperatorSerializer)
    def partial_update(self, request, username=None):
        user = self.get_object()
        payload = OperatorRoleSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        user = services.operator_set_role(actor=self._actor(), user=user, role=payload.validated_data["role"])
        return Response(OperatorSerializer(user).data)

    @extend_schema(request=None, responses=OperatorSerializer)
    @action(detail=True, methods=["post"])
    def deactivate(self, request, username=None):
        user = services.operator_deactivate(actor=self._actor(), user=self.get_object())
        return Response(OperatorSerializer(user).data)
