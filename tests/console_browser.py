"""Walks through the web console in headless Chromium as two people would, and prints one JSON
line per step for tests/console.rs to check.

Usage: console_browser.py API_URL NODE_URL OUTBOX SHOTS_DIR USER2_EMAIL USER2_PASSWORD AXE_JS SMTP_PORT

The first person signs up in the browser (the code read from the outbox), creates a workspace,
switches, renames (Enter, then Escape), invites the second person (an account made beforehand),
who accepts through the mailed link after the sign-in redirect. The first person makes them a
Viewer, whose pages then offer no write controls; creates a source and an ingest token, whose
secret is shown once and sends an event to the node; saves the workspace's SMTP server (an
SMTP server on SMTP_PORT of 127.0.0.1), sends a test and sees the delivery, removes it; tries
forged forms; deletes the workspace by typing its name; signs out; resets the password.
Screenshots go to SHOTS_DIR. AXE_JS (axe-core's axe.min.js) checks four pages for
accessibility.

Chromium is Debian's (/usr/bin/chromium), driven by Playwright; nothing is downloaded.
"""

import email
import email.policy
import glob
import http.server
import json
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request

from playwright.sync_api import sync_playwright


def say(step, **facts):
    print(json.dumps({"step": step, **facts}), flush=True)


def mails(outbox, to, subject):
    """Plain-text bodies of the mails to `to` whose subject contains `subject`, oldest first."""
    found = []
    paths = [p for d in (outbox, f"{outbox}/new", f"{outbox}/cur") for p in glob.glob(f"{d}/*")]
    paths = [p for p in paths if os.path.isfile(p) and not p.endswith(".json")]
    for path in sorted(paths, key=lambda p: (os.path.getmtime(p), p)):
        with open(path, "rb") as f:
            message = email.message_from_binary_file(f, policy=email.policy.default)
        if to.lower() in str(message["To"]).lower() and subject in str(message["Subject"]):
            found.append(message.get_body(preferencelist=("plain",)).get_content())
    return found


def wait_mail(outbox, to, subject, skip=0):
    deadline = time.time() + 15
    while time.time() < deadline:
        found = mails(outbox, to, subject)
        if len(found) > skip:
            return found[skip]
        time.sleep(0.1)
    raise RuntimeError(f"no mail to {to} about {subject!r}")


