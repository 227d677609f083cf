//! HTTP(S) sources that survive flaky networks: retries, and resuming a
//! broken body where it stopped.
//!
//! **Opening.** `GET` the URL, following redirects (the final URL is logged
//! when it differs, and later requests go there). Connection errors,
//! timeouts and the statuses [`crate::http::classify`] calls retryable
//! (408, 429, most 5xx) are retried per [`crate::http::backoff`]
//! (exponential backoff with jitter, `Retry-After` honoured), each retry
//! logged as
//! `GET <url>: HTTP 503 Service Unavailable; retry 2/8 in 1.6 s`. Any other
//! status fails at once as `GET <url>: HTTP 404 Not Found`, before the disk
//! is touched.
//!
//! **Resuming.** The body is read through a [`ResumingReader`]. When it
//! breaks off — a reset, the connection closing before Content-Length, or no
//! byte for `stall-timeout` — the reader asks again for the rest,
//! `Range: bytes=<next>-` with `If-Range: <ETag>` (or `Last-Modified` when
//! there is no strong ETag), and splices the answer onto what was read, so
//! the decoder and the checksum downstream never notice. Reconnects back off
//! like retries and count against the same `retries` / `retry-timeout`
//! budget as the initial request. The answer is spliced only when it is a
//! `206` whose `Content-Range` starts at `<next>` (or earlier: the bytes
//! before `<next>` are dropped and counted as re-fetched) and whose total
//! length and validator are the original ones. Anything else is not
//! spliced: a `200` (the server ignores Range, or If-Range found the file
//! replaced), a changed ETag, Last-Modified or total length end the read
//! with an [`io::Error`] carrying [`RestartRequired`], whose reason says
//! which (`the server ignored the Range request (HTTP 200)`,
//! `the file changed on the server (ETag "a" -> "b")`); the caller restarts
//! the deploy from byte 0 or fails.
//!
//! **No validator.** A server that sends neither an ETag nor Last-Modified
//! is still resumed, without `If-Range`, when the `206`'s total length
//! equals the original Content-Length; a warning says that a file replaced
//! by one of the same length cannot be detected. The image checksum, when
//! given, still catches it.
//!
//! Counts of retries, resumes and re-fetched bytes go to
//! [`SourceStats`](super::retry::SourceStats) for the result line.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};
use ureq::ResponseExt;

use super::retry::{RestartRequired, SourceStats};
use super::{Source, SourceOptions};
use crate::http::agent::{Exchange, agent};
use crate::http::backoff::{self, GiveUp, RetryPolicy};
use crate::http::classify::{self, Failure};
use crate::http::retry::{Clock, Failed, Retrier, SystemClock, retry_after_of};

pub(super) fn open(url: &str, options: &SourceOptions) -> Result<Source> {
    open_with(url, options, Arc::new(SystemClock::new()), None)
}

/// Sends an `Authorization` header on the requests of one source that go
/// to the origin it was issued for (a registry), and renews it when that
/// origin answers `401` (an expired token, mid-transfer too). Requests that
/// redirects sent elsewhere (object storage) never carry it: ureq drops the
/// header on a redirect (its default `RedirectAuthHeaders::Never`), and a
/// resume goes to the redirect's target, for which [`Self::header_for`]
/// says `None`.
pub(crate) trait Authorizer: Send + Sync {
    /// The header's value for a request to `url`: `None` for another
    /// origin, empty for this one before any credentials were asked for.
    fn header_for(&self, url: &str) -> Option<String>;
    /// Gets new credentials after `url` answered `401` with this
    /// `WWW-Authenticate`; `Ok(false)` when there is nothing new to try.
    fn renew(&self, url: &str, challenge: Option<&str>) -> Result<bool>;
}

/// Opens `url` like [`open`], every request to its origin authorized by
/// `auth`.
pub(super) fn open_authorized(
    url: &str,
    options: &SourceOptions,
    auth: Arc<dyn Authorizer>,
) -> Result<Source> {
    open_with(url, options, Arc::new(SystemClock::new()), Some(auth))
}

fn open_with(
    url: &str,
    options: &SourceOptions,
    clock: Arc<dyn Clock>,
    auth: Option<Arc<dyn Authorizer>>,
) -> Result<Source> {
    let stats = Arc::new(SourceStats::default());
    let mut transfer = Transfer::new(options, clock, Arc::clone(&stats));
    transfer.auth = auth.clone();
    let agent = agent(options, Exchange::Download)?;
    let (head, body) = transfer.get(&agent, url, None, "")?;
    if !(200..300).contains(&head.status) {
        bail!("GET {url}: HTTP {} {}", head.status, head.reason);
    }
    if head.final_url != url {
        log::info!("GET {url}: redirected to {}", head.final_url);
        let _ = stats.final_url.set(head.final_url.clone());
    }
    let original = Validators::of(&head);
    let reader = ResumingReader {
        agent,
        url: head.final_url.clone(),
        transfer,
        original,
        next: 0,
        body: Some(body),
        skip: 0,
        failed: None,
    };
    Ok(Source {
        reader: Box::new(reader),
        length: head.length,
        url: url.to_owned(),
        stats,
        device: None,
        name: None,
        digest: None,
        ranges: Some(super::RangeAccess {
            url: head.final_url,
            auth,
            options: options.clone(),
        }),
    })
}

