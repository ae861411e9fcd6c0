//! A posted form read as its name/value pairs, for forms where one name comes several times
//! (ticked boxes of a list: the sources a tag rule applies to, the endpoints a read token may
//! read). `serde_urlencoded` refuses a repeated name in a struct, and a plain `<form>` sends
//! every ticked box under the same name.

use serde::Deserialize;

/// Every field of a posted form, in the order sent.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    /// The first value named `name`, trimmed; empty when absent.
    pub fn one(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.trim())
    }

    /// The value named `name` trimmed, or `None` when absent or empty.
    pub fn optional(&self, name: &str) -> Option<String> {
        Some(self.one(name).to_owned()).filter(|v| !v.is_empty())
    }

    /// Whether a box named `name` was ticked (present at all).
    pub fn ticked(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    /// Every non-empty value named `name`, trimmed, without repeats, in the order sent.
    pub fn all(&self, name: &str) -> Vec<String> {
        let mut values: Vec<String> = Vec::new();
        for (n, v) in &self.0 {
            let v = v.trim();
            if n == name && !v.is_empty() && !values.iter().any(|x| x == v) {
                values.push(v.to_owned());
            }
        }
        values
    }
}

#[cfg(test)]
mod tests {
    use super::Fields;

    use axum::extract::{FromRequest, Request};
    use axum::Form;

    #[tokio::test]
    async fn repeated_names_are_all_kept_and_single_ones_read_once() {
        let request = Request::post("/")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(axum::body::Body::from(
                "name=a&endpoint=x&endpoint=y&endpoint=x&endpoint=&on=1",
            ))
            .expect("a request");
        let Form(fields) = Form::<Fields>::from_request(request, &())
            .await
            .expect("a form");
        assert_eq!(fields.one("name"), "a");
        assert_eq!(fields.all("endpoint"), vec!["x", "y"]);
        assert!(fields.ticked("on"));
        assert!(!fields.ticked("off"));
        assert_eq!(fields.optional("missing"), None);
    }
}
