//! Ports for upstreams that are down.
//!
//! A port taken from a listener that is then dropped is free again, and a test
//! running in parallel (or the kernel, for an outgoing connection) may take it:
//! the "dead" upstream would then answer. `ClosedPort` keeps the port bound
//! for as long as it lives, without listening on it, so a connection to it is
//! refused (RST) and nobody else can bind it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A loopback TCP port bound but never listened on: connecting to it is
/// refused for as long as this value lives.
#[derive(Debug)]
pub struct ClosedPort {
    fd: OwnedFd,
    port: u16,
}

impl ClosedPort {
    /// Reserves a port on 127.0.0.1 chosen by the OS; panics if it cannot.
    pub fn reserve() -> ClosedPort {
        Self::try_reserve().unwrap_or_else(|e| panic!("cannot reserve a closed port: {e}"))
    }

    pub fn try_reserve() -> io::Result<ClosedPort> {
        // SAFETY: plain socket calls on a descriptor this function owns; the
        // sockaddr structs are correctly sized and initialised.
        unsafe {
            let raw = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(raw);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_port = 0;
            addr.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            if libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_in).cast(),
                len,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            let mut bound: libc::sockaddr_in = std::mem::zeroed();
            let mut bound_len = len;
            if libc::getsockname(
                fd.as_raw_fd(),
                (&mut bound as *mut libc::sockaddr_in).cast(),
                &mut bound_len,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(ClosedPort {
                fd,
                port: u16::from_be(bound.sin_port),
            })
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The bound socket (never listening).
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_closed_port_refuses_connections_and_cannot_be_taken() {
        let closed = ClosedPort::reserve();
        assert_ne!(closed.port(), 0);
        let err = TcpStream::connect(closed.addr()).expect_err("nobody listens there");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        assert!(
            TcpListener::bind(closed.addr()).is_err(),
            "another socket could bind the reserved port"
        );
    }
}