/// The last `len` bytes by a Range request; `None` when the server ignores
/// Range or cannot answer it. Retried like the image itself.
pub(super) fn fetch_tail(url: &str, len: u64, options: &SourceOptions) -> Result<Option<Vec<u8>>> {
    let mut transfer = Transfer::new(options, Arc::new(SystemClock::new()), Arc::default());
    let range = format!("bytes=-{len}");
    let what = format!(" (last {len} bytes)");
    let agent = agent(options, Exchange::Download)?;
    let (head, body) = transfer.get(&agent, url, Some((&range, None)), &what)?;
    if head.status != 206 {
        return Ok(None);
    }
    let mut tail = Vec::new();
    body.take(len)
        .read_to_end(&mut tail)
        .with_context(|| format!("reading the last {len} bytes of {url}"))?;
    Ok(Some(tail))
}

/// The `len` bytes at `offset` by a Range request, retried like the image
/// itself; a body cut short is asked for again, up to three times.
pub(super) fn fetch_range(
    url: &str,
    offset: u64,
    len: u64,
    options: &SourceOptions,
    auth: Option<Arc<dyn Authorizer>>,
) -> Result<Vec<u8>> {
    let mut transfer = Transfer::new(options, Arc::new(SystemClock::new()), Arc::default());
    transfer.auth = auth;
    let agent = agent(options, Exchange::Download)?;
    let last = offset + len - 1;
    let range = format!("bytes={offset}-{last}");
    let what = format!(" (bytes {offset}-{last})");
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (head, body) = transfer.get(&agent, url, Some((&range, None)), &what)?;
        match head.status {
            206 => {}
            416 => return Ok(Vec::new()),
            200 => bail!(
                "GET {url}{what}: the server ignored the Range request (HTTP 200); this image \
                 needs random access: serve it from a server that supports Range, or convert it \
                 to raw first"
            ),
            status => bail!("GET {url}{what}: HTTP {status} {}", head.reason),
        }
        let start = head
            .content_range
            .as_deref()
            .and_then(parse_content_range)
            .map(|(first, _, _)| first);
        if start != Some(offset) {
            bail!(
                "GET {url}{what}: the server answered with Content-Range {:?}",
                head.content_range.unwrap_or_default()
            );
        }
        let mut bytes = Vec::new();
        match body.take(len).read_to_end(&mut bytes) {
            Ok(_) => return Ok(bytes),
            Err(e) if attempt < 3 => {
                log::warn!("GET {url}{what}: {e}; asking again ({attempt}/3)");
            }
            Err(e) => {
                return Err(e).with_context(|| format!("reading bytes {offset}-{last} of {url}"));
            }
        }
    }
}

/// The parts of a response that matter here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Head {
    pub(super) status: u16,
    pub(super) reason: String,
    /// Content-Length.
    pub(super) length: Option<u64>,
    pub(super) etag: Option<String>,
    pub(super) last_modified: Option<String>,
    pub(super) content_range: Option<String>,
    pub(super) retry_after: Option<String>,
    pub(super) final_url: String,
    pub(super) www_authenticate: Option<String>,
}

pub(super) type Body = Box<dyn Read + Send>;

fn head_of(response: &ureq::http::Response<ureq::Body>) -> Head {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(|value| value.trim().to_owned())
    };
    let status = response.status();
    Head {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("").to_owned(),
        length: response.body().content_length(),
        etag: header("etag"),
        last_modified: header("last-modified"),
        content_range: header("content-range"),
        retry_after: retry_after_of(response),
        final_url: response.get_uri().to_string(),
        www_authenticate: header("www-authenticate"),
    }
}

/// One transfer's retries: its initial request and its resumes share the
/// budget ([`crate::http::retry`]).
struct Transfer {
    retrier: Retrier,
    /// For messages: certificate failures name `imprint.ca=`, stalls the
    /// stall timeout.
    options: SourceOptions,
    stats: Arc<SourceStats>,
    auth: Option<Arc<dyn Authorizer>>,
}

impl Transfer {
    fn new(options: &SourceOptions, clock: Arc<dyn Clock>, stats: Arc<SourceStats>) -> Self {
        Transfer {
            retrier: Retrier::new(RetryPolicy::transfer(options), clock),
            options: options.clone(),
            stats,
            auth: None,
        }
    }

    /// `GET`s `url` until it answers with a status that is not retryable,
    /// or the budget runs out. `range` is a Range header and maybe an
    /// If-Range; `what` is added to messages after the URL.
    fn get(
        &mut self,
        agent: &ureq::Agent,
        url: &str,
        range: Option<(&str, Option<&str>)>,
        what: &str,
    ) -> Result<(Head, Body)> {
        let Transfer {
            retrier,
            options,
            stats,
            auth,
        } = self;
        retrier
            .run(
                || attempt_get(agent, url, range, what, options, auth.as_deref()),
                |failed, retry| {
                    failed.log_retry(retry);
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                },
            )
            .map_err(|exhausted| exhausted.error.into_error(exhausted.give_up))
    }
}

