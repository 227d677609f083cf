//! Host integration: signed images, made by the real tools at test time
//! (`minisign`, `gpg` in a throwaway GNUPGHOME, and `openssl dgst -sha256
//! -sign` + base64, which writes byte for byte what `cosign sign-blob
//! --key` writes: the base64 of a DER ECDSA P-256 signature over the
//! blob's SHA-256), deployed by the `imprint` CLI to a file through the
//! HTTP fixture server. Every refusal leaves the target as it was, or
//! zeroed at both ends when it is found after the first write.
//!
//! Each key's expected name comes from the tool, not from imprint:
//! minisign's key ID from its public key file's comment, gpg's
//! fingerprint from `--with-colons`, cosign's from the SHA-256 of
//! `openssl pkey -outform DER`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{hex, image, result_line};
use imprint_qemu::http::FixtureServer;
use sha2::{Digest, Sha256};

const MIB: usize = 1 << 20;
const DISK: usize = 8 * MIB;

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Minisign,
    GpgRsa4096Armored,
    GpgEd25519SubkeyBinary,
    Cosign,
}

/// A key pair made by the real tool, in its own directory.
struct Key {
    kind: Kind,
    dir: tempfile::TempDir,
    /// The public key file, as the tool exports it.
    public: PathBuf,
    /// `format:fingerprint`, as the tool names the signing key.
    token: String,
    /// gpg: the fingerprint to sign with (the subkey's, with `!`).
    gpg_user: String,
}

impl Key {
    fn new(kind: Kind) -> Key {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let public = d.join("public.key");
        let (token, gpg_user) = match kind {
            Kind::Minisign => {
                run(Command::new("minisign")
                    .args(["-G", "-W", "-f", "-p"])
                    .arg(&public)
                    .arg("-s")
                    .arg(d.join("secret.key")));
                let text = std::fs::read_to_string(&public).unwrap();
                let id = text
                    .lines()
                    .next()
                    .unwrap()
                    .rsplit(' ')
                    .next()
                    .unwrap()
                    .to_owned();
                (format!("minisign:{id}"), String::new())
            }
            Kind::GpgRsa4096Armored | Kind::GpgEd25519SubkeyBinary => {
                std::fs::create_dir(d.join("gnupg")).unwrap();
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(
                        d.join("gnupg"),
                        std::fs::Permissions::from_mode(0o700),
                    )
                    .unwrap();
                }
                let uid = "Imprint Test <signer@example.invalid>";
                let (algo, usage) = if kind == Kind::GpgRsa4096Armored {
                    ("rsa4096", "sign")
                } else {
                    ("ed25519", "cert")
                };
                run(gpg(d).args(["--quick-gen-key", uid, algo, usage, "never"]));
                let primary = fingerprints(d)[0].clone();
                let signer = if kind == Kind::GpgEd25519SubkeyBinary {
                    run(gpg(d).args(["--quick-add-key", &primary, "ed25519", "sign", "never"]));
                    fingerprints(d)[1].clone()
                } else {
                    primary.clone()
                };
                let mut export = gpg(d);
                export.arg("--export");
                if kind == Kind::GpgRsa4096Armored {
                    export.arg("--armor");
                }
                std::fs::write(&public, run(export.arg(&primary))).unwrap();
                (format!("openpgp:{signer}"), format!("{signer}!"))
            }
            Kind::Cosign => {
                let secret = d.join("cosign.key");
                run(Command::new("openssl")
                    .args([
                        "ecparam",
                        "-name",
                        "prime256v1",
                        "-genkey",
                        "-noout",
                        "-out",
                    ])
                    .arg(&secret));
                run(Command::new("openssl")
                    .args(["ec", "-pubout", "-in"])
                    .arg(&secret)
                    .arg("-out")
                    .arg(&public));
                let der = run(Command::new("openssl")
                    .args(["pkey", "-pubin", "-outform", "DER", "-in"])
                    .arg(&public));
                let fingerprint: String = Sha256::digest(&der)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                (format!("cosign:{fingerprint}"), String::new())
            }
        };
        Key {
            kind,
            dir,
            public,
            token,
            gpg_user,
        }
    }

    /// A detached signature of `data`, as the tool writes it.
    fn sign(&self, data: &[u8]) -> Vec<u8> {
        let d = self.dir.path();
        let file = d.join("data");
        std::fs::write(&file, data).unwrap();
        let sig = d.join("data.sig");
        let _ = std::fs::remove_file(&sig);
        match self.kind {
            Kind::Minisign => {
                run(Command::new("minisign")
                    .args(["-S", "-s"])
                    .arg(d.join("secret.key"))
                    .arg("-m")
                    .arg(&file)
                    .arg("-x")
                    .arg(&sig));
            }
            Kind::GpgRsa4096Armored | Kind::GpgEd25519SubkeyBinary => {
                let mut cmd = gpg(d);
                cmd.args(["--local-user", &self.gpg_user, "--detach-sign", "-o"])
                    .arg(&sig);
                if self.kind == Kind::GpgRsa4096Armored {
                    cmd.arg("--armor");
                }
                run(cmd.arg(&file));
            }
            Kind::Cosign => {
                let der = run(Command::new("openssl")
                    .args(["dgst", "-sha256", "-sign"])
                    .arg(d.join("cosign.key"))
                    .arg(&file));
                let b64 = run(Command::new("base64").arg("-w0").stdin_bytes(&der));
                std::fs::write(&sig, b64).unwrap();
            }
        }
        std::fs::read(&sig).unwrap()
    }
}

