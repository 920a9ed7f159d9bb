//! What Nubo and the sandbox launcher say to each other over their `SOCK_SEQPACKET` socket:
//! the launch settings one way; readiness (with the Runtime API listener), setup errors and the
//! program's exit the other way. Seqpacket keeps message boundaries, so no framing is needed.

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
}

/// A message from the sandbox to Nubo.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Report {
    /// The program was executed; the message carries the Runtime API listener unless the
    /// worker shares the host network.
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

/// Sends one message, with `fd` attached when given. Blocking or not depends on the socket.
pub(crate) fn send(socket: RawFd, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> nix::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let raw;
    let cmsgs: &[ControlMessage<'_>] = match fd {
        Some(fd) => {
            raw = [fd.as_raw_fd()];
            &[ControlMessage::ScmRights(&raw)]
        }
        None => &[],
    };
    sendmsg::<()>(socket, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None).map(drop)
}

/// Receives one message and any descriptor passed with it; `Ok(None)` is end of stream.
pub(crate) fn receive(
    socket: RawFd,
    buf: &mut [u8],
) -> nix::Result<Option<(usize, Option<OwnedFd>)>> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(RawFd);
    let msg = recvmsg::<()>(
        socket,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut passed = None;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for raw in fds {
                // SAFETY: the kernel just installed `raw` in this process for this message
                // (SCM_RIGHTS); nothing else refers to it, so this is its only owner.
                #[allow(unsafe_code, reason = "owning a received descriptor")]
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                // Only the first descriptor is expected; extra ones are closed on drop.
                if passed.is_none() {
                    passed = Some(owned);
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
    fn long_errors_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let encoded = Report::Error(long).encode();
        assert!(encoded.len() <= MAX_MESSAGE_BYTES);
        assert!(std::str::from_utf8(&encoded).is_ok());
    }
}