/// One `GET`: an answer whose status is not retried, or why not.
fn attempt_get(
    agent: &ureq::Agent,
    url: &str,
    range: Option<(&str, Option<&str>)>,
    what: &str,
    options: &SourceOptions,
    auth: Option<&dyn Authorizer>,
) -> Result<(Head, Body), Failed> {
    let request = format!("GET {url}{what}");
    let mut answer = send(agent, url, range, auth);
    if let (Ok((head, _)), Some(auth)) = (&answer, auth) {
        if head.status == 401 && auth.header_for(url).is_some() {
            match auth.renew(url, head.www_authenticate.as_deref()) {
                Ok(true) => answer = send(agent, url, range, Some(auth)),
                Ok(false) => {}
                Err(error) => {
                    return Err(Failed {
                        failure: Failure::Fatal,
                        message: format!("{request}: HTTP 401 Unauthorized: {error:#}"),
                        retry_after: None,
                    });
                }
            }
        }
    }
    match answer {
        Ok((head, _)) if classify::is_retryable(Failure::Status(head.status)) => Err(Failed {
            failure: Failure::Status(head.status),
            message: format!("{request}: HTTP {} {}", head.status, head.reason),
            retry_after: head.retry_after,
        }),
        Ok(answer) => Ok(answer),
        Err(error) => Err(Failed::request(&request, &error, options)),
    }
}

/// Whether a body read failed because no byte came within the per-read
/// timeout; ureq's own wording (`timeout: per read`) does not say which.
pub(super) fn is_stall(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    ) || error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<ureq::Error>())
        .is_some_and(|inner| matches!(inner, ureq::Error::Timeout(_)))
}

pub(super) fn send(
    agent: &ureq::Agent,
    url: &str,
    range: Option<(&str, Option<&str>)>,
    auth: Option<&dyn Authorizer>,
) -> Result<(Head, Body), ureq::Error> {
    let mut request = agent.get(url);
    if let Some(value) = auth
        .and_then(|auth| auth.header_for(url))
        .filter(|value| !value.is_empty())
    {
        request = request.header("Authorization", value);
    }
    if let Some((range, if_range)) = range {
        request = request.header("Range", range);
        if let Some(validator) = if_range {
            request = request.header("If-Range", validator);
        }
    }
    let response = request.call()?;
    let head = head_of(&response);
    // `into_reader` fails with an error (instead of a clean EOF) when the
    // connection closes before Content-Length bytes arrived: that is what
    // starts a resume.
    Ok((head, Box::new(response.into_body().into_reader())))
}

/// What identifies the version of the file first served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Validators {
    etag: Option<String>,
    last_modified: Option<String>,
    /// The whole file's length.
    length: Option<u64>,
}

impl Validators {
    fn of(head: &Head) -> Self {
        Validators {
            etag: head.etag.clone(),
            last_modified: head.last_modified.clone(),
            length: head.length,
        }
    }

    /// For `If-Range`, which takes only a strong ETag (RFC 9110 §13.1.5).
    fn if_range(&self) -> Option<&str> {
        self.etag
            .as_deref()
            .filter(|etag| !etag.starts_with("W/"))
            .or(self.last_modified.as_deref())
    }

    /// How the file served in `head` differs from this one, if it does.
    fn change(&self, head: &Head, total: Option<u64>) -> Option<String> {
        if let (Some(before), Some(after)) = (&self.etag, &head.etag) {
            if before != after {
                return Some(format!(
                    "the file changed on the server (ETag {before} -> {after})"
                ));
            }
        }
        if let (Some(before), Some(after)) = (&self.last_modified, &head.last_modified) {
            if before != after {
                return Some(format!(
                    "the file changed on the server (Last-Modified {before} -> {after})"
                ));
            }
        }
        if let (Some(before), Some(after)) = (self.length, total) {
            if before != after {
                return Some(format!(
                    "the file changed on the server (length {before} -> {after} bytes)"
                ));
            }
        }
        None
    }
}

/// `bytes first-last/total` (RFC 9110 §14.4); the total may be `*`.
pub(super) fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let (range, total) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        total => Some(total.parse().ok()?),
    };
    if last < first || total.is_some_and(|total| last >= total) {
        return None;
    }
    Some((first, last, total))
}

/// The total of an unsatisfied range, `bytes */total`.
fn unsatisfied_total(value: &str) -> Option<u64> {
    value.trim().strip_prefix("bytes */")?.trim().parse().ok()
}

/// What to do with the answer to a resume request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ResumeAnswer {
    /// Splice the body on, after dropping its first `skip` bytes.
    Splice { skip: u64 },
    /// Not the same bytes: the whole transfer has to start over.
    Restart(String),
    /// No continuation: the transfer fails.
    Fail(String),
}

