//! Control-plane helpers: a JSON API client, mail read back from a real SMTP server (Python's
//! aiosmtpd, installed by `scripts/test.sh`) or from the outbox, and users who sign up and
//! verify their address the way a person would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::{agent, free_port, python, wait_for, Answer};

/// A client of the control-plane API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
}

impl Api {
    pub fn new(base: String) -> Self {
        Api { base }
    }

    /// One request; `token` goes in `Authorization: Bearer`.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let url = format!("{}{path}", self.base);
        let agent = agent();
        let mut req = http_request(method, &url);
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        Answer::of(
            agent
                .run(req.body(bytes.into_bytes()).expect("request"))
                .expect("request sent"),
        )
    }

    pub fn get(&self, path: &str, token: &str) -> Answer {
        self.call("GET", path, Some(token), None)
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: Value) -> Answer {
        self.call("POST", path, token, Some(&body))
    }

    pub fn patch(&self, path: &str, token: &str, body: Value) -> Answer {
        self.call("PATCH", path, Some(token), Some(&body))
    }

    pub fn put(&self, path: &str, token: &str, body: Value) -> Answer {
        self.call("PUT", path, Some(token), Some(&body))
    }

    pub fn delete(&self, path: &str, token: &str) -> Answer {
        self.call("DELETE", path, Some(token), None)
    }

    /// Signs in; returns the session token.
    pub fn sign_in(&self, email: &str, password: &str) -> String {
        let a = self.post(
            "/api/v1/sessions",
            None,
            json!({"email": email, "password": password}),
        );
        assert_eq!(a.status, 201, "sign in as {email}: {}", a.body);
        a.json()["token"].as_str().expect("token").to_owned()
    }
}

fn http_request(method: &str, url: &str) -> ureq::http::request::Builder {
    ureq::http::Request::builder().method(method).uri(url)
}

/// A mail as received.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: String,
    pub from: String,
    pub subject: String,
    pub body: String,
}

impl Mail {
    /// The six-digit code in a verification or reset mail.
    pub fn code(&self) -> String {
        self.body
            .split(|c: char| !c.is_ascii_digit())
            .find(|w| w.len() == 6)
            .unwrap_or_else(|| panic!("no code in mail: {}", self.body))
            .to_owned()
    }

