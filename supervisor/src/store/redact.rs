//! Credentials out of text: a URL may carry a user and password (`HF_ENDPOINT=
//! https://user:pass@mirror.internal`, RFC 3986 §3.2.1 "userinfo"), and every message that
//! names the endpoint, or quotes an HTTP client's error (which prints the URL it
//! requested), would carry them into logs and answers. [`redact`] replaces each URL's
//! userinfo with `***`.

/// `text` with the userinfo of every `scheme://userinfo@host` in it replaced by `***`.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#' or whitespace; userinfo is what
        // comes before its last '@'.
        let end = tail.find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace()).unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(userinfo_end) => {
                out.push_str("***");
                rest = &tail[userinfo_end..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn userinfo_goes_the_rest_stays() {
        assert_eq!(
            redact("error sending request for url (http://bob:s3cret@hub.internal:8080/api/models?x=1): dns error"),
            "error sending request for url (http://***@hub.internal:8080/api/models?x=1): dns error"
        );
        assert_eq!(
            redact("https://tok@a.example and https://u:p@b.example/x"),
            "https://***@a.example and https://***@b.example/x"
        );
        assert_eq!(redact("https://huggingface.co/org/model"), "https://huggingface.co/org/model");
        assert_eq!(redact("mail me at a@b.c, see https://x.test/@user"), "mail me at a@b.c, see https://x.test/@user");
        assert_eq!(redact("no urls"), "no urls");
    }
}
