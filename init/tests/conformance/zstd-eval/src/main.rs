//! Correctness evidence for issue 14's zstd decoder choice: the `zstd`
//! crate on zstd-sys's `rust-backend` (libzstd-rs-sys) and ruzstd, each
//! against the reference `zstd -dc`, on zstd's golden corpora and on
//! seeded mutations. Usage: zstd-decoder-eval CORPUS_DIR ZSTD_DECODER [N] [ZSTD_ENCODER]
//! (see BENCHMARKS.md, "zstd decoder: correctness evidence").

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

/// Bytes any decoder may produce for one input: the mutations are small.
const MAX_OUTPUT: usize = 64 << 20;

type Outcome = Result<Vec<u8>, String>;

fn rust_backend(input: &[u8]) -> Outcome {
    let mut decoder = zstd::stream::read::Decoder::with_buffer(input).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    (&mut decoder)
        .take(MAX_OUTPUT as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    if out.len() > MAX_OUTPUT {
        return Err("output limit".into());
    }
    Ok(out)
}

/// Every frame, skippable ones skipped, content checksums verified (ruzstd
/// computes them but leaves the comparison to its caller, as imprint does).
fn ruzstd(mut input: &[u8]) -> Outcome {
    let mut out = Vec::new();
    let mut decoder = FrameDecoder::new();
    if input.is_empty() {
        return Err("empty input".into());
    }
    while !input.is_empty() {
        match decoder.init(&mut input) {
            Ok(()) => {}
            Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                length,
                ..
            })) => {
                input = input
                    .get(length as usize..)
                    .ok_or("truncated skippable frame")?;
                continue;
            }
            Err(e) => return Err(e.to_string()),
        }
        while !decoder.is_finished() {
            decoder
                .decode_blocks(&mut input, BlockDecodingStrategy::UptoBytes(1 << 20))
                .map_err(|e| e.to_string())?;
            decoder
                .collect_to_writer(&mut out)
                .map_err(|e| e.to_string())?;
            if out.len() > MAX_OUTPUT {
                return Err("output limit".into());
            }
        }
        decoder
            .collect_to_writer(&mut out)
            .map_err(|e| e.to_string())?;
        if let (Some(want), Some(got)) = (
            decoder.get_checksum_from_data(),
            decoder.get_calculated_checksum(),
        ) && want != got
        {
            return Err("content checksum mismatch".into());
        }
    }
    Ok(out)
}

/// Runs `program args` with `input` on its stdin.
fn pipe(program: &str, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    // A decoder may stop reading early: a broken pipe is its answer.
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    out
}

fn reference(zstd: &str, input: &[u8]) -> Outcome {
    let out = pipe(zstd, &["-dc", "-q"], input);
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn verdict(o: &Outcome) -> &'static str {
    if o.is_ok() { "ok" } else { "error" }
}

