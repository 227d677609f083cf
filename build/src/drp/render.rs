//! Renders the content pack for one machine with DRP's own template engine:
//! `build/drp-render`, a small Go program (text/template + sprig, and the
//! methods DRP's templates call) built once per target directory.
//!
//! Tests use it twice: `build/tests/drp_content.rs` checks what the pack
//! renders to, and the VM tests PXE boot a machine from the rendered iPXE
//! script and `imprint.json`. Go is required: `scripts/setup` installs
//! `golang-go`, `golang-github-masterminds-sprig-dev` and
//! `golang-gopkg-yaml.v3-dev`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, PoisonError};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The renderer's Go source, `build/drp-render`.
fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("drp-render")
}

/// `<target_dir>/drp-render/drp-render`, built on the first call per
/// target directory in this process (GOPATH mode, against Debian's
/// packaged sprig and yaml.v3). Go's build cache lives next to it, so a
/// later process only relinks when the source changed.
pub fn renderer(target_dir: &Path) -> Result<PathBuf> {
    static BUILT: Mutex<BTreeMap<PathBuf, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(binary) = built.get(target_dir) {
        return Ok(binary.clone());
    }
    let dir = target_dir.join("drp-render");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let binary = dir.join("drp-render");
    let output = Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(".")
        .current_dir(source_dir())
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", dir.join("gocache"))
        .output()
        .context(
            "running go: install Go and sprig with scripts/setup \
             (golang-go, golang-github-masterminds-sprig-dev, golang-gopkg-yaml.v3-dev)",
        )?;
    if !output.status.success() {
        bail!(
            "building build/drp-render failed (scripts/setup installs its Go packages): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    built.insert(target_dir.to_owned(), binary.clone());
    Ok(binary)
}

/// Renders the bundle's bootenv and task for the machine `context`
/// describes (`{"machine": {"uuid","name","address","mac"},
/// "provisioner_url", "api_url", "token", "params"}`) and returns the
/// renderer's JSON: `{"bootparams": "...", "templates": [{"owner", "name",
/// "path", "contents"}]}`. A template that fails (a missing param, a
/// `fail` call) is an error carrying the renderer's message.
pub fn render(renderer: &Path, bundle: &Path, context: &Value) -> Result<Value> {
    // The context goes in on stdin: no temporary file to clean up.
    let output = run_with_stdin(
        Command::new(renderer)
            .arg("render")
            .arg(bundle)
            .arg("/dev/stdin"),
        context.to_string().as_bytes(),
    )
    .with_context(|| format!("running {}", renderer.display()))?;
    if !output.status.success() {
        bail!(
            "rendering {}: {}",
            bundle.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("reading the JSON {} printed", renderer.display()))
}

/// Checks the bundle the way DRP does when it loads it, and that
/// `content_dir` holds the same objects; the error lists every problem.
pub fn validate(renderer: &Path, bundle: &Path, content_dir: &Path) -> Result<()> {
    let output = Command::new(renderer)
        .arg("validate")
        .arg(bundle)
        .arg(content_dir)
        .output()
        .with_context(|| format!("running {}", renderer.display()))?;
    if !output.status.success() {
        bail!(
            "validating {}: {}",
            bundle.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The rendered template `name` of a [`render`] result: `(path, contents)`.
pub fn template<'a>(rendered: &'a Value, name: &str) -> Result<(&'a str, &'a str)> {
    let entry = rendered["templates"]
        .as_array()
        .and_then(|templates| templates.iter().find(|t| t["name"] == name))
        .with_context(|| format!("the rendered pack has no template {name}"))?;
    match (entry["path"].as_str(), entry["contents"].as_str()) {
        (Some(path), Some(contents)) => Ok((path, contents)),
        _ => bail!("rendered template {name} lacks a path or contents: {entry}"),
    }
}

fn run_with_stdin(command: &mut Command, input: &[u8]) -> std::io::Result<Output> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("the renderer's stdin is not a pipe"))?;
    // The renderer reads all of stdin before it prints, so writing first
    // cannot deadlock on a full stdout pipe.
    stdin.write_all(input)?;
    drop(stdin);
    child.wait_with_output()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn template_finds_by_name_and_refuses_what_is_missing() {
        let rendered = json!({"templates": [
            {"name": "ipxe", "path": "10.0.2.15.ipxe", "contents": "#!ipxe\n"},
            {"name": "broken", "path": "x"},
        ]});
        assert_eq!(
            template(&rendered, "ipxe").unwrap(),
            ("10.0.2.15.ipxe", "#!ipxe\n")
        );
        let err = template(&rendered, "grub").unwrap_err();
        assert_eq!(err.to_string(), "the rendered pack has no template grub");
        let err = template(&rendered, "broken").unwrap_err();
        assert!(
            err.to_string().contains("lacks a path or contents"),
            "{err}"
        );
    }
}
