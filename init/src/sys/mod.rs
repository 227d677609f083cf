//! Every syscall and every `unsafe` block lives here.
