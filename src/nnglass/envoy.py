"""`from nnglass.envoy import Envoy`, as in the walkthrough's LoRA example."""
from .intervention.envoy import Envoy

__all__ = ["Envoy"]
