"""A real SMTP server for Sluice's tests (aiosmtpd), storing what it receives in a Maildir.

    smtp_server.py certs DIR
        writes DIR/ca.pem (a test CA) and DIR/server.pem (key and certificate for 127.0.0.1
        and localhost, signed by that CA), with trustme.

    smtp_server.py serve --port P --maildir DIR [--mode plain|starttls|tls] [--cert PEM]
                         [--user U --password P] [--reject-domain example.org]
        plain: no TLS; starttls: STARTTLS required before MAIL; tls: implicit TLS.
        With --user, AUTH is required and only that login succeeds.
        With --reject-domain, RCPT TO addresses of that domain get 550.
"""

import argparse
import logging
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult, LoginPassword


class Handler(Mailbox):
    def __init__(self, maildir, reject_domain):
        super().__init__(maildir)
        self.reject_domain = reject_domain

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.reject_domain and address.lower().endswith("@" + self.reject_domain):
            return "550 5.1.1 <%s>: recipient refused by the test server" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"


def certs(directory):
    import trustme

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(directory + "/ca.pem")
    server.private_key_and_cert_chain_pem.write_to_path(directory + "/server.pem")


def serve(args):
    logging.basicConfig(level=logging.INFO)
    context = None
    if args.mode in ("starttls", "tls"):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert)
    params = {}
    if args.user:

        def authenticate(server, session, envelope, mechanism, auth_data):
            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login.decode() == args.user
                and auth_data.password.decode() == args.password
            )
            # handled=False: aiosmtpd answers 535 itself on failure.
            return AuthResult(success=ok, handled=False)

        params.update(
            authenticator=authenticate,
            auth_required=True,
            # With implicit TLS aiosmtpd does not see the session as encrypted and would hide
            # AUTH; the connection is TLS from the first byte anyway.
            auth_require_tls=args.mode == "starttls",
        )
    if args.mode == "starttls":
        params.update(tls_context=context, require_starttls=True)
    controller = Controller(
        Handler(args.maildir, args.reject_domain),
        hostname="127.0.0.1",
        port=args.port,
        ssl_context=context if args.mode == "tls" else None,
        **params,
    )
    controller.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        controller.stop()


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("certs")
    c.add_argument("dir")
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--maildir", required=True)
    s.add_argument("--mode", choices=["plain", "starttls", "tls"], default="plain")
    s.add_argument("--cert")
    s.add_argument("--user")
    s.add_argument("--password")
    s.add_argument("--reject-domain")
    args = parser.parse_args()
    if args.command == "certs":
        certs(args.dir)
    else:
        serve(args)


if __name__ == "__main__":
    sys.exit(main())
