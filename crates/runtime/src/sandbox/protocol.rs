//! What Nubo and the sandbox launcher say to each other over their `SOCK_SEQPACKET` socket:
//! the launch settings one way; readiness (with the Runtime API listener and, for functions
//! with an egress allowlist, the egress proxy listener), setup errors and the program's exit
//! the other way. Seqpacket keeps message boundaries, so no framing is needed.

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

/// Bytes of one settings chunk; well under the default socket buffer, so a chunk never blocks
/// on its own size.
pub(crate) const CHUNK_BYTES: usize = 32 * 1024;

/// Bound on the serialized settings (argv and environment): a launcher never buffers more.
pub(crate) const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// Most descriptors one message carries (the Runtime API and egress proxy listeners); any
/// beyond are closed on receipt.
pub(crate) const MAX_FDS: usize = 2;

/// Largest message the sandbox sends (an error text); longer ones are cut.
pub(crate) const MAX_MESSAGE_BYTES: usize = 4096;

/// Everything the launcher needs to build one worker's sandbox and start its program.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LaunchConfig {
    pub name: String,
    pub code_dir: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub tmp_bytes: u64,
    pub uid: u32,
    pub gid: u32,
    pub host_network: bool,
    pub readonly_paths: Vec<PathBuf>,
    /// An empty host directory the new root tmpfs is mounted on (inside the private mount
    /// namespace, so every worker can share it).
    pub new_root: PathBuf,
    pub max_processes: u64,
    pub max_open_files: u64,
    /// Also bind the egress proxy listener (`EGRESS_PROXY_ADDR`) inside the worker's network
    /// namespace and hand it over after the Runtime API listener.
    #[serde(default)]
    pub egress_proxy: bool,
}

/// A message from the sandbox to Nubo.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Report {
    /// The program was executed; the message carries the Runtime API listener, then the
    /// egress proxy listener when one was asked for, unless the worker shares the host network.
    Ready,
    /// Building the sandbox or starting the program failed.
    Error(String),
    /// The program exited with this code.
    ExitCode(i32),
    /// The program was killed by this signal.
    ExitSignal(i32),
}

impl Report {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut text = match self {
            Report::Ready => "ready".to_owned(),
            Report::Error(message) => format!("error:{message}"),
            Report::ExitCode(code) => format!("exit-code:{code}"),
            Report::ExitSignal(signal) => format!("exit-signal:{signal}"),
        };
        if text.len() > MAX_MESSAGE_BYTES {
            let mut end = MAX_MESSAGE_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        text.into_bytes()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Report> {
        let text = std::str::from_utf8(bytes).ok()?;
        if text == "ready" {
            return Some(Report::Ready);
        }
        let (kind, value) = text.split_once(':')?;
        match kind {
            "error" => Some(Report::Error(value.to_owned())),
            "exit-code" => value.parse().ok().map(Report::ExitCode),
            "exit-signal" => value.parse().ok().map(Report::ExitSignal),
            _ => None,
        }
    }
}

/// Sends one message with `fds` attached, in order (at most [`MAX_FDS`]). Blocking or not
/// depends on the socket.
pub(crate) fn send(socket: RawFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> nix::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    sendmsg::<()>(socket, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None).map(drop)
}

/// Receives one message and the descriptors passed with it, in the order sent (at most
/// [`MAX_FDS`]); `Ok(None)` is end of stream.
pub(crate) fn receive(socket: RawFd, buf: &mut [u8]) -> nix::Result<Option<(usize, Vec<OwnedFd>)>> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let msg = recvmsg::<()>(
        socket,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut passed = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for raw in fds {
                // SAFETY: the kernel just installed `raw` in this process for this message
                // (SCM_RIGHTS); nothing else refers to it, so this is its only owner.
                #[allow(unsafe_code, reason = "owning a received descriptor")]
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                // Extra descriptors are closed on drop.
                if passed.len() < MAX_FDS {
                    passed.push(owned);
                }
            }
        }
    }
    if msg.bytes == 0 {
        return Ok(None);
    }
    Ok(Some((msg.bytes, passed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        for report in [
            Report::Ready,
            Report::Error("mount /var/task: permission denied".into()),
            Report::ExitCode(3),
            Report::ExitSignal(9),
        ] {
            assert_eq!(Report::decode(&report.encode()), Some(report));
        }
        assert_eq!(Report::decode(b"exit-code:x"), None);
        assert_eq!(Report::decode(b"nonsense"), None);
    }

    #[test]
    fn two_listeners_travel_in_order_with_one_message() {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        use std::os::fd::AsFd;
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        send(
            a.as_raw_fd(),
            &Report::Ready.encode(),
            &[api.as_fd(), proxy.as_fd()],
        )
        .unwrap();
        let mut buf = [0u8; MAX_MESSAGE_BYTES];
        let (len, fds) = receive(b.as_raw_fd(), &mut buf).unwrap().unwrap();
        assert_eq!(Report::decode(&buf[..len]), Some(Report::Ready));
        let addrs: Vec<_> = fds
            .into_iter()
            .map(|fd| std::net::TcpListener::from(fd).local_addr().unwrap())
            .collect();
        assert_eq!(
            addrs,
            [api.local_addr().unwrap(), proxy.local_addr().unwrap()]
        );
    }

    #[test]
    fn long_errors_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let encoded = Report::Error(long).encode();
        assert!(encoded.len() <= MAX_MESSAGE_BYTES);
        assert!(std::str::from_utf8(&encoded).is_ok());
    }
}
