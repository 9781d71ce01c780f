//! What the device tests share: a thread of their own in a private network namespace.

/// Moves the calling thread into a fresh network namespace (nothing it creates is visible to
/// the host, and all of it goes when the thread and its descriptors do). Panics with the
/// reason when it cannot: the tests need root.
pub fn unshare_network() {
    // SAFETY: unshare only changes this thread's network namespace.
    let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        ret,
        0,
        "unshare(CLONE_NEWNET) failed (this test needs root): {}",
        std::io::Error::last_os_error()
    );
}