trait StdinBytes {
    fn stdin_bytes(&mut self, bytes: &[u8]) -> &mut Self;
}

impl StdinBytes for Command {
    /// Feeds `bytes` through a file: enough for small inputs.
    fn stdin_bytes(&mut self, bytes: &[u8]) -> &mut Self {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), bytes).unwrap();
        self.stdin(std::fs::File::open(file.path()).unwrap())
    }
}

fn gpg(dir: &Path) -> Command {
    let mut cmd = Command::new("gpg");
    cmd.env("GNUPGHOME", dir.join("gnupg")).args([
        "--batch",
        "--yes",
        "--quiet",
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        "",
    ]);
    cmd
}

fn fingerprints(dir: &Path) -> Vec<String> {
    let out = run(gpg(dir).args(["--with-colons", "--list-keys"]));
    String::from_utf8(out)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("fpr:"))
        .map(|l| l.split(':').nth(9).unwrap().to_owned())
        .collect()
}

const ALL: [Kind; 4] = [
    Kind::Minisign,
    Kind::GpgRsa4096Armored,
    Kind::GpgEd25519SubkeyBinary,
    Kind::Cosign,
];

/// One deploy of `image` through the fixture server, with the files
/// served beside it and `baked` keys in the CLI's trusted-keys directory.
struct Deploy<'a> {
    image: &'a [u8],
    files: Vec<(&'a str, Vec<u8>)>,
    baked: Vec<&'a Path>,
    allow_unsigned: bool,
    args: Vec<String>,
}

struct Outcome {
    output: Output,
    before: Vec<u8>,
    after: Vec<u8>,
}

impl Deploy<'_> {
    fn new(image: &[u8]) -> Deploy<'_> {
        Deploy {
            image,
            files: Vec::new(),
            baked: Vec::new(),
            allow_unsigned: false,
            args: Vec::new(),
        }
    }

    fn run(self, server: &FixtureServer) -> Outcome {
        server.add_file("golden.raw", self.image.to_vec());
        for (path, bytes) in self.files {
            server.add_file(path, bytes);
        }
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("etc/imprint/trusted-keys");
        std::fs::create_dir_all(&keys).unwrap();
        for (n, key) in self.baked.iter().enumerate() {
            std::fs::copy(key, keys.join(format!("{n}.key"))).unwrap();
        }
        if self.allow_unsigned {
            std::fs::write(dir.path().join("etc/imprint/allow-unsigned"), "").unwrap();
        }
        let target = dir.path().join("disk.img");
        let before: Vec<u8> = image(DISK, 99).iter().map(|b| b ^ 0x5a).collect();
        std::fs::write(&target, &before).unwrap();
        let url = server.url("golden.raw");
        let output = Command::new(env!("CARGO_BIN_EXE_imprint"))
            .env("IMPRINT_TRUSTED_KEYS", &keys)
            .args(["deploy", "--url", &url, "--disk", target.to_str().unwrap()])
            .args(&self.args)
            .output()
            .unwrap();
        let after = std::fs::read(&target).unwrap();
        Outcome {
            output,
            before,
            after,
        }
    }
}

