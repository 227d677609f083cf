//! VM tests live in tests/.
