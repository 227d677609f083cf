//! The deploy stream: source bytes -> hash -> disk.