impl Outcome {
    fn ok(&self, image: &[u8]) -> String {
        let line = result_line(&self.output);
        assert!(
            self.output.status.success(),
            "{line}\n{}",
            String::from_utf8_lossy(&self.output.stderr)
        );
        assert!(line.contains(&format!("sha256={}", hex(image))), "{line}");
        assert!(
            self.after[..image.len()] == *image,
            "the image is not on the target"
        );
        line
    }

    fn error(&self) -> String {
        assert_eq!(
            self.output.status.code(),
            Some(1),
            "{}",
            result_line(&self.output)
        );
        result_line(&self.output)
            .strip_prefix("IMPRINT-RESULT: error: ")
            .unwrap()
            .to_owned()
    }

    fn untouched(&self) {
        assert!(
            self.after == self.before,
            "the target was written: {}",
            result_line(&self.output)
        );
    }

    fn wiped(&self) {
        let line = result_line(&self.output);
        assert!(
            self.after[..MIB].iter().all(|b| *b == 0),
            "first MiB not zeroed after {line}"
        );
        assert!(
            self.after[DISK - MIB..].iter().all(|b| *b == 0),
            "last MiB not zeroed after {line}"
        );
    }
}

fn payload() -> Vec<u8> {
    image(3 * MIB + 4321, 5)
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn each_format_signs_the_image_good_and_bad() {
    for kind in ALL {
        let key = Key::new(kind);
        let other = Key::new(kind);
        let server = FixtureServer::start().unwrap();
        let data = payload();
        let sig_url = server.url("golden.raw.sig");
        let with_sig = |sig: Vec<u8>| {
            let mut deploy = Deploy::new(&data);
            deploy.files.push(("golden.raw.sig", sig));
            deploy.baked.push(&key.public);
            deploy.args = args(&["--signature", &sig_url]);
            deploy
        };

        // Good: the result line names the key the tool says signed.
        let good = key.sign(&data);
        let line = with_sig(good.clone()).run(&server).ok(&data);
        assert!(
            line.split(' ')
                .any(|t| t == format!("signed-by={}", key.token)),
            "{kind:?}: {line}"
        );

        // Signed by a key that is not trusted.
        let outcome = with_sig(other.sign(&data)).run(&server);
        let error = outcome.error();
        assert!(error.contains(&sig_url), "{kind:?}: {error}");
        if kind == Kind::Cosign {
            // A cosign signature does not name its key: found at the end.
            assert!(
                error.contains("does not match the data under any trusted cosign key"),
                "{error}"
            );
            outcome.wiped();
        } else {
            assert!(error.contains("which is not trusted"), "{kind:?}: {error}");
            assert!(
                error.contains(&other.token[other.token.find(':').unwrap() + 1..]),
                "{kind:?}: {error}"
            );
            outcome.untouched();
        }

        // The image changed after it was signed.
        let mut modified = data.clone();
        modified[MIB + 17] ^= 1;
        let mut deploy = with_sig(good.clone());
        deploy.image = &modified;
        let outcome = deploy.run(&server);
        let error = outcome.error();
        assert!(
            error.contains("does not match the data"),
            "{kind:?}: {error}"
        );
        outcome.wiped();

        // A good signature of another file.
        let outcome = with_sig(key.sign(b"another file")).run(&server);
        assert!(
            outcome.error().contains("does not match the data"),
            "{kind:?}"
        );
        outcome.wiped();

        // A truncated signature: refused before anything is fetched.
        let outcome = with_sig(good[..good.len() * 2 / 3].to_vec()).run(&server);
        let error = outcome.error();
        assert!(
            error.starts_with(&format!("signature {sig_url}")),
            "{kind:?}: {error}"
        );
        outcome.untouched();
    }
}

#[test]
fn each_format_signs_the_checksum_list_good_and_bad() {
    for kind in ALL {
        let key = Key::new(kind);
        let server = FixtureServer::start().unwrap();
        let data = payload();
        let sums = format!("{}  other.raw\n{}  golden.raw\n", hex(b"x"), hex(&data)).into_bytes();
        let sums_sig = key.sign(&sums);
        let list_url = server.url("SHA256SUMS");
        let sig_url = server.url("SHA256SUMS.sig");
        let deploy = |image: &'_ [u8], list: Vec<u8>| {
            let mut deploy = Deploy::new(image);
            deploy.files.push(("SHA256SUMS", list));
            deploy.files.push(("SHA256SUMS.sig", sums_sig.clone()));
            deploy.baked.push(&key.public);
            deploy.args = args(&[
                "--checksum-url",
                &list_url,
                "--checksum-signature",
                &sig_url,
            ]);
            deploy.run(&server)
        };

        let line = deploy(&data, sums.clone()).ok(&data);
        assert!(line.contains(" verified=sha256"), "{line}");
        assert!(
            line.split(' ')
                .any(|t| t == format!("signed-by={}", key.token)),
            "{kind:?}: {line} want {}",
            key.token
        );

        // The list changed after it was signed (a digest swapped for the
        // attacker's image): refused before the image is fetched.
        let mut evil = data.clone();
        evil[5] ^= 1;
        let forged = format!("{}  other.raw\n{}  golden.raw\n", hex(b"x"), hex(&evil)).into_bytes();
        let outcome = deploy(&evil, forged);
        let error = outcome.error();
        assert!(
            error.contains(&sig_url) && error.contains("does not match the data"),
            "{kind:?}: {error}"
        );
        outcome.untouched();

        // The list is genuine, the image is not: the checksum catches it.
        let outcome = deploy(&evil, sums.clone());
        assert!(outcome.error().starts_with("checksum mismatch"), "{kind:?}");
        outcome.wiped();
    }
}