/// Judges the answer to `Range: bytes=<next>-` against the file first served.
fn judge_resume(original: &Validators, next: u64, head: &Head) -> ResumeAnswer {
    match head.status {
        206 => {
            let Some((first, _last, total)) =
                head.content_range.as_deref().and_then(parse_content_range)
            else {
                return ResumeAnswer::Restart(format!(
                    "the server answered the Range request with Content-Range {:?}",
                    head.content_range.as_deref().unwrap_or("")
                ));
            };
            if let Some(change) = original.change(head, total) {
                return ResumeAnswer::Restart(change);
            }
            if first > next {
                return ResumeAnswer::Restart(format!(
                    "the server resumed at byte {first} when asked for byte {next}"
                ));
            }
            ResumeAnswer::Splice { skip: next - first }
        }
        200..=299 => {
            ResumeAnswer::Restart(original.change(head, head.length).unwrap_or_else(|| {
                format!(
                    "the server ignored the Range request (HTTP {})",
                    head.status
                )
            }))
        }
        416 => {
            let total = head.content_range.as_deref().and_then(unsatisfied_total);
            match original.change(head, total) {
                Some(change) => ResumeAnswer::Restart(change),
                None => ResumeAnswer::Fail(format!(
                    "HTTP 416 {}: the server has no bytes from {next} on, though it announced {}",
                    head.reason,
                    original
                        .length
                        .map_or_else(|| "more".to_owned(), |length| format!("{length} bytes")),
                )),
            }
        }
        status => ResumeAnswer::Fail(format!("HTTP {status} {}", head.reason)),
    }
}

/// The body of an HTTP source, resumed with Range requests when it breaks
/// off (see the module docs).
pub struct ResumingReader {
    agent: ureq::Agent,
    /// Where the first request ended up after redirects.
    url: String,
    transfer: Transfer,
    original: Validators,
    /// Offset in the file of the next byte to hand out.
    next: u64,
    body: Option<Body>,
    /// Bytes at the start of `body` already handed out before.
    skip: u64,
    /// Set when the reader gave up: reads keep failing the same way.
    failed: Option<(io::ErrorKind, String)>,
}

impl Read for ResumingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some((kind, message)) = &self.failed {
            return Err(io::Error::new(*kind, message.clone()));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let Some(body) = &mut self.body else {
                return Ok(0);
            };
            let cause = match body.read(buf) {
                Ok(0) => match self.original.length {
                    // Belt and braces: ureq reports a short body as an
                    // error, but a clean EOF short of the length is one too.
                    Some(length) if self.next < length => io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the body ended at byte {} of {length}", self.next),
                    ),
                    _ => {
                        self.body = None;
                        return Ok(0);
                    }
                },
                Ok(read) => {
                    let read_u64 = u64::try_from(read).unwrap_or(u64::MAX);
                    if self.skip >= read_u64 {
                        self.skip -= read_u64;
                        self.transfer
                            .stats
                            .refetched_bytes
                            .fetch_add(read_u64, Ordering::Relaxed);
                        continue;
                    }
                    let skip = usize::try_from(self.skip).unwrap_or(read);
                    if skip > 0 {
                        buf.copy_within(skip..read, 0);
                        self.transfer
                            .stats
                            .refetched_bytes
                            .fetch_add(self.skip, Ordering::Relaxed);
                        self.skip = 0;
                    }
                    let fresh = read - skip;
                    self.next += u64::try_from(fresh).unwrap_or(u64::MAX);
                    self.transfer.retrier.progressed();
                    return Ok(fresh);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_stall(&e) => io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no data for {} (stall-timeout)",
                        backoff::seconds(self.transfer.options.stall_timeout)
                    ),
                ),
                Err(e) => e,
            };
            self.body = None;
            if let Err(error) = self.resume(&cause) {
                self.failed = Some((error.kind(), error.to_string()));
                return Err(error);
            }
        }
    }
}

