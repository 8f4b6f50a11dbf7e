"""Test doubles that tests and benchmarks both import (no pytest here): fault injection for the Hub stand-in, and a
scripted TGI/OpenAI-compatible chat server."""

from localhub.testing.hub_faults import FaultyHub
from localhub.testing.tgi import Fault, Reply, ScriptedTGI, loopback_reachable

__all__ = ["Fault", "FaultyHub", "Reply", "ScriptedTGI", "loopback_reachable"]
