"""Console routes of the device registry (the REST API's are in devices/api/urls.py).

Device ids are lowercase letters, digits and '-', so no fixed word below ``devices/`` is needed: the
list takes bulk actions as a POST to itself, and approvals live at their own path.
"""

from django.urls import path

from devices import views

app_name = "devices"

urlpatterns = [
    path("devices/", views.device_list, name="list"),
    path("devices/<str:device_id>/", views.device_detail, name="detail"),
    path("devices/<str:device_id>/edit/", views.device_edit, name="edit"),
    path("devices/<str:device_id>/approve/", views.device_approve, name="approve"),
    path("devices/<str:device_id>/revoke/", views.device_revoke, name="revoke"),
    path("approvals/", views.approvals, name="approvals"),
    path("enrollment-tokens/", views.tokens, name="tokens"),
    path("enrollment-tokens/<int:token_id>/revoke/", views.token_revoke, name="token-revoke"),
    path("groups/", views.groups, name="groups"),
    path("groups/<slug:name>/", views.group_edit, name="group-edit"),
    path("groups/<slug:name>/delete/", views.group_delete, name="group-delete"),
]
