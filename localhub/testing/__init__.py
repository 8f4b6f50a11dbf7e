"""Test doubles that tests and benchmarks both import (no pytest here): fault injection for the Hub stand-in."""

from localhub.testing.hub_faults import FaultyHub, HubFault

__all__ = ["FaultyHub", "HubFault"]
