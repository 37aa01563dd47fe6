"""Rollups for the admin dashboard that DailyUsage cannot answer: calls and errors per key, and
latency histograms (time to first token, whole call) per day x provider x key.

Percentiles cannot be summed across days, but bucket counts can: p50/p95 over any range come from
the summed counts per bucket, so the dashboard never reads the ledger. Written by
`billing.stats.stats_record_call` in the ledger's transaction.

`key_id` is a bare UUID, not a foreign key: a deleted key's history stays on the dashboard, and
SET NULL could not run without merging rows under the unique constraints below.
"""

from django.db import models
from django.utils.translation import gettext_lazy as _

# Upper bounds (milliseconds, inclusive) of the latency buckets; the last bucket is open-ended.
# Roughly logarithmic: fine where people notice (under 2 s), coarse where they have already left.
LATENCY_BUCKETS_MS: tuple[int, ...] = (
    100, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000,
    7_500, 10_000, 15_000, 20_000, 30_000, 60_000, 120_000, 300_000,
)  # fmt: skip
OPEN_BUCKET = len(LATENCY_BUCKETS_MS)  # index of the bucket above the last bound


class KeyDailyStats(models.Model):
    """Calls per day x provider x key (null key: a call made without one, e.g. the demo model)."""

    day = models.DateField(_("day"))
    provider = models.CharField(_("provider"), max_length=16)
    key_id = models.UUIDField(_("key"), null=True, blank=True)
    requests = models.PositiveIntegerField(_("requests"), default=0)
    errors = models.PositiveIntegerField(_("errors"), default=0)
    cancelled = models.PositiveIntegerField(_("cancelled"), default=0)

    class Meta:
        verbose_name = _("daily key statistics")
        verbose_name_plural = _("daily key statistics")
        verbose_name = _("key daily statistics")
        verbose_name_plural = _("key daily statistics")
        indexes = [models.Index(fields=["day"], name="keystats_day")]
        constraints = [
            models.UniqueConstraint(fields=["day", "provider", "key_id"], name="keydailystats_unique"),
            # NULLs are distinct in a unique index: keyless calls get their own one-row rule.
            models.UniqueConstraint(
                fields=["day", "provider"], condition=models.Q(key_id__isnull=True), name="keydailystats_unique_keyless"
            ),
        ]
        # The dashboard has no model of its own; its permission lives on its main rollup.
        permissions = [("view_dashboard", _("Can view the cost dashboard"))]

    def __str__(self) -> str:
        return f"{self.day} {self.provider} {self.key_id or '-'}"


class LatencyBucket(models.Model):
    """How many calls of one day x provider x key fell in one latency bucket."""

    class Metric(models.TextChoices):
        TTFT = "ttft", _("time to first token")
        TOTAL = "total", _("total latency")

    day = models.DateField(_("day"))
    provider = models.CharField(_("provider"), max_length=16)
    key_id = models.UUIDField(_("key"), null=True, blank=True)
    metric = models.CharField(_("metric"), max_length=8, choices=Metric.choices)
    bucket = models.PositiveSmallIntegerField(_("bucket"))  # index into LATENCY_BUCKETS_MS
    count = models.PositiveIntegerField(_("count"), default=0)

    class Meta:
        verbose_name = _("latency bucket")
        verbose_name_plural = _("latency buckets")
        verbose_name = _("latency bucket")
        verbose_name_plural = _("latency buckets")
        indexes = [models.Index(fields=["day"], name="latencybucket_day")]
        constraints = [
            models.UniqueConstraint(fields=["day", "provider", "key_id", "metric", "bucket"], name="latencybucket_unique"),
            models.UniqueConstraint(
                fields=["day", "provider", "metric", "bucket"],
                condition=models.Q(key_id__isnull=True),
                name="latencybucket_unique_keyless",
            ),
            models.CheckConstraint(condition=models.Q(bucket__lte=OPEN_BUCKET), name="latencybucket_bucket_in_range"),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.provider} {self.metric}[{self.bucket}]"
