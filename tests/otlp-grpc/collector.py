#!/usr/bin/env python3
"""An OTLP/gRPC collector made of the OpenTelemetry project's own classes
(opentelemetry-proto's generated messages and services on grpcio), plus a small JSON
backend, for tests/otlp-grpc.sh.

It writes its two ports to PORTS_FILE ("grpc backend"), refuses the first metrics export
with UNAVAILABLE (so that the gateway's handling of a gRPC error status is exercised),
then checks what arrives against EXPECTED requests to GET /user and exits: 0 once the
metrics and spans match, 1 at the deadline, printing what it saw.
"""
import json
import os
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

PORTS_FILE, EXPECTED, DEADLINE_S = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
SERVICE = "grpc-test"

lock = threading.Lock()
state = {"metrics_exports": 0, "refused": 0, "count": None, "histogram_ok": None, "service": None,
         "spans": {}, "trace_exports": 0}


def attributes(kvs):
    return {kv.key: kv.value.string_value for kv in kvs}


class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def Export(self, request, context):
        with lock:
            if state["refused"] == 0:
                state["refused"] = 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
            state["metrics_exports"] += 1
            for rm in request.resource_metrics:
                state["service"] = attributes(rm.resource.attributes).get("service.name")
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        if m.name != "http.server.request.duration":
                            continue
                        for p in m.histogram.data_points:
                            a = attributes(p.attributes)
                            if a.get("http.route") == "/user" and a.get("weir.status_class") == "2xx":
                                state["count"] = p.count
                                state["histogram_ok"] = (
                                    sum(p.bucket_counts) == p.count
                                    and len(p.bucket_counts) == len(p.explicit_bounds) + 1
                                    and p.sum > 0
                                    and m.histogram.aggregation_temporality == 2
                                )
        return metrics_service_pb2.ExportMetricsServiceResponse()


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        with lock:
            state["trace_exports"] += 1
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        state["spans"][s.span_id] = s
        return trace_service_pb2.ExportTraceServiceResponse()


def spans_ok():
    """Every request has a server span and a client span under it, in one trace."""
    spans = list(state["spans"].values())
    servers = [s for s in spans if s.kind == 2 and s.name == "GET /user"]
    clients = [s for s in spans if s.kind == 3]
    by_id = {s.span_id: s for s in servers}
    linked = 0
    for c in clients:
        parent = by_id.get(c.parent_span_id)
        if (parent is not None and parent.trace_id == c.trace_id and len(c.trace_id) == 16
                and len(c.span_id) == 8 and c.end_time_unix_nano >= c.start_time_unix_nano > 0
                and attributes(c.attributes).get("http.response.status_code") == "200"):
            linked += 1
    return len(servers), linked


class Backend(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"id": 7, "name": "Ada"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    backend = ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    with open(PORTS_FILE + ".tmp", "w") as f:
        f.write(f"{grpc_port} {backend.server_address[1]}\n")
    os.rename(PORTS_FILE + ".tmp", PORTS_FILE)

    deadline = time.monotonic() + DEADLINE_S
    ok = False
    while time.monotonic() < deadline:
        with lock:
            servers, linked = spans_ok()
            ok = (state["count"] == EXPECTED and state["histogram_ok"] and state["service"] == SERVICE
                  and servers == EXPECTED and linked == EXPECTED)
        if ok:
            break
        time.sleep(0.2)
    with lock:
        servers, linked = spans_ok()
        summary = {k: v for k, v in state.items() if k != "spans"}
        summary.update(spans=len(state["spans"]), server_spans=servers, linked_client_spans=linked)
    print(json.dumps(summary), flush=True)
    server.stop(0)
    backend.shutdown()
    sys.exit(0 if ok else 1)


main()
