"""Prometheus textfile-collector output for cron jobs (node_exporter reads the file).

Written atomically (a temp file renamed into place) by prometheus-client, and only
after a successful run, so a stale `regctl_purge_last_success_timestamp_seconds`
is the alert: "purge has not succeeded for 30 minutes".
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from regctl.errors import ConfigError, LocalIOError
from regctl.reports import PurgeReport
from regctl.store.base import Counts


def check_metrics_path(path: Path) -> None:
    """Before any work: the file must be one that can be written (renamed into place)."""
    folder = path.parent
    if path.is_dir():
        raise ConfigError(f"the metrics file {path} is a directory")
    if not folder.is_dir():
        raise ConfigError(f"cannot write the metrics file {path}: no directory {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write the metrics file {path}: {folder} is not writable")
    # (written first as "<name>.<pid>.<thread>", then renamed: prometheus-client's way)
    draft = len(os.fsencode(path.name)) + len(f".{os.getpid()}.{threading.get_ident()}")
    longest = os.pathconf(folder, "PC_NAME_MAX")
    if draft > longest:
        raise ConfigError(
            f"the metrics file's name {path.name[:40]}... is too long: its draft beside it "
            f"takes {draft} bytes, and {folder} allows {longest}"
        )


def write_purge_metrics(path: Path, report: PurgeReport, seconds: float, counts: Counts) -> None:
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()
    Gauge(
        "regctl_purge_last_success_timestamp_seconds",
        "Unix time of the last successful purge",
        registry=registry,
    ).set_to_current_time()
    Gauge("regctl_purge_duration_seconds", "How long the last purge took", registry=registry).set(
        seconds
    )
    removed = Gauge(
        "regctl_purge_removed",
        "Entries the last purge removed, by reason",
        ["reason"],
        registry=registry,
    )
    for reason, value in (
        ("expired", report.expired),
        ("orphan", report.orphans),
        ("matched", report.matched),
    ):
        removed.labels(reason).set(value)
    Gauge(
        "regctl_purge_scanned", "Live index entries the last purge examined", registry=registry
    ).set(report.scanned)
    Gauge(
        "regctl_pending_registrations", "Pending registrations after the purge", registry=registry
    ).set(counts.total)
    Gauge(
        "regctl_pending_expiring_within_hour",
        "Pending registrations expiring within 1 h",
        registry=registry,
    ).set(counts.expiring_within_hour)
    try:
        write_to_textfile(str(path), registry)
    except OSError as exc:  # (the purge is done: no configuration to blame)
        raise LocalIOError(
            f"the purge ran, but its metrics file {path} was not written: {exc.strerror}",
            "free space or fix the folder; the next successful run writes it",
        ) from None
