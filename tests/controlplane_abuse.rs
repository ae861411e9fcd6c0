//! The control-plane API under abuse: answers that do not tell who is registered, sign-in
//! guessing in parallel and from many addresses, slow senders, and the in-flight limit of the
//! whole API.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::controlplane::{verified_user, wait_mail, Api, User};
use common::{Answer, Sluice};
use serde_json::{json, Value};

fn config_file(dir: &Path, controlplane: &str) -> String {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, format!("[controlplane]\n{controlplane}")).expect("config");
    path.to_str().expect("path").to_owned()
}

/// The operator's e-mail and password from `initial-operator.json`.
fn operator(data_dir: &Path) -> (String, String) {
    let operator: Value = serde_json::from_str(
        &std::fs::read_to_string(data_dir.join("initial-operator.json")).expect("file"),
    )
    .expect("JSON");
    (
        operator["email"].as_str().expect("email").to_owned(),
        operator["password"].as_str().expect("password").to_owned(),
    )
}

/// A TCP connection to `to` from the loopback address `from` (any of 127.0.0.0/8), so that a
/// test can be several clients.
fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from((from, 0)))
            .expect("bind the source address");
        socket.connect(to).await.expect("connect")
    });
    let stream = stream.into_std().expect("std stream");
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream
}

/// `POST path` with a JSON body over a fresh connection from `from`; returns the status and
/// the body.
fn post_from(from: [u8; 4], api: SocketAddr, path: &str, body: &Value) -> (u16, String) {
    let mut stream = connect_from(from, api);
    let body = body.to_string();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn api_addr(sluice: &Sluice) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], sluice.api_port))
}

/// What a refusal tells: status, type and detail.
fn refusal(a: &Answer) -> (u16, String, String) {
    (
        a.status,
        a.problem(),
        a.json()["detail"].as_str().unwrap_or_default().to_owned(),
    )
}

