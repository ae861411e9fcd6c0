"""Sends events to Sluice from web pages in headless Chromium, as a browser app would.

Serves an empty page on 127.0.0.1:PORT and reaches it under two origins,
http://127.0.0.1:PORT and http://localhost:PORT. From each page it POSTs one event to the
ingest URL with `fetch` (an `Authorization` header, so the browser sends a CORS preflight
first), then once more with a wrong token, and prints one JSON line per attempt:
{"origin", "token", "status", "body"} when the page could read the answer, or
{"origin", "token", "error"} when the browser blocked it.

Usage: cors_browser.py PORT INGEST_URL TOKEN
Chromium is Debian's (/usr/bin/chromium), driven by Playwright; nothing is downloaded.
"""

import http.server
import json
import sys
import threading

from playwright.sync_api import sync_playwright

PAGE = b"<!doctype html><title>device console</title>"

FETCH = """
async ([url, token, origin]) => {
  try {
    const r = await fetch(url, {
      method: "POST",
      headers: {
        "Authorization": "Bearer " + token,
        "Content-Type": "application/json",
        "X-Device-Id": "browser-1",
      },
      body: JSON.stringify({from: origin}),
    });
    return {status: r.status, body: await r.text(), retry_after: r.headers.get("retry-after")};
  } catch (e) {
    return {error: String(e)};
  }
}
"""


class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args):
        pass


def main():
    port, url, token = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(10_000)
            for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
                page.goto(origin + "/")
                for label, secret in (("valid", token), ("wrong", "sluice_not_a_token")):
                    result = page.evaluate(FETCH, [url, secret, origin])
                    print(json.dumps({"origin": origin, "token": label, **result}), flush=True)
        finally:
            browser.close()
    server.shutdown()


if __name__ == "__main__":
    main()
