from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle
from rest_framework.views import APIView

from devices import authority, selectors, services
from devices.api import serializers as s
from devices.authentication import device_of
from devices.filters import DeviceFilterSet
from devices.models import DeviceCertificate, DeviceGroup, DeviceStatus, EnrollmentToken
from devices.permissions import IsDevice
from fleet.api.pagination import IdCursorPagination
from fleet.services import Actor
from fleet_agent.protocol import DEVICE_ID_PATTERN
from ota.selectors import update_trust_bootstrap
from policies.signing import policy_public_key_pem


def _actor(request) -> Actor:
    return Actor.of_user(request.user)


class DeviceGroupViewSet(viewsets.ModelViewSet):
    serializer_class = s.DeviceGroupSerializer
    queryset = DeviceGroup.objects.all()
    lookup_field = "name"
    lookup_value_regex = r"[-a-zA-Z0-9_]+"  # slugs; anything else is a 404 from the URL resolver
    pagination_class = IdCursorPagination

    def perform_create(self, serializer):
        serializer.instance = services.group_create(actor=_actor(self.request), **serializer.validated_data)

    def perform_update(self, serializer):
        serializer.instance = services.group_update(
            actor=_actor(self.request),
            group=serializer.instance,
            description=serializer.validated_data.get("description", serializer.instance.description),
        )

    def perform_destroy(self, instance):
        services.group_delete(actor=_actor(self.request), group=instance)


class DeviceViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Devices: list (cursor-paginated, filterable), read, change name/group/tags, bulk changes,
    approve, revoke."""

    filterset_class = DeviceFilterSet
    http_method_names = ["get", "patch", "post", "head", "options"]
    lookup_value_regex = DEVICE_ID_PATTERN  # anything that cannot be a device id is a 404

    def get_queryset(self):
        return selectors.device_detail() if self.action == "retrieve" else selectors.device_list()

    def get_serializer_class(self):
        return s.DeviceDetailSerializer if self.action == "retrieve" else s.DeviceSerializer

    def paginate_queryset(self, queryset):
        page = super().paginate_queryset(queryset)
        return selectors.with_tag_names(page) if page is not None else None

    @extend_schema(request=s.DeviceUpdateSerializer, responses=s.DeviceDetailSerializer)
    def partial_update(self, request, pk=None):
        device = self.get_object()
        payload = s.DeviceUpdateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        services.device_update(
            actor=_actor(request),
            device=device,
            name=data.get("name"),
            group=data.get("group", False),
            tags=data.get("tags"),
        )
        return Response(s.DeviceDetailSerializer(selectors.device_detail().get(pk=device.pk)).data)

    @extend_schema(request=s.DeviceBulkUpdateSerializer, responses={200: {"type": "object"}})
    @action(detail=False, methods=["post"])
    def bulk(self, request):
        payload = s.DeviceBulkUpdateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        count = services.devices_bulk_update(
            actor=_actor(request),
            device_ids=data["device_ids"],
            add_tags=data.get("add_tags"),
            remove_tags=data.get("remove_tags"),
            group=data.get("group", False),
        )
        return Response({"updated": count})

    @extend_schema(request=None, responses=s.DeviceDetailSerializer)
    @action(detail=True, methods=["post"])
    def approve(self, request, pk=None):
        device = services.device_approve(actor=_actor(request), device=self.get_object())
        return Response(s.DeviceDetailSerializer(selectors.device_detail().get(pk=device.pk)).data)

    @extend_schema(request=s.DeviceRevokeSerializer, responses=s.DeviceDetailSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        payload = s.DeviceRevokeSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        device = services.device_revoke(
            actor=_actor(request), device=self.get_object(), reason=payload.validated_data["reason"]
        )
        return Response(s.DeviceDetailSerializer(selectors.device_detail().get(pk=device.pk)).data)


class EnrollmentTokenViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = EnrollmentToken.objects.select_related("group", "created_by").prefetch_related("tags")
    serializer_class = s.EnrollmentTokenSerializer
    lookup_value_regex = r"[0-9]{1,18}"  # fits a bigint

    @extend_schema(request=s.EnrollmentTokenCreateSerializer, responses={201: s.EnrollmentTokenCreatedSerializer})
    def create(self, request):
        payload = s.EnrollmentTokenCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        issued = services.enrollment_token_create(actor=_actor(request), **payload.validated_data)
        body = s.EnrollmentTokenSerializer(issued.token).data | {"token": issued.secret}
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=s.EnrollmentTokenSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        token = services.enrollment_token_revoke(actor=_actor(request), token=self.get_object())
        return Response(s.EnrollmentTokenSerializer(token).data)


class EnrollThrottle(AnonRateThrottle):
    scope = "enroll"

    def get_rate(self):
        return settings.ENROLL_RATE_LIMIT


def _credentials_body(*, device_id: str, status_value: str, certificate: str | None, ca_chain: str) -> dict:
    return {
        "device_id": device_id,
        "status": status_value,
        "certificate": certificate,
        "ca_chain": ca_chain,
        "mqtt_url": settings.MQTT_URL,
    }


class EnrollView(APIView):
    """A device enrolls with an enrollment token and its CSR; no operator credential."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [EnrollThrottle]

    @extend_schema(request=s.EnrollInputSerializer, responses={201: s.EnrollOutputSerializer})
    def post(self, request):
        payload = s.EnrollInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        result = services.device_enroll(
            token=data["token"],
            csr_pem=data["csr"],
            device_id=data["device_id"] or None,
            name=data["name"],
            hardware_class=data["hardware_class"],
            runtime=data["runtime"],
            agent_version=data["agent_version"],
        )
        body = _credentials_body(
            device_id=result.device.id,
            status_value=result.device.status,
            certificate=result.certificate_pem,
            ca_chain=result.ca_chain_pem,
        ) | {
            "device_token": result.device_token,
            "api_url": settings.PUBLIC_URL,
            # The two trusted update roots and repository URLs (docs/updates.md, "Device update flow").
            "update_trust": update_trust_bootstrap(),
            # Devices verify their signed LLM policy (devices/{id}/policy) with this key.
            "policy_public_key": policy_public_key_pem(),
        }
        return Response(body, status=status.HTTP_201_CREATED)


