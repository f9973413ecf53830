//! systemd's readiness protocol (`Type=notify`, sd_notify(3)): one datagram
//! of `KEY=VALUE` lines to the Unix socket named by `$NOTIFY_SOCKET`. Sluice
//! sends `READY=1` once every listener is bound, `STOPPING=1` when a
//! shutdown begins, and, as a successor (`--takeover`), `MAINPID=` with its
//! own pid so that systemd follows the new process (the unit says
//! `NotifyAccess=all`; pkg/sluice.service). A dozen lines of std rather than
//! a crate: the protocol is a single `sendto`.

use std::ffi::OsStr;
use std::io;
use std::os::unix::net::UnixDatagram;

/// Sends `state` to systemd when the process runs under it (`$NOTIFY_SOCKET`
/// set); Ok(false) when it does not.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(socket) => notify_to(&socket, state).map(|()| true),
        None => Ok(false),
    }
}

/// Sends `state` to the notification socket `socket`: a path, or `@NAME`
/// for a socket in the abstract namespace.
pub fn notify_to(socket: &OsStr, state: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sender = UnixDatagram::unbound()?;
    let name = socket.as_bytes();
    match name.strip_prefix(b"@") {
        Some(abstract_name) => {
            #[cfg(target_os = "linux")]
            {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
                sender.send_to_addr(state.as_bytes(), &addr)?;
            }
            #[cfg(not(target_os = "linux"))]
            {
                let _ = abstract_name;
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "abstract sockets are Linux's",
                ));
            }
        }
        None => {
            sender.send_to(state.as_bytes(), socket)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("sluice-sdnotify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1\nSTATUS=listening").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=listening");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_datagram_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("sluice-sdnotify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn no_socket_is_an_error_not_a_panic() {
        assert!(notify_to(OsStr::new("/nonexistent/sluice/notify"), "READY=1").is_err());
    }
}
