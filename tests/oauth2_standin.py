"""A stand-in for GitHub's and X's OAuth 2 and user APIs, for tests/sign_in.rs.

Implements the documented endpoints the control plane calls, on 127.0.0.1:
- GitHub: GET /login/oauth/authorize (approves at once: 302 to redirect_uri with code and
  state), POST /login/oauth/access_token (client_secret in the form, JSON answer with
  Accept: application/json), GET /user, GET /user/emails;
- X: GET /i/oauth2/authorize, POST /2/oauth2/token (client credentials in Basic
  authentication), GET /2/users/me.

The token endpoints check the PKCE S256 verifier against the challenge and that a code works
once. `--github-email-verified false` makes GitHub's primary address unverified.

Usage: python oauth2_standin.py --port P --client-id ID --client-secret S
       [--github-email ADDR] [--github-email-verified true|false]
"""

import argparse
import base64
import hashlib
import json
import secrets
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlparse

args_parser = argparse.ArgumentParser()
args_parser.add_argument("--port", type=int, required=True)
args_parser.add_argument("--client-id", required=True)
args_parser.add_argument("--client-secret", required=True)
args_parser.add_argument("--github-email", default="octo@example.com")
args_parser.add_argument("--github-email-verified", default="true")
args = args_parser.parse_args()

codes = {}  # code -> (challenge, redirect_uri)
tokens = set()
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def answer(self, status, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def authorized(self):
        auth = self.headers.get("Authorization", "")
        with lock:
            return auth.startswith("Bearer ") and auth[7:] in tokens

    def do_GET(self):
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path in ("/login/oauth/authorize", "/i/oauth2/authorize"):
            if q.get("client_id") != args.client_id or q.get("code_challenge_method") != "S256":
                return self.answer(400, {"error": "invalid_request"})
            code = secrets.token_urlsafe(16)
            with lock:
                codes[code] = (q["code_challenge"], q["redirect_uri"])
            to = q["redirect_uri"] + "?" + urlencode({"code": code, "state": q["state"]})
            self.send_response(302)
            self.send_header("Location", to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if not self.authorized():
            return self.answer(401, {"message": "Bad credentials"})
        if url.path == "/user":
            return self.answer(200, {"id": 4242, "login": "octocat", "name": "Octo Cat"})
        if url.path == "/user/emails":
            verified = args.github_email_verified == "true"
            return self.answer(200, [
                {"email": "old@example.com", "primary": False, "verified": True},
                {"email": args.github_email, "primary": True, "verified": verified},
            ])
        if url.path == "/2/users/me":
            return self.answer(200, {"data": {"id": "1234567", "name": "Ex User", "username": "exuser"}})
        return self.answer(404, {"message": "Not Found"})

    def do_POST(self):
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length", "0"))
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        if url.path == "/login/oauth/access_token":
            secret_ok = form.get("client_secret") == args.client_secret
        elif url.path == "/2/oauth2/token":
            expected = base64.b64encode(f"{args.client_id}:{args.client_secret}".encode()).decode()
            secret_ok = self.headers.get("Authorization") == f"Basic {expected}"
        else:
            return self.answer(404, {"message": "Not Found"})
        if not secret_ok or form.get("client_id") != args.client_id:
            return self.answer(401, {"error": "invalid_client"})
        with lock:
            pending = codes.pop(form.get("code", ""), None)
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
        if pending is None or pending[0] != challenge or pending[1] != form.get("redirect_uri"):
            return self.answer(400, {"error": "invalid_grant"})
        token = secrets.token_urlsafe(24)
        with lock:
            tokens.add(token)
        return self.answer(200, {"access_token": token, "token_type": "bearer", "scope": "read:user,user:email"})


server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
print("listening", flush=True)
sys.stdout.flush()
server.serve_forever()