#[test]
fn verification_answers_alike_for_a_wrong_code_an_unknown_address_and_a_verified_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let api = Api::new(sluice.api_url());
    let mail = sluice.data_dir.join("outbox");
    let verified = verified_user(&api, &mail, "verified@example.com");
    let a = api.post(
        "/api/v1/users",
        None,
        json!({"email": "pending@example.com", "password": "a long passphrase",
            "first_name": "P", "last_name": "Q"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let code = wait_mail(&mail, "pending@example.com", "verification code", 0).code();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let verify = |email: &str| {
        api.post(
            "/api/v1/email-verification",
            None,
            json!({"email": email, "code": wrong}),
        )
    };
    let wrong_code = refusal(&verify("pending@example.com"));
    let unknown = refusal(&verify("nobody@example.com"));
    let already = refusal(&verify(&verified.email));
    assert_eq!(wrong_code.0, 400, "{wrong_code:?}");
    assert_eq!(wrong_code.1, "invalid-code", "{wrong_code:?}");
    assert_eq!(
        unknown, wrong_code,
        "an unknown address answers as a wrong code"
    );
    assert_eq!(
        already, wrong_code,
        "a verified address answers as a wrong code"
    );

    // Password reset the same way: a wrong code and an unknown address look alike.
    let reset = |email: &str| {
        api.post(
            "/api/v1/password-reset",
            None,
            json!({"email": email, "code": wrong, "password": "another long passphrase"}),
        )
    };
    let a = api.post(
        "/api/v1/password-reset/code",
        None,
        json!({"email": verified.email}),
    );
    assert_eq!(a.status, 202, "{}", a.body);
    wait_mail(&mail, &verified.email, "password reset", 0);
    let wrong_code = refusal(&reset(&verified.email));
    assert_eq!(wrong_code.1, "invalid-code", "{wrong_code:?}");
    assert_eq!(refusal(&reset("nobody@example.com")), wrong_code);
    // The right code still works after a wrong one.
    let a = api.post(
        "/api/v1/email-verification",
        None,
        json!({"email": "pending@example.com", "code": code}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
}

/// 40 wrong passwords sent at once get exactly the limit of password checks (answered 401);
/// every other one is refused before its check (429).
#[test]
fn parallel_wrong_passwords_get_no_more_checks_than_the_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let (email, _) = operator(&sluice.data_dir);
    let api = Api::new(sluice.api_url());
    let answers: Vec<u16> = std::thread::scope(|scope| {
        let guesses: Vec<_> = (0..40)
            .map(|i| {
                let api = api.clone();
                let email = email.clone();
                scope.spawn(move || {
                    api.post(
                        "/api/v1/sessions",
                        None,
                        json!({"email": email, "password": format!("wrong guess {i}")}),
                    )
                    .status
                })
            })
            .collect();
        guesses
            .into_iter()
            .map(|g| g.join().expect("guess"))
            .collect()
    });
    let checked = answers.iter().filter(|s| **s == 401).count();
    let refused = answers.iter().filter(|s| **s == 429).count();
    assert_eq!((checked, refused), (10, 30), "{answers:?}");
}

/// Guessing from one address locks that address out of the account, not its owner signing in
/// from another; guessing from many addresses still meets the account's overall limit.
#[test]
fn a_lockout_from_one_address_leaves_the_owner_in_from_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(
        dir.path(),
        "sign_in_failures_per_account_all_addresses = 25\n",
    );
    let sluice = Sluice::start(&dir.path().join("data"), &["--config", &config]);
    let (email, password) = operator(&sluice.data_dir);
    let api = api_addr(&sluice);
    let sign_in = |from: [u8; 4], password: &str| {
        post_from(
            from,
            api,
            "/api/v1/sessions",
            &json!({"email": email, "password": password}),
        )
    };
    let guesser = [127, 0, 0, 3];
    for _ in 0..10 {
        assert_eq!(sign_in(guesser, "wrong password!").0, 401);
    }
    let (status, body) = sign_in(guesser, &password);
    assert_eq!(status, 429, "the guessing address is locked out: {body}");
    let (status, body) = sign_in([127, 0, 0, 2], &password);
    assert_eq!(status, 201, "the owner from elsewhere is not: {body}");

    // Guessers on more addresses: after 25 failures in all, every address is refused.
    let mut failures = 0;
    for host in 10..13u8 {
        for _ in 0..10 {
            if sign_in([127, 0, 1, host], "wrong password!").0 == 401 {
                failures += 1;
            }
        }
    }
    assert_eq!(failures, 15, "25 in all, 10 of them from the first guesser");
    let (status, body) = sign_in([127, 0, 0, 2], &password);
    assert_eq!(status, 429, "the account's overall limit holds: {body}");
}

/// Opens a request that sends its headers and a little of its body, then nothing more.
fn slow_request(api: SocketAddr, path: &str) -> TcpStream {
    let mut stream = connect_from([127, 0, 0, 9], api);
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\n\
         Content-Length: 1000\r\n\r\n{{\"email\": \""
    )
    .expect("send");
    stream
}

#[test]
fn slow_unauthenticated_requests_do_not_keep_a_real_sign_in_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(
        dir.path(),
        "concurrent_requests_max = 4\nbody_read_timeout_ms = 2000\n",
    );
    let sluice = Sluice::start(&dir.path().join("data"), &["--config", &config]);
    let (email, password) = operator(&sluice.data_dir);
    let api = api_addr(&sluice);
    let mut slow: Vec<TcpStream> = (0..16)
        .map(|i| {
            let path = ["/api/v1/sessions", "/api/v1/users", "/login"][i % 3];
            slow_request(api, path)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = post_from(
        [127, 0, 0, 1],
        api,
        "/api/v1/sessions",
        &json!({"email": email, "password": password}),
    );
    assert_eq!(status, 201, "{body}");

    // The slow ones are answered 408 once their body is overdue.
    let started = Instant::now();
    let mut answer = String::new();
    let _ = slow[0].read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a body not complete in time: {answer}"
    );
    assert!(answer.contains("body-timeout"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "within body_read_timeout_ms (2 s): {:?}",
        started.elapsed()
    );
}

/// `concurrent_requests_max` is one limit for the whole API: requests held on one route leave
/// no room on another.
#[test]
fn the_in_flight_limit_covers_the_whole_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(
        dir.path(),
        "concurrent_requests_max = 2\nsmtp_timeout_ms = 2000\n",
    );
    let sluice = Sluice::start(
        &dir.path().join("data"),
        &["--config", &config, "--smtp-allow-private-hosts"],
    );
    let api = Api::new(sluice.api_url());
    let admin: User = verified_user(&api, &sluice.data_dir.join("outbox"), "admin@acme.example");
    let a = api.post(
        "/api/v1/workspaces",
        Some(&admin.token),
        json!({"name": "acme", "slug": "acme"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    // An SMTP server that accepts connections and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let a = api.put(
        "/api/v1/workspaces/acme/smtp",
        &admin.token,
        json!({"host": "127.0.0.1", "port": port, "security": "none",
            "from_address": "ops@acme.example"}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    std::thread::scope(|scope| {
        let sends: Vec<_> = (0..2)
            .map(|_| {
                let api = api.clone();
                let token = admin.token.clone();
                scope.spawn(move || {
                    api.post(
                        "/api/v1/workspaces/acme/smtp/test",
                        Some(&token),
                        json!({"to": "someone@example.com"}),
                    )
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let a = api.get("/api/v1/me", &admin.token);
        assert_eq!(a.status, 503, "{}", a.body);
        assert_eq!(a.problem(), "overloaded", "{}", a.body);
        for send in sends {
            let a = send.join().expect("send");
            assert_eq!(a.status, 200, "{}", a.body);
        }
    });
    drop(silent);
    assert_eq!(api.get("/api/v1/me", &admin.token).status, 200);
}
