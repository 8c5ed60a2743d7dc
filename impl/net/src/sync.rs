//! The synchronization primitives shared by threads in this crate: std's in
//! every real build, loom's under `cfg(loom)`, so that loom can run the same
//! code through every interleaving (`RUSTFLAGS="--cfg loom"`, see
//! [`crate::commit`]). Code that shares state between threads takes its
//! `Arc`, `Mutex`, `Condvar` and `thread` from here, never from `std`.
//!
//! Under `cfg(loom)` these types work only inside `loom::model`, so such a
//! build is for the loom tests alone.

#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(loom)]
pub(crate) use loom::thread;

#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::thread;

/// Locks `mutex`, ignoring poisoning: every critical section in this crate
/// leaves its data consistent before anything in it can panic, and a thread
/// that panicked is reported on its own (see [`crate::commit`]).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits on `condvar`, ignoring poisoning as [`lock`] does.
pub(crate) fn wait<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar.wait(guard).unwrap_or_else(std::sync::PoisonError::into_inner)
}