#[test]
fn baked_keys_make_a_signature_mandatory_and_cannot_be_widened() {
    let baked = Key::new(Kind::Minisign);
    let attacker = Key::new(Kind::Minisign);
    let server = FixtureServer::start().unwrap();
    let data = payload();

    // Unsigned: refused before anything is written.
    let mut deploy = Deploy::new(&data);
    deploy.baked.push(&baked.public);
    let outcome = deploy.run(&server);
    let error = outcome.error();
    assert!(
        error.starts_with("the image is not signed, but keys are trusted (minisign:"),
        "{error}"
    );
    outcome.untouched();

    // Unsigned, with an initramfs built --allow-unsigned: written, and the
    // result line names no signer.
    let mut deploy = Deploy::new(&data);
    deploy.baked.push(&baked.public);
    deploy.allow_unsigned = true;
    let line = deploy.run(&server).ok(&data);
    assert!(!line.contains("signed-by="), "{line}");

    // A key given by parameter that is not baked: refused, even with a
    // signature it would verify.
    let mut deploy = Deploy::new(&data);
    deploy.baked.push(&baked.public);
    deploy
        .files
        .push(("golden.raw.minisig", attacker.sign(&data)));
    let inline = std::fs::read_to_string(&attacker.public).unwrap();
    let inline = inline.lines().nth(1).unwrap().to_owned();
    deploy.args = args(&[
        "--signature",
        &server.url("golden.raw.minisig"),
        "--trusted-key",
        &inline,
    ]);
    let outcome = deploy.run(&server);
    let error = outcome.error();
    assert!(
        error.starts_with("--trusted-key names key minisign:"),
        "{error}"
    );
    assert!(
        error.contains("which is not baked into this initramfs"),
        "{error}"
    );
    outcome.untouched();
}

