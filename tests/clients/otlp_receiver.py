"""A small OTLP/HTTP trace receiver for tests/tracing.rs: serves POST /v1/traces, decodes
each ExportTraceServiceRequest with the official generated messages (opentelemetry-proto)
and appends one JSON line per span to the output file.

Usage: otlp_receiver.py OUT_FILE   (prints the port it listens on, then serves until killed)

The OTLP/HTTP binary-protobuf encoding and the success answer (an empty
ExportTraceServiceResponse, status 200) follow the OTLP specification, "OTLP/HTTP"
(opentelemetry.io/docs/specs/otlp/#otlphttp).
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


def value_of(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_response(404)
            self.end_headers()
            return
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        lines = []
        for resource_spans in request.resource_spans:
            resource = {a.key: value_of(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    lines.append(
                        {
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "name": span.name,
                            "kind": span.kind,
                            "start_ns": span.start_time_unix_nano,
                            "end_ns": span.end_time_unix_nano,
                            "status_code": span.status.code,
                            "attributes": {a.key: value_of(a.value) for a in span.attributes},
                            "service_name": resource.get("service.name"),
                        }
                    )
        with open(OUT, "a") as f:
            for line in lines:
                f.write(json.dumps(line) + "\n")
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    OUT = sys.argv[1]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