class DeviceSelfView(APIView):
    """The calling device's own status and newest certificate: a pending device polls here until an
    operator approves it."""

    permission_classes = [IsDevice]

    @extend_schema(responses=s.DeviceCredentialsOutputSerializer)
    def get(self, request):
        device = device_of(request)
        cert = (
            DeviceCertificate.objects.filter(device=device, revoked_at__isnull=True).order_by("-not_after").first()
            if device.status == DeviceStatus.ACTIVE
            else None
        )
        return Response(
            _credentials_body(
                device_id=device.id,
                status_value=device.status,
                certificate=cert.certificate_pem if cert else None,
                ca_chain=authority.active_ca().certificate_pem,
            )
        )


class DeviceCertificateRenewView(APIView):
    permission_classes = [IsDevice]

    @extend_schema(request=s.CertificateRenewInputSerializer, responses=s.DeviceCredentialsOutputSerializer)
    def post(self, request):
        payload = s.CertificateRenewInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        device = device_of(request)
        certificate, ca_chain = services.device_renew_certificate(device=device, csr_pem=payload.validated_data["csr"])
        return Response(
            _credentials_body(
                device_id=device.id, status_value=device.status, certificate=certificate, ca_chain=ca_chain
            )
        )


class _PemView(APIView):
    """Public PEM documents: anyone may fetch the CA certificate and the revocation list."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    content_type = "application/x-pem-file"

    def pem(self) -> str:
        raise NotImplementedError

    @extend_schema(responses={(200, "application/x-pem-file"): str})
    def get(self, request):
        return HttpResponse(self.pem(), content_type=self.content_type)


class CaCertificateView(_PemView):
    def pem(self) -> str:
        return authority.active_ca().certificate_pem


class CrlView(_PemView):
    content_type = "application/pkix-crl"

    def pem(self) -> str:
        return authority.current_crl_pem()
