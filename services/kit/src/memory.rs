//! Memory goes back when a large block is freed.
//!
//! glibc's malloc raises its mmap threshold to the size of each large block
//! freed (up to 32 MiB), so after the first 19 MiB Argon2 hash every later
//! one is carved from a per-thread arena and stays there once freed: each
//! login that ran on another blocking thread kept 19 MiB, and a burst of
//! 20 logins took user-management past its 256 MiB limit (OOM-killed, seen
//! on the real engine). Setting the threshold turns that adjustment off:
//! blocks of 128 KiB or more are mapped for each use and unmapped when
//! freed, so the process returns to its resting size after a burst.

/// Fix glibc's mmap threshold at 128 KiB (no-op on other C libraries).
pub fn return_large_frees() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's parameters; it is called
    // before any thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(test)]
mod tests {
    /// Resident memory of this process, KiB.
    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    #[test]
    fn large_blocks_freed_on_other_threads_are_returned() {
        super::return_large_frees();
        let before = rss_kib();
        // What a login does: a 19 MiB block, written, freed, on a new thread each time.
        for _ in 0..8 {
            std::thread::spawn(|| {
                let v = vec![7u8; 19 << 20];
                std::hint::black_box(&v);
            })
            .join()
            .unwrap();
        }
        let grown = rss_kib().saturating_sub(before);
        println!("VmRSS grew by {grown} KiB after 8 blocks of 19 MiB");
        assert!(grown < 8 * 1024, "freed blocks were kept: +{grown} KiB");
    }
}