impl ResumingReader {
    /// Reconnects for the rest of the file after `cause` broke the body off.
    fn resume(&mut self, cause: &io::Error) -> io::Result<()> {
        let next = self.next;
        let url = self.url.clone();
        let if_range = self.original.if_range().map(str::to_owned);
        if if_range.is_none() {
            log::warn!(
                "GET {url}: the server sends no ETag or Last-Modified, so a file replaced \
                 by one of the same length cannot be detected when resuming"
            );
        }
        let range = format!("bytes={next}-");
        let what = format!(" (from byte {next})");
        let Transfer {
            retrier,
            options,
            stats,
            auth,
        } = &mut self.transfer;
        // The break is the outage's first failure: the first request for the
        // rest waits its backoff like any retry.
        let broken = format!("GET {url}: the transfer broke off at byte {next} ({cause})");
        let mut calls = 0u32;
        let answer = retrier.run(
            || {
                calls += 1;
                if calls == 1 {
                    return Err(Failed {
                        failure: Failure::BrokenBody,
                        message: broken.clone(),
                        retry_after: None,
                    });
                }
                attempt_get(
                    &self.agent,
                    &url,
                    Some((&range, if_range.as_deref())),
                    &what,
                    options,
                    auth.as_deref(),
                )
            },
            |failed, retry| {
                failed.log_retry(retry);
                stats.retries.fetch_add(1, Ordering::Relaxed);
            },
        );
        let (head, body) = match answer {
            Ok(answer) => answer,
            Err(exhausted) => {
                // The first call is the break itself, not a request.
                let tried = calls > 1;
                let text = match exhausted.give_up {
                    Some(GiveUp::RetriesExhausted(0)) => cause.to_string(),
                    Some(give_up) if !tried => format!("{cause} ({give_up})"),
                    Some(give_up) => format!(
                        "{cause}; resuming at byte {next}: {} ({give_up})",
                        exhausted.error.message
                    ),
                    None => format!("{cause}; resuming: {}", exhausted.error.message),
                };
                return Err(io::Error::new(cause.kind(), text));
            }
        };
        match judge_resume(&self.original, next, &head) {
            ResumeAnswer::Splice { skip } => {
                if self.original.length.is_none() {
                    // Learnt from the Content-Range: now a short body is
                    // recognised as such even on a clean EOF.
                    self.original.length = head
                        .content_range
                        .as_deref()
                        .and_then(parse_content_range)
                        .and_then(|(_, _, total)| total);
                }
                self.body = Some(body);
                self.skip = skip;
                self.transfer.stats.resumes.fetch_add(1, Ordering::Relaxed);
                log::info!("GET {url}: resumed at byte {next}");
                Ok(())
            }
            ResumeAnswer::Restart(reason) => {
                log::warn!("GET {url}: cannot resume at byte {next}: {reason}");
                Err(io::Error::other(RestartRequired { reason }))
            }
            ResumeAnswer::Fail(reason) => Err(io::Error::new(
                cause.kind(),
                format!("{cause}; resuming: GET {url}{what}: {reason}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::retry::tests::FakeClock;
    use crate::source::retry;
    use imprint_qemu::http::{Behavior, FixtureServer, RequestRecord};
    use std::io::Write;
    use std::time::Duration;

    fn head(status: u16, content_range: Option<&str>, etag: Option<&str>) -> Head {
        Head {
            status,
            reason: "Reason".into(),
            etag: etag.map(str::to_owned),
            content_range: content_range.map(str::to_owned),
            ..Head::default()
        }
    }

    fn original(etag: Option<&str>, length: u64) -> Validators {
        Validators {
            etag: etag.map(str::to_owned),
            last_modified: Some("Sun, 06 Nov 1994 08:49:37 GMT".into()),
            length: Some(length),
        }
    }

    #[test]
    fn content_range_forms() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some((10, 99, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, 0, None)));
        for bad in [
            "",
            "bytes */100",
            "bytes 10-9/100",
            "bytes 10-100/100",
            "items 0-1/2",
            "bytes 1-2",
            "bytes x-2/3",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad:?}");
        }
        assert_eq!(unsatisfied_total("bytes */1048576"), Some(1_048_576));
        assert_eq!(unsatisfied_total("bytes 0-1/2"), None);
    }

    #[test]
    fn if_range_prefers_a_strong_etag() {
        let mut v = original(Some("\"a\""), 1);
        assert_eq!(v.if_range(), Some("\"a\""));
        v.etag = Some("W/\"a\"".into());
        assert_eq!(v.if_range(), Some("Sun, 06 Nov 1994 08:49:37 GMT"));
        v.last_modified = None;
        assert_eq!(v.if_range(), None);
    }

    #[test]
    fn resume_answers_are_judged() {
        let v = original(Some("\"a\""), 100);
        let judge = |h: &Head| judge_resume(&v, 40, h);
        assert_eq!(
            judge(&head(206, Some("bytes 40-99/100"), Some("\"a\""))),
            ResumeAnswer::Splice { skip: 0 }
        );
        // No ETag on the 206 (some servers omit it): the total still agrees.
        assert_eq!(
            judge(&head(206, Some("bytes 40-99/100"), None)),
            ResumeAnswer::Splice { skip: 0 }
        );
        assert_eq!(
            judge(&head(206, Some("bytes 30-99/100"), Some("\"a\""))),
            ResumeAnswer::Splice { skip: 10 }
        );
        assert_eq!(
            judge(&head(206, Some("bytes 41-99/100"), Some("\"a\""))),
            ResumeAnswer::Restart("the server resumed at byte 41 when asked for byte 40".into())
        );
        assert_eq!(
            judge(&head(206, Some("bytes 40-99/100"), Some("\"b\""))),
            ResumeAnswer::Restart("the file changed on the server (ETag \"a\" -> \"b\")".into())
        );
        assert_eq!(
            judge(&head(206, Some("bytes 40-119/120"), Some("\"a\""))),
            ResumeAnswer::Restart(
                "the file changed on the server (length 100 -> 120 bytes)".into()
            )
        );
        assert!(matches!(
            judge(&head(206, None, Some("\"a\""))),
            ResumeAnswer::Restart(reason) if reason.contains("Content-Range \"\"")
        ));
        assert_eq!(
            judge(&head(200, None, Some("\"a\""))),
            ResumeAnswer::Restart("the server ignored the Range request (HTTP 200)".into())
        );
        assert_eq!(
            judge(&head(200, None, Some("\"b\""))),
            ResumeAnswer::Restart("the file changed on the server (ETag \"a\" -> \"b\")".into())
        );
        let mut modified = head(200, None, None);
        modified.last_modified = Some("Mon, 07 Nov 1994 08:49:37 GMT".into());
        assert_eq!(
            judge(&modified),
            ResumeAnswer::Restart(
                "the file changed on the server (Last-Modified Sun, 06 Nov 1994 08:49:37 GMT \
                 -> Mon, 07 Nov 1994 08:49:37 GMT)"
                    .into()
            )
        );
        assert_eq!(
            judge(&head(416, Some("bytes */60"), None)),
            ResumeAnswer::Restart("the file changed on the server (length 100 -> 60 bytes)".into())
        );
        assert_eq!(
            judge(&head(416, Some("bytes */100"), None)),
            ResumeAnswer::Fail(
                "HTTP 416 Reason: the server has no bytes from 40 on, though it announced \
                 100 bytes"
                    .into()
            )
        );
        assert_eq!(
            judge(&head(404, None, None)),
            ResumeAnswer::Fail("HTTP 404 Reason".into())
        );
    }

    #[test]
    fn without_validators_only_the_total_guards_a_resume() {
        let v = Validators {
            etag: None,
            last_modified: None,
            length: Some(100),
        };
        assert_eq!(
            judge_resume(&v, 40, &head(206, Some("bytes 40-99/100"), None)),
            ResumeAnswer::Splice { skip: 0 }
        );
        assert!(matches!(
            judge_resume(&v, 40, &head(206, Some("bytes 40-89/90"), None)),
            ResumeAnswer::Restart(_)
        ));
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| u8::try_from((i * 7 + i / 1000) % 251).unwrap())
            .collect()
    }

    fn options(retries: u32) -> SourceOptions {
        SourceOptions {
            retries,
            stall_timeout: Duration::from_millis(300),
            connect_timeout: Duration::from_secs(2),
            ..SourceOptions::default()
        }
    }

    fn open_fake(url: &str, retries: u32) -> (Result<Source>, Arc<FakeClock>) {
        let clock = Arc::new(FakeClock::default());
        let source = open_with(
            url,
            &options(retries),
            Arc::clone(&clock) as Arc<dyn Clock>,
            None,
        );
        (source, clock)
    }

    /// The request log once it holds `count` requests: a request is logged
    /// after its response went out, so the client may be ahead of the log.
    fn requests(server: &FixtureServer, count: usize) -> Vec<RequestRecord> {
        for _ in 0..1000 {
            let requests = server.requests();
            if requests.len() >= count {
                return requests;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        server.requests()
    }

    fn ranges(server: &FixtureServer, count: usize) -> Vec<Option<String>> {
        requests(server, count)
            .into_iter()
            .map(|r| r.range)
            .collect()
    }

    #[test]
    fn drops_are_resumed_at_the_next_byte() {
        let server = FixtureServer::start().unwrap();
        let body = data(3 << 20);
        server.add_file("img", body.clone());
        server.push_behaviors(
            "img",
            [
                Behavior::DropAfter(100_000),
                Behavior::DropAfter(200_000),
                Behavior::DropAfter(1),
            ],
        );
        let (source, clock) = open_fake(&server.url("img"), 3);
        let mut source = source.unwrap();
        let mut read = Vec::new();
        source.reader.read_to_end(&mut read).unwrap();
        assert!(read == body);
        assert_eq!(
            ranges(&server, 4),
            [
                None,
                Some("bytes=100000-".into()),
                Some("bytes=300000-".into()),
                Some("bytes=300001-".into()),
            ]
        );
        let stats = source.stats.snapshot();
        assert_eq!(
            (stats.resumes, stats.retries, stats.refetched_bytes),
            (3, 3, 0)
        );
        assert_eq!(stats.final_url, None);
        // Progress between the drops restarts the backoff at its first step.
        assert_eq!(
            *clock.sleeps.lock().unwrap(),
            [Duration::from_millis(250); 3]
        );
    }

    #[test]
    fn a_drop_with_no_retries_left_fails_with_the_cause() {
        let server = FixtureServer::start().unwrap();
        server.add_file("img", data(1 << 20));
        server.push_behaviors("img", [Behavior::DropAfter(1000), Behavior::DropAfter(10)]);
        let (source, _) = open_fake(&server.url("img"), 1);
        let mut reader = source.unwrap().reader;
        let error = reader.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(
            error.to_string(),
            "Peer disconnected (gave up after 1 retry)"
        );
        // The reader stays failed.
        assert!(reader.read(&mut [0; 10]).is_err());

        server.push_behaviors(
            "img",
            [
                Behavior::DropAfter(1000),
                Behavior::Status(503),
                Behavior::Status(503),
            ],
        );
        let (source, _) = open_fake(&server.url("img"), 2);
        let error = source
            .unwrap()
            .reader
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "Peer disconnected; resuming at byte 1000: GET {} (from byte 1000): HTTP 503 \
                 Service Unavailable (gave up after 2 retries)",
                server.url("img")
            )
        );

        server.push_behaviors("img", [Behavior::DropAfter(1000)]);
        let (source, _) = open_fake(&server.url("img"), 0);
        let error = source
            .unwrap()
            .reader
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(error.to_string(), "Peer disconnected");
    }

    #[test]
    fn a_stalled_body_is_resumed() {
        let server = FixtureServer::start().unwrap();
        let body = data(1 << 20);
        server.add_file("img", body.clone());
        server.push_behaviors("img", [Behavior::StallAfter(5000, Duration::from_secs(3))]);
        let (source, _) = open_fake(&server.url("img"), 2);
        let mut source = source.unwrap();
        let mut read = Vec::new();
        source.reader.read_to_end(&mut read).unwrap();
        assert!(read == body);
        // The stalled request is logged only when its sleep ends, if at all.
        assert!(ranges(&server, 1).contains(&Some("bytes=5000-".into())));
        assert_eq!(source.stats.snapshot().resumes, 1);

        server.push_behaviors("img", [Behavior::StallAfter(5000, Duration::from_secs(3))]);
        let (source, _) = open_fake(&server.url("img"), 0);
        let error = source
            .unwrap()
            .reader
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(error.to_string(), "no data for 0.3 s (stall-timeout)");
    }

    #[test]
    fn open_retries_503_with_backoff_then_gives_up() {
        let server = FixtureServer::start().unwrap();
        server.add_file("img", data(1000));
        server.push_behaviors("img", [Behavior::Status(503), Behavior::Status(502)]);
        let (source, clock) = open_fake(&server.url("img"), 2);
        let source = source.unwrap();
        assert_eq!(source.stats.snapshot().retries, 2);
        assert_eq!(source.length, Some(1000));
        assert_eq!(
            *clock.sleeps.lock().unwrap(),
            [Duration::from_millis(250), Duration::from_millis(500)]
        );

        server.push_behaviors("img", vec![Behavior::Status(503); 3]);
        let (source, _) = open_fake(&server.url("img"), 2);
        assert_eq!(
            format!("{:#}", source.unwrap_err()),
            format!(
                "GET {}: HTTP 503 Service Unavailable (gave up after 2 retries)",
                server.url("img")
            )
        );
    }

    #[test]
    fn open_fails_at_once_on_404_and_on_refused_connections_after_retries() {
        let server = FixtureServer::start().unwrap();
        let url = server.url("missing");
        let (source, clock) = open_fake(&url, 8);
        assert_eq!(
            format!("{:#}", source.unwrap_err()),
            format!("GET {url}: HTTP 404 Not Found")
        );
        assert_eq!(requests(&server, 1).len(), 1);
        assert!(clock.sleeps.lock().unwrap().is_empty());

        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}/x");
        let (source, clock) = open_fake(&url, 2);
        let message = format!("{:#}", source.unwrap_err());
        assert!(
            message.starts_with(&format!("GET {url}: "))
                && message.ends_with("(gave up after 2 retries)"),
            "{message}"
        );
        assert_eq!(clock.sleeps.lock().unwrap().len(), 2);
    }