#[test]
fn a_key_by_parameter_is_honoured_without_baked_keys_and_requires_a_signature() {
    let key = Key::new(Kind::GpgRsa4096Armored);
    let server = FixtureServer::start().unwrap();
    let data = payload();
    server.add_file("keys/release.asc", std::fs::read(&key.public).unwrap());
    let key_url = server.url("keys/release.asc");

    let mut deploy = Deploy::new(&data);
    deploy.files.push(("golden.raw.asc", key.sign(&data)));
    deploy.args = args(&[
        "--signature",
        &server.url("golden.raw.asc"),
        "--trusted-key",
        &key_url,
    ]);
    let line = deploy.run(&server).ok(&data);
    assert!(
        line.split(' ')
            .any(|t| t == format!("signed-by={}", key.token)),
        "{line}"
    );

    let mut deploy = Deploy::new(&data);
    deploy.args = args(&["--trusted-key", &key_url]);
    let outcome = deploy.run(&server);
    assert!(
        outcome.error().starts_with("the image is not signed"),
        "{}",
        outcome.error()
    );
    outcome.untouched();

    // A signature with no key to check it is an error, not a pass.
    let mut deploy = Deploy::new(&data);
    deploy.files.push(("golden.raw.asc", key.sign(&data)));
    deploy.args = args(&["--signature", &server.url("golden.raw.asc")]);
    let outcome = deploy.run(&server);
    assert!(
        outcome.error().contains("no key is trusted"),
        "{}",
        outcome.error()
    );
    outcome.untouched();
}

#[test]
fn a_legacy_minisign_signature_is_refused_with_the_fix() {
    let key = Key::new(Kind::Minisign);
    let server = FixtureServer::start().unwrap();
    let data = payload();
    let file = key.dir.path().join("legacy");
    std::fs::write(&file, &data).unwrap();
    run(Command::new("minisign")
        .args(["-S", "-l", "-s"])
        .arg(key.dir.path().join("secret.key"))
        .arg("-m")
        .arg(&file));
    let mut deploy = Deploy::new(&data);
    deploy.files.push((
        "golden.raw.minisig",
        std::fs::read(file.with_extension("minisig")).unwrap(),
    ));
    deploy.baked.push(&key.public);
    deploy.args = args(&["--signature", &server.url("golden.raw.minisig")]);
    let outcome = deploy.run(&server);
    let error = outcome.error();
    assert!(
        error.contains("legacy minisign signature") && error.contains("sign again without -l"),
        "{error}"
    );
    outcome.untouched();
}

/// Two baked keys of two formats; the list signed in text mode (`gpg
/// --textmode`, what `--clearsign`-minded distributions use for lists),
/// the image by minisign: both named, list first.
#[test]
fn a_text_mode_list_signature_and_an_image_signature_together() {
    let pgp = Key::new(Kind::GpgRsa4096Armored);
    let minisign = Key::new(Kind::Minisign);
    let server = FixtureServer::start().unwrap();
    let data = payload();
    let sums = format!("{}  golden.raw\n", hex(&data)).into_bytes();
    let list = pgp.dir.path().join("SHA256SUMS");
    std::fs::write(&list, &sums).unwrap();
    run(gpg(pgp.dir.path())
        .args([
            "--local-user",
            &pgp.gpg_user,
            "--textmode",
            "--armor",
            "--detach-sign",
        ])
        .arg(&list));
    let mut deploy = Deploy::new(&data);
    deploy.files.push(("SHA256SUMS", sums));
    deploy.files.push((
        "SHA256SUMS.asc",
        std::fs::read(list.with_extension("asc")).unwrap(),
    ));
    deploy
        .files
        .push(("golden.raw.minisig", minisign.sign(&data)));
    deploy.baked.push(&minisign.public);
    deploy.baked.push(&pgp.public);
    deploy.args = args(&[
        "--checksum-url",
        &server.url("SHA256SUMS"),
        "--checksum-signature",
        &server.url("SHA256SUMS.asc"),
        "--signature",
        &server.url("golden.raw.minisig"),
    ]);
    let outcome = deploy.run(&server);
    let line = outcome.ok(&data);
    assert!(
        line.split(' ')
            .any(|t| t == format!("signed-by={},{}", pgp.token, minisign.token)),
        "{line}"
    );
    let stderr = String::from_utf8_lossy(&outcome.output.stderr);
    assert!(
        stderr.contains("verified signature: the checksum list is signed by openpgp key"),
        "{stderr}"
    );
}
