//! The `imprint` binary: PID 1 inside the initramfs, a CLI everywhere else.

fn main() {
    if std::process::id() == 1 {
        imprint::pid1::main();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(imprint::cli::main(&args));
}
