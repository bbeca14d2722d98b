from django.urls import path
from rest_framework.routers import SimpleRouter

from ota.api import views

router = SimpleRouter(trailing_slash=True)
router.register("artifacts", views.ArtifactViewSet, basename="ota-artifact")
router.register("rollouts", views.RolloutViewSet, basename="ota-rollout")

urlpatterns = [
    path("artifacts/<int:pk>/revoke/", views.ArtifactRevokeView.as_view(), name="ota-artifact-revoke"),
    path("rollouts/<int:pk>/start/", views.RolloutStartView.as_view(), name="ota-rollout-start"),
    path("rollouts/<int:pk>/pause/", views.RolloutPauseView.as_view(), name="ota-rollout-pause"),
    path("rollouts/<int:pk>/resume/", views.RolloutResumeView.as_view(), name="ota-rollout-resume"),
    path("rollouts/<int:pk>/abort/", views.RolloutAbortView.as_view(), name="ota-rollout-abort"),
    path("rollouts/<int:pk>/advance/", views.RolloutAdvanceView.as_view(), name="ota-rollout-advance"),
    path("rollouts/<int:pk>/rollback/", views.RolloutRollbackView.as_view(), name="ota-rollout-rollback"),
    path("keys/", views.SigningKeyListView.as_view(), name="ota-keys"),
    path("keys/rotate/", views.KeyRotateView.as_view(), name="ota-keys-rotate"),
    path("trust/", views.UpdateTrustView.as_view(), name="ota-trust"),
    *router.urls,
]
