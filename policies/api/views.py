from django.db import transaction
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.response import Response
from rest_framework.views import APIView

from devices.authentication import device_of
from devices.models import Device
from devices.permissions import IsDevice
from fleet.services import Actor
from fleet_agent.policy.decide import window_starts
from policies import notify, selectors, services, tasks
from policies.api import serializers as s
from policies.models import Policy, PublishedPolicy


def _actor(request) -> Actor:
    return Actor.of_user(request.user)


class PolicyViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    """Fleet, group and device policies: operators write, viewers read."""

    queryset = Policy.objects.select_related("group", "updated_by")
    serializer_class = s.PolicySerializer
    filterset_fields = ["scope", "group__name", "device"]

    @extend_schema(request=s.PolicyCreateSerializer, responses={201: s.PolicySerializer})
    def create(self, request):
        payload = s.PolicyCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        policy = services.policy_create(actor=_actor(request), **payload.validated_data)
        return Response(s.PolicySerializer(policy).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.PolicyUpdateSerializer, responses=s.PolicySerializer)
    def update(self, request, pk=None):
        payload = s.PolicyUpdateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        policy = services.policy_update(
            actor=_actor(request), policy=self.get_object(), document=payload.validated_data["document"]
        )
        return Response(s.PolicySerializer(policy).data)

    partial_update = update

    def perform_destroy(self, instance):
        services.policy_delete(actor=_actor(self.request), policy=instance)


class EffectivePolicyView(APIView):
    """The merged policy of one device, the scope every field came from, and its budgets now."""

    @extend_schema(responses=s.EffectivePolicySerializer)
    def get(self, request, device_id: str):
        device = get_object_or_404(Device, pk=device_id)
        effective = selectors.effective_policy(device)
        published = PublishedPolicy.objects.filter(device=device).values_list("version", flat=True).first()
        body = {
            "device_id": device.pk,
            "policy": effective.document,
            "sources": effective.sources,
            "published_version": published,
            "budgets": selectors.budget_status(device, effective.document, timezone.now()),
        }
        return Response(s.EffectivePolicySerializer(body).data)


class DeviceUsageView(APIView):
    """A device's LLM usage in the current window: cloud usage by model, decisions by reason, budgets."""

    @extend_schema(
        parameters=[OpenApiParameter("window", str, enum=["minute", "hour", "day", "month"])],
        responses=s.UsageOutputSerializer,
    )
    def get(self, request, device_id: str):
        query = s.UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        device = get_object_or_404(Device, pk=device_id)
        window = query.validated_data["window"]
        now = timezone.now()
        effective = selectors.effective_policy(device)
        body = selectors.usage_summary(since=window_starts(now)[window], device=device) | {
            "device_id": device.pk,
            "window": window,
            "budgets": selectors.budget_status(device, effective.document, now),
        }
        return Response(body)


class UsageView(APIView):
    """Fleet-wide (or one group's) LLM usage in the current window, by model and by decision reason."""

    @extend_schema(
        parameters=[
            OpenApiParameter("window", str, enum=["minute", "hour", "day", "month"]),
            OpenApiParameter("group", str),
        ],
        responses=s.UsageOutputSerializer,
    )
    def get(self, request):
        query = s.UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        window = query.validated_data["window"]
        since = window_starts(timezone.now())[window]
        body = selectors.usage_summary(since=since, group_name=query.validated_data.get("group"))
        return Response(body | {"window": window, "group": query.validated_data.get("group")})


class DevicePolicyView(APIView):
    """The calling device's signed policy envelope, the same bytes as the retained MQTT message: for a
    device that has not received it over MQTT (yet); it verifies it the same way."""

    permission_classes = [IsDevice]

    @extend_schema(responses={200: {"type": "object"}})
    def get(self, request):
        device = device_of(request)
        # Signed on demand if the device's effective policy changed since the last publish (or was never
        # published, e.g. just after enrollment); the retained MQTT message is then brought up to date too.
        if notify.sign_device_policies([device.pk]):
            transaction.on_commit(lambda: tasks.republish_stored_policies.delay([device.pk]))
        envelope = PublishedPolicy.objects.values_list("envelope", flat=True).get(device=device)
        return HttpResponse(bytes(envelope), content_type="application/json")
