"""Reads mail files the way a mail client does, with Python's `email` package
(policy=email.policy.default), and prints what Sluice's tests check about them as JSON.

    mail_reader.py FILE...
        prints a JSON list, one object per file: MIME-Version, the content type, the defects
        the parser found, every leaf part (content type, charset, transfer encoding, decoded
        content), and the decoded plain-text and HTML bodies a client would show.
"""

import email
import email.policy
import json
import sys


def describe(path):
    with open(path, "rb") as f:
        message = email.message_from_binary_file(f, policy=email.policy.default)
    defects = [repr(d) for d in message.defects]
    parts = []
    for part in message.walk():
        defects += [repr(d) for d in part.defects]
        if part.is_multipart():
            continue
        parts.append(
            {
                "content_type": part.get_content_type(),
                "charset": part.get_content_charset(),
                "transfer_encoding": part.get("Content-Transfer-Encoding"),
                "content": part.get_content(),
            }
        )
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    return {
        "path": path,
        "mime_version": message.get("MIME-Version"),
        "content_type": message.get_content_type(),
        "to": str(message.get("To")),
        "subject": str(message.get("Subject")),
        "defects": defects,
        "parts": parts,
        "text": text.get_content() if text is not None else None,
        "html": html.get_content() if html is not None else None,
    }


def main():
    print(json.dumps([describe(path) for path in sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
