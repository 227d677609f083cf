//! HTTP(S) sources.

use std::io::Read;

use anyhow::{Context, Result, bail};

use super::{Source, SourceOptions};

fn agent(options: &SourceOptions) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(options.connect_timeout))
        .timeout_recv_response(Some(options.stall_timeout))
        .timeout_recv_body(None)
        .timeout_per_read(Some(options.stall_timeout))
        // Status codes are turned into errors below, with the URL in them.
        .http_status_as_error(false)
        .user_agent(concat!("imprint/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

pub(super) fn open(url: &str, options: &SourceOptions) -> Result<Source> {
    let response = agent(options)
        .get(url)
        .call()
        .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        bail!(
            "GET {url}: HTTP {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
    }
    let body = response.into_body();
    let length = body.content_length();
    // `into_reader` fails with an error (instead of a clean EOF) when the
    // connection closes before Content-Length bytes arrived.
    Ok(Source {
        reader: Box::new(body.into_reader()),
        length,
        url: url.to_owned(),
        device: None,
    })
}

/// The last `len` bytes by a Range request; `None` when the server ignores Range.
pub(super) fn fetch_tail(url: &str, len: u64, options: &SourceOptions) -> Result<Option<Vec<u8>>> {
    let response = agent(options)
        .get(url)
        .header("Range", format!("bytes=-{len}"))
        .call()
        .map_err(|e| anyhow::anyhow!("GET {url} (last {len} bytes): {e}"))?;
    if response.status().as_u16() != 206 {
        return Ok(None);
    }
    let mut tail = Vec::new();
    response
        .into_body()
        .into_reader()
        .take(len)
        .read_to_end(&mut tail)
        .with_context(|| format!("reading the last {len} bytes of {url}"))?;
    Ok(Some(tail))
}
