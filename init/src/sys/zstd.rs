//! A safe handle on libzstd-rs-sys's streaming decoder (`ZSTD_DCtx`).
//!
//! libzstd-rs-sys is libzstd's decoder ported to Rust, with libzstd's C API
//! kept as `unsafe extern "C" fn`s over raw pointers. This module is the
//! only caller: it owns one context, passes it slices it borrows for the
//! length of one call, and turns libzstd's size-or-error-code results into
//! `Result`s. The decoding policy (frames, limits, error messages) lives in
//! `crate::pipeline::zstd_decoder`.

use std::ffi::CStr;
use std::ptr::NonNull;

use libzstd_rs_sys::{
    ZSTD_DCtx, ZSTD_DCtx_reset, ZSTD_DCtx_setParameter, ZSTD_ResetDirective, ZSTD_createDCtx,
    ZSTD_dParameter, ZSTD_decompressDCtx, ZSTD_decompressStream, ZSTD_freeDCtx, ZSTD_getErrorName,
    ZSTD_inBuffer, ZSTD_isError, ZSTD_outBuffer,
};

/// One decompression context: a frame's window and entropy tables, reused
/// from frame to frame.
pub struct ZstdContext {
    dctx: NonNull<ZSTD_DCtx>,
}

// SAFETY: a ZSTD_DCtx holds no thread-local state and no pointer into
// another context; libzstd documents a context as usable from any thread
// as long as one thread at a time does, which `&mut self` on every call
// guarantees.
#[allow(unsafe_code)]
unsafe impl Send for ZstdContext {}

/// What one [`ZstdContext::decompress`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Input bytes consumed.
    pub read: usize,
    /// Output bytes produced.
    pub written: usize,
    /// The frame is complete (libzstd returned 0) and fully flushed.
    pub frame_done: bool,
}

impl ZstdContext {
    /// A context that refuses frames whose window exceeds `2^window_log_max`.
    pub fn new(window_log_max: i32) -> Result<Self, String> {
        // SAFETY: ZSTD_createDCtx has no preconditions; it returns null
        // when allocation fails, which NonNull::new catches.
        let raw = unsafe { ZSTD_createDCtx() };
        let dctx = NonNull::new(raw).ok_or("allocating a zstd decompression context")?;
        let context = ZstdContext { dctx };
        // SAFETY: the context is valid (just created) and not shared.
        let code = unsafe {
            ZSTD_DCtx_setParameter(
                context.dctx.as_ptr(),
                ZSTD_dParameter::ZSTD_d_windowLogMax,
                window_log_max,
            )
        };
        check(code)?;
        Ok(context)
    }

    /// Forgets the frame in progress, keeping the parameters and buffers.
    pub fn reset(&mut self) {
        // SAFETY: the context is valid and borrowed mutably. Resetting the
        // session only fails for a null context.
        let code = unsafe {
            ZSTD_DCtx_reset(
                self.dctx.as_ptr(),
                ZSTD_ResetDirective::ZSTD_reset_session_only,
            )
        };
        debug_assert!(check(code).is_ok());
    }

    /// Decodes from `input` into `output` until one of them is used up or
    /// the frame ends; libzstd's own error name on corrupt data.
    pub fn decompress(&mut self, input: &[u8], output: &mut [u8]) -> Result<Progress, String> {
        let mut inb = ZSTD_inBuffer {
            src: input.as_ptr().cast(),
            size: input.len(),
            pos: 0,
        };
        let mut outb = ZSTD_outBuffer {
            dst: output.as_mut_ptr().cast(),
            size: output.len(),
            pos: 0,
        };
        // SAFETY: the buffers describe live slices borrowed for this call
        // (input shared, output exclusive), with their exact lengths; libzstd
        // reads and writes only within [0, size) and keeps no pointer to
        // them after returning (it copies what it must keep into the
        // context's own window buffer).
        let code =
            unsafe { ZSTD_decompressStream(self.dctx.as_ptr(), &raw mut outb, &raw mut inb) };
        let left = check(code)?;
        Ok(Progress {
            read: inb.pos.min(input.len()),
            written: outb.pos.min(output.len()),
            frame_done: left == 0,
        })
    }

