//! Bind policy: the worker listens only on loopback or on an address inside
//! the Tailscale ranges (REFERENCES.md section 1), unless the operator
//! overrides it loudly. Whether the address belongs to this host is settled
//! by the bind itself, which fails for a foreign address.

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
    if ip.is_loopback() || is_tailnet(ip) {
        return Ok(None);
    }
    let what = if ip == IpAddr::V4(Ipv4Addr::UNSPECIFIED) || ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        "every interface"
    } else {
        "an address outside loopback and the Tailscale ranges"
    };
    if allow_any {
        return Ok(Some(format!(
            "SECURITY WARNING: binding {ip}, {what}, because --allow-any-bind (worker.allow_any_bind) is set; the worker may be reachable from the LAN or the internet. Bind the Tailscale IP instead."
        )));
    }
    Err(format!(
        "refusing to bind {ip} ({what}): the worker binds only to loopback (127.0.0.1) or this host's Tailscale IP (100.64.0.0/10 or fd7a:115c:a1e0::/48; see `tailscale ip -4`). Pass --allow-any-bind to override at your own risk."
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_table() {
        let check_one = |host: &str, allowed: bool| {
            let ip = parse_host(host).unwrap();
            assert_eq!(check(ip, false).is_ok(), allowed, "{host}");
        };
        for (host, ok) in [
            ("127.0.0.1", true),
            ("localhost", true),
            ("::1", true),
            ("100.64.0.1", true),
            ("100.101.102.103", true),
            ("100.127.255.254", true),
            ("100.115.92.5", false),
            ("100.115.93.5", false),
            ("100.128.0.1", false),
            ("100.63.255.255", false),
            ("fd7a:115c:a1e0::1", true),
            ("fd7a:115c:a1e1::1", false),
            ("0.0.0.0", false),
            ("::", false),
            ("192.168.1.10", false),
            ("8.8.8.8", false),
        ] {
            check_one(host, ok);
        }
        assert!(check(parse_host("0.0.0.0").unwrap(), true).unwrap().is_some());
        assert!(parse_host("worker.example").is_err());
    }
}
