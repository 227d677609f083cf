//! The command line handed to the kexec'd kernel.
//!
//! It starts from the boot entry's own options, so the installed system
//! boots as its boot loader would boot it, then: imprint's parameters and
//! DRP's provisioning parameters are removed (they may carry tokens, and
//! they would make the installed system's initramfs think it is being
//! provisioned), `root=` is added when missing, and the console arguments
//! DRP put after `--` on imprint's own command line are kept, so the
//! installed system talks on the same serial port.

use crate::cmdline::split_words;
use anyhow::{Result, bail};

/// The x86 kernel's `COMMAND_LINE_SIZE` (2048) less the terminating NUL.
const MAX_CMDLINE: usize = 2047;

/// Builds the command line for the kexec'd kernel from the entry's
/// `options`, the root filesystem's UUID (used only when the options have
/// no `root=`) and the words after `--` on imprint's command line.
pub fn kexec_cmdline(
    options: Option<&str>,
    root_uuid: Option<&str>,
    init_args: &[String],
) -> Result<String> {
    let mut words: Vec<String> = split_words(options.unwrap_or(""))
        .into_iter()
        .filter(|w| !is_dropped(w))
        .collect();
    if !words.iter().any(|w| key(w) == "root") {
        match root_uuid {
            Some(uuid) => words.push(format!("root=UUID={uuid}")),
            None => bail!(
                "no root= in the boot entry's options and no root filesystem UUID to add: \
                 give one with imprint.kexec-cmdline=root=..."
            ),
        }
    }
    for arg in init_args {
        if is_console(arg) && !is_dropped(arg) && !words.contains(arg) {
            words.push(arg.clone());
        }
    }
    let line = words
        .iter()
        .map(|w| {
            if w.contains(char::is_whitespace) {
                format!("\"{w}\"")
            } else {
                w.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    if line.len() > MAX_CMDLINE {
        bail!(
            "kexec command line is {} bytes, more than the {MAX_CMDLINE} the kernel accepts: \
             shorten the entry's options or imprint.kexec-cmdline=",
            line.len()
        );
    }
    Ok(line)
}

fn key(word: &str) -> &str {
    word.split_once('=').map_or(word, |(k, _)| k)
}

/// imprint's own parameters, DRP's provisioning ones (both may carry
/// secrets), and what the boot loader adds by itself.
fn is_dropped(word: &str) -> bool {
    let key = key(word);
    key.starts_with("imprint.")
        || key.starts_with("rs.")
        || key.starts_with("provisioner.")
        || key == "BOOT_IMAGE"
        || key == "initrd"
}

fn is_console(word: &str) -> bool {
    matches!(key(word), "console" | "earlycon" | "earlyprintk")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn keeps_options_and_appends_console_from_init_args() {
        let line = kexec_cmdline(
            Some("root=UUID=0d4b ro quiet"),
            Some("ignored"),
            &args(&[
                "console=ttyS0,115200",
                "single",
                "earlycon",
                "earlyprintk=ttyS0",
            ]),
        )
        .unwrap();
        assert_eq!(
            line,
            "root=UUID=0d4b ro quiet console=ttyS0,115200 earlycon earlyprintk=ttyS0"
        );
    }

    #[test]
    fn adds_root_uuid_only_when_missing() {
        assert_eq!(
            kexec_cmdline(Some("ro quiet"), Some("0d4b-11"), &[]).unwrap(),
            "ro quiet root=UUID=0d4b-11"
        );
        assert_eq!(
            kexec_cmdline(None, Some("0d4b-11"), &[]).unwrap(),
            "root=UUID=0d4b-11"
        );
        let err = kexec_cmdline(Some("ro"), None, &[])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("no root="), "{err}");
    }

    #[test]
    fn drops_imprint_drp_and_loader_words() {
        let line = kexec_cmdline(
            Some(
                "BOOT_IMAGE=/vmlinuz-6.1 root=/dev/vda1 imprint.token=s3cret \
                 \"imprint.ssh-key=ssh-ed25519 AAAA x\" rs.uuid=abc provisioner.web=http://x \
                 initrd=/initrd.img ro",
            ),
            None,
            &args(&["imprint.drp-token=s3cret", "console=ttyS1"]),
        )
        .unwrap();
        assert_eq!(line, "root=/dev/vda1 ro console=ttyS1");
        assert!(!line.contains("s3cret"));
    }

    #[test]
    fn console_already_present_is_not_repeated_and_quotes_are_kept() {
        let line = kexec_cmdline(
            Some("root=LABEL=root console=ttyS0,115200 \"acpi_osi=Windows 2020\""),
            None,
            &args(&["console=ttyS0,115200", "console=tty0"]),
        )
        .unwrap();
        assert_eq!(
            line,
            "root=LABEL=root console=ttyS0,115200 \"acpi_osi=Windows 2020\" console=tty0"
        );
    }

    #[test]
    fn too_long_is_an_error_with_the_size() {
        let long = format!("root=/dev/sda1 {}", "x".repeat(2040));
        let err = kexec_cmdline(Some(&long), None, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("2055 bytes"), "{err}");
        let fits = format!("root=/dev/sda1 {}", "x".repeat(2047 - 15));
        assert_eq!(kexec_cmdline(Some(&fits), None, &[]).unwrap().len(), 2047);
    }
}
