//! The image's mirrors: `imprint.url=A|B`, `--url A --url B`, the deploy
//! spec's `"url": ["A", "B"]`, parsed once into an ordered list.
//!
//! `|` separates mirrors because a URL cannot contain it unencoded (RFC
//! 3986 §2: it is neither reserved nor unreserved, so it must be
//! percent-encoded as `%7C`). Every URL is classified by
//! [`SourceUrl::parse`]; several URLs must all be `http://` or `https://`:
//! an `oci://` reference and a `file://` path are single sources.
//!
//! Image URLs may be presigned (S3's SigV4 query signing puts the
//! signature and credential in the query), so what imprint logs or reports
//! of a mirror is [`display`] (the query as `?…`) or [`host`].

use anyhow::{Result, bail};

use super::url::{SourceUrl, UrlKind};

/// Parses a mirror list: one URL, or several separated by `|`, in order
/// of preference.
pub fn parse(text: &str) -> Result<Vec<SourceUrl>> {
    let parts: Vec<&str> = text.split('|').map(str::trim).collect();
    if parts.len() == 1 {
        return Ok(vec![SourceUrl::parse(parts[0])?]);
    }
    let mut mirrors = Vec::with_capacity(parts.len());
    for (n, part) in parts.iter().enumerate() {
        if part.is_empty() {
            bail!(
                "mirror {} of {} is empty; separate the image's URLs with a single |",
                n + 1,
                parts.len()
            );
        }
        let url = SourceUrl::parse(part)?;
        if url.kind() != &UrlKind::Http {
            bail!(
                "{}: only http:// and https:// URLs can be mirrors of one another; \
                 an oci:// or file:// image is a single source",
                display(part)
            );
        }
        if mirrors.contains(&url) {
            bail!("{} is given twice as a mirror", display(part));
        }
        mirrors.push(url);
    }
    Ok(mirrors)
}

/// `url` for logs and events: the query replaced by `?…`, user info
/// dropped, so a presigned URL's signature never shows.
pub fn display(url: &str) -> String {
    let redacted = crate::http::redact_url(url);
    if url.contains('?') {
        format!("{redacted}?…")
    } else {
        redacted
    }
}

/// `host[:port]` of `url`, as the result line's `mirrors=` names a mirror.
pub fn host(url: &str) -> String {
    let redacted = crate::http::redact_url(url);
    let rest = redacted
        .split_once("://")
        .map_or(redacted.as_str(), |(_, rest)| rest);
    rest.split('/').next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_or_several_in_order() {
        let one = parse("file:///srv/x.img").unwrap();
        assert_eq!(one.len(), 1);
        let two =
            parse("http://cache:8080/x.img | https://origin/x.img?X-Amz-Signature=abc").unwrap();
        assert_eq!(
            two.iter().map(SourceUrl::as_str).collect::<Vec<_>>(),
            [
                "http://cache:8080/x.img",
                "https://origin/x.img?X-Amz-Signature=abc"
            ]
        );
    }

    #[test]
    fn bad_lists_are_refused_by_name() {
        for (bad, says) in [
            ("http://a/x||http://b/x", "mirror 2 of 3 is empty"),
            ("http://a/x|", "mirror 2 of 2 is empty"),
            (
                "http://a/x|oci://reg/os/golden:v1",
                "oci://reg/os/golden:v1: only http://",
            ),
            ("file:///x|http://a/x", "file:///x: only http://"),
            ("http://a/x|ftp://b/x", "unsupported URL scheme \"ftp\""),
            ("http://a/x|http://a/x", "given twice"),
        ] {
            let msg = format!("{:#}", parse(bad).unwrap_err());
            assert!(msg.contains(says), "{bad}: {msg}");
        }
    }

    #[test]
    fn queries_never_show() {
        let presigned = "https://user:pw@s3.example:9000/bucket/x.img?X-Amz-Credential=AK%2F&X-Amz-Signature=f00d";
        assert_eq!(display(presigned), "https://s3.example:9000/bucket/x.img?…");
        assert_eq!(host(presigned), "s3.example:9000");
        assert_eq!(display("http://h/x.img"), "http://h/x.img");
        assert_eq!(host("http://[::1]:8080/x"), "[::1]:8080");
    }
}
