//! How imprint writes and reads small values, in one place for every
//! module: hex digests, MAC addresses, sizes for humans, durations.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Lowercase hex, two digits a byte.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `52:54:00:12:34:56`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// Parses `52:54:00:12:34:56` (sysfs) or `52-54-00-12-34-56`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for byte in &mut mac {
        let part = parts.next()?;
        // from_str_radix alone would take a sign ("+5").
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// `1.5 GiB`, binary units, one decimal.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    #[allow(clippy::cast_precision_loss)] // for humans; one decimal is shown
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `90`, `90s`, `500ms`, `10m`, `1h`: a bare number is seconds.
pub fn parse_duration(v: &str) -> Result<Duration> {
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let n: u64 = number
        .parse()
        .with_context(|| format!("{v:?} is not a duration such as 30s, 10m or 1h"))?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => bail!("{v:?} has an unknown unit {unit:?}; use ms, s, m or h"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digits() {
        assert_eq!(hex(&[0, 1, 0xfe, 0xff]), "0001feff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn macs_round_trip() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        assert_eq!(format_mac(&mac), "52:54:00:12:34:56");
        assert_eq!(parse_mac("52:54:00:12:34:56"), Some(mac));
        assert_eq!(parse_mac("52-54-00-12-34-56"), Some(mac));
        for bad in [
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "+5:54:00:12:34:56",
            "5g:54:00:12:34:56",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(256 << 20), "256.0 MiB");
        assert_eq!(human_size(3 << 30 | 512 << 20), "3.5 GiB");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5x").is_err());
    }
}
