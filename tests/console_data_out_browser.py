"""Drives the console's Tag rules and Data out tabs in headless Chromium, and prints one JSON line
per step for tests/console.rs to check.

Usage: console_data_out_browser.py API_URL NODE_URL SHOTS_DIR ADMIN_TOKEN VIEWER_TOKEN AXE_JS

Workspace `plant` has source `meters`; ADMIN_TOKEN is a session of its Admin, VIEWER_TOKEN of a
Viewer (both as the console's session cookie). The Admin makes, moves, edits and deletes tag
rules; makes an output (a refused filter first), an export endpoint whose URL is copied, a
webhook to a receiver on 127.0.0.1 whose secret is shown once, tests, disables and enables it;
makes a read token limited to one endpoint and an ingest token, sends events and reads the
endpoint's NDJSON page with a plain HTTP client. The Viewer sees the same pages without
controls. axe-core checks the new pages; screenshots go to SHOTS_DIR.
"""

import http.server
import json
import re
import sys
import threading
import time
import urllib.error
import urllib.request

from playwright.sync_api import sync_playwright


def say(step, **facts):
    print(json.dumps({"step": step, **facts}), flush=True)


class Receiver(http.server.BaseHTTPRequestHandler):
    """A webhook receiver: takes every delivery with 204."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def call(url, token, data=None, headers=None):
    """Status and body of a request with `token` as bearer."""
    request = urllib.request.Request(
        url,
        data=data,
        headers={"Authorization": f"Bearer {token}", **(headers or {})},
        method="POST" if data is not None else "GET",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def until(check, seconds=20):
    """`check()`'s first truthy answer within `seconds`, else its last."""
    deadline = time.time() + seconds
    while True:
        answer = check()
        if answer[0] or time.time() > deadline:
            return answer[1]
        time.sleep(0.25)


def write_controls(page):
    """How many controls that change the workspace the page offers (sign-out aside)."""
    return page.locator(
        "main form button, main details summary, main input:not([type=hidden]), main textarea,"
        " main select"
    ).count()


