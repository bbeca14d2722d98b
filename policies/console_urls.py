"""Console routes of cloud-LLM policies (the REST API's are in policies/api/urls.py, the gateway's in
policies/urls.py)."""

from django.urls import path

from policies import views

app_name = "policies"

urlpatterns = [
    path("policies/", views.policy_list, name="list"),
    path("policies/new/", views.policy_new, name="new"),
    path("policies/<int:policy_id>/", views.policy_edit, name="edit"),
]