def ingest(url, token):
    """POSTs one event; retries while the node has not yet taken the new token."""
    deadline = time.time() + 15
    while True:
        request = urllib.request.Request(
            url,
            data=b'{"temperature": 21.5}',
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            if e.code != 401 or time.time() > deadline:
                return e.code, e.read().decode()
        time.sleep(0.2)


def fetch_status(url, token=None):
    """The status of a GET, without credentials or with `token` as bearer."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


class EvilPage(http.server.BaseHTTPRequestHandler):
    """Another site (another port of 127.0.0.1) with a form aimed at the console."""

    target = ""
    token = ""

    def do_GET(self):
        page = (
            "<!doctype html><title>evil</title>"
            f'<form method="post" action="{self.target}">'
            '<input name="name" value="pwned">'
            f'<input name="csrf" value="{self.token}"><button id="go">go</button></form>'
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args):
        pass


def write_controls(page):
    """How many controls that change the workspace the page offers (sign-out and leaving aside)."""
    return page.locator(
        "main form:not(.leave) button, main details summary, main input:not([type=hidden]),"
        " main textarea"
    ).count()


def axe(page, axe_js):
    """The serious and critical WCAG 2 A/AA violations axe-core finds, and how many rules pass."""
    page.add_script_tag(path=axe_js)
    result = page.evaluate(
        "async () => await axe.run(document, {runOnly: ['wcag2a', 'wcag2aa']})"
    )
    serious = [
        {"id": v["id"], "impact": v["impact"], "help": v["help"]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    return {"serious": serious, "rules_passed": len(result["passes"])}


def main():
    api, node, outbox, shots, user2, password2, axe_js, smtp_port = sys.argv[1:9]
    user1, password1 = "ada@example.com", "correct horse battery"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            run(browser, api, node, outbox, shots, user1, password1, user2, password2, axe_js, smtp_port)
        finally:
            browser.close()


def run(browser, api, node, outbox, shots, user1, password1, user2, password2, axe_js, smtp_port):
    viewport = {"width": 1100, "height": 760}
    ada = browser.new_context(viewport=viewport)
    ada.grant_permissions(["clipboard-read", "clipboard-write"], origin=api)
    page = ada.new_page()
    page.set_default_timeout(10_000)

    # 1. Not signed in: the console sends to the sign-in form, which links to sign-up.
    response = page.goto(f"{api}/app")
    say("redirect", url=page.url, headers=dict(response.headers))
    page.screenshot(path=f"{shots}/sign-in.png")
    page.click("text=Create an account")
    page.fill("input[name=email]", user1)
    page.fill("input[name=password]", password1)
    page.fill("input[name=first_name]", "Ada")
    page.fill("input[name=last_name]", "Lovelace")
    page.click("button:has-text('Create account')")
    code = re.search(r"\b(\d{6})\b", wait_mail(outbox, user1, "verification code")).group(1)
    page.fill("input[name=code]", code)
    page.click("button:has-text('Confirm')")
    page.fill("input[name=email]", user1)
    page.fill("input[name=password]", password1)
    page.click("button:has-text('Sign in')")
    page.wait_for_url(f"{api}/app")
    first = page.locator("main table tbody tr").count()
    say("signed_up", url=page.url, workspaces=first)

    # 2. A new workspace, then switching with the dropdown.
    page.fill("input[name=name]", "Fleet North")
    page.click("button:has-text('Create workspace')")
    page.wait_for_url(re.compile(r"/app/w/fleet-north"))
    say("created", url=page.url, notice=page.locator(".notice").inner_text())
    page.click("summary:has-text('Fleet North')")
    page.screenshot(path=f"{shots}/workspace-switcher.png")
    others = page.locator(".switcher a:not([aria-current]):not([href*='#'])")
    other_name = others.first.inner_text()
    others.first.click()
    page.wait_for_load_state()
    switched_to = page.locator("h1").inner_text()
    page.click("summary")
    page.click(".switcher a:has-text('Fleet North')")
    page.wait_for_url(re.compile(r"/app/w/fleet-north$"))
    say("switched", other=other_name, heading=switched_to, back=page.locator("h1").inner_text())
    slug_url = page.url

    # 3. Rename: Enter saves; Escape puts the saved name back.
    page.click("a:has-text('Settings')")
    page.fill("input[name=name]", "Fleet North EU")
    page.press("input[name=name]", "Enter")
    page.wait_for_url(re.compile(r"settings\?done=renamed"))
    renamed = page.locator("h1").inner_text()
    page.fill("input[name=name]", "Something else")
    page.press("input[name=name]", "Escape")
    say("renamed", heading=renamed, after_escape=page.input_value("input[name=name]"))

    # CORS origins: a wrong one is refused with the API's detail; a right one is saved.
    page.fill("textarea[name=origins]", "https://app.example.com\nnot an origin")
    page.click("button:has-text('Save origins')")
    cors_refused = page.locator(".notice").inner_text()
    page.fill("textarea[name=origins]", "https://app.example.com")
    page.click("button:has-text('Save origins')")
    page.wait_for_url(re.compile(r"done=cors"))
    say("cors", refused=cors_refused, saved=page.input_value("textarea[name=origins]"))

    # The MCP URL, with a copy button, on the overview.
    page.click("a:has-text('Overview')")
    say("mcp", url=page.locator("#mcp-url").inner_text(), banner=page.locator(".banner").inner_text(),
        section=page.locator("section:has(h2:has-text('MCP'))").inner_text())

    # AsyncAPI: the export downloads with the session; the toggle publishes it and stops.
    export = page.request.get(api + page.get_attribute("a:has-text('Download (JSON)')", "href"))
    page.click("button:has-text('Make public')")
    page.wait_for_url(re.compile(r"done=asyncapi"))
    public_url = page.locator("a[href$='/asyncapi.json']").get_attribute("href")
    published = fetch_status(public_url)
    page.click("button:has-text('Stop publishing')")
    page.wait_for_url(re.compile(r"done=asyncapi"))
    say("asyncapi", export_status=export.status, version=export.json().get("asyncapi"),
        public_url=public_url, published=published, after_stop=fetch_status(public_url))

    # The account page: a personal token, shown once, works on the API until revoked.
    page.click(f"header a:has-text('{user1}')")
    page.fill("form[action$='/account/tokens'] input[name=name]", "mcp-client")
    page.click("button:has-text('Create personal token')")
    pat = page.locator("#new-token-secret").inner_text()
    with_pat = fetch_status(f"{api}/api/v1/me", pat)
    page.click("button[aria-label='Revoke mcp-client']")
    page.wait_for_url(re.compile(r"done=revoked"))
    sessions = page.locator("section:has(h2:has-text('Sessions')) tbody").inner_text()
    providers = page.locator("section:has(h2:has-text('Sign-in providers'))").inner_text()
    say("account", me=with_pat, after_revoke=fetch_status(f"{api}/api/v1/me", pat),
        this_browser="this browser" in sessions, providers=providers)
    page.goto(slug_url + "/settings")
    page.click("a:has-text('Settings')")

    # 4. Invite the second person, who accepts through the link after signing in.
    page.fill("form[action$='/invitations'] input[name=email]", user2)
    page.select_option("form[action$='/invitations'] select[name=role]", "editor")
    page.click("button:has-text('Invite member')")
    page.wait_for_url(re.compile(r"done=invited"))
    pending = page.locator("section:has(h2:has-text('Invitations')) tbody tr").inner_text()
    page.screenshot(path=f"{shots}/settings.png", full_page=True)
    say("invited", pending=pending)
    link = re.search(r"http://\S+", wait_mail(outbox, user2, "invited")).group(0)
    bob = browser.new_context(viewport=viewport)
    other = bob.new_page()
    other.set_default_timeout(10_000)
    other.goto(link)
    login_url = other.url
    other.fill("input[name=email]", user2)
    other.fill("input[name=password]", password2)
    other.click("button:has-text('Sign in')")
    other.wait_for_url(re.compile(r"/app/w/"))
    say("accepted", login_url=login_url, url=other.url, notice=other.locator(".notice").inner_text())
    other.goto(slug_url + "/access")
    editor_controls = write_controls(other)

    # 5. Made a Viewer, they are offered no write controls.
    page.reload()
    page.select_option(f"select[aria-label='Role of {user2}']", "viewer")
    page.click(f"form:has(select[aria-label='Role of {user2}']) button")
    page.wait_for_url(re.compile(r"done=role"))
    other.goto(slug_url + "/access")
    viewer_access = write_controls(other)
    other.screenshot(path=f"{shots}/access-viewer.png", full_page=True)
    other.goto(slug_url + "/settings")
    viewer_settings = write_controls(other)
    say("viewer", editor_access=editor_controls, access=viewer_access, settings=viewer_settings)

    # 6. A source and an ingest token; the secret is shown once, copied, and ingests.
    page.goto(slug_url + "/access")
    page.fill("form[action$='/sources'] input[name=slug]", "sensors")
    page.click("button:has-text('Create source')")
    page.wait_for_url(re.compile(r"done=source"))
    page.fill("form[action$='/tokens'] input[name=name]", "device-1")
    page.select_option("form[action$='/tokens'] select[name=source]", "sensors")
    page.click("button:has-text('Create token')")
    secret = page.locator("#new-token-secret").inner_text()
    page.click("button:has-text('Copy')")
    page.wait_for_selector("button:has-text('Copied')")
    copied = page.evaluate("navigator.clipboard.readText()")
    page.screenshot(path=f"{shots}/access-new-token.png", full_page=True)
    shown_again = secret in page.goto(slug_url + "/access").text()
    page.fill("form[action$='/tokens'] input[name=name]", "press-7")
    page.fill("form[action$='/tokens'] input[name=device_id]", "press-7")
    page.fill("form[action$='/tokens'] input[name=expires_on]", "2099-12-31")
    page.click("button:has-text('Create token')")
    bound = page.locator("section:has(h2:has-text('Access tokens')) tr:has-text('press-7')").inner_text()
    page.goto(slug_url + "/access")
    page.fill("form[action$='/sources'] input[name=slug]", "spare")
    page.click("button:has-text('Create source')")
    page.click("button[aria-label='Delete the source spare']")
    page.wait_for_url(re.compile(r"done=source-deleted"))
    sources_left = page.locator("section:has(h2:has-text('Sources')) tbody").inner_text()

    # AsyncAPI import: a document from before a source was made deletes it, after a preview.
    before = page.request.get(f"{api}/api/v1/workspaces/{slug_url.split('/')[-1]}/asyncapi").text()
    page.fill("form[action$='/sources'] input[name=slug]", "spare2")
    page.click("button:has-text('Create source')")
    page.wait_for_url(re.compile(r"done=source"))
    page.goto(slug_url + "/asyncapi")
    page.fill("textarea[name=document]", '{"asyncapi": "2.6.0"}')
    page.click("button:has-text('Preview')")
    import_refused = page.locator(".notice").inner_text()
    page.fill("textarea[name=document]", before)
    page.click("button:has-text('Preview')")
    preview = page.locator("#plan").locator("xpath=..").inner_text()
    page.click("button:has-text('Import')")
    imported = page.locator("#plan").locator("xpath=..").inner_text()
    page.goto(slug_url + "/access")
    after_import = page.locator("section:has(h2:has-text('Sources')) tbody").inner_text()
    say("import", refused=import_refused, preview=preview, imported=imported, sources=after_import)

    # A source's page: a schema gives a typed column; a broken schema is refused with the detail.
    page.click("a:has(code:text-is('sensors'))")
    page.fill("textarea[name=schema]",
              '{"type": "object", "properties": {"temperature": {"type": "number"}}}')
    page.click("button:has-text('Save source')")
    page.wait_for_url(re.compile(r"done=source-saved"))
    columns = page.locator("section:has(h2:has-text('What it takes'))").inner_text()
    page.fill("textarea[name=schema]", '{"type": 12}')
    page.click("button:has-text('Save source')")
    say("source", columns=columns, refused=page.locator(".notice").inner_text(),
        kept=page.input_value("textarea[name=schema]"))
    slug = slug_url.rstrip("/").split("/")[-1]
    status, body = ingest(f"{node}/v1/ingest/{slug}/sensors", secret)
    say("token", secret=secret, copied=copied, shown_again=shown_again, sources_left=sources_left,
        bound=bound,
        in_url=secret in page.url, ingest_status=status, ingest_body=body)

    # 7. The workspace's own SMTP server: Save, Send test, the delivery row, then Remove.
    page.goto(slug_url + "/mail")
    page.fill("input[name=host]", "127.0.0.1")
    page.fill("input[name=port]", smtp_port)
    page.select_option("select[name=security]", "none")
    page.fill("input[name=from_address]", "fleet@example.com")
    page.fill("input[name=from_name]", "Fleet North")
    page.click("button:has-text('Save')")
    page.wait_for_url(re.compile(r"done=smtp-saved"))
    saved = page.locator(".notice").inner_text()
    page.click("button:has-text('Send test')")
    test_notice = page.locator(".notice").inner_text()
    page.click("a:has-text('Refresh')")
    delivery = page.locator("section:has(h2:has-text('Email deliveries')) tbody tr").first.inner_text()
    page.screenshot(path=f"{shots}/mail.png", full_page=True)
    other.goto(slug_url + "/mail")
    viewer_mail = write_controls(other)
    viewer_host = "127.0.0.1" in other.locator("main").inner_text()
    page.click("button:has-text('Remove')")
    page.wait_for_url(re.compile(r"done=smtp-removed"))
    removed = page.locator("main").inner_text()
    say("smtp", saved=saved, test=test_notice, delivery=delivery, viewer_controls=viewer_mail,
        viewer_sees_settings=viewer_host, removed=removed)

    # The Viewer leaves: the workspace is no longer theirs.
    other.goto(slug_url + "/settings")
    other.click("button:has-text('Leave workspace')")
    other.wait_for_url(f"{api}/app")
    say("left", listed=other.locator("main table").inner_text(),
        status=other.goto(slug_url).status)

    # 8. Forged forms: without the token, and from another site with it.
    forged = ada.request.post(slug_url + "/rename", form={"name": "pwned"}, max_redirects=0)
    token = page.locator("input[name=csrf]").first.get_attribute("value")
    EvilPage.target = slug_url + "/rename"
    EvilPage.token = token
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EvilPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    evil = ada.new_page()
    evil.goto(f"http://127.0.0.1:{server.server_address[1]}/")
    with evil.expect_navigation():
        evil.click("#go")
    cross_site = evil.locator("main").inner_text()
    server.shutdown()
    say("csrf", no_token_status=forged.status, no_token_body=forged.text(),
        cross_site=cross_site, name_after=page.goto(slug_url).ok and page.locator("h1").inner_text())

    # Accessibility. The pages' CSP refuses the injected checker, as it should: a context of
    # the same session that lets the checker in.
    checker = browser.new_context(bypass_csp=True, storage_state=ada.storage_state())
    audited = checker.new_page()
    audited.goto(slug_url + "/settings")
    settings_violations = axe(audited, axe_js)
    audited.goto(slug_url + "/access")
    access_violations = axe(audited, axe_js)
    audited.goto(slug_url + "/mail")
    mail_violations = axe(audited, axe_js)
    audited.goto(f"{api}/app/account")
    account_violations = axe(audited, axe_js)
    checker.close()
    say("axe", settings=settings_violations, access=access_violations, mail=mail_violations,
        account=account_violations)

    # 9. Delete: a wrong name is refused; the right one deletes.
    page.goto(slug_url + "/settings")
    page.click("summary:has-text('Delete workspace')")
    page.fill("input[name=confirm]", "Fleet North")
    page.click("button:has-text('Delete workspace')")
    wrong = page.locator(".notice").inner_text()
    page.click("summary:has-text('Delete workspace')")
    page.fill("input[name=confirm]", "Fleet North EU")
    page.click("button:has-text('Delete workspace')")
    page.wait_for_url(re.compile(r"/app\?done=deleted"))
    listed = page.locator("main table").inner_text()
    page.screenshot(path=f"{shots}/workspaces.png", full_page=True)
    say("deleted", wrong=wrong, notice=page.locator(".notice").inner_text(), listed=listed)

    # 10. Sign out: the console asks to sign in again.
    page.click("button:has-text('Sign out')")
    page.wait_for_url(re.compile(r"/login"))
    page.goto(f"{api}/app")
    say("signed_out", url=page.url)

    # 11. Password reset from the sign-in form, then signing in with the new password.
    page.click("text=Forgot your password?")
    page.fill("input[name=email]", user1)
    page.click("button:has-text('Send a code')")
    code = re.search(r"\b(\d{6})\b", wait_mail(outbox, user1, "password reset code")).group(1)
    page.fill("input[name=code]", code)
    page.fill("input[name=password]", "a brand new passphrase")
    page.click("button:has-text('Set the password')")
    page.wait_for_url(re.compile(r"/login\?next=%2Fapp"))
    page.fill("input[name=email]", user1)
    page.fill("input[name=password]", "a brand new passphrase")
    page.click("button:has-text('Sign in')")
    page.wait_for_url(f"{api}/app")
    say("password_reset", url=page.url)


if __name__ == "__main__":
    main()
