//! Loading kernel modules.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};

/// What happened to one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    Now,
    /// Already loaded (or built in): not an error.
    Already,
}

/// Loads one module file with `finit_module`, which lets the kernel read
/// the file itself (and check its signature) instead of us copying it in.
pub fn load_module(path: &Path) -> Result<Loaded> {
    let file = File::open(path).with_context(|| format!("opening module {}", path.display()))?;
    match rustix::system::finit_module(&file, c"", 0) {
        Ok(()) => Ok(Loaded::Now),
        Err(rustix::io::Errno::EXIST) => Ok(Loaded::Already),
        Err(e) => Err(std::io::Error::from(e))
            .with_context(|| format!("loading module {}", path.display())),
    }
}

/// The running kernel's release (`uname -r`), which names its module tree.
pub fn kernel_release() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}
