//! Bind policy: the worker listens only on loopback or on a Tailscale
//! address of this host (docs/protocol.md, "Transport"), unless the operator
//! overrides it loudly. A Tailscale address is one inside the Tailscale
//! ranges *and* held by Tailscale's interface ([`interfaces`]): carrier-grade
//! NAT and other VPNs use the same 100.64.0.0/10 range on ordinary
//! interfaces, where binding would expose the worker to that network.

mod interfaces;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Parses `--host` (an IP address, or `localhost`).
pub fn parse_host(host: &str) -> Result<IpAddr, String> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.parse::<IpAddr>().map_err(|_| {
        format!("--host {host:?} is not an IP address; use this machine's Tailscale IP (`tailscale ip -4`) or 127.0.0.1")
    })
}

/// True for 100.64.0.0/10 minus 100.115.92.0/23, and fd7a:115c:a1e0::/48.
pub fn is_tailnet(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let in_cgnat = o[0] == 100 && (o[1] & 0xc0) == 64;
            let excluded = o[0] == 100 && o[1] == 115 && (o[2] & 0xfe) == 92;
            in_cgnat && !excluded
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            s[0] == 0xfd7a && s[1] == 0x115c && s[2] == 0xa1e0
        }
    }
}

/// Checks an address against the policy. `Ok(None)` is allowed; `Ok(Some)`
/// is allowed only because of the override and carries the warning to log.
pub fn check(ip: IpAddr, allow_any: bool) -> Result<Option<String>, String> {
    check_with(ip, allow_any, interfaces::holder_of)
}

/// [`check`] with the interface lookup given (tests use a table).
fn check_with(ip: IpAddr, allow_any: bool, holder_of: impl Fn(IpAddr) -> Result<Option<String>, String>) -> Result<Option<String>, String> {
    if ip.is_loopback() {
        return Ok(None);
    }
    let problem = if is_tailnet(ip) {
        match holder_of(ip) {
            Ok(Some(name)) if interfaces::is_tailscale(&name) => return Ok(None),
            Ok(Some(name)) => format!(
                "{ip} is in the Tailscale range but is held by interface {name}, not by {}; carrier-grade NAT and other networks use the same range, so {name} may be reachable by others",
                interfaces::TAILSCALE_INTERFACE
            ),
            Ok(None) => format!("{ip} is not an address of this host (no interface holds it; see `tailscale ip -4`)"),
            Err(e) => format!("{e}, so it cannot be checked that {ip} belongs to Tailscale"),
        }
    } else if ip == IpAddr::V4(Ipv4Addr::UNSPECIFIED) || ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        format!("{ip} is every interface")
    } else {
        format!("{ip} is outside loopback and the Tailscale ranges")
    };
    if allow_any {
        return Ok(Some(format!(
            "SECURITY WARNING: binding {ip} although {problem}, because --allow-any-bind (worker.allow_any_bind) is set; the worker may be reachable from the LAN or the internet. Bind the Tailscale IP instead."
        )));
    }
    Err(format!(
        "refusing to bind {ip}: {problem}. The worker binds only to loopback (127.0.0.1) or this host's Tailscale IP (100.64.0.0/10 or fd7a:115c:a1e0::/48 on {}; see `tailscale ip -4`). Pass --allow-any-bind to override at your own risk.",
        interfaces::TAILSCALE_INTERFACE
    ))
}

