"""Old name of server/runtime.py, kept so code written against it (branches in flight) still
imports. New code imports server.runtime."""

from server.runtime import Services, build_services, warm_up

__all__ = ["Services", "build_services", "warm_up"]
