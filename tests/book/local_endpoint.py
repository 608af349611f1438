"""A Chat Completions endpoint on 127.0.0.1 for the agent's tests: one helper to answer a
request and one to serve, shared by every fake endpoint."""
import http.server
import threading


def answer(handler: http.server.BaseHTTPRequestHandler, body: bytes, status: int = 200, ctype: str = "application/json") -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def serve(handler: type[http.server.BaseHTTPRequestHandler]) -> tuple[http.server.ThreadingHTTPServer, str]:
    """(server, base URL) of ``handler`` on a free loopback port, served from a daemon thread."""
    handler.log_message = lambda self, *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"
