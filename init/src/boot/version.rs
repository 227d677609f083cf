//! Version ordering for boot entries, as systemd-boot sorts BLS entries.
//!
//! This is systemd's `strverscmp_improved()` (the UAPI "Version format
//! specification"), which agrees with rpm's `rpmvercmp()` on the versions
//! distributions put in kernel file names: digit runs compare numerically,
//! letters compare bytewise, `~` sorts before anything (even the end),
//! `-` (version/release) before anything but `~` and the end, and
//! characters outside `[A-Za-z0-9~^.-]` only separate segments.

use std::cmp::Ordering;

/// Compares two version strings the way systemd-boot orders BLS entries.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        a = skip_invalid(a);
        b = skip_invalid(b);

        // `~` marks a pre-release: 6.1~rc1 is older than 6.1.
        if a.first() == Some(&b'~') || b.first() == Some(&b'~') {
            let r = (a.first() != Some(&b'~')).cmp(&(b.first() != Some(&b'~')));
            if r != Ordering::Equal {
                return r;
            }
            a = &a[1..];
            b = &b[1..];
        }
        // At the end of either string, the longer one is newer.
        if a.is_empty() || b.is_empty() {
            return a.cmp(b);
        }
        // `-` separates version from release: 6.1-9 is older than 6.1.1-1.
        for sep in [b'-', b'^'] {
            if a[0] == sep || b[0] == sep {
                let r = (a[0] != sep).cmp(&(b[0] != sep));
                if r != Ordering::Equal {
                    return r;
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
        // `.` before anything else means a further version segment: newer.
        if a.first() == Some(&b'.') || b.first() == Some(&b'.') {
            let r = (a.first() == Some(&b'.')).cmp(&(b.first() == Some(&b'.')));
            if r != Ordering::Equal {
                return r;
            }
            a = &a[1..];
            b = &b[1..];
        }
        let a_digits = a.first().is_some_and(u8::is_ascii_digit);
        let b_digits = b.first().is_some_and(u8::is_ascii_digit);
        let (a_seg, b_seg);
        if a_digits || b_digits {
            // A numeric segment is newer than an alphabetic one.
            let r = a_digits.cmp(&b_digits);
            if r != Ordering::Equal {
                return r;
            }
            a_seg = run(a, u8::is_ascii_digit);
            b_seg = run(b, u8::is_ascii_digit);
            let a_num = trim_zeros(&a[..a_seg]);
            let b_num = trim_zeros(&b[..b_seg]);
            let r = a_num.len().cmp(&b_num.len()).then_with(|| a_num.cmp(b_num));
            if r != Ordering::Equal {
                return r;
            }
        } else {
            a_seg = run(a, u8::is_ascii_alphabetic);
            b_seg = run(b, u8::is_ascii_alphabetic);
            let r = a[..a_seg].cmp(&b[..b_seg]);
            if r != Ordering::Equal {
                return r;
            }
        }
        a = &a[a_seg..];
        b = &b[b_seg..];
    }
}

fn is_version_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'~' | b'-' | b'^' | b'.')
}

fn skip_invalid(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&c| is_version_char(c))
        .unwrap_or(s.len());
    &s[start..]
}

fn run(s: &[u8], class: fn(&u8) -> bool) -> usize {
    s.iter().position(|c| !class(c)).unwrap_or(s.len())
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&c| c != b'0').unwrap_or(s.len());
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_ascending(versions: &[&str]) {
        for pair in versions.windows(2) {
            assert_eq!(
                compare_versions(pair[0], pair[1]),
                Ordering::Less,
                "{} < {}",
                pair[0],
                pair[1]
            );
            assert_eq!(
                compare_versions(pair[1], pair[0]),
                Ordering::Greater,
                "{} > {}",
                pair[1],
                pair[0]
            );
        }
    }

    #[test]
    fn debian_kernels_compare_numerically() {
        assert_ascending(&["6.1.0-9", "6.1.0-13", "6.1.0-21", "6.10.0", "6.10.0-1"]);
    }

    #[test]
    fn rhel_kernels_compare_release_segments() {
        assert_ascending(&[
            "0-rescue-2a5f9c1d",
            "5.14.0-362.8.1.el9_3.x86_64",
            "5.14.0-362.24.1.el9_3.x86_64",
            "5.14.0-427.13.1.el9_4.x86_64",
        ]);
    }

    #[test]
    fn tilde_is_older_than_the_release_and_even_the_end() {
        assert_ascending(&["6.1~rc1", "6.1~rc2", "6.1", "6.1-1", "6.1.1"]);
        assert_ascending(&["1.0~", "1.0"]);
    }

    #[test]
    fn numbers_beat_letters_and_leading_zeros_do_not_count() {
        assert_ascending(&["1.a", "1.0"]);
        assert_eq!(compare_versions("1.007", "1.7"), Ordering::Equal);
        assert_ascending(&["1.abc", "1.abcd", "1.b"]);
    }

    #[test]
    fn separators_outside_the_alphabet_only_split_segments() {
        assert_eq!(
            compare_versions("5.14.0_el9", "5.14.0+el9"),
            Ordering::Equal
        );
        assert_eq!(compare_versions("", ""), Ordering::Equal);
        assert_ascending(&["", "0"]);
    }
}
