import django_filters
from rest_framework import mixins, serializers, viewsets
from rest_framework.response import Response
from rest_framework.views import APIView

from fleet.models import AuditEvent
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