    #[test]
    fn ignored_range_and_changed_file_require_a_restart() {
        let server = FixtureServer::start().unwrap();
        server.add_file("img", data(1 << 20));
        server.push_behaviors("img", [Behavior::DropAfter(1000), Behavior::IgnoreRange]);
        let (source, _) = open_fake(&server.url("img"), 3);
        let error = source
            .unwrap()
            .reader
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(
            retry::restart_required(&error).unwrap().reason,
            "the server ignored the Range request (HTTP 200)"
        );

        server.push_behaviors("img", [Behavior::DropAfter(1000), Behavior::ChangeEtag]);
        let (source, _) = open_fake(&server.url("img"), 3);
        let error = source
            .unwrap()
            .reader
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        let reason = &retry::restart_required(&error).unwrap().reason;
        assert!(
            reason.starts_with("the file changed on the server (ETag \""),
            "{reason}"
        );
        // The If-Range carried the first ETag, which the server no longer has.
        let changed = requests(&server, 4)
            .into_iter()
            .find(|r| r.behavior == Behavior::ChangeEtag)
            .unwrap();
        assert_eq!(changed.status, 200);
        assert!(changed.range.is_some());
    }

    #[test]
    fn redirects_are_followed_and_resumes_go_to_the_final_url() {
        let server = FixtureServer::start().unwrap();
        let body = data(100_000);
        server.add_file("img", body.clone());
        server.push_behaviors("img", [Behavior::DropAfter(10_000)]);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let redirect = format!("http://{}/img", listener.local_addr().unwrap());
        let target = server.url("img");
        let redirector = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let _ = conn.read(&mut [0u8; 1024]).unwrap();
            write!(
                conn,
                "HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\n\
                 Connection: close\r\n\r\n"
            )
            .unwrap();
        });
        let (source, _) = open_fake(&redirect, 3);
        let mut source = source.unwrap();
        let mut read = Vec::new();
        source.reader.read_to_end(&mut read).unwrap();
        assert!(read == body);
        redirector.join().unwrap();
        let stats = source.stats.snapshot();
        assert_eq!(stats.final_url, Some(server.url("img")));
        assert_eq!(stats.resumes, 1);
        assert_eq!(source.url, redirect);
    }

    #[test]
    fn tail_is_retried() {
        let server = FixtureServer::start().unwrap();
        let body = data(10_000);
        server.add_file("img", body.clone());
        server.push_behaviors("img", [Behavior::Status(503)]);
        let tail = fetch_tail(&server.url("img"), 100, &options(2)).unwrap();
        assert_eq!(tail.unwrap(), body[body.len() - 100..]);
        assert_eq!(requests(&server, 2).len(), 2);
    }

    /// A bare HTTP/1.1 server: each connection's request head is recorded
    /// and answered with `answer(head, n)` (n counts requests from 0),
    /// then the connection is closed.
    fn raw_server(
        answer: impl Fn(&str, usize) -> Vec<u8> + Send + 'static,
    ) -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
        use std::io::BufRead;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&heads);
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(mut conn) = conn else { return };
                let mut reader = io::BufReader::new(conn.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head += &line.to_ascii_lowercase();
                }
                seen.lock().unwrap().push(head.clone());
                let _ = conn.write_all(&answer(&head, n));
            }
        });
        (port, heads)
    }

    /// Authorizes requests to one origin with a token that a `401` renews.
    /// Modelled on the distribution token spec (distribution/distribution,
    /// `docs/spec/auth/token.md`): a registry answers an expired or missing
    /// token with `401` and `WWW-Authenticate: Bearer realm=…`, and the
    /// client fetches a new token from that realm and asks again.
    struct FakeRegistryAuth {
        origin: String,
        token: std::sync::Mutex<String>,
        renewals: std::sync::atomic::AtomicU32,
    }

    impl Authorizer for FakeRegistryAuth {
        fn header_for(&self, url: &str) -> Option<String> {
            url.starts_with(&self.origin)
                .then(|| format!("Bearer {}", self.token.lock().unwrap()))
        }
        fn renew(&self, _url: &str, challenge: Option<&str>) -> Result<bool> {
            assert_eq!(challenge, Some("Bearer realm=\"https://auth/token\""));
            self.renewals.fetch_add(1, Ordering::Relaxed);
            *self.token.lock().unwrap() = "new".into();
            Ok(true)
        }
    }

    fn fake_auth(port: u16, token: &str) -> Arc<FakeRegistryAuth> {
        Arc::new(FakeRegistryAuth {
            origin: format!("http://127.0.0.1:{port}/"),
            token: std::sync::Mutex::new(token.into()),
            renewals: Default::default(),
        })
    }

    fn partial(body: &[u8], from: usize) -> Vec<u8> {
        let mut answer = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n\
             Content-Range: bytes {from}-{}/{}\r\nETag: \"blob\"\r\nConnection: close\r\n\r\n",
            body.len() - from,
            body.len() - 1,
            body.len()
        )
        .into_bytes();
        answer.extend_from_slice(&body[from..]);
        answer
    }

    /// The first `cut` bytes of a 200 for `body`, then the connection closes.
    fn cut_short(body: &[u8], cut: usize) -> Vec<u8> {
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"blob\"\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        answer.extend_from_slice(&body[..cut]);
        answer
    }

    /// A registry answers a blob with a 307 to object storage (distribution's
    /// `redirect` storage middleware, S3 presigned URLs): the registry's
    /// token must reach neither the storage nor, after a cut, the resume.
    #[test]
    fn authorization_stays_with_the_registry_across_a_redirect_and_a_resume() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let served = body.clone();
        let (storage, storage_heads) = raw_server(move |head, n| {
            if n == 0 {
                cut_short(&served, 70_000)
            } else {
                assert!(head.contains("range: bytes=70000-"), "{head}");
                partial(&served, 70_000)
            }
        });
        let (registry, registry_heads) = raw_server(move |_, _| {
            format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: \
                 http://127.0.0.1:{storage}/bucket/blob?X-Amz-Signature=s\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .into_bytes()
        });
        let url = format!("http://127.0.0.1:{registry}/v2/os/golden/blobs/sha256:ab");
        let auth = fake_auth(registry, "t0k3n");
        let clock = Arc::new(FakeClock::default());
        let mut source = open_with(&url, &options(3), clock, Some(auth)).unwrap();
        let mut read = Vec::new();
        source.reader.read_to_end(&mut read).unwrap();
        assert!(read == body);
        assert_eq!(source.stats.snapshot().resumes, 1);
        let registry_heads = registry_heads.lock().unwrap().clone();
        assert_eq!(registry_heads.len(), 1, "{registry_heads:?}");
        assert!(
            registry_heads[0].contains("authorization: bearer t0k3n"),
            "{registry_heads:?}"
        );
        let storage_heads = storage_heads.lock().unwrap().clone();
        assert_eq!(storage_heads.len(), 2, "{storage_heads:?}");
        for head in &storage_heads {
            assert!(!head.contains("authorization"), "sent to storage: {head}");
        }
    }

    /// A token that expires mid-blob: the resume's 401 gets a new one, and
    /// the resume is retried with it.
    #[test]
    fn a_401_on_resume_renews_the_token() {
        let body: Vec<u8> = (0..150_000u32).map(|i| (i % 239) as u8).collect();
        let served = body.clone();
        let (registry, heads) = raw_server(move |head, n| match n {
            0 => cut_short(&served, 50_000),
            1 => {
                assert!(head.contains("authorization: bearer old"), "{head}");
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"https://auth/token\"\r\n\
                  Content-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec()
            }
            _ => {
                assert!(head.contains("authorization: bearer new"), "{head}");
                partial(&served, 50_000)
            }
        });
        let url = format!("http://127.0.0.1:{registry}/v2/os/golden/blobs/sha256:ab");
        let auth = fake_auth(registry, "old");
        let clock = Arc::new(FakeClock::default());
        let mut source = open_with(&url, &options(3), clock, Some(Arc::clone(&auth) as _)).unwrap();
        let mut read = Vec::new();
        source.reader.read_to_end(&mut read).unwrap();
        assert!(read == body);
        assert_eq!(auth.renewals.load(Ordering::Relaxed), 1);
        assert_eq!(heads.lock().unwrap().len(), 3);
    }
}
