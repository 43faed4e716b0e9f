//! The daemon's open-file limit: raised from the soft limit it inherits to the hard one.
//!
//! Every connection, worker socket and model file is a descriptor. Soft limits are low by
//! default (256 in a macOS login shell and under launchd, 1,024 on most Linux systems), below
//! what `server.max_connections` (512 by default) plus the workers need, while the hard limit
//! a process may raise itself to is much higher. Servers commonly raise it at start (Go's
//! runtime does so for every program since 1.19). On macOS the kernel refuses a soft limit
//! above `OPEN_MAX` (10,240) whatever the hard limit says (setrlimit(2)), hence the retry.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// macOS' `OPEN_MAX` (<sys/syslimits.h>).
const OPEN_MAX: u64 = 10_240;

/// Raises the soft limit on open files as far as allowed; returns (before, after), or None
/// when it could not be read. A failure leaves the limit as it was.
pub fn raise() -> Option<(u64, u64)> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft >= hard {
        return Some((soft, soft));
    }
    for want in [hard, hard.min(OPEN_MAX)] {
        if want > soft && setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_ok() {
            return Some((soft, want));
        }
    }
    Some((soft, soft))
}