/// Opens the worker's listening socket on `ip:port`, as actix-web's own
/// `bind` does (address reuse outside Windows, a backlog of 1,024), and, on
/// Linux for a loopback address, with an unpaced congestion control
/// ([`UNPACED`]) that every connection accepted from it inherits.
///
/// Many Linux systems run BBR (`net.ipv4.tcp_congestion_control = bbr`),
/// which paces what a socket sends: without the `fq` queueing discipline
/// the kernel arms a high-resolution timer for each segment's send time.
/// Pacing spares the queues of a real network; a worker bound to loopback
/// talks only to this machine, which has none, and there the timers cost
/// interrupts on every core. On the 2-core test machine an artifact
/// download of 1 GiB raised 7,000-10,000 timer interrupts per core per
/// second, and the controller's SHA-256, which sets the pace of a verified
/// download, hashed at 1,355-1,565 MB/s of its CPU time against 1,690
/// without them (docs/benchmarks.md). The congestion control has to be set
/// on the listening socket: BBR marks each socket it starts on as paced, and
/// switching an accepted socket to another algorithm does not take the mark
/// away (tried: the timers stayed). A worker bound to a Tailscale address
/// keeps the system's choice, made for the real network it is on. A
/// refusal leaves the system's choice too.
pub fn listener(ip: IpAddr, port: u16) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = std::net::SocketAddr::new(ip, port);
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    #[cfg(not(windows))]
    socket.set_reuse_address(true)?;
    #[cfg(target_os = "linux")]
    if ip.is_loopback() {
        unpaced(&socket);
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// The congestion control of a worker bound to loopback: Reno, which does
/// not pace, and which Linux lets any user choose
/// (`net.ipv4.tcp_allowed_congestion_control` always lists it).
#[cfg(target_os = "linux")]
const UNPACED: &[u8] = b"reno";

#[cfg(target_os = "linux")]
fn unpaced(socket: &socket2::Socket) {
    if let Err(error) = socket.set_tcp_congestion(UNPACED) {
        tracing::warn!(
            %error,
            "could not choose the unpaced congestion control (reno) for the loopback listener; the system's stays, and large downloads may be slower"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host with Tailscale on 100.101.102.103 and fd7a:115c:a1e0::1, and
    /// carrier-grade NAT on 100.64.0.2 (a plain interface).
    fn this_host(ip: IpAddr) -> Result<Option<String>, String> {
        let ts = if cfg!(target_os = "macos") { "utun4" } else if cfg!(windows) { "Tailscale" } else { "tailscale0" };
        Ok(match ip.to_string().as_str() {
            "100.101.102.103" | "fd7a:115c:a1e0::1" => Some(ts.to_string()),
            "100.64.0.2" => Some("eth1".to_string()),
            _ => None,
        })
    }

    #[test]
    fn policy_table() {
        let check_one = |host: &str, allowed: bool| {
            let ip = parse_host(host).unwrap();
            assert_eq!(check_with(ip, false, this_host).is_ok(), allowed, "{host}");
        };
        for (host, ok) in [
            ("127.0.0.1", true),
            ("localhost", true),
            ("::1", true),
            ("100.101.102.103", true),
            ("fd7a:115c:a1e0::1", true),
            // In the ranges, but not on the Tailscale interface, or on none.
            ("100.64.0.2", false),
            ("100.127.255.254", false),
            ("fd7a:115c:a1e0::2", false),
            ("100.115.92.5", false),
            ("100.115.93.5", false),
            ("100.128.0.1", false),
            ("100.63.255.255", false),
            ("fd7a:115c:a1e1::1", false),
            ("0.0.0.0", false),
            ("::", false),
            ("192.168.1.10", false),
            ("8.8.8.8", false),
        ] {
            check_one(host, ok);
        }
        let cgnat = check_with(parse_host("100.64.0.2").unwrap(), false, this_host).unwrap_err();
        assert!(cgnat.contains("held by interface eth1") && cgnat.contains("--allow-any-bind"), "{cgnat}");
        let unlisted = check_with(parse_host("100.64.0.2").unwrap(), false, |_| Err("cannot list".into())).unwrap_err();
        assert!(unlisted.starts_with("refusing to bind 100.64.0.2: cannot list"), "{unlisted}");
        assert!(check_with(parse_host("100.64.0.2").unwrap(), true, this_host).unwrap().is_some());
        assert!(check(parse_host("0.0.0.0").unwrap(), true).unwrap().is_some());
        assert!(parse_host("worker.example").is_err());
        for host in ["100.64.0.1", "100.101.102.103", "100.127.255.254", "fd7a:115c:a1e0::1"] {
            assert!(is_tailnet(parse_host(host).unwrap()), "{host}");
        }
    }

    /// A connection accepted on a loopback listener sends unpaced: it
    /// inherits the listener's congestion control, whatever the system's.
    #[cfg(target_os = "linux")]
    #[test]
    fn loopback_connections_send_unpaced() {
        use std::os::fd::AsRawFd;
        let congestion = |fd: i32| {
            let mut name = [0u8; 16];
            let mut len = name.len() as libc::socklen_t;
            // SAFETY: reads an option of an open socket into a live buffer
            // of the given length.
            let r = unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_CONGESTION, name.as_mut_ptr().cast(), &mut len) };
            assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
            String::from_utf8_lossy(&name[..len as usize]).trim_end_matches('\0').to_string()
        };
        let listener = listener(IpAddr::V4(Ipv4Addr::LOCALHOST), 0).unwrap();
        assert_eq!(congestion(listener.as_raw_fd()), "reno");
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(congestion(accepted.as_raw_fd()), "reno");
    }
}
