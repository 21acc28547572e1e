"""A minimal OTLP trace receiver built on the official OpenTelemetry
protobuf definitions (PyPI `opentelemetry-proto`), for agentrt's tests.

    python otlp_receiver.py --protocol http|grpc --out spans.jsonl

Prints `listening PORT` once ready, then writes every received span as one
JSON line: name, kind, trace_id, span_id, parent_span_id (hex),
attributes, status.
"""
import argparse
import http.server
import json
import sys
import threading
from concurrent import futures

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

LOCK = threading.Lock()


def value_of(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value_of(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def record(request, out_path):
    with LOCK, open(out_path, "a") as out:
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    out.write(json.dumps({
                        "name": span.name,
                        "kind": span.kind,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "attributes": {a.key: value_of(a.value) for a in span.attributes},
                        "status": span.status.code,
                    }) + "\n")


def serve_http(out_path):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                self.send_response(400)
                self.end_headers()
                return
            record(trace_service_pb2.ExportTraceServiceRequest.FromString(body), out_path)
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


def serve_grpc(out_path):
    import grpc

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            record(request, out_path)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocol", choices=["http", "grpc"], required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    open(args.out, "w").close()
    (serve_http if args.protocol == "http" else serve_grpc)(args.out)
    sys.exit(0)