fn same(a: &Outcome, b: &Outcome) -> bool {
    match (a, b) {
        (Ok(x), Ok(y)) => x == y,
        (Err(_), Err(_)) => true,
        _ => false,
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic across runs and machines.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn compress(zstd: &str, args: &[&str], data: &[u8]) -> Vec<u8> {
    let out = pipe(zstd, args, data);
    assert!(out.status.success(), "{zstd} {args:?} failed");
    out.stdout
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let corpus = Path::new(&args[1]);
    let zstd = &args[2];
    let mutations: usize = args.get(3).map_or(400, |n| n.parse().unwrap());
    // The seeds' encoder: `zstd-decompress` (the reference decoder built
    // from the corpus's commit) cannot compress.
    let encoder = args.get(4).map_or("zstd", String::as_str);

    println!("## corpus");
    let mut seeds = Vec::new();
    for dir in ["golden-decompression", "golden-decompression-errors"] {
        let mut names: Vec<_> = std::fs::read_dir(corpus.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "zst"))
            .collect();
        names.sort();
        for path in names {
            let input = std::fs::read(&path).unwrap();
            let want_ok = dir == "golden-decompression";
            let r = reference(zstd, &input);
            let b = rust_backend(&input);
            let z = ruzstd(&input);
            let right = |o: &Outcome| {
                if want_ok {
                    same(o, &r) && o.is_ok()
                } else {
                    o.is_err()
                }
            };
            println!(
                "{dir}/{}: expected {} | zstd -dc {} {} | rust-backend {} {} | ruzstd {} {}",
                path.file_name().unwrap().to_string_lossy(),
                if want_ok { "ok" } else { "error" },
                verdict(&r),
                if right(&r) { "right" } else { "WRONG" },
                verdict(&b),
                if right(&b) { "right" } else { "WRONG" },
                verdict(&z),
                if right(&z) { "right" } else { "WRONG" },
            );
            seeds.push(input);
        }
    }

    // Seeds made by the reference encoder: levels, checksums on and off,
    // several frames, a skippable frame, long windows.
    let mut text = Vec::new();
    let mut rng = Rng(0x1405_2026);
    for i in 0..200_000u32 {
        let word = ["disk ", "image ", "imprint ", "zstd ", "\n", "\0\0\0\0"][rng.below(6)];
        text.extend_from_slice(word.as_bytes());
        if i % 97 == 0 {
            text.extend((0..64).map(|_| rng.next() as u8));
        }
    }
    for args in [
        &["-c", "-1"][..],
        &["-c", "-19"],
        &["-c", "-3", "--no-check"],
        &["-c", "--long=27", "-5"],
        &["-c", "-1", "--no-content-size"],
    ] {
        seeds.push(compress(encoder, args, &text[..text.len() / 2]));
    }
    let mut multi = compress(encoder, &["-c", "-1"], &text[..5000]);
    multi.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
    multi.extend(compress(encoder, &["-c", "-9"], &text[5000..90_000]));
    seeds.push(multi);

    println!(
        "## differential: {mutations} seeded mutations of {} seeds",
        seeds.len()
    );
    let started = Instant::now();
    let mut tally = std::collections::BTreeMap::<String, usize>::new();
    let mut disagreements = Vec::new();
    for n in 0..mutations {
        let seed = &seeds[rng.below(seeds.len())];
        let mut input = seed.clone();
        let kind = rng.below(5);
        match kind {
            0 => {
                // One to four random bytes changed.
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(input.len());
                    input[at] ^= 1 << rng.below(8);
                }
            }
            1 => input.truncate(rng.below(input.len())),
            2 => {
                let at = rng.below(input.len() + 1);
                input.insert(at, rng.next() as u8);
            }
            3 => {
                let from = rng.below(input.len());
                let len = rng.below(64).min(input.len() - from);
                let chunk = input[from..from + len].to_vec();
                let at = rng.below(input.len());
                input.splice(at..at, chunk);
            }
            _ => {
                let at = rng.below(input.len());
                input[at] = rng.next() as u8;
                input.extend_from_slice(&seeds[rng.below(seeds.len())]);
            }
        }
        let r = reference(zstd, &input);
        let b = rust_backend(&input);
        let z = ruzstd(&input);
        let key = format!(
            "zstd -dc {} / rust-backend {} / ruzstd {}",
            verdict(&r),
            verdict(&b),
            verdict(&z)
        );
        *tally.entry(key).or_default() += 1;
        if !same(&r, &b) || !same(&r, &z) {
            // EVAL_DUMP=dir keeps each disagreeing input for a closer look.
            if let Ok(dir) = std::env::var("EVAL_DUMP") {
                std::fs::write(format!("{dir}/mutation-{n}.zst"), &input).unwrap();
            }
            disagreements.push(format!(
                "mutation {n} (kind {kind}, {} bytes): zstd -dc {:?} | rust-backend {:?} | ruzstd {:?}",
                input.len(),
                r.as_ref().map(Vec::len),
                b.as_ref().map(Vec::len),
                z.as_ref().map(Vec::len)
            ));
        }
    }
    for (key, count) in &tally {
        println!("{count:5}  {key}");
    }
    println!(
        "{} disagreements in {:.1} s",
        disagreements.len(),
        started.elapsed().as_secs_f64()
    );
    for d in &disagreements {
        println!("  {d}");
    }
}
