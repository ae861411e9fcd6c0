//! Sign-ins in progress, kept in memory: each started flow (its `state`, PKCE verifier, nonce
//! and `next`) until its callback, and each identity waiting for its e-mail address to be
//! confirmed by code. Both are bound to the browser that started them by a random secret in
//! the `sluice_sign_in` cookie (only its SHA-256 is kept), so that a callback URL or a code
//! form sent to someone else's browser does nothing there.
//!
//! Bounded in time (`flow_ttl_secs`) and number (`pending_flows_max`, past which the oldest
//! is forgotten). A control-plane restart forgets them all: the person starts again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::auth::sha256_hex;

/// A started sign-in, until its callback.
#[derive(Debug, Clone)]
pub struct Flow {
    pub provider: String,
    pub pkce_verifier: String,
    pub nonce: String,
    /// Where to go afterwards (already made safe).
    pub next: String,
    browser_sha256: String,
    expires_at: Instant,
}

/// A provider account whose e-mail address is not confirmed yet.
#[derive(Debug, Clone)]
pub struct Unconfirmed {
    pub provider: String,
    pub subject: String,
    /// What the provider said, when it said anything.
    pub provider_email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub next: String,
    /// The address a code was mailed to, and that code (SHA-256) with the guesses left.
    pub code: Option<MailedCode>,
    expires_at: Instant,
}

/// A code mailed to confirm an address.
#[derive(Debug, Clone)]
pub struct MailedCode {
    pub email: String,
    pub sha256: String,
    pub attempts_left: u32,
}

/// Why a callback's `state` was refused. One answer for all, so that nothing tells which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateRefused;

/// The sign-ins in progress.
pub struct Pending {
    flows: Mutex<HashMap<String, Flow>>,
    unconfirmed: Mutex<HashMap<String, Unconfirmed>>,
    ttl: Duration,
    max: usize,
}

/// Drops expired entries, then the soonest to expire until there is room for one more.
fn make_room<T>(map: &mut HashMap<String, T>, max: usize, expires: impl Fn(&T) -> Instant) {
    let now = Instant::now();
    map.retain(|_, v| expires(v) > now);
    while map.len() >= max.max(1) {
        let Some(oldest) = map
            .iter()
            .min_by_key(|(_, v)| expires(v))
            .map(|(k, _)| k.clone())
        else {
            break;
        };
        map.remove(&oldest);
    }
}

impl Pending {
    pub fn new(ttl: Duration, max: usize) -> Pending {
        Pending {
            flows: Mutex::new(HashMap::new()),
            unconfirmed: Mutex::new(HashMap::new()),
            ttl,
            max,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Keeps a started flow under its `state`, bound to `browser_secret`.
    pub fn start(
        &self,
        state: &str,
        browser_secret: &str,
        provider: &str,
        pkce_verifier: String,
        nonce: String,
        next: String,
    ) {
        let mut flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
        make_room(&mut flows, self.max, |f| f.expires_at);
        flows.insert(
            state.to_owned(),
            Flow {
                provider: provider.to_owned(),
                pkce_verifier,
                nonce,
                next,
                browser_sha256: sha256_hex(browser_secret),
                expires_at: Instant::now() + self.ttl,
            },
        );
    }

    /// Takes the flow of `state`: it works once, only for the browser and provider that
    /// started it, and only before it expires.
    pub fn take(
        &self,
        state: &str,
        browser_secret: Option<&str>,
        provider: &str,
    ) -> Result<Flow, StateRefused> {
        let flow = self
            .flows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(state)
            .ok_or(StateRefused)?;
        let same_browser = browser_secret.is_some_and(|b| sha256_hex(b) == flow.browser_sha256);
        if !same_browser || flow.provider != provider || flow.expires_at <= Instant::now() {
            return Err(StateRefused);
        }
        Ok(flow)
    }

    /// Keeps an account waiting for its address to be confirmed, bound to `browser_secret`.
    #[allow(clippy::too_many_arguments)]
    pub fn hold(
        &self,
        browser_secret: &str,
        provider: &str,
        subject: String,
        provider_email: Option<String>,
        first_name: Option<String>,
        last_name: Option<String>,
        next: String,
    ) {
        let mut held = self.unconfirmed.lock().unwrap_or_else(|e| e.into_inner());
        make_room(&mut held, self.max, |u| u.expires_at);
        held.insert(
            sha256_hex(browser_secret),
            Unconfirmed {
                provider: provider.to_owned(),
                subject,
                provider_email,
                first_name,
                last_name,
                next,
                code: None,
                expires_at: Instant::now() + self.ttl,
            },
        );
    }

    /// The account waiting in this browser, if any (a copy).
    pub fn held(&self, browser_secret: Option<&str>) -> Option<Unconfirmed> {
        let key = sha256_hex(browser_secret?);
        let held = self.unconfirmed.lock().unwrap_or_else(|e| e.into_inner());
        held.get(&key)
            .filter(|u| u.expires_at > Instant::now())
            .cloned()
    }

    /// Replaces what the account in this browser waits with (a new code, guesses counted).
    pub fn update(&self, browser_secret: &str, code: Option<MailedCode>) {
        let key = sha256_hex(browser_secret);
        let mut held = self.unconfirmed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = held.get_mut(&key) {
            u.code = code;
        }
    }

    /// Forgets the account waiting in this browser (confirmed, or given up).
    pub fn release(&self, browser_secret: &str) {
        let key = sha256_hex(browser_secret);
        self.unconfirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(p: &Pending, state: &str, browser: &str) {
        p.start(
            state,
            browser,
            "idp",
            "v".into(),
            "n".into(),
            "/api/v1/me".into(),
        );
    }

    #[test]
    fn a_state_works_once_for_its_browser_and_provider_only() {
        let p = Pending::new(Duration::from_secs(60), 10);
        start(&p, "s1", "browser-a");
        assert_eq!(
            p.take("s1", Some("browser-b"), "idp").err(),
            Some(StateRefused)
        );
        // Refused once, gone: a guesser cannot try browsers one by one.
        assert!(p.take("s1", Some("browser-a"), "idp").is_err());
        start(&p, "s2", "browser-a");
        assert!(p.take("s2", Some("browser-a"), "other").is_err());
        start(&p, "s3", "browser-a");
        assert!(p.take("s3", None, "idp").is_err());
        start(&p, "s4", "browser-a");
        assert_eq!(
            p.take("s4", Some("browser-a"), "idp").map(|f| f.nonce),
            Ok("n".into())
        );
        assert!(p.take("s4", Some("browser-a"), "idp").is_err(), "replayed");
    }

    #[test]
    fn expired_flows_are_refused_and_the_oldest_makes_room() {
        let p = Pending::new(Duration::ZERO, 10);
        start(&p, "s", "b");
        assert!(p.take("s", Some("b"), "idp").is_err());
        let p = Pending::new(Duration::from_secs(60), 2);
        for state in ["a", "b", "c"] {
            start(&p, state, "x");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(p.take("a", Some("x"), "idp").is_err(), "the oldest went");
        assert!(p.take("b", Some("x"), "idp").is_ok());
        assert!(p.take("c", Some("x"), "idp").is_ok());
    }
}