    /// Decodes the whole frames in `input` straight into `output`, in one
    /// pass (no window buffer, no copy out of it); the output's length.
    /// `input` must hold exactly whole frames; output that would not fit
    /// is libzstd's "Destination buffer is too small".
    pub fn decompress_all(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, String> {
        // SAFETY: both pointers describe live slices with their exact
        // lengths, borrowed for this call (input shared, output
        // exclusive); libzstd writes only within output's capacity and
        // keeps neither pointer.
        let code = unsafe {
            ZSTD_decompressDCtx(
                self.dctx.as_ptr(),
                output.as_mut_ptr().cast(),
                output.len(),
                input.as_ptr().cast(),
                input.len(),
            )
        };
        check(code).map(|n| n.min(output.len()))
    }
}

impl Drop for ZstdContext {
    fn drop(&mut self) {
        // SAFETY: the context was created by ZSTD_createDCtx, is freed
        // once, here, and no borrow of it outlives `self`.
        unsafe {
            ZSTD_freeDCtx(self.dctx.as_ptr());
        }
    }
}

/// libzstd's convention: a result is a size, or an error code that
/// ZSTD_isError recognises and ZSTD_getErrorName names.
fn check(code: usize) -> Result<usize, String> {
    if ZSTD_isError(code) == 0 {
        return Ok(code);
    }
    let name = ZSTD_getErrorName(code);
    if name.is_null() {
        return Err(format!("zstd error {code}"));
    }
    // SAFETY: ZSTD_getErrorName returns a pointer to a static,
    // NUL-terminated string for every code (checked non-null above).
    let name = unsafe { CStr::from_ptr(name) };
    Err(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One raw block frame of "hello" (RFC 8878 §3.1.1: magic, descriptor
    /// with single segment and a 1-byte content size, last raw block).
    fn hello_frame() -> Vec<u8> {
        let mut frame = vec![0x28, 0xB5, 0x2F, 0xFD, 0x20, 5];
        let header: u32 = (5 << 3) | 1;
        frame.extend_from_slice(&header.to_le_bytes()[..3]);
        frame.extend_from_slice(b"hello");
        frame
    }

    #[test]
    fn decodes_a_frame_and_says_when_it_ends() {
        let mut context = ZstdContext::new(27).unwrap();
        let frame = hello_frame();
        let mut out = [0u8; 16];
        let progress = context.decompress(&frame, &mut out).unwrap();
        assert_eq!(progress.read, frame.len());
        assert_eq!(&out[..progress.written], b"hello");
        assert!(progress.frame_done);
    }

    #[test]
    fn resumes_across_tiny_buffers() {
        let mut context = ZstdContext::new(27).unwrap();
        let frame = hello_frame();
        let (mut out, mut at, mut done) = (Vec::new(), 0, false);
        while !done {
            let mut one = [0u8; 1];
            let end = (at + 1).min(frame.len());
            let progress = context.decompress(&frame[at..end], &mut one).unwrap();
            at += progress.read;
            out.extend_from_slice(&one[..progress.written]);
            done = progress.frame_done;
        }
        assert_eq!(out, b"hello");
    }

    #[test]
    fn decodes_a_whole_frame_in_one_pass() {
        let mut context = ZstdContext::new(27).unwrap();
        let mut out = [0u8; 5];
        assert_eq!(context.decompress_all(&hello_frame(), &mut out), Ok(5));
        assert_eq!(&out, b"hello");
        let err = context
            .decompress_all(&hello_frame(), &mut [0u8; 4])
            .unwrap_err();
        assert_eq!(err, "Destination buffer is too small");
        let frame = hello_frame();
        let err = context
            .decompress_all(&frame[..frame.len() - 1], &mut out)
            .unwrap_err();
        assert_eq!(err, "Src size is incorrect");
    }

    #[test]
    fn corrupt_input_is_an_error_with_libzstds_name() {
        let mut context = ZstdContext::new(27).unwrap();
        let mut frame = hello_frame();
        frame[0] ^= 1;
        let err = context.decompress(&frame, &mut [0u8; 16]).unwrap_err();
        assert_eq!(err, "Unknown frame descriptor");
        context.reset();
        let progress = context.decompress(&hello_frame(), &mut [0u8; 16]).unwrap();
        assert!(progress.frame_done);
    }
}
