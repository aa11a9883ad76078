//! Which network interface of this host holds an address, and whether that
//! interface is the one Tailscale creates: `tailscale0` on Linux (and other
//! Unix systems), a `utun<N>` interface on macOS, the adapter named
//! `Tailscale` on Windows.
//!
//! Unix lists the interfaces with `getifaddrs`; Windows with
//! `GetAdaptersAddresses`, whose adapter name the user sees is the
//! `FriendlyName`.

use std::net::IpAddr;
#[cfg(any(unix, windows))]
use std::net::{Ipv4Addr, Ipv6Addr};

/// How the Tailscale interface is named on this OS, for messages.
pub const TAILSCALE_INTERFACE: &str = if cfg!(target_os = "macos") {
    "a utun interface (Tailscale's)"
} else if cfg!(windows) {
    "the adapter named Tailscale"
} else {
    "tailscale0"
};

/// True for the name of the interface Tailscale creates on this OS.
pub fn is_tailscale(name: &str) -> bool {
    if cfg!(target_os = "macos") {
        name.strip_prefix("utun").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    } else if cfg!(windows) {
        name == "Tailscale"
    } else {
        name == "tailscale0"
    }
}

/// The name of the interface that holds `ip`, `None` when no interface of
/// this host does, or why the interfaces could not be listed.
#[cfg(unix)]
pub fn holder_of(ip: IpAddr) -> Result<Option<String>, String> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes the head of a list it allocates into
    // `list`; it is freed below with freeifaddrs, once.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(format!("cannot list this host's network interfaces: {}", std::io::Error::last_os_error()));
    }
    let mut found = None;
    let mut node = list;
    while !node.is_null() {
        // SAFETY: `node` is an element of the list getifaddrs returned,
        // which stays valid until freeifaddrs.
        let ifa = unsafe { &*node };
        // SAFETY: ifa_addr is null or points to a sockaddr of the family
        // it names, valid for as long as the list.
        if unsafe { sockaddr_ip(ifa.ifa_addr) } == Some(ip) {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            found = Some(unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned());
            break;
        }
        node = ifa.ifa_next;
    }
    // SAFETY: `list` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

