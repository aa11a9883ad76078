"""Placeholder: the RayVault side of the scenarios (filled in as the worker
and the daemon land)."""

from lib import NotMeasured


def dispatch(cfg):
    raise NotMeasured("the daemon API has not landed yet")