    /// The first `http://` link in the mail.
    pub fn link(&self) -> String {
        let start = self.body.find("http://").expect("a link in the mail");
        self.body[start..]
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Parses a raw RFC 5322 message: its headers, and as `body` its plain-text content (the
/// `text/plain` part of a multipart message), decoded from 7bit, 8bit or quoted-printable.
pub fn parse_mail(raw: &str) -> Mail {
    let raw = raw.replace("\r\n", "\n");
    let (head, body) = split_head(&raw);
    Mail {
        to: header(head, "To"),
        from: header(head, "From"),
        subject: header(head, "Subject"),
        body: plain_text(head, body).unwrap_or_default(),
    }
}

fn split_head(raw: &str) -> (&str, &str) {
    raw.split_once("\n\n").unwrap_or((raw, ""))
}

/// A header's value (unfolded), or "" when absent.
fn header(head: &str, name: &str) -> String {
    let unfolded = head.replace("\n ", " ").replace("\n\t", " ");
    unfolded
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
        .unwrap_or_default()
}

/// The decoded `text/plain` content of a message or part: itself, or its first plain-text
/// part when it is multipart.
fn plain_text(head: &str, body: &str) -> Option<String> {
    let content_type = header(head, "Content-Type");
    let lower = content_type.to_ascii_lowercase();
    if lower.starts_with("multipart/") {
        let boundary = content_type
            .split(';')
            .find_map(|p| {
                let (k, v) = p.trim().split_once('=')?;
                k.eq_ignore_ascii_case("boundary")
                    .then(|| v.trim_matches('"').to_owned())
            })
            .expect("a multipart message has a boundary");
        let delimiter = format!("--{boundary}");
        return format!("\n{body}")
            .split(&format!("\n{delimiter}"))
            .skip(1)
            .take_while(|part| !part.starts_with("--"))
            .find_map(|part| {
                let part = part.strip_prefix('\n').unwrap_or(part);
                let (head, body) = split_head(part);
                plain_text(head, body)
            });
    }
    if !(lower.is_empty() || lower.starts_with("text/plain")) {
        return None;
    }
    let encoding = header(head, "Content-Transfer-Encoding");
    Some(if encoding.eq_ignore_ascii_case("quoted-printable") {
        decode_quoted_printable(body)
    } else {
        body.to_owned()
    })
}

fn decode_quoted_printable(text: &str) -> String {
    let joined = text.replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' && i + 2 < bytes.len() + 1 {
            if let Ok(b) = u8::from_str_radix(&joined[i + 1..(i + 3).min(joined.len())], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mail files (`*.eml` or Maildir entries) under `dir`, oldest first, each parsed.
pub fn mail_files(dir: &Path) -> Vec<(PathBuf, Mail)> {
    let mut files: Vec<PathBuf> = Vec::new();
    for sub in [dir.to_path_buf(), dir.join("new"), dir.join("cur")] {
        if let Ok(entries) = std::fs::read_dir(&sub) {
            files.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
    }
    // Oldest first (one worker writes them in turn), so that `nth` counts mails in the order
    // they arrived.
    files.sort_by_key(|p| {
        (
            std::fs::metadata(p).and_then(|m| m.modified()).ok(),
            p.clone(),
        )
    });
    files
        .into_iter()
        .filter(|p| p.extension().is_none_or(|e| e != "json"))
        .filter_map(|p| {
            let raw = std::fs::read_to_string(&p).ok()?;
            Some((p, parse_mail(&raw)))
        })
        .collect()
}

/// Mail files (`*.eml` or Maildir entries) under `dir`, parsed.
pub fn mails_in(dir: &Path) -> Vec<Mail> {
    mail_files(dir).into_iter().map(|(_, mail)| mail).collect()
}

/// Whether `mail` is addressed to exactly `to` (case-insensitive), as `to` or `Name <to>`.
fn addressed_to(mail: &Mail, to: &str) -> bool {
    let address = match (mail.to.find('<'), mail.to.rfind('>')) {
        (Some(start), Some(end)) if start < end => &mail.to[start + 1..end],
        _ => mail.to.as_str(),
    };
    address.trim().eq_ignore_ascii_case(to)
}

/// Mails to `to` whose subject contains `subject`, oldest first.
pub fn mails_to(dir: &Path, to: &str, subject: &str) -> Vec<Mail> {
    mails_in(dir)
        .into_iter()
        .filter(|m| addressed_to(m, to) && m.subject.contains(subject))
        .collect()
}

/// Waits until there are more than `skip` mails to `to` whose subject contains `subject`;
/// returns the one after the first `skip` (in order of arrival).
pub fn wait_mail(dir: &Path, to: &str, subject: &str, skip: usize) -> Mail {
    let path = wait_mail_file(dir, to, subject, skip);
    parse_mail(&std::fs::read_to_string(path).expect("mail file"))
}

/// Like [`wait_mail`], but returns the file the mail is in.
pub fn wait_mail_file(dir: &Path, to: &str, subject: &str, skip: usize) -> PathBuf {
    let find = || {
        mail_files(dir)
            .into_iter()
            .filter(|(_, m)| addressed_to(m, to) && m.subject.contains(subject))
            .nth(skip)
            .map(|(path, _)| path)
    };
    assert!(
        wait_for(Duration::from_secs(20), || find().is_some()),
        "no mail #{skip} to {to} about {subject:?} in {}",
        dir.display()
    );
    find().expect("mail")
}

/// Mail files as a mail client reads them: parsed by Python's `email` package
/// (`policy=email.policy.default`, through `tests/mail_reader.py`). Each is a JSON object
/// with `mime_version`, `content_type`, `defects`, `parts` (`content_type`, `charset`,
/// `transfer_encoding`, decoded `content`) and the decoded `text` and `html` bodies.
pub fn read_mails_like_a_client(files: &[PathBuf]) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mail_reader.py");
    let out = Command::new(python())
        .arg(script)
        .args(files)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "reading mails with Python's email package failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("mail_reader.py prints JSON")
}

/// A real SMTP server (aiosmtpd, through `tests/smtp_server.py`) on loopback that stores what
/// it receives in a Maildir.
pub struct SmtpServer {
    child: Child,
    pub port: u16,
    pub maildir: PathBuf,
}

/// How a test SMTP server behaves.
#[derive(Default, Clone)]
pub struct SmtpOptions {
    /// `plain` (default), `starttls` or `tls`.
    pub mode: Option<&'static str>,
    /// Key and certificate PEM (from [`make_certs`]) for the TLS modes.
    pub cert: Option<PathBuf>,
    /// Require AUTH with this login.
    pub login: Option<(&'static str, &'static str)>,
    /// Refuse recipients of this domain with 550.
    pub reject_domain: Option<&'static str>,
}

fn smtp_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_server.py")
}

/// Writes a test CA (`ca.pem`) and a server certificate for 127.0.0.1 (`server.pem`) to `dir`.
pub fn make_certs(dir: &Path) {
    let status = Command::new(python())
        .arg(smtp_script())
        .arg("certs")
        .arg(dir)
        .status()
        .expect("python");
    assert!(status.success(), "making test certificates failed");
}

impl SmtpServer {
    pub fn start(maildir: &Path) -> SmtpServer {
        Self::start_with(maildir, SmtpOptions::default())
    }

    pub fn start_with(maildir: &Path, options: SmtpOptions) -> SmtpServer {
        let port = free_port();
        let mut cmd = Command::new(python());
        cmd.arg(smtp_script())
            .arg("serve")
            .args(["--port", &port.to_string()])
            .arg("--maildir")
            .arg(maildir)
            .args(["--mode", options.mode.unwrap_or("plain")]);
        if let Some(cert) = &options.cert {
            cmd.arg("--cert").arg(cert);
        }
        if let Some((user, password)) = options.login {
            cmd.args(["--user", user, "--password", password]);
        }
        if let Some(domain) = options.reject_domain {
            cmd.args(["--reject-domain", domain]);
        }
        let log = std::fs::File::create(maildir.with_extension("log")).expect("server log");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting aiosmtpd failed ({e}); run the tests through scripts/test.sh")
            });
        let up = wait_for(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "aiosmtpd did not start on port {port}");
        SmtpServer {
            child,
            port,
            maildir: maildir.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Api {
    /// Signs in as the operator the control plane created on first start in `data_dir`.
    pub fn operator_session(&self, data_dir: &Path) -> String {
        let operator: Value = serde_json::from_str(
            &std::fs::read_to_string(data_dir.join("initial-operator.json"))
                .expect("initial-operator.json"),
        )
        .expect("initial-operator.json is JSON");
        self.sign_in(
            operator["email"].as_str().expect("email"),
            operator["password"].as_str().expect("password"),
        )
    }
}

/// A signed-up, verified, signed-in user.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub email: String,
    pub password: String,
    pub token: String,
}

/// Signs up `email`, verifies it with the code mailed to `mail_dir`, and signs in.
pub fn verified_user(api: &Api, mail_dir: &Path, email: &str) -> User {
    let password = format!("pw-{email}-long-enough");
    let a = api.post(
        "/api/v1/users",
        None,
        json!({"email": email, "password": password, "first_name": "Test", "last_name": email}),
    );
    assert_eq!(a.status, 201, "sign up {email}: {}", a.body);
    let id = a.json()["id"].as_str().expect("id").to_owned();
    let code = wait_mail(mail_dir, email, "verification code", 0).code();
    let v = api.post(
        "/api/v1/email-verification",
        None,
        json!({"email": email, "code": code}),
    );
    assert_eq!(v.status, 200, "verify {email}: {}", v.body);
    let token = api.sign_in(email, &password);
    User {
        id,
        email: email.to_owned(),
        password,
        token,
    }
}

/// Invites `user` into `workspace` with `role` as `admin` and accepts with the mailed link's
/// token through the API.
pub fn add_member(
    api: &Api,
    mail_dir: &Path,
    admin: &User,
    workspace: &str,
    user: &User,
    role: &str,
) {
    let earlier = mails_to(mail_dir, &user.email, "invited").len();
    let a = api.post(
        &format!("/api/v1/workspaces/{workspace}/invitations"),
        Some(&admin.token),
        json!({"email": user.email, "role": role}),
    );
    assert_eq!(a.status, 201, "invite {}: {}", user.email, a.body);
    let link = wait_mail(mail_dir, &user.email, "invited", earlier).link();
    let token = link.split("token=").nth(1).expect("token in link");
    let a = api.post(
        "/api/v1/invitations/acceptance",
        Some(&user.token),
        json!({"token": token}),
    );
    assert_eq!(a.status, 200, "accept as {}: {}", user.email, a.body);
}