/// The IP address of an IPv4 or IPv6 `sockaddr`.
///
/// # Safety
/// `sa` must be null or point to a valid sockaddr of the family it names.
#[cfg(unix)]
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    match i32::from((*sa).sa_family) {
        libc::AF_INET => {
            let sin = &*(sa as *const libc::sockaddr_in);
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))))
        }
        libc::AF_INET6 => {
            let sin6 = &*(sa as *const libc::sockaddr_in6);
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// The friendly name of the adapter that holds `ip` (what `ipconfig` and
/// the network settings show, e.g. `Tailscale`), `None` when no adapter
/// does, or why the adapters could not be listed.
#[cfg(windows)]
pub fn holder_of(ip: IpAddr) -> Result<Option<String>, String> {
    use windows_sys::Win32::Foundation::{ERROR_BUFFER_OVERFLOW, ERROR_SUCCESS};
    use windows_sys::Win32::NetworkManagement::IpHelper::{
        GetAdaptersAddresses, GAA_FLAG_SKIP_ANYCAST, GAA_FLAG_SKIP_DNS_SERVER, GAA_FLAG_SKIP_MULTICAST, IP_ADAPTER_ADDRESSES_LH,
    };
    use windows_sys::Win32::Networking::WinSock::AF_UNSPEC;
    let flags = GAA_FLAG_SKIP_ANYCAST | GAA_FLAG_SKIP_MULTICAST | GAA_FLAG_SKIP_DNS_SERVER;
    // Microsoft suggests starting with 15 KB; the call says how much more
    // it needs when that is too little (adapters can appear in between).
    let mut size: u32 = 16 * 1024;
    for _ in 0..4 {
        // u64 elements keep the buffer aligned for IP_ADAPTER_ADDRESSES_LH.
        let mut buf = vec![0u64; (size as usize).div_ceil(8)];
        // SAFETY: `buf` has at least `size` writable bytes, suitably aligned.
        let rc = unsafe {
            GetAdaptersAddresses(u32::from(AF_UNSPEC), flags, std::ptr::null(), buf.as_mut_ptr().cast::<IP_ADAPTER_ADDRESSES_LH>(), &mut size)
        };
        match rc {
            // SAFETY: on success `buf` holds the adapter list it points into.
            ERROR_SUCCESS => return Ok(unsafe { adapter_holding(buf.as_ptr().cast::<IP_ADAPTER_ADDRESSES_LH>(), ip) }),
            ERROR_BUFFER_OVERFLOW => continue,
            e => return Err(format!("cannot list this host's network adapters (GetAdaptersAddresses error {e})")),
        }
    }
    Err("cannot list this host's network adapters (the list kept growing)".into())
}

/// Walks the adapter list for the one with `ip` among its unicast addresses.
///
/// # Safety
/// `adapter` must be the head of a list filled by GetAdaptersAddresses,
/// still alive.
#[cfg(windows)]
unsafe fn adapter_holding(mut adapter: *const windows_sys::Win32::NetworkManagement::IpHelper::IP_ADAPTER_ADDRESSES_LH, ip: IpAddr) -> Option<String> {
    use windows_sys::Win32::Networking::WinSock::{AF_INET, AF_INET6, SOCKADDR_IN, SOCKADDR_IN6};
    while !adapter.is_null() {
        let a = &*adapter;
        let mut unicast = a.FirstUnicastAddress;
        while !unicast.is_null() {
            let u = &*unicast;
            let sa = u.Address.lpSockaddr;
            let addr = if sa.is_null() {
                None
            } else if (*sa).sa_family == AF_INET {
                let sin = &*(sa as *const SOCKADDR_IN);
                // S_addr holds the address in network order in memory.
                Some(IpAddr::V4(Ipv4Addr::from(sin.sin_addr.S_un.S_addr.to_ne_bytes())))
            } else if (*sa).sa_family == AF_INET6 {
                let sin6 = &*(sa as *const SOCKADDR_IN6);
                Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.u.Byte)))
            } else {
                None
            };
            if addr == Some(ip) {
                return Some(wide_string(a.FriendlyName));
            }
            unicast = u.Next;
        }
        adapter = a.Next.cast_const();
    }
    None
}

/// A NUL-terminated UTF-16 string.
///
/// # Safety
/// `p` must be null or point to a NUL-terminated UTF-16 string.
#[cfg(windows)]
unsafe fn wide_string(p: *const u16) -> String {
    if p.is_null() {
        return String::new();
    }
    let mut len = 0;
    while *p.add(len) != 0 {
        len += 1;
    }
    String::from_utf16_lossy(std::slice::from_raw_parts(p, len))
}

/// Other systems: the interfaces cannot be listed, so a Tailscale address
/// needs `--allow-any-bind`.
#[cfg(not(any(unix, windows)))]
pub fn holder_of(_ip: IpAddr) -> Result<Option<String>, String> {
    Err("this system's network interfaces cannot be listed".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_held_by_an_interface_that_is_not_tailscale() {
        let name = holder_of(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap().expect("some interface holds 127.0.0.1");
        assert!(!is_tailscale(&name), "{name}");
        assert_eq!(holder_of("192.0.2.123".parse().unwrap()).unwrap(), None, "TEST-NET-1 is nobody's here");
    }

    #[test]
    fn tailscale_names() {
        let expected = if cfg!(target_os = "macos") { "utun3" } else if cfg!(windows) { "Tailscale" } else { "tailscale0" };
        assert!(is_tailscale(expected));
        for other in ["eth0", "veth1", "tailscale", "utun", "utunX", "Tailscale 2", "tailscale00"] {
            assert!(!is_tailscale(other), "{other}");
        }
    }
}