def axe(page, axe_js):
    page.add_script_tag(path=axe_js)
    result = page.evaluate("async () => await axe.run(document, {runOnly: ['wcag2a', 'wcag2aa']})")
    serious = [
        {"id": v["id"], "impact": v["impact"], "help": v["help"]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    return {"serious": serious, "rules_passed": len(result["passes"])}


def rows(page, section):
    return page.locator(f"section:has(h2#{section}) tbody tr").all_inner_texts()


def main():
    api, node, shots, admin_token, viewer_token, axe_js = sys.argv[1:7]
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{receiver.server_address[1]}/hooks/sluice"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            run(browser, api, node, shots, admin_token, viewer_token, axe_js, hook_url)
        finally:
            browser.close()
            receiver.shutdown()


def signed_in(browser, api, token, bypass_csp=False):
    # axe-core is injected as an inline script, which the console's CSP rightly refuses: the
    # audit's context alone bypasses it.
    context = browser.new_context(viewport={"width": 1200, "height": 900}, bypass_csp=bypass_csp)
    context.add_cookies([{"name": "sluice_session", "value": token, "url": api}])
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=api)
    page = context.new_page()
    page.set_default_timeout(10_000)
    return page


def run(browser, api, node, shots, admin_token, viewer_token, axe_js, hook_url):
    page = signed_in(browser, api, admin_token)
    page.goto(f"{api}/app/w/plant")

    # Tag rules: two made (one refused first), moved, edited, one deleted.
    page.click("nav[aria-label=Workspace] a:has-text('Tag rules')")
    new_rule = "form[action$='/tag-rules']"

    def make_rule(name, kind, **values):
        page.fill(f"{new_rule} input[name=name]", name)
        page.select_option(f"{new_rule} select[name=from]", kind)
        for field, value in values.items():
            page.fill(f"{new_rule} input[name={field}]", value)
        page.click("button:has-text('Create tag rule')")

    make_rule("broken", "pointer", pointer="no-slash", tag="site")
    refused = page.locator(".notice").inner_text()
    typed_back = page.input_value(f"{new_rule} input[name=pointer]")
    make_rule("site from payload", "pointer", pointer="/site", tag="site")
    page.wait_for_url(re.compile(r"done=tag-rule$"))
    page.check(f"{new_rule} input[name=sources][value=meters]")
    make_rule("line header", "header", field="x-line", tag="line")
    page.wait_for_url(re.compile(r"done=tag-rule$"))
    made = rows(page, "rules")
    page.click("button[aria-label='Move line header up']")
    page.wait_for_url(re.compile(r"done=tag-rule-moved"))
    moved = rows(page, "rules")
    page.click("a[aria-label='Edit site from payload']")
    page.fill("input[name=name]", "site")
    page.click("button:has-text('Save tag rule')")
    page.wait_for_url(re.compile(r"done=tag-rule-saved"))
    page.screenshot(path=f"{shots}/tag-rules.png", full_page=True)
    page.click("button[aria-label='Delete site']")
    page.wait_for_url(re.compile(r"done=tag-rule-deleted"))
    say("tag_rules", refused=refused, typed_back=typed_back, made=made, moved=moved,
        after_delete=rows(page, "rules"))

    # Data out: an output (a filter that is not JSON refused first), an endpoint, a webhook.
    page.click("nav[aria-label=Workspace] a:has-text('Data out')")
    new_output = "form[action$='/outputs']"
    page.fill(f"{new_output} input[name=slug]", "hot")
    page.fill(f"{new_output} textarea[name=filter]", "not json")
    page.fill(f"{new_output} textarea[name=fields]", "received_at\ndevice_id\n/temp_c as temperature")
    page.click("button:has-text('Create output')")
    output_refused = page.locator(".notice").inner_text()
    page.fill(f"{new_output} textarea[name=filter]",
              '{"conditions": [{"pointer": "/temp_c", "op": "gt", "value": 30}]}')
    page.click("button:has-text('Create output')")
    page.wait_for_url(re.compile(r"done=output"))
    outputs = rows(page, "outputs")
    page.click("a[href$='/outputs/hot']")
    output_schema = page.locator("section:has(h2#what) pre").last.inner_text()
    page.click("nav[aria-label=Workspace] a:has-text('Data out')")

    for slug in ("hot-feed", "spare-feed", "old-feed"):
        page.fill("form[action$='/export-endpoints'] input[name=slug]", slug)
        page.click("button:has-text('Create endpoint')")
        page.wait_for_url(re.compile(r"done=endpoint"))
    endpoint_url = page.locator("#endpoint-url-hot-feed").inner_text()
    page.click("button[aria-label='Copy the URL of hot-feed']")
    copied_url = page.evaluate("navigator.clipboard.readText()")
    page.click("button[aria-label='Delete the export endpoint old-feed']")
    page.wait_for_url(re.compile(r"done=endpoint-deleted"))
    page.click("a[href$='/export-endpoints/spare-feed']")
    page.fill("input[name=name]", "Spare feed")
    page.click("button:has-text('Save endpoint')")
    page.wait_for_url(re.compile(r"done=endpoint-saved"))
    page.click("nav[aria-label=Workspace] a:has-text('Data out')")
    endpoints = rows(page, "endpoints")

    # An output an endpoint serves cannot be deleted: the API's detail says why.
    page.goto(f"{api}/app/w/plant/outputs/hot")
    page.click("button:has-text('Delete output')")
    in_use = page.locator(".notice").inner_text()
    say("outputs", refused=output_refused, rows=outputs, schema=output_schema,
        endpoint_url=endpoint_url, copied_url=copied_url, endpoints=endpoints, in_use=in_use)

    page.click("nav[aria-label=Workspace] a:has-text('Data out')")
    page.fill("form[action$='/webhooks'] input[name=slug]", "hook")
    page.fill("form[action$='/webhooks'] input[name=url]", hook_url)
    page.click("button:has-text('Create webhook')")
    secret = page.locator("#new-webhook-secret").inner_text()
    in_url = secret in page.url
    page.click("button[data-copy=new-webhook-secret]")
    copied_secret = page.evaluate("navigator.clipboard.readText()")
    page.screenshot(path=f"{shots}/data-out.png", full_page=True)
    page.reload()
    shown_again = page.locator("#new-webhook-secret").count() > 0 or secret in page.content()
    webhooks = rows(page, "webhooks")
    page.click("a[href$='/webhooks/hook']")
    page.click("button:has-text('Send test')")
    tested = page.locator(".notice").inner_text()
    attempts = rows(page, "deliveries")
    page.click("button:has-text('Disable')")
    page.wait_for_url(re.compile(r"done=webhook-disabled"))
    disabled = page.locator("#webhook-state").inner_text()
    page.screenshot(path=f"{shots}/webhook.png", full_page=True)
    page.click("button:has-text('Enable')")
    page.wait_for_url(re.compile(r"done=webhook-enabled"))
    enabled = page.locator("#webhook-state").inner_text()
    page.fill("form[action$='/webhooks/hook'] input[name=url]", "ftp://example.com/hook")
    page.click("button:has-text('Save webhook')")
    url_refused = page.locator(".notice").inner_text()
    url_kept = page.input_value("form[action$='/webhooks/hook'] input[name=url]")
    page.fill("form[action$='/webhooks/hook'] input[name=url]", hook_url)
    page.fill("form[action$='/webhooks/hook'] input[name=batch_interval_ms]", "2000")
    page.click("button:has-text('Save webhook')")
    page.wait_for_url(re.compile(r"done=webhook-saved"))
    batches = page.locator("section:has(h2#what) dl").inner_text()
    say("webhook", secret=secret, copied=copied_secret, in_url=in_url, shown_again=shown_again,
        rows=webhooks, tested=tested, attempts=attempts, disabled=disabled, enabled=enabled,
        url_refused=url_refused, url_kept=url_kept, batches=batches)

    # Access: a read token limited to hot-feed, and an ingest token; events through to a reader.
    page.click("nav[aria-label=Workspace] a:has-text('Access')")
    new_token = "form[action$='/tokens']"
    page.fill(f"{new_token} input[name=name]", "reader")
    page.select_option(f"{new_token} select[name=scope]", "read")
    page.check(f"{new_token} input[name=endpoints][value=hot-feed]")
    page.click("button:has-text('Create token')")
    reader = page.locator("#new-token-secret").inner_text()
    page.fill(f"{new_token} input[name=name]", "meter")
    page.select_option(f"{new_token} select[name=scope]", "ingest")
    page.click("button:has-text('Create token')")
    ingest_token = page.locator("#new-token-secret").inner_text()
    tokens = page.locator("section:has(h2#tokens) tbody").inner_text()

    ingest_url = f"{node}/v1/ingest/plant/meters"

    def ingest(body):
        status, text = call(ingest_url, ingest_token, body.encode(),
                            {"Content-Type": "application/json", "X-Device-Id": "m-1"})
        return status == 202, status

    ingested = [until(lambda: ingest('{"temp_c": 35, "site": "a"}')),
                until(lambda: ingest('{"temp_c": 20}'))]
    feed = f"{node}/v1/stream/plant/hot-feed?from=beginning"

    def read():
        status, text = call(feed, reader, headers={"Accept": "application/x-ndjson"})
        lines = [json.loads(line) for line in text.splitlines() if line.strip()] if status == 200 else []
        return len(lines) > 0, {"status": status, "lines": lines}

    streamed = until(read, 30)
    other_status, _ = call(f"{node}/v1/stream/plant/spare-feed", reader,
                           headers={"Accept": "application/x-ndjson"})
    say("stream", endpoint=endpoint_url, tokens=tokens, ingested=ingested, streamed=streamed,
        other_status=other_status)

    # The overview's ingest card: the events written to the lake in the last hour, per source.
    def overview():
        page.goto(f"{api}/app/w/plant")
        card = page.locator("section:has(h2#ingest) tbody").inner_text()
        return "\t2\t" in card, card

    ingest_card = until(overview, 20)
    page.screenshot(path=f"{shots}/overview-ingest.png", full_page=True)
    say("overview", card=ingest_card,
        sparkline=page.locator("section:has(h2#ingest) svg[role=img]").count())

    # AsyncAPI import from a file, with If-Match on the previewed version: a change made
    # between the preview and the import refuses it with the API's detail.
    exported = page.request.get(f"{api}/api/v1/workspaces/plant/asyncapi")
    document_path = f"{shots}/plant-asyncapi.json"
    with open(document_path, "w") as f:
        f.write(exported.text())
    page.goto(f"{api}/app/w/plant/asyncapi")
    page.set_input_files("input[name=document_file]", document_path)
    page.click("button:has-text('Preview')")
    first_preview = page.locator("section:has(h2#plan)").inner_text()
    previewed_version = page.get_attribute("input[name=previewed_version]", "value")
    status, _ = call(f"{api}/api/v1/workspaces/plant/sources", admin_token,
                     json.dumps({"slug": "intruder"}).encode(), {"Content-Type": "application/json"})
    page.click("button:has-text('Import')")
    changed = page.locator(".notice").inner_text()
    page.click("button:has-text('Preview')")
    second_preview = page.locator("section:has(h2#plan)").inner_text()
    page.click("button:has-text('Import')")
    imported = page.locator("section:has(h2#plan)").inner_text()
    say("import", exported=exported.status, first_preview=first_preview,
        previewed_version=previewed_version, intruder=status, changed=changed,
        second_preview=second_preview, imported=imported)

    # The Viewer reads the same pages and is offered no control that changes them.
    viewer = signed_in(browser, api, viewer_token)
    controls = {}
    for name, path in [("tag_rules", "tag-rules"), ("data_out", "data-out"),
                       ("output", "outputs/hot"), ("webhook", "webhooks/hook"),
                       ("endpoint", "export-endpoints/hot-feed")]:
        viewer.goto(f"{api}/app/w/plant/{path}")
        controls[name] = write_controls(viewer)
    viewer.goto(f"{api}/app/w/plant/data-out")
    viewer_sees = viewer.locator("main").inner_text()
    say("viewer", controls=controls, sees_hook="hook" in viewer_sees,
        sees_url=endpoint_url in viewer_sees)

    audited = signed_in(browser, api, admin_token, bypass_csp=True)
    found = {}
    for name, path in [("overview", ""), ("tag_rules", "tag-rules"), ("output", "outputs/hot"),
                       ("data_out", "data-out"), ("webhook", "webhooks/hook"),
                       ("endpoint", "export-endpoints/hot-feed"), ("access", "access")]:
        audited.goto(f"{api}/app/w/plant/{path}".rstrip("/"))
        found[name] = axe(audited, axe_js)
    say("axe", **found)


if __name__ == "__main__":
    main()
