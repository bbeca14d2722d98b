"""The OpenAI-compatible gateway, mounted at /v1/ (where OpenAI clients expect it)."""

from django.urls import path

from policies import gateway

urlpatterns = [
    path("chat/completions", gateway.chat_completions, name="llm-chat-completions"),
]
