from django.apps import AppConfig


class PoliciesConfig(AppConfig):
    name = "policies"

    def ready(self):
        # A typo in LLM_UPSTREAMS (or a missing key variable) stops the start, not a device's request.
        from policies.upstreams import configured_upstreams

        configured_upstreams()
