//! The seconds clock the flow table runs on: `CLOCK_BOOTTIME`, which is
//! the same for every process of one boot, so a flow's last-seen second
//! written by one router process still means the same to the next one.

/// Seconds since boot (suspend included).
pub fn boot_secs() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists
    // on every kernel the router supports (2.6.39+).
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u32
}
