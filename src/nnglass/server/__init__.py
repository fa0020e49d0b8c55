"""The nnglass server: hosts models and runs the intervention graphs that clients send (`nnglass serve`)."""
from .app import create_app
from .background import BackgroundServer
from .keys import KeyStore
from .limits import Limits

__all__ = ["create_app", "BackgroundServer", "KeyStore", "Limits"]
