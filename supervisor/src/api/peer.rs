//! Who is on the other end of an HTTP connection: its addresses (the accept loop,
//! `daemon/http.rs`, puts a [`Peer`] in every request's extensions), and, for a loopback
//! connection on Linux, the user that owns the client's socket.
//!
//! The user comes from `/proc/net/tcp` (`tcp6` for IPv6): each line is one socket, with
//! its local and remote address and its owner's uid (proc(5), "/proc/net/tcp"). The
//! client's socket is the one whose local address is the peer's and whose remote address
//! is ours. Other systems give no such table to unprivileged processes, so
//! [`Peer::user`] answers [`PeerUser::Unknowable`] there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The two ends of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub remote: SocketAddr,
    pub local: SocketAddr,
}

/// The owner of a loopback client's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerUser {
    Uid(u32),
    /// Not in the socket table (the client closed, or another network namespace).
    NotFound,
    /// This system has no table to look in.
    Unknowable,
}

impl Peer {
    pub fn user(&self) -> PeerUser {
        #[cfg(target_os = "linux")]
        {
            let table = if self.remote.is_ipv4() { "/proc/net/tcp" } else { "/proc/net/tcp6" };
            match std::fs::read_to_string(table) {
                Ok(text) => owner_in_table(&text, self.remote, self.local).map_or(PeerUser::NotFound, PeerUser::Uid),
                Err(_) => PeerUser::NotFound,
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            PeerUser::Unknowable
        }
    }
}

/// The uid on the line of `table` (`/proc/net/tcp` text) whose socket is `local` talking to
/// `remote`.
pub fn owner_in_table(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode …
        let f: Vec<&str> = line.split_whitespace().collect();
        let (l, r, uid) = (f.get(1)?, f.get(2)?, f.get(7)?);
        (parse_addr(l)? == local && parse_addr(r)? == remote).then(|| uid.parse().ok())?
    })
}

/// `0100007F:1F40` (IPv4) or 32 hex digits and a port (IPv6). The kernel prints each
/// 32-bit word of the address as a number in host byte order (`%08X`), the port in
/// host order too.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok().map(u32::to_ne_bytes);
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            // A v4 client of a dual-stack listener is ::ffff:a.b.c.d here and in Rust alike.
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_socket_is_found_by_both_addresses() {
        // Little-endian words as on x86-64 and arm64; the first line is the header.
        let table =
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n\
           1: 0100007F:D431 0100007F:1F40 01 00000000:00000000 00:00000000 00000000 65534        0 2 1\n\
           2: 0100007F:1F40 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 3 1\n";
        if cfg!(target_endian = "little") {
            let client: SocketAddr = "127.0.0.1:54321".parse().unwrap();
            let server: SocketAddr = "127.0.0.1:8000".parse().unwrap();
            assert_eq!(owner_in_table(table, client, server), Some(65534));
            assert_eq!(owner_in_table(table, server, client), Some(0));
            assert_eq!(owner_in_table(table, client, "127.0.0.1:8001".parse().unwrap()), None);
        }
        let v6 = "00000000000000000000000001000000:1F40";
        if cfg!(target_endian = "little") {
            assert_eq!(parse_addr(v6), Some("[::1]:8000".parse().unwrap()));
        }
    }
}
