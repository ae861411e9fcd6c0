//! `multipart/form-data` (RFC 7578) as browsers send a form with a file input, read from a
//! body already held whole and bounded (`upload.rs`).
//!
//! Only what such a form needs: parts with a `Content-Disposition: form-data` name, an
//! optional file name, and their bytes. It is here rather than a dependency because one form
//! uses it and the body is bounded before it is parsed; nothing here allocates more than the
//! body's size, and the number of parts is bounded too.

/// At most this many parts in one form (the import form has five fields).
pub const PARTS_MAX: usize = 32;

/// One field of the form.
#[derive(Debug, PartialEq, Eq)]
pub struct Part {
    /// The field's name.
    pub name: String,
    /// The chosen file's name, for a file input (empty when no file was chosen).
    pub filename: Option<String>,
    /// The field's value, or the file's bytes.
    pub data: Vec<u8>,
}

/// Why a body is not a form this parser takes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MultipartError {
    #[error("the form's Content-Type names no boundary")]
    NoBoundary,
    #[error("the form's body is cut short or not multipart/form-data: {0}")]
    Malformed(&'static str),
    #[error("the form has more than {PARTS_MAX} fields")]
    TooManyParts,
}

/// The boundary named by a `multipart/form-data; boundary=...` Content-Type.
pub fn boundary(content_type: &str) -> Result<String, MultipartError> {
    let mut params = content_type.split(';');
    let kind = params.next().unwrap_or_default().trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return Err(MultipartError::NoBoundary);
    }
    params
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
        .filter(|b| !b.is_empty() && b.len() <= 70)
        .ok_or(MultipartError::NoBoundary)
}

/// Where `needle` first occurs in `haystack` at or after `from`.
fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|at| at + from)
}

/// `name="value"` parameters of a Content-Disposition header.
fn parameter(header: &str, name: &str) -> Option<String> {
    header.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// The parts of `body`, delimited by `boundary`.
pub fn parse(body: &[u8], boundary: &str) -> Result<Vec<Part>, MultipartError> {
    let delimiter = format!("--{boundary}").into_bytes();
    let next_delimiter = format!("\r\n--{boundary}").into_bytes();
    let mut at = find(body, &delimiter, 0).ok_or(MultipartError::Malformed("no boundary"))?
        + delimiter.len();
    let mut parts = Vec::new();
    loop {
        match body.get(at..at + 2) {
            Some(b"--") => return Ok(parts),
            Some(b"\r\n") => at += 2,
            _ => {
                return Err(MultipartError::Malformed(
                    "a boundary is not followed by a line",
                ))
            }
        }
        if parts.len() == PARTS_MAX {
            return Err(MultipartError::TooManyParts);
        }
        let headers_end = find(body, b"\r\n\r\n", at)
            .ok_or(MultipartError::Malformed("a part has no end of headers"))?;
        let headers = std::str::from_utf8(&body[at..headers_end])
            .map_err(|_| MultipartError::Malformed("a part's headers are not UTF-8"))?;
        let disposition = headers
            .split("\r\n")
            .filter_map(|line| line.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-disposition"))
            .map(|(_, v)| v.trim())
            .ok_or(MultipartError::Malformed(
                "a part has no Content-Disposition",
            ))?;
        let name = parameter(disposition, "name")
            .ok_or(MultipartError::Malformed("a part has no name"))?;
        let data_start = headers_end + 4;
        let data_end = find(body, &next_delimiter, data_start)
            .ok_or(MultipartError::Malformed("a part has no closing boundary"))?;
        parts.push(Part {
            name,
            filename: parameter(disposition, "filename"),
            data: body[data_start..data_end].to_vec(),
        });
        at = data_end + next_delimiter.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_browser_form_with_a_file_reads_as_its_fields() {
        let body =
            "preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\nabc\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"document_file\"; filename=\"ws.yaml\"\r\n\
Content-Type: application/yaml\r\n\r\nasyncapi: 3.0.0\r\n--not-it\r\n\r\n--XyZ\r\n\
Content-Disposition: form-data; name=\"empty\"; filename=\"\"\r\n\r\n\r\n--XyZ--\r\n";
        let boundary = boundary("multipart/form-data; boundary=XyZ").expect("boundary");
        let parts = parse(body.as_bytes(), &boundary).expect("parts");
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].name, "csrf");
        assert_eq!(parts[0].data, b"abc");
        assert_eq!(parts[1].filename.as_deref(), Some("ws.yaml"));
        assert_eq!(parts[1].data, b"asyncapi: 3.0.0\r\n--not-it\r\n");
        assert_eq!(parts[2].filename.as_deref(), Some(""));
        assert!(parts[2].data.is_empty());
    }

    #[test]
    fn broken_and_endless_forms_are_refused() {
        assert_eq!(boundary("text/plain"), Err(MultipartError::NoBoundary));
        assert_eq!(
            boundary("multipart/form-data"),
            Err(MultipartError::NoBoundary)
        );
        let cut = b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nno end";
        assert!(matches!(parse(cut, "b"), Err(MultipartError::Malformed(_))));
        let nameless = b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--";
        assert!(matches!(
            parse(nameless, "b"),
            Err(MultipartError::Malformed(_))
        ));
        let many: String = (0..=PARTS_MAX)
            .map(|i| format!("--b\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\nv\r\n"))
            .collect::<String>()
            + "--b--";
        assert_eq!(
            parse(many.as_bytes(), "b"),
            Err(MultipartError::TooManyParts)
        );
    }
}
