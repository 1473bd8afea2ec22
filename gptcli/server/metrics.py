"""What /metrics shows, in Prometheus's text format (prometheus_client renders it):
requests by endpoint and status, prompt and generated tokens, rows waiting and running,
rows finished and cancelled, and histograms of time to first token and of latency.
Each server has its own registry; nothing is global.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

ENDPOINTS = ("/health", "/v1/models", "/metrics", "/v1/completions", "/v1/chat/completions", "/tokenize",
             "/detokenize")


class Metrics:
    def __init__(self, service):
        self.service = service
        disable_created_metrics()  # the *_created series say when the process started: noise here
        self.registry = CollectorRegistry()
        self.requests = Counter("gptcli_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.prompt = Counter("gptcli_prompt_tokens", "Prompt tokens of accepted requests", registry=self.registry)
        self.ttft = Histogram("gptcli_time_to_first_token_seconds", "From a request's arrival to its first token",
                              buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10), registry=self.registry)
        self.latency = Histogram("gptcli_request_latency_seconds", "From a request's arrival to its last event",
                                 buckets=(.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120), registry=self.registry)
        self.registry.register(_BatchCollector(service))

    def prompt_tokens(self, n: int) -> None:
        self.prompt.inc(n)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def done(self, seconds: float) -> None:
        self.latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def wrap(self, app):
        """The app, counting each response by endpoint and status."""
        async def counted(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            path = scope["path"] if scope["path"] in ENDPOINTS else "other"

            async def send_counted(message):
                if message["type"] == "http.response.start":
                    self.requests.labels(path, str(message["status"])).inc()
                await send(message)
            await app(scope, receive, send_counted)
        return counted


class _BatchCollector:
    """The batcher's own counts, read when /metrics is asked."""

    def __init__(self, service):
        self.service = service

    def collect(self):
        batcher = self.service.batcher
        stats = batcher.stats if batcher is not None else {}
        yield GaugeMetricFamily("gptcli_queue_depth", "Outputs waiting for a place in the batch",
                                value=batcher.waiting if batcher else 0)
        yield GaugeMetricFamily("gptcli_running_rows", "Outputs being generated in the batch",
                                value=batcher.running if batcher else 0)
        yield CounterMetricFamily("gptcli_generation_tokens", "Tokens generated (the batch's and beam searches')",
                                  value=stats.get("generated", 0) + self.service.beam_tokens)
        yield CounterMetricFamily("gptcli_rows_finished", "Outputs that ended (eos, stop, length or error)",
                                  value=stats.get("finished", 0))
        yield CounterMetricFamily("gptcli_batch_steps", "Decoding steps of the batch", value=stats.get("steps", 0))
        yield CounterMetricFamily("gptcli_batch_row_steps", "Rows over all decoding steps (over steps: the mean "
                                  "batch size)", value=stats.get("row_steps", 0))
        yield CounterMetricFamily("gptcli_rows_cancelled", "Outputs stopped because their client went away",
                                  value=stats.get("cancelled", 0))
