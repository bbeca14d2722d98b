from django.urls import path
from rest_framework.routers import SimpleRouter

from devices.api import views

router = SimpleRouter(trailing_slash=True)
router.register("groups", views.DeviceGroupViewSet, basename="group")
router.register("devices", views.DeviceViewSet, basename="device")
router.register("enrollment-tokens", views.EnrollmentTokenViewSet, basename="enrollment-token")

urlpatterns = [
    path("enroll/", views.EnrollView.as_view(), name="enroll"),
    path("device/", views.DeviceSelfView.as_view(), name="device-self"),
    path("device/certificate/", views.DeviceCertificateRenewView.as_view(), name="device-certificate-renew"),
    path("ca/certificate.pem", views.CaCertificateView.as_view(), name="ca-certificate"),
    path("ca/crl.pem", views.CrlView.as_view(), name="ca-crl"),
    *router.urls,
]
