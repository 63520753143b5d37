"""Health, doctor and selftest: plain functions over a RedisStore that return data.

``topology`` finds what stands behind the store; ``health`` grades it for monitoring;
``doctor`` looks through servers, keys and permissions for what needs a fix;
``selftest`` runs the original 8-step connection test.
"""

from regctl.diagnostics.doctor import Finding, doctor
from regctl.diagnostics.health import Health, Level, Thresholds, health, nagios_line
from regctl.diagnostics.selftest import Step, selftest
from regctl.diagnostics.topology import unseen_after_eviction

__all__ = [
    "Finding",
    "Health",
    "Level",
    "Step",
    "Thresholds",
    "doctor",
    "health",
    "nagios_line",
    "selftest",
    "unseen_after_eviction",
]
