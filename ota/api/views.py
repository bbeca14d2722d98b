from django.db import transaction
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from fleet.api.pagination import IdCursorPagination
from fleet.errors import ApiError
from fleet.models import Role
from fleet.services import Actor
from ota import rollouts, selectors, services
from ota.api import serializers as s
from ota.models import Rollout, RolloutDevice, SigningKey


def _actor(request) -> Actor:
    return Actor.of_user(request.user)


class ArtifactViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Model releases: upload (multipart) signs a release into the image repository; revoke withdraws it."""

    serializer_class = s.ArtifactSerializer
    pagination_class = IdCursorPagination
    parser_classes = [MultiPartParser, FormParser, JSONParser]
    filterset_fields = ["name", "runtime"]

    def get_queryset(self):
        return selectors.artifact_list()

    @extend_schema(request={"multipart/form-data": s.ArtifactUploadSerializer}, responses={201: s.ArtifactSerializer})
    def create(self, request):
        payload = s.ArtifactUploadSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        artifact = services.artifact_upload(actor=_actor(request), **payload.validated_data)
        return Response(s.ArtifactSerializer(artifact).data, status=status.HTTP_201_CREATED)


class ArtifactRevokeView(APIView):
    write_role = Role.ADMIN

    @extend_schema(request=s.RevokeSerializer, responses=s.ArtifactSerializer)
    def post(self, request, pk: int):
        payload = s.RevokeSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        artifact = get_object_or_404(selectors.artifact_list(), pk=pk)
        artifact = services.artifact_revoke(
            actor=_actor(request), artifact=artifact, reason=payload.validated_data["reason"]
        )
        return Response(s.ArtifactSerializer(artifact).data)


class RolloutViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = s.RolloutSerializer
    pagination_class = IdCursorPagination
    filterset_fields = ["state"]

    def get_queryset(self):
        return selectors.rollout_list()

    @extend_schema(request=s.RolloutInputSerializer, responses={201: s.RolloutSerializer})
    def create(self, request):
        payload = s.RolloutInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        rollout = rollouts.rollout_create(actor=_actor(request), **payload.validated_data)
        return Response(s.RolloutSerializer(rollout).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.DryRunInputSerializer, responses=s.DryRunOutputSerializer)
    @action(detail=False, methods=["post"], url_path="dry-run")
    def dry_run(self, request):
        payload = s.DryRunInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        result = rollouts.rollout_dry_run(**payload.validated_data)
        return Response(s.DryRunOutputSerializer(result).data)

    @extend_schema(responses=s.RolloutDeviceSerializer(many=True))
    @action(detail=True, methods=["get"])
    def devices(self, request, pk=None):
        rollout = self.get_object()
        page = self.paginate_queryset(RolloutDevice.objects.filter(rollout=rollout).order_by("id"))
        return self.get_paginated_response(s.RolloutDeviceSerializer(page, many=True).data)


class _RolloutActionView(APIView):
    """POST /rollouts/{id}/{action}/: one workflow action, answering with the rollout after it."""

    def act(self, request, rollout: Rollout) -> Rollout:
        raise NotImplementedError

    @extend_schema(request=None, responses=s.RolloutSerializer)
    def post(self, request, pk: int):
        rollout = get_object_or_404(Rollout, pk=pk)
        with transaction.atomic():
            self.act(request, rollout)
        return Response(s.RolloutSerializer(selectors.rollout_list().get(pk=pk)).data)


class RolloutStartView(_RolloutActionView):
    def act(self, request, rollout):
        return rollouts.rollout_start(actor=_actor(request), rollout=rollout)


class RolloutPauseView(_RolloutActionView):
    def act(self, request, rollout):
        return rollouts.rollout_pause(actor=_actor(request), rollout=rollout)


class RolloutResumeView(_RolloutActionView):
    def act(self, request, rollout):
        return rollouts.rollout_resume(actor=_actor(request), rollout=rollout)


class RolloutAbortView(_RolloutActionView):
    def act(self, request, rollout):
        return rollouts.rollout_abort(actor=_actor(request), rollout=rollout)


class RolloutAdvanceView(_RolloutActionView):
    def act(self, request, rollout):
        return rollouts.rollout_advance(actor=_actor(request), rollout=rollout)


class RolloutRollbackView(_RolloutActionView):
    @extend_schema(request=s.RollbackInputSerializer, responses=s.RolloutSerializer)
    def post(self, request, pk: int):
        return super().post(request, pk)

    def act(self, request, rollout):
        payload = s.RollbackInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        return rollouts.rollout_rollback(
            actor=_actor(request), rollout=rollout, reason=payload.validated_data["reason"]
        )


class SigningKeyListView(APIView):
    read_role = Role.ADMIN
    write_role = Role.ADMIN

    @extend_schema(responses=s.SigningKeyOutputSerializer(many=True))
    def get(self, request):
        rows = SigningKey.objects.order_by("repository", "role", "id")
        return Response(s.SigningKeyOutputSerializer(rows, many=True).data)


class KeyRotateView(APIView):
    """Admin only. Works when the current root keys are online; with offline root keys, use
    ``manage.py ota_keys rotate --root-key FILE ...`` (the API refuses with root_threshold_not_met)."""

    write_role = Role.ADMIN

    @extend_schema(request=s.KeyRotateInputSerializer, responses=s.SigningKeyOutputSerializer(many=True))
    def post(self, request):
        payload = s.KeyRotateInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        if data["role"] == "root" and not all(
            row.online for row in SigningKey.objects.filter(repository=data["repository"], role="root", active=True)
        ):
            raise ApiError(
                "root_keys_offline", "Root keys are offline: rotate them with the ota_keys command.", status_code=409
            )
        services.key_rotate(actor=_actor(request), repository_name=data["repository"], role=data["role"])
        rows = SigningKey.objects.filter(repository=data["repository"], role=data["role"]).order_by("id")
        return Response(s.SigningKeyOutputSerializer(rows, many=True).data)


class UpdateTrustView(APIView):
    """The trusted roots and repository URLs (as in the enrollment response), for operators and tools."""

    @extend_schema(responses=s.UpdateTrustSerializer)
    def get(self, request):
        return Response(s.UpdateTrustSerializer(selectors.update_trust_bootstrap()).data)
