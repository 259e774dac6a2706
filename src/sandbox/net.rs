//! How the sandbox's HAPI replicas (containers) reach pgBouncer (a host process).
//!
//! Decision: pgBouncer listens on 127.0.0.1 *and* on the host's address on Docker's default
//! bridge (docker0, usually 172.17.0.1), and every replica gets
//! `extra_hosts: host.docker.internal:<that address>` and connects to
//! `host.docker.internal:<bouncer port>`. Why this address and not another:
//! - it exists before any compose network does, so pgBouncer can be configured (and
//!   restarted by `up`) without knowing which subnet compose will pick for the project;
//! - it is the host's own address, so a container on any bridge network reaches it through
//!   the host's INPUT path (Docker's inter-network isolation only filters FORWARD);
//! - it is what Docker's `host-gateway` means by default; naming the address itself instead
//!   of `host-gateway` keeps the two in step even when the daemon sets `host-gateway-ip`;
//! - it is not on a public interface (unlike 0.0.0.0), and the host itself still only ever
//!   talks to 127.0.0.1: traffic goes container → host, never host → a container's 172.x.

use std::net::Ipv4Addr;

use anyhow::{Context, bail};

use crate::infra::docker::{self, Docker};

pub const HOST_ALIAS: &str = "host.docker.internal";

/// The host's IPv4 address on Docker's default bridge.
pub async fn bridge_address() -> anyhow::Result<Ipv4Addr> {
    let engine = Docker::connect(&docker::host(None)).await?;
    let (opts, gateways) = engine.network_options("bridge").await?.context(
        "Docker has no default `bridge` network (dockerd --bridge=none?): the sandbox's HAPI replicas could not reach pgBouncer",
    )?;
    if let Some(ip) = gateways.iter().find_map(|g| g.parse().ok()) {
        return Ok(ip);
    }
    let name = opts
        .get("com.docker.network.bridge.name")
        .map_or("docker0", String::as_str);
    match interface_v4(name)? {
        Some(ip) => Ok(ip),
        None => bail!(
            "the Docker bridge interface {name} has no IPv4 address on this host: the sandbox's HAPI replicas could not reach pgBouncer (is the Docker engine local?)"
        ),
    }
}

/// The first IPv4 address of a local network interface (getifaddrs).
fn interface_v4(name: &str) -> anyhow::Result<Option<Ipv4Addr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we only read and then free once.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error()).context("listing network interfaces");
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let n = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: ifa_addr is non-null; its family says which sockaddr it is.
        if n.to_bytes() == name.as_bytes()
            && i32::from(unsafe { (*ifa.ifa_addr).sa_family }) == libc::AF_INET
        {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            break;
        }
    }
    // SAFETY: frees the list getifaddrs allocated, once.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_has_its_address_and_a_missing_interface_has_none() {
        assert_eq!(
            super::interface_v4("lo").unwrap(),
            Some(std::net::Ipv4Addr::LOCALHOST)
        );
        assert_eq!(super::interface_v4("no-such-if0").unwrap(), None);
    }
}
